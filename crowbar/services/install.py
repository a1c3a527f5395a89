"""OS deployment: deploy, reinstall and release nodes, and what their installer and first boot report.

The walk (crowbar.provisioner.lifecycle): `deploy` takes an allocated node through
hardware-installing (BIOS settings, if the node has any: crowbar.services.bios; else straight
through) to hardware-installed and queues one install job for its discovery agent
(crowbar.provisioner.install makes the script); the agent taking the job moves it to installing;
the job's phases and bytes land in `node.install`; its result moves the node to installed (the
agent then reboots it onto its disk) or to problem with the failing phase and the job's last
lines. At first boot the installed system calls home (`booted`): installed -> readying, then ready
once its sshd answers. From installed on, the node's SSH address and the server's key are set in
its hints (unless the operator set them), so the script jig reaches it.

Without an OS named, `deploy` takes the one the OS rules choose (crowbar.services.os_rules), and the
rules' root-device hints apply when the operator set none on the node.

`reinstall` runs the same job again from the discovery image (the node is power-cycled into it);
with a newer OS it is the node's upgrade. Either way the fresh root filesystem has lost what the
node's roles configured, so once it is ready again its noderoles run again (`RERUN`).
`release` erases the node's disks from the discovery image (signatures, or every byte) and puts it
back in the pool, discovered, its admin address released.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shlex
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from crowbar import plugins
from crowbar.db.events import batched, record
from crowbar.db.models import AgentJob, Node, NodeRole, PowerRequest, utcnow
from crowbar.db.session import signal_work
from crowbar.db.sql import chunks
from crowbar.errors import Conflict, CrowbarError, InvalidInput, NotFound
from crowbar.engine import graph
from crowbar.provisioner import install, lifecycle, osimage, rules
from crowbar.services import allocation, bios, lookup, network, nodes, os_rules, power
from crowbar.services.nodes import agent_driven, install_step, set_state

log = logging.getLogger("crowbar.install")

INSTALL, ERASE = "install", "erase"
INSTALL_TIMEOUT = 40 * 60
ERASE_MODES = ("quick", "full")
PROGRESS_PATH = "/api/v2/agent/progress"
FAILED_IN_RE = re.compile(r"^crowbar-install: failed in phase ([a-z-]+) ", re.M)  # the script's trap
SSH_AUTO = "ssh_auto"  # node.install key: the hints' ssh address/key were set by the installer
RERUN = "rerun_noderoles"  # node.install key: a reinstall; its noderoles run again once it is ready
# States in which the node should run the discovery image: its installed system calling home from a
# new boot means the PXE boot did not take (services/install._missed_netboot)
NETBOOTS = frozenset({lifecycle.HARDWARE_INSTALLING, lifecycle.HARDWARE_INSTALLED, lifecycle.REINSTALL,
                      lifecycle.RELEASING})
NETBOOT_RETRIES = 3
# States whose node waits for its discovery agent to take a queued install or erase job; one the
# server power-cycled for it and that stays silent this long after the cycle is powered off and on
# again (`retry_silent_netboots`). A server's firmware takes minutes; a TCG lab VM's discovery boot ~2.
SILENT_STATES = (lifecycle.HARDWARE_INSTALLED, lifecycle.REINSTALL, lifecycle.RELEASING)
NETBOOT_SILENCE = timedelta(minutes=5)
# The installer's reports (phases and bytes written): each answer says how many seconds its next may
# come at the soonest, 0 in a small fleet (every phase at once, bytes every 3 s: the script's own
# pace), longer when the installs running at once would post more than REPORT_BUDGET a second (at
# most MAX_REPORT_SECONDS). A report is a write; 1,000 installs at the script's pace were 333 a second.
REPORT_BUDGET = 20
MAX_REPORT_SECONDS = 60
INSTALLING_RECOUNT = 10.0  # seconds between counts of the nodes installing, per process


@dataclass(frozen=True)
class Context:
    """What deploying needs from the server: where images are, and the admin server's SSH key."""

    images: Path | None            # the OS image store (crowbar.provisioner.osimage)
    public_key: str = ""           # the admin server's SSH public key, for root on every node
    private_key: str | None = None  # its private key file, for the script jig's SSH sessions
    apt_proxy: str | None = None    # online mode: the admin server's apt proxy URL, for the nodes' apt
    pip_index: str | None = None    # and its PyPI cache's simple index, for the nodes' pip


def image_path(image: osimage.OsImage) -> str:
    """Where the server serves an image, under its HTTP boot endpoint."""
    return f"/boot/os/{image.name}/{image.digest}/{image.path.name}"


def _image(ctx: Context, os_name: str) -> osimage.OsImage:
    if ctx.images is None:
        raise Conflict("this server has no OS image store (crowbar server --os-images)", field="os")
    if not osimage.NAME_RE.match(os_name or ""):
        raise InvalidInput(f"{os_name!r} is not an OS name", field="os")
    image = osimage.current(ctx.images, os_name)
    if image is None:
        known = sorted({i.name for i in osimage.built(ctx.images)})
        raise Conflict(f"OS {os_name!r} has no built image (built: {', '.join(known) or 'none'}); "
                       f"build it with `crowbar os build {os_name}`", field="os")
    return image


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _set_install(node: Node, **values) -> None:
    node.install = {**(node.install or {}), **values}


# --- the first-boot data ---

def seed(session: Session, node: Node, ctx: Context, instance: str, plan: dict | None = None) -> dict[str, str]:
    """cloud-init's NoCloud seed for `node`: meta-data, user-data, network-config. `plan`: the
    node's netplan document (`network.node_netplans`), when the caller read it (a deploy reads its
    nodes' together)."""
    short = node.name.split(".")[0]
    meta = {"instance-id": instance, "local-hostname": node.name}
    user = {"hostname": short, "fqdn": node.name, "prefer_fqdn_over_hostname": True,
            "manage_etc_hosts": True, "disable_root": False, "ssh_pwauth": False,
            "ssh_authorized_keys": [ctx.public_key] if ctx.public_key else [],
            # RSA and DSA host keys take cloud-init half a minute under emulation; nobody needs them
            "ssh_genkeytypes": ["ed25519", "ecdsa"], "resize_rootfs": True}
    try:
        netconf = plan or network.node_netplans(session, [node.id])[0]
    except CrowbarError as exc:  # no plan (no admin network, no NIC inventory): DHCP on every NIC
        log.info("node %s has no interface plan (%s): its OS uses DHCP", node.name, exc)
        netconf = {"network": {"version": 2, "ethernets": dhcp_everywhere(node.discovery)}}
    _cloud_init_routes(netconf["network"])
    if files := proxy_files(ctx):
        user["write_files"] = files
    return {"meta-data": _dump(meta), "user-data": "#cloud-config\n" + _dump(user),
            "network-config": _dump(netconf["network"])}


# libyaml's safe dumper when PyYAML has it (the same documents, a fifth of the time): a deploy of
# 500 nodes makes 1,500 seeds' YAML in one transaction.
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _dump(data) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


def dhcp_everywhere(discovery) -> dict:
    """netplan v2 `ethernets` that put DHCP on each NIC of the inventory, by MAC and name.

    One entry per NIC: cloud-init 22.4's networkd renderer writes an entry's key as `Name=` and
    ignores a `match: name:` glob, so a single `all: {match: {name: eth*}}` entry matches no
    interface at all. The names are the inventory's (the installed kernel keeps the discovery
    kernel's eth names: net.ifnames=0); a NIC without one gets ethN by its place in the list."""
    nics = (discovery or {}).get("nics") if isinstance(discovery, dict) else None
    out: dict = {}
    for i, nic in enumerate(nics if isinstance(nics, list) else []):
        if not isinstance(nic, dict) or not nic.get("mac"):
            continue
        name = str(nic.get("name") or f"eth{i}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", name) or name in out:
            name = f"eth{i}"
        out[name] = {"match": {"macaddress": str(nic["mac"]).lower()}, "set-name": name, "dhcp4": True}
    return out or {"eth0": {"dhcp4": True}}


def proxy_files(ctx: Context) -> list[dict]:
    """Online mode: the installed node's apt (and pip) fetch through the admin server's proxies."""
    from crowbar.proxy import apt, pypi

    files = []
    if ctx.apt_proxy:
        files.append({"path": apt.NODE_APT_CONF, "permissions": "0644", "content": apt.node_apt_conf(ctx.apt_proxy)})
    if ctx.pip_index:
        files.append({"path": pypi.NODE_PIP_CONF, "permissions": "0644", "content": pypi.node_pip_conf(ctx.pip_index)})
    return files


def _cloud_init_routes(network: dict) -> None:
    """cloud-init (22.4, Debian 12) reads netplan v2 but not netplan's `to: default`: spell it out."""
    for section in network.values():
        if not isinstance(section, dict):
            continue
        for interface in section.values():
            for route in (interface or {}).get("routes", []) if isinstance(interface, dict) else []:
                if route.get("to") == "default":
                    route["to"] = "::/0" if ":" in str(route.get("via", "")) else "0.0.0.0/0"


def _new_job(session: Session, node: Node) -> AgentJob:
    job = AgentJob(node_id=node.id, kind=INSTALL, script="", timeout=INSTALL_TIMEOUT)
    session.add(job)
    return job


def _plan_job(session: Session, node: Node, ctx: Context, image: osimage.OsImage,
              choice: rules.Choice | None = None, *, job: AgentJob | None = None,
              netplan: dict | None = None, recipes: dict | None = None) -> AgentJob:
    """The node's install job: `job` (added and flushed by the caller) or a new one, its script
    planned. `netplan` and `recipes`: what a caller planning many read once for all."""
    discovery = node.discovery or {}
    hints = (node.hints or {}).get("crowbar", {}).get("root_device") or {}
    hints_from = "node" if hints else None
    if not hints and choice is not None and choice.root_device:
        hints, hints_from = choice.root_device, f"rule {choice.rule}" if choice.rule else "rules default"
    disk = install.choose_root_disk(discovery.get("disks") or [], hints)
    firmware = discovery.get("firmware") if discovery.get("firmware") in ("bios", "uefi") else "bios"
    if job is None:
        job = _new_job(session, node)
        session.flush()
    plan = install.InstallPlan(
        node=node.name, disk=f"/dev/{disk['name']}", disk_bytes=int(disk["size_bytes"]), firmware=firmware,
        image_path=image_path(image), image_size=int(image.manifest["size"]),
        image_sha256=image.manifest["sha256"], fs_size=int(image.manifest["fs_size"]),
        progress_path=f"{PROGRESS_PATH}/{job.id}",
        seed=seed(session, node, ctx, f"crowbar-{node.id}-{job.id}", netplan),
        compression=image.compression)
    recipes = osimage.recipes() if recipes is None else recipes
    installer_name = recipes[image.name].installer if image.name in recipes else "image"
    try:
        installer = plugins.get(plugins.OS_INSTALLERS, installer_name)
    except plugins.UnknownPlugin as exc:
        raise Conflict(f"OS {image.name}: {exc}", field="os") from None
    job.script = installer.job(plan)
    _set_install(node, os=image.name, image=image.digest, sha256=image.manifest["sha256"],
                 size=plan.image_size, disk=plan.disk, firmware=firmware, job=job.id,
                 phase="queued", bytes=0, total=plan.fs_size, started_at=_now(), finished_at=None,
                 error=None, host_keys=[], root_device_from=hints_from,
                 os_rule=(choice.rule or "default") if choice is not None else None)
    return job


def _netplans(session: Session, ids: list[int]) -> dict[int, dict]:
    """The nodes' netplan plans, read together; none when one of them has no plan (`seed` then
    asks node by node, and a node without one gets DHCP on every NIC)."""
    try:
        return dict(zip(ids, network.node_netplans(session, ids)))
    except CrowbarError:
        return {}


def _cancel_jobs(session: Session, node: Node | list[int], reason: str) -> None:
    """End the open install and erase jobs of `node` (or of the nodes with these ids)."""
    ids = [node.id] if isinstance(node, Node) else node
    for part in chunks(ids):
        session.execute(update(AgentJob).where(AgentJob.node_id.in_(part), AgentJob.kind.in_([INSTALL, ERASE]),
                                               AgentJob.state != "done")
                        .values(state="done", exit_code=-1, output=reason, finished_at=utcnow()))


def _reach(session: Session, node: Node, agent_reboots: bool, actor: str) -> None:
    """Make the node boot what its state says: the agent reboots it, or it is power-cycled."""
    if agent_reboots:
        return  # the agent is in the discovery image already and takes its job on its next poll
    power.queue(session, node, "cycle", actor)


# --- operator actions ---

def deploy(session: Session, keys: list, os_name: str | None, ctx: Context, actor: str = "system",
           allocate: bool = False) -> list[dict]:
    """Install `os_name` (default: the node's OS, else debian-12) on allocated nodes, all or none.
    With `allocate`, discovered nodes are allocated first in the same transaction: their agents
    take the install job without the reboot a separate allocate asks for."""
    if not keys:
        raise InvalidInput("name at least one node to deploy", field="nodes")
    deployed = lookup.nodes(session, keys, lock=True)
    if allocate:
        discovered = [node.id for node in deployed if node.state == lifecycle.DISCOVERED]
        if discovered:
            allocation.allocate_many(session, discovered, actor, answer=False)
    # All of them read together (a bulk deploy of 10,000 nodes plans in one pass): the nodes, their
    # OS rules' choices, images, BIOS settings and netplan plans; their old jobs ended in one update,
    # the new ones inserted in one flush. Refusals come before the deploy writes anything.
    ids = [node.id for node in deployed]
    for node in deployed:
        if node.state != lifecycle.ALLOCATED:
            raise Conflict(f"node {node.name!r} is {node.state}: only allocated nodes are deployed "
                           f"(`crowbar nodes allocate {node.name}` first; `reinstall` for an installed one)")
    ruleset = os_rules.current(session)
    choices = os_rules.choose_many(session, deployed, ruleset)
    os_names = {node.id: os_name or choices[node.id].os or node.os or lifecycle.DEFAULT_OS for node in deployed}
    images = {name: _image(ctx, name) for name in sorted(set(os_names.values()))}
    settings = bios.wanted_many(session, deployed)
    recipes = osimage.recipes()
    _cancel_jobs(session, ids, "replaced by a new install")
    jobs = {node.id: _new_job(session, node) for node in deployed}
    session.flush()
    with batched(session):  # the lifecycle events of all of them in one insert
        for part in chunks(deployed, 500):  # the netplan documents a few at a time, not 10,000 held at once
            netplans = _netplans(session, [node.id for node in part])
            for node in part:
                _deploy_one(session, node, ctx, actor, os_name, choices[node.id], images[os_names[node.id]],
                            jobs[node.id], netplans.get(node.id), recipes, settings[node.id])
    os_rules.refresh_tags(session, deployed)  # their OS changed: the rules' tags follow, in one pass
    signal_work(session, "anneal")
    tags = nodes.tags_of(session, ids)
    return [nodes.node_dict(node, full=True, tags=tags[node.id]) for node in deployed]


def _deploy_one(session: Session, node: Node, ctx: Context, actor: str, os_name: str | None,
                choice: rules.Choice, image: osimage.OsImage, job: AgentJob, netplan: dict | None,
                recipes: dict, settings: dict) -> None:
    """One node of `deploy`, with what was read for all of them."""
    name = image.name
    why = "" if os_name or not choice.os else f" (OS rule {choice.rule})" if choice.rule else " (OS rules default)"
    node.os = name
    _set_install(node, steps=[], netboot_retries=0)
    install_step(session, node, lifecycle.HARDWARE_INSTALLING, f"deploying {name}{why}", actor)
    _plan_job(session, node, ctx, image, choice, job=job, netplan=netplan, recipes=recipes)
    if node.agent_action == "reboot":
        # allocate's reboot (to take the reserved address in the discovery image) is not needed
        # any more: the installed system gets that address from its seed, and the next boot is
        # the one after the install. Saves a whole PXE boot and discovery.
        node.agent_action = None
    # BIOS settings first: the job waits (services/bios.py)
    if not bios.start(session, node, job, actor, settings):
        install_step(session, node, lifecycle.HARDWARE_INSTALLED, "no hardware jobs", actor)
        _reach(session, node, agent_driven(node), actor)


def reinstall(session: Session, key, os_name: str | None, ctx: Context, actor: str = "system") -> dict:
    """Install the node's OS again (or `os_name`: an upgrade when it is newer): it boots the
    discovery image and the job runs; once it is ready again, its noderoles run again."""
    node = lookup.node(session, key)
    previous = node.os
    name = os_name or node.os or lifecycle.DEFAULT_OS
    image = _image(ctx, name)
    agent_reboots = agent_driven(node)
    _drop_auto_ssh(node)
    node.os = name
    _set_install(node, steps=[], netboot_retries=0, **{RERUN: True})
    change = f"{previous} -> {name}" if previous and previous != name else name
    install_step(session, node, lifecycle.REINSTALL, f"reinstall {change} requested", actor)
    _cancel_jobs(session, node, "replaced by a new install")
    _plan_job(session, node, ctx, image, os_rules.choose(session, node))
    _reach(session, node, agent_reboots, actor)
    signal_work(session, "anneal")
    return nodes.node_dict(node, full=True)


def erase_script(disks: list[dict], mode: str) -> str:
    """The agent's erase job: every non-removable disk of the inventory, signatures or every byte."""
    names = [f"/dev/{d['name']}" for d in disks if d.get("name") and not d.get("removable")]
    q = shlex.quote
    lines = ["#!/bin/sh", f"# Crowbar release: erase ({mode}) {' '.join(names) or 'no disks'}", "set -eu"]
    for disk in names:
        lines.append(f"echo 'crowbar-erase: {disk}'")
        lines.append(f"for p in /sys/class/block/{disk[5:]}/{disk[5:]}*; do "
                     "[ -e \"$p\" ] && wipefs -q -a \"/dev/${p##*/}\" || true; done")
        lines.append(f"wipefs -q -a {q(disk)}")
        if mode == "full":
            lines.append(f"dd if=/dev/zero of={q(disk)} bs=4M conv=fsync 2>&1 | tail -n 1 || true")
        else:  # the partition tables: the primary at the start, GPT's backup in the last MiB
            lines.append(f"dd if=/dev/zero of={q(disk)} bs=1M count=2 conv=fsync 2>/dev/null")
            lines.append(f"sectors=$(cat /sys/class/block/{disk[5:]}/size); "
                         f"dd if=/dev/zero of={q(disk)} bs=512 seek=$((sectors - 2048)) count=2048 "
                         "conv=fsync 2>/dev/null")
    lines.append("sync")
    lines.append("echo 'crowbar-erase: done'")
    return "\n".join(lines) + "\n"


def release(session: Session, key, erase: str | None = "quick", actor: str = "system") -> dict:
    """Back to the pool: an allocated node straight to discovered (erase None), anything installed
    through `releasing`, where the agent erases its disks."""
    node = lookup.node(session, key)
    if erase is not None and erase not in ERASE_MODES:
        raise InvalidInput(f"erase {erase!r}: expected {' or '.join(ERASE_MODES)}", field="erase")
    if node.state == lifecycle.ALLOCATED and erase is None:
        set_state(session, node, lifecycle.DISCOVERED, "released by the operator", actor)
        _free(session, node, actor)
        return nodes.node_dict(node, full=True)
    agent_reboots = agent_driven(node)
    _drop_auto_ssh(node)
    install_step(session, node, lifecycle.RELEASING, f"release with {erase or 'quick'} erase requested", actor)
    _cancel_jobs(session, node, "replaced by a release")
    job = AgentJob(node_id=node.id, kind=ERASE, script=erase_script((node.discovery or {}).get("disks") or [],
                                                                     erase or "quick"), timeout=4 * 3600)
    session.add(job)
    session.flush()
    _set_install(node, phase="erase-queued", job=job.id, erase=erase or "quick", host_keys=[],
                 netboot_retries=0)
    _reach(session, node, agent_reboots, actor)
    signal_work(session, "anneal")
    return nodes.node_dict(node, full=True)


def _free(session: Session, node: Node, actor: str) -> None:
    try:
        network.release(session, "admin", node.id, actor=actor)
    except (NotFound, Conflict):
        pass  # no admin network, or no address held


# --- what the agent reports ---

def job_taken(session: Session, node: Node, job: AgentJob) -> None:
    """The agent took an install job: hardware-installed or reinstall -> installing."""
    if job.kind == INSTALL and node.state in (lifecycle.HARDWARE_INSTALLED, lifecycle.REINSTALL):
        install_step(session, node, lifecycle.INSTALLING, f"installing {node.os} on {(node.install or {}).get('disk')}", "agent")
        _set_install(node, phase="started")


_installing = {"count": 0, "at": float("-inf")}


def installing_nodes(session: Session) -> int:
    """How many nodes are installing, counted at most every INSTALLING_RECOUNT seconds per process."""
    now = time.monotonic()
    if now - _installing["at"] >= INSTALLING_RECOUNT:
        count = session.scalar(select(func.count()).select_from(Node).where(Node.state == lifecycle.INSTALLING))
        _installing.update(count=count or 0, at=now)
    return _installing["count"]


def report_seconds(installing: int, rng: random.Random | None = None) -> int:
    """The `next` of a progress answer: 0 (report at the script's own pace) unless `installing`
    installs at that pace (one report every ~3 s each) would exceed REPORT_BUDGET reports a second;
    then enough seconds to keep to it (at most MAX_REPORT_SECONDS), jittered by up to a quarter."""
    base = installing / REPORT_BUDGET
    return 0 if base < 3 else round(min(MAX_REPORT_SECONDS, base * (rng or random).uniform(0.75, 1.25)))


def progress(session: Session, node: Node, job_id: str, phase: object, written: object, total: object) -> dict:
    """An install job's phase and bytes written, as its script reports them. Answered with `next`:
    the seconds before its next report at the soonest (`report_seconds`); the script holds back
    what comes sooner and reports again at its first phase or tick after that, so a phase shorter
    than the pause may never be reported (its output has every phase; the failing one comes from
    there)."""
    number = lookup.as_id(job_id)
    job = session.get(AgentJob, number) if number is not None else None
    if job is None or job.node_id != node.id:
        raise NotFound(f"job {job_id!r} does not exist for node {node.name}", field="job")
    if not isinstance(phase, str) or not phase or len(phase) > 40:
        raise InvalidInput("phase must be a short string", field="phase")
    values = {"phase": phase, "updated_at": _now()}
    for name, value in (("bytes", written), ("total", total)):
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 50:
            values[name] = value
    previous = (node.install or {}).get("phase")
    _set_install(node, **values)
    if phase != previous:
        record(session, [{"object_type": "node", "object_id": node.id, "action": "install", "actor": "agent",
                          "message": f"install phase {phase}" + (f" ({values.get('bytes', 0)} of "
                                                                  f"{values.get('total', 0)} bytes)"
                                                                  if phase == "verify-image" else "")}])
    return {"node": node.name, "phase": phase, "next": report_seconds(installing_nodes(session))}


def _tail(output: str, lines: int = 12) -> str:
    return "\n".join(output.strip().splitlines()[-lines:])


def job_done(session: Session, node: Node, job: AgentJob) -> None:
    """An install or erase job ended: the lifecycle moves on, or the node is a problem."""
    if job.kind == INSTALL and node.state == lifecycle.INSTALLING and (node.install or {}).get("job") == job.id:
        if job.exit_code == 0:
            _set_install(node, phase="installed", finished_at=_now(), error=None,
                         bytes=(node.install or {}).get("total", 0))
            install_step(session, node, lifecycle.INSTALLED, f"{node.os} installed on {(node.install or {}).get('disk')}", "agent")
            node.agent_action = "reboot"
        else:
            failed = FAILED_IN_RE.search(job.output or "")  # the script's own word: reports may lag
            phase = failed.group(1) if failed else (node.install or {}).get("phase", "start")
            reason = f"install failed in phase {phase} (exit {job.exit_code}): {_tail(job.output or '', 6)}"
            _set_install(node, error=reason, finished_at=_now())
            install_step(session, node, lifecycle.PROBLEM, reason[:2000], "agent")
    elif job.kind == ERASE and node.state == lifecycle.RELEASING and (node.install or {}).get("job") == job.id:
        if job.exit_code == 0:
            _set_install(node, phase="erased", finished_at=_now())
            install_step(session, node, lifecycle.DISCOVERED, f"disks erased ({(node.install or {}).get('erase', 'quick')})", "agent")
            _free(session, node, "agent")
        else:
            reason = f"erase failed (exit {job.exit_code}): {_tail(job.output or '', 6)}"
            install_step(session, node, lifecycle.PROBLEM, reason[:2000], "agent")


def refound(session: Session, node: Node) -> None:
    """The node's discovery agent registered again: an install it had taken was cut short."""
    if node.state != lifecycle.INSTALLING:
        return
    job = session.get(AgentJob, (node.install or {}).get("job") or 0)
    if job is not None and job.state == "sent":
        job.state, job.exit_code, job.finished_at = "done", -1, utcnow()
        job.output = "the node booted again while installing"
        reason = f"install interrupted in phase {(node.install or {}).get('phase')}: the node booted again"
        _set_install(node, error=reason, finished_at=_now())
        install_step(session, node, lifecycle.PROBLEM, reason, "agent")


HOST_KEY_RE = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp(?:256|384|521)|ssh-rsa) ([A-Za-z0-9+/]{40,1400}={0,2})$")


def parse_host_keys(lines: list) -> list[str]:
    """The node's sshd public keys as `type base64` (comments dropped), checked; refused as a whole
    when one line is not a public key, so nothing half-valid is kept."""
    keys = []
    for line in lines or []:
        fields = str(line).split()[:2]
        key = " ".join(fields)
        if not HOST_KEY_RE.match(key):
            raise InvalidInput(f"{str(line)[:60]!r} is not an SSH public host key (ssh-ed25519, ecdsa or rsa)",
                               field="host_keys")
        if key not in keys:
            keys.append(key)
    return keys


def booted(session: Session, node: Node, step: object, facts: dict, ctx: Context,
           host_keys: list | None = None) -> dict:
    """The installed system calls home: booted (installed -> readying), ready (readying -> ready;
    from installed, both steps at once: its sshd answered before it called), or failed (->
    problem). Any other state: the node is alive, nothing moves. With `ready` comes its sshd's
    public host keys: the CLI's `nodes ssh` then checks them strictly (no trust on first
    use, and a reinstalled node's new keys replace the old ones)."""
    if step not in ("booted", "ready", "failed"):
        raise InvalidInput("step must be booted, ready or failed", field="step")
    keys = parse_host_keys(host_keys)
    with batched(session):  # the events last: the node's changes go out in one UPDATE
        return _booted(session, node, step, facts, ctx, keys)


def _booted(session: Session, node: Node, step: str, facts: dict, ctx: Context, keys: list[str]) -> dict:
    node.alive = True
    clean = {k: str(v)[:200] for k, v in (facts or {}).items() if k in ("boot_id", "kernel", "os", "reason")}
    record(session, [{"object_type": "node", "object_id": node.id, "action": "boot", "actor": "node",
                      "message": f"installed system {step}: {json.dumps(clean, sort_keys=True)}"}])
    known_boot = (node.install or {}).get("boot_id")
    if clean.get("boot_id"):
        _set_install(node, boot_id=clean["boot_id"])
    if node.state in NETBOOTS:
        # its installed system runs, not the discovery agent: a release or reinstall from here must
        # power-cycle it, not wait for an agent to take the job (services/nodes.agent_driven)
        node.alive = False
        if step == "booted" and clean.get("boot_id") and clean["boot_id"] != known_boot:
            _missed_netboot(session, node)
        return {"node": node.name, "state": node.state}  # the old system's keys are not kept
    if keys:
        _set_install(node, host_keys=keys)
    if step in ("booted", "ready") and node.state == lifecycle.INSTALLED:
        # `ready` straight from installed: a system whose sshd answered at once says both in one post
        _set_auto_ssh(session, node, ctx)
        install_step(session, node, lifecycle.READYING, f"booted {clean.get('os', '')} ({clean.get('kernel', '')})", "node")
    if step == "ready" and node.state == lifecycle.READYING:
        _set_install(node, booted=clean)
        install_step(session, node, lifecycle.READY, "sshd answers", "node")
        if (node.install or {}).get(RERUN):
            _rerun_noderoles(session, node)
        signal_work(session, "anneal")
    elif step == "failed" and node.state in (lifecycle.INSTALLED, lifecycle.READYING):
        install_step(session, node, lifecycle.PROBLEM, f"first boot failed: {clean.get('reason', '')}", "node")
    return {"node": node.name, "state": node.state}


def _missed_netboot(session: Session, node: Node) -> None:
    """The installed system booted (a new boot) while the node should be running the discovery
    image: the power cycle did reset it, but its PXE boot did not take (no DHCP answer in time, a
    boot file not fetched) and the firmware went on to the disk. Power-cycle it again, up to
    NETBOOT_RETRIES times; then it is a problem for the operator (boot order, cabling, DHCP)."""
    _netboot_retry(session, node, f"booted its disk while {node.state}, not the network",
                   f"booted its disk instead of the network {{tries}} times while {node.state}: check the boot "
                   "order (network first), the provisioning network and DHCP", "node")


def _netboot_retry(session: Session, node: Node, what: str, problem: str, actor: str, cold: bool = False) -> None:
    """Power-cycle the node again (`what` happened), counting in install.netboot_retries; past
    NETBOOT_RETRIES it goes to problem with `problem` ({tries}: how many boots went wrong).
    `cold`: off, then on (two requests, run in order), not the driver's cycle (a warm reset)."""
    tries = int((node.install or {}).get("netboot_retries") or 0) + 1
    if tries > NETBOOT_RETRIES:
        install_step(session, node, lifecycle.PROBLEM, problem.format(tries=tries), actor)
        return
    _set_install(node, netboot_retries=tries)
    record(session, [{"object_type": "node", "object_id": node.id, "action": "netboot-retry", "actor": "server",
                      "message": f"{what}: power {'off and on' if cold else 'cycle'} {tries}/{NETBOOT_RETRIES}"}])
    for action in ("off", "on") if cold else ("cycle",):
        power.queue(session, node, action, "server")


def retry_silent_netboots(session: Session, now: datetime | None = None,
                          silence: timedelta = NETBOOT_SILENCE) -> list[str]:
    """The watchdog's other rule: a node that waits for its discovery agent to take an install or
    erase job (SILENT_STATES), that the server power-cycled for it, and that has not been heard
    from `silence` after the cycle ended (its job still queued: the agent never polled) is
    powered off and on again (counted as when it boots its disk, `_missed_netboot`), up to
    NETBOOT_RETRIES times; then it is a problem. A boot can hang anywhere (firmware, a boot file
    fetch, the kernel), and a warm reset may not clear it: in CI a lab UEFI VM took three QMP
    `system_reset`s in a row without running its firmware again, so the retry is off, then on.
    Nodes the server did not cycle (the agent was running already, or the power driver is
    manual) are left to the state's timeout. Answers the names of the nodes powered off and on
    again or moved to problem."""
    now = now or datetime.now(timezone.utc)
    # set-based, cheap at fleet scale (10,000 nodes installing at once): the latest power request
    # of each node whose agent has a queued install or erase job, when it is our cycle, ended long ago
    waiting = (select(AgentJob.node_id).join(Node, Node.id == AgentJob.node_id)
               .where(Node.state.in_(SILENT_STATES), AgentJob.state == "queued", AgentJob.kind.in_([INSTALL, ERASE])))
    latest = (select(func.max(PowerRequest.id)).where(PowerRequest.node_id.in_(waiting))
              .group_by(PowerRequest.node_id))
    overdue = session.scalars(select(PowerRequest).where(
        PowerRequest.id.in_(latest), PowerRequest.action.in_(("cycle", "on")), PowerRequest.state == "succeeded",
        PowerRequest.finished_at < now - silence)).all()
    moved = []
    for req in overdue:
        node = session.get(Node, req.node_id)
        if node is None or _aware(req.created_at) < _aware(node.state_changed_at or req.created_at):
            continue  # a cycle from before this state (the agent was to take the job without one)
        waited = int((now - _aware(req.finished_at)).total_seconds())
        _netboot_retry(session, node, f"no word from the discovery image {waited} s after its power cycle "
                                      f"while {node.state}",
                       f"did not start the discovery image after {{tries}} power cycles while {node.state} "
                       f"(each time nothing for {int(silence.total_seconds())} s): check its console, the "
                       "boot order (network first), the provisioning network and DHCP", "timeout", cold=True)
        moved.append(node.name)
    return moved


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)


def _rerun_noderoles(session: Session, node: Node) -> None:
    """After a reinstall: the node's noderoles that had run (active or error) run again, so the
    annealer configures the fresh system as it did the old one (destructive roles excepted: the
    annealer runs those once)."""
    ids = list(session.scalars(select(NodeRole.id).where(NodeRole.node_id == node.id,
                                                          NodeRole.state.in_(("active", "error")))
                               .order_by(NodeRole.id)))
    _set_install(node, **{RERUN: False})
    if ids:
        graph.requeue(session, ids, "node", f"{node.name} was reinstalled ({node.os})")


def _admin_address(session: Session, node: Node) -> str | None:
    address = network.node_addresses(session, [node.id]).get(node.id, {}).get("admin")
    return str(address).split("/")[0] if address else None


def _set_auto_ssh(session: Session, node: Node, ctx: Context) -> None:
    """The node's SSH address (its admin address) and the server's key, unless the operator set them."""
    hints = json.loads(json.dumps(node.hints or {}))
    ssh = hints.setdefault("crowbar", {}).setdefault("ssh", {})
    if ssh.get("address"):
        return
    with session.no_autoflush:  # the node's pending changes go out with the rest, in one UPDATE
        address = _admin_address(session, node)
    if not address:
        return
    ssh["address"] = address
    if ctx.private_key and not ssh.get("key"):
        ssh["key"] = ctx.private_key
    node.hints = hints
    _set_install(node, **{SSH_AUTO: True})


def _drop_auto_ssh(node: Node) -> None:
    if not (node.install or {}).get(SSH_AUTO):
        return
    hints = json.loads(json.dumps(node.hints or {}))
    ssh = hints.get("crowbar", {}).get("ssh", {})
    ssh.pop("address", None)
    ssh.pop("key", None)
    node.hints = hints
    _set_install(node, **{SSH_AUTO: False})

