"""The virtual lab: a network namespace with an admin bridge, a `crowbar server` provisioning it,
and qemu VMs that PXE-boot from it.

Everything the lab creates is recorded in `<lab dir>/lab.json` as soon as it exists, so `down`
(and a failed `up`) can remove exactly that: the VMs and the server by their PIDs (checked against
their command lines first), whatever else still runs in the namespace, the taps and bridges, the
namespace, then the lab's files. No traffic leaves the namespace: the VMs, the bridges, dnsmasq
and the server's TCP listener all live inside it; the CLI on the host reaches the server through
a unix socket in the lab dir.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import httpx

from crowbar import config
from crowbar.cli import local
from crowbar.procs import StillRunning, cmdline, pid_alive, read_pidfile, stop_pid
from crowbar.lab import bmc as lab_bmc
from crowbar.lab import uplink
from crowbar.lab.vm import ADMIN_BRIDGE, DATA_BRIDGE, FIRMWARES, MAX_NICS, MAX_VMS, OVMF_CODE, OVMF_VARS, Vm

STATE_FILE = "lab.json"
ADMIN_ADDRESS = "192.168.124.10"  # in the default network template's admin 192.168.124.0/24, outside its ranges
ADMIN_PREFIX = 24
# An IPv6 ULA prefix on the admin bridge: the provisioner's dnsmasq then sends router advertisements,
# which end iPXE's ~13 s wait for IPv6 routers on every boot. Nothing routes it; it stays in the lab.
ADMIN_IPV6 = "fd00:cb::10/64"
API_PORT = 3000
NS_PREFIX = "cblab-"
QEMU = "qemu-system-x86_64"
REQUIRED = {QEMU: "qemu-system-x86", "dnsmasq": "dnsmasq-base", "ip": "iproute2", "setpriv": "util-linux"}

Say = Callable[[str], None]


class LabError(Exception):
    """Why the lab cannot do what was asked, in one line."""


def missing_tools() -> list[str]:
    """Binaries the lab needs that are not installed, with their Debian package."""
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in REQUIRED.items() if not shutil.which(tool)]
    if not (ipxe := local.ipxe_bios_loader()).is_file():
        missing.append(f"{ipxe} (Debian package ipxe)")
    return missing


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip() or f'exit code {done.returncode}'}")
    return done


def namespace_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def namespace_pids(name: str) -> list[int]:
    """PIDs of the processes inside network namespace `name` (all of them the lab's own)."""
    if not namespace_exists(name):
        return []
    done = _run("ip", "netns", "pids", name, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def barclamp_dir() -> Path:
    """The lab barclamp (roles lab-facts and lab-vlan), shipped in this package."""
    return Path(str(resources.files("crowbar.lab") / "barclamps" / "lab"))


def barclamp_files(directory: Path | None = None) -> dict[str, str]:
    directory = directory or barclamp_dir()
    files = {"barclamp.yml": (directory / "barclamp.yml").read_text()}
    for path in sorted((directory / "scripts").rglob("*")):
        if path.is_file():
            files[path.relative_to(directory).as_posix()] = path.read_text()
    return files


def _per_vm(value, count: int, what: str, cast) -> list:
    """A single value for every VM, or one per VM (a list or a comma-separated string)."""
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        items = [cast(str(v).strip()) if isinstance(v, str) else cast(v) for v in items]
    except ValueError:
        raise LabError(f"--{what} {value!r}: not a number (or a comma-separated list of one per VM)") from None
    if len(items) == 1:
        return items * count
    if len(items) != count:
        raise LabError(f"--{what} lists {len(items)} values for {count} VMs: give one, or one per VM")
    return items


def firmware_plan(value: str, count: int) -> list[str]:
    """Each VM's firmware: bios, uefi, mixed (vm2, vm4... UEFI) or one per VM (bios,uefi)."""
    if value == "mixed":
        items = ["uefi" if i % 2 == 0 else "bios" for i in range(1, count + 1)]
    else:
        items = [v.strip() for v in str(value).split(",")]
        if any(v not in FIRMWARES for v in items):
            raise LabError(f"--firmware {value!r}: expected bios, uefi, mixed or one per VM (bios,uefi)")
        if len(items) == 1:
            items = items * count
        if len(items) != count:
            raise LabError(f"--firmware lists {len(items)} values for {count} VMs: give one, or one per VM")
    if "uefi" in items and not (OVMF_CODE.is_file() and OVMF_VARS.is_file()):
        raise LabError(f"UEFI VMs need OVMF ({OVMF_CODE}): install the ovmf package")
    return items


@dataclass
class LabState:
    namespace: str
    lab_byte: int
    dir: str
    created_at: str
    bridges: list[str] = field(default_factory=list)
    server: dict = field(default_factory=dict)  # pid, log, socket, data_dir, url
    vms: list[Vm] = field(default_factory=list)
    bmc: str = "none"  # ipmi | redfish | none: the VMs' BMCs (crowbar.lab.bmc)
    bmcs: dict = field(default_factory=dict)
    uplink: dict = field(default_factory=dict)  # with --proxies: url, pids, dir (crowbar.lab.uplink)

    def to_dict(self) -> dict:
        return {"namespace": self.namespace, "lab_byte": self.lab_byte, "dir": self.dir,
                "created_at": self.created_at, "bridges": self.bridges, "server": self.server,
                "vms": [vm.to_dict() for vm in self.vms], "bmc": self.bmc, "bmcs": self.bmcs,
                "uplink": self.uplink}

    @classmethod
    def from_dict(cls, data: dict) -> LabState:
        return cls(namespace=data["namespace"], lab_byte=data["lab_byte"], dir=data["dir"],
                   created_at=data.get("created_at", ""), bridges=list(data.get("bridges", [])),
                   server=dict(data.get("server", {})), vms=[Vm.from_dict(v) for v in data.get("vms", [])],
                   bmc=data.get("bmc", "none"), bmcs=dict(data.get("bmcs", {})),
                   uplink=dict(data.get("uplink", {})))


class Lab:
    """A lab in one directory. `up`, `status`, `down` are what the CLI runs."""

    def __init__(self, directory: Path | str | None = None, say: Say | None = None):
        self.dir = Path(directory or config.lab_dir()).absolute()
        self.say = say or (lambda line: None)
        self.state: LabState | None = self._load()

    # -- state ----------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def socket(self) -> Path:
        return self.dir / "api.sock"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def _load(self) -> LabState | None:
        try:
            return LabState.from_dict(json.loads(self.state_file.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise LabError(f"{self.state_file} is not a lab state file ({exc}); remove it by hand") from None

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(f".{STATE_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(self.state.to_dict(), indent=2) + "\n")
        os.replace(tmp, self.state_file)

    def server_running(self) -> bool:
        return bool(self.state) and pid_alive(self.state.server.get("pid"), str(self.dir))

    def running(self) -> bool:
        return self.server_running() and namespace_exists(self.state.namespace)

    def api(self, timeout: float = 30.0):
        from crowbar.cli.client import Client

        return Client(self.endpoint, timeout=timeout)

    # -- up -------------------------------------------------------------------------------------
    def up(self, nodes: int, nics=1, memory=512, disk=4, kvm: bool = False, server_timeout: float = 90.0,
           firmware: str = "bios", bmc: str = "none", proxies: bool = False) -> LabState:
        """Create the namespace, bridges, taps, server and VMs (with BMCs: `bmc`), and power the VMs
        on. `firmware`: bios, uefi, mixed (every second VM UEFI) or one per VM (bios,uefi).
        `proxies`: the server runs online mode's caching proxies, reaching the mirror and PyPI
        through the lab's uplink (crowbar.lab.uplink), the VMs still reach nothing outside."""
        if not 1 <= nodes <= MAX_VMS:
            raise LabError(f"--nodes must be between 1 and {MAX_VMS}")
        firmwares = firmware_plan(firmware, nodes)
        nic_counts = _per_vm(nics, nodes, "nics", int)
        memories = _per_vm(memory, nodes, "memory", int)
        disks = _per_vm(disk, nodes, "disk", float)
        if any(not 1 <= k <= MAX_NICS for k in nic_counts):
            raise LabError(f"--nics must be between 1 and {MAX_NICS}")
        if any(m < 256 for m in memories):
            raise LabError("--memory must be at least 256 (MB): the discovery image unpacks into RAM")
        if any(d <= 0 for d in disks):
            raise LabError("--disk must be a positive number of GB")
        if bmc not in lab_bmc.KINDS:
            raise LabError(f"--bmc {bmc!r}: expected one of {', '.join(lab_bmc.KINDS)}")
        if missing := missing_tools() + lab_bmc.missing_tools(bmc) + (uplink.missing_tools() if proxies else []):
            raise LabError("the lab needs " + ", ".join(missing))
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, bridges and taps)")
        if self.state is not None:
            if self.running():
                raise LabError(f"a lab is already running in {self.dir} (namespace {self.state.namespace}): "
                               "`crowbar lab down` first")
            self.say(f"removing the remains of a stopped lab in {self.dir}")
            self.down()
        accel = "tcg"
        if kvm:
            if os.access("/dev/kvm", os.R_OK | os.W_OK):
                accel = "kvm"
            else:
                self.say("--kvm: /dev/kvm is not usable here, using TCG (software emulation)")
        try:
            local.host_kernel_version()  # checks the kernel is there
        except Exception as exc:
            raise LabError(str(exc)) from None

        token = secrets.token_hex(3)
        while namespace_exists(NS_PREFIX + token):  # another lab's: never ours to touch
            token = secrets.token_hex(3)
        self.state = LabState(namespace=NS_PREFIX + token, lab_byte=int(token[:2], 16), dir=str(self.dir),
                              created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), bmc=bmc)
        self.state.vms = [Vm.plan(i, self.state.lab_byte, self.dir, memories[i - 1], disks[i - 1],
                                  nic_counts[i - 1], accel, firmwares[i - 1]) for i in range(1, nodes + 1)]
        self._save()  # before anything exists: `down` can always find what follows
        try:
            self._network()
            if proxies:
                self.state.uplink = uplink.start(self.dir / "uplink", self.state.namespace, local.host_mirror())
                self._save()
                self.say(f"uplink for the proxies: {self.state.uplink['url']} in {self.state.namespace} "
                         f"(the mirror and PyPI only)")
            self._start_server(server_timeout)
            self._import_barclamp()
            self._start_vms()
        except BaseException:
            self.say("lab up failed: stopping what it started (the logs stay in "
                     f"{self.dir} until `crowbar lab down`)")
            try:
                self.down(keep_files=True)
            except Exception as exc:  # the original error matters more
                self.say(f"cleanup failed too: {exc}")
            raise
        return self.state

    def _ip(self, *args: str) -> None:
        _run("ip", "-n", self.state.namespace, *args)

    def _network(self) -> None:
        st = self.state
        self.say(f"namespace {st.namespace}: bridge {ADMIN_BRIDGE} {ADMIN_ADDRESS}/{ADMIN_PREFIX}")
        _run("ip", "netns", "add", st.namespace)
        self._ip("link", "set", "lo", "up")
        bridges = [ADMIN_BRIDGE] + ([DATA_BRIDGE] if any(len(vm.nics) > 1 for vm in st.vms) else [])
        for bridge in bridges:
            # No STP and no forwarding delay: a tap forwards as soon as its VM sends.
            self._ip("link", "add", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
            st.bridges.append(bridge)
            self._save()
            if bridge == ADMIN_BRIDGE:
                self._ip("addr", "add", f"{ADMIN_ADDRESS}/{ADMIN_PREFIX}", "dev", bridge)
                self._ip("addr", "add", ADMIN_IPV6, "dev", bridge, "nodad")
            self._ip("link", "set", bridge, "up")
        for vm in st.vms:
            for nic in vm.nics:
                self._ip("tuntap", "add", "dev", nic.tap, "mode", "tap")
                self._ip("link", "set", nic.tap, "master", nic.bridge, "up")

    def _start_server(self, timeout: float) -> None:
        st = self.state
        data_dir = self.dir / "server"
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        log_path = self.dir / "server.log"
        argv = ["ip", "netns", "exec", st.namespace, sys.executable, "-m", "crowbar.cli.main", "server",
                "--listen", f"{ADMIN_ADDRESS}:{API_PORT}", "--listen", f"unix:{self.socket}",
                "--data-dir", str(data_dir), "--database", f"sqlite:///{data_dir / 'crowbar.db'}",
                "--provision", f"{ADMIN_BRIDGE}={ADMIN_ADDRESS}", "--workers", "4"]
        if st.uplink:
            argv += ["--proxies", "--proxy-via", st.uplink["url"]]
        env = {k: v for k, v in os.environ.items() if k not in ("CROWBAR_ENDPOINT", "CROWBAR_DATABASE_URL")}
        env["PYTHONUNBUFFERED"] = "1"
        self.say(f"starting crowbar server in {st.namespace} (log {log_path})")
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True, cwd=self.dir)
        st.server = {"pid": proc.pid, "log": str(log_path), "socket": str(self.socket),
                     "data_dir": str(data_dir), "url": f"http://{ADMIN_ADDRESS}:{API_PORT}"}
        self._save()
        deadline = time.monotonic() + timeout
        transport = httpx.HTTPTransport(uds=str(self.socket))
        with httpx.Client(transport=transport, base_url="http://crowbar", timeout=2) as http:
            while True:
                if proc.poll() is not None:
                    raise LabError(f"the lab's server exited ({proc.returncode}):\n{_tail(log_path)}")
                if self.socket.exists():
                    try:
                        if http.get("/api/v2/health").status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                if time.monotonic() > deadline:
                    raise LabError(f"the lab's server did not answer within {timeout:g}s:\n{_tail(log_path)}")
                time.sleep(0.2)

    def _import_barclamp(self) -> None:
        self.api().request("POST", "/barclamps", json={"files": barclamp_files()})
        self.say("imported the lab barclamp (roles lab-facts, lab-vlan)")

    def _start_vms(self) -> None:
        st = self.state
        if st.bmc == "ipmi":  # each ipmi_sim starts its VM: the BMC powers it on
            for vm in st.vms:
                vm.prepare()
            self._bmcs().start(st.vms, st.namespace, ADMIN_ADDRESS, self.dir, self._save)
            for vm in st.vms:
                vm.pid = read_pidfile(vm.pidfile) or self._bmcs().vm_pid(vm.name)
                self.say(f"{vm.name}: {vm.memory_mb} MB, {len(vm.nics)} NIC(s) {', '.join(vm.macs)}: "
                         f"powered on by its IPMI BMC (ipmi_sim, KCS in-band)")
            self._save()
            return
        for vm in st.vms:
            vm.prepare()
            done = subprocess.run(["ip", "netns", "exec", st.namespace, *vm.command()], stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise LabError(f"qemu for {vm.name} failed ({done.returncode}): {done.stderr.strip()}")
            vm.pid = int(vm.pidfile.read_text().split()[0])
            self._save()
        if st.bmc == "redfish":
            self._bmcs().start(st.vms, st.namespace, ADMIN_ADDRESS, self.dir, self._save)
        for vm in st.vms:
            if st.bmc == "redfish":
                self._bmcs().redfish().reset(vm.name, "On")
            else:
                local.power_on_vm(vm.name, vm.qmp)
            self.say(f"{vm.name}: {vm.firmware.upper()}, {vm.memory_mb} MB, {len(vm.nics)} NIC(s) "
                     f"{', '.join(vm.macs)}, {vm.disk_gb:g} GB disk: powered on ({vm.accel})")

    # -- discovery ------------------------------------------------------------------------------
    def vm_pid(self, vm: Vm) -> int | None:
        """The VM's qemu PID: from its pid file (a power-on after `off` starts a new qemu), else (an
        IPMI lab) the qemu its ipmi_sim runs, else the one recorded at `up`; the first that runs.
        (ipmi_sim starts qemu itself: on a loaded machine its pid file may come after `up` looks.)"""
        candidates = (read_pidfile(vm.pidfile), self._bmcs().vm_pid(vm.name), vm.pid)
        return next((pid for pid in candidates if pid_alive(pid)), candidates[0] or vm.pid)

    def match_nodes(self, api=None) -> dict[str, dict]:
        """VM name -> its node (as GET /nodes/{id} shows it), matched by MAC; records the names and
        gives each newly found node the qemu power driver with its VM's QMP socket."""
        api = api or self.api()
        by_mac = {mac: vm for vm in self.state.vms for mac in vm.macs}
        found: dict[str, dict] = {}
        changed = False
        ours = f"d52-54-00-cb-{self.state.lab_byte:02x}-"  # discovered names come from a lab MAC
        for row in api.list_all("/nodes"):
            known = next((vm for vm in self.state.vms if vm.node == row["name"]), None)
            if row.get("admin") or not (known or row["name"].startswith(ours)):
                continue
            node = api.get(f"/nodes/{row['id']}")
            macs = {str(nic.get("mac", "")).lower() for nic in (node.get("discovery") or {}).get("nics") or []
                    if isinstance(nic, dict)}
            if node.get("boot_mac"):
                macs.add(node["boot_mac"].lower())
            vm = known or next((by_mac[m] for m in macs if m in by_mac), None)
            if vm is None:
                continue
            found[vm.name] = node
            if vm.node != node["name"]:
                vm.node, changed = node["name"], True
            wanted = "qemu" if self.state.bmc == "none" else self.state.bmc
            if node.get("power_driver") != wanted and node.get("discovery"):
                self._set_power(api, vm, node["name"])
        if changed:
            self._save()
        return found

    def _bmcs(self) -> lab_bmc.LabBmcs:
        return lab_bmc.LabBmcs(self.state.bmc, self.state.bmcs)

    def _set_power(self, api, vm: Vm, node: str) -> None:
        if through_bmc := self._bmcs().power(vm.name):  # powered through its BMC, never QMP
            driver, settings = through_bmc
            api.put(f"/nodes/{node}/power", {"driver": driver, "settings": settings})
            return
        command = vm.command()  # the server runs in the namespace already
        api.put(f"/nodes/{node}/power", {"driver": "qemu", "settings": {"qmp": str(vm.qmp), "command": command}})

    def wait_discovered(self, timeout: float = 600.0, progress: Callable[[int, int, list[str]], None] | None = None
                        ) -> dict[str, dict]:
        """Poll until every VM has a discovered node; `progress(done, total, pending names)`."""
        api = self.api()
        deadline = time.monotonic() + timeout
        total = len(self.state.vms)
        last_error = ""
        while True:
            if not self.server_running():
                raise LabError(f"the lab's server is not running:\n{_tail(Path(self.state.server['log']))}")
            try:
                found = {name: node for name, node in self.match_nodes(api).items() if node.get("discovery")}
            except Exception as exc:  # a busy server: ask again (the deadline still holds)
                found, last_error = {}, f" (last API error: {exc})"
            pending = [vm.name for vm in self.state.vms if vm.name not in found]
            if progress:
                progress(total - len(pending), total, pending)
            if not pending:
                return found
            dead = [vm.name for vm in self.state.vms if vm.name in pending and not pid_alive(self.vm_pid(vm))]
            if dead:
                raise LabError(f"VM(s) {', '.join(dead)} stopped before being discovered "
                               f"(see `crowbar lab console {dead[0]}`)")
            if time.monotonic() > deadline:
                raise LabError(f"not discovered within {timeout:g}s: {', '.join(pending)} "
                               f"(see `crowbar lab console {pending[0]}`){last_error}")
            time.sleep(1.0)

    # -- deploy ---------------------------------------------------------------------------------
    def deploy_all(self, os_name: str, timeout: float = 1800.0,
                   progress: Callable[[dict[str, dict]], None] | None = None) -> dict[str, dict]:
        """Allocate every discovered VM's node, deploy `os_name` on all of them in one request, and
        poll until each is ready; `progress({vm name: node})` hears of every poll. LabError names a
        node that became a problem, with its reason, or the ones not ready in time."""
        api = self.api()
        found = self.match_nodes(api)
        missing = [vm.name for vm in self.state.vms if vm.name not in found]
        if missing:
            raise LabError(f"not discovered yet: {', '.join(missing)}")
        for node in found.values():
            if node["state"] == "discovered":
                api.post(f"/nodes/{node['name']}/allocate")
        api.post("/nodes/deploy", {"nodes": [n["name"] for n in found.values()], "os": os_name})
        deadline = time.monotonic() + timeout
        while True:
            nodes = {vm: api.get(f"/nodes/{node['name']}") for vm, node in found.items()}
            if progress:
                progress(nodes)
            problems = [f"{n['name']}: {n.get('state_reason')}" for n in nodes.values() if n["state"] == "problem"]
            if problems:
                raise LabError("deploy failed on " + "; ".join(problems))
            if all(n["state"] == "ready" for n in nodes.values()):
                return nodes
            if time.monotonic() > deadline:
                waiting = ", ".join(f"{vm} ({n['state']})" for vm, n in nodes.items() if n["state"] != "ready")
                raise LabError(f"not ready within {timeout:g}s: {waiting}")
            time.sleep(2.0)

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> dict:
        if self.state is None:
            return {"dir": str(self.dir), "running": False, "namespace": None, "vms": []}
        st = self.state
        server_up = self.server_running()
        nodes: dict[str, dict] = {}
        addresses: dict[str, str] = {}
        api_error = None
        if server_up:
            try:
                api = self.api()
                nodes = self.match_nodes(api)
                addresses = {a["node"]: a["address"] for a in api.list_all("/networks/admin/allocations")}
            except Exception as exc:  # status must still show what runs
                api_error = str(exc)
        vms = []
        for vm in st.vms:
            pid = self.vm_pid(vm)
            node = nodes.get(vm.name) or {}
            vms.append({"name": vm.name, "macs": vm.macs, "memory_mb": vm.memory_mb, "disk_gb": vm.disk_gb,
                        "cpus": vm.cpus, "nics": len(vm.nics), "taps": [n.tap for n in vm.nics],
                        "pid": pid, "alive": pid_alive(pid, vm.dir), "qmp": str(vm.qmp), "console": str(vm.console),
                        "node": node.get("name") or vm.node, "state": node.get("state"),
                        "admin_address": addresses.get(node.get("name") or vm.node)})
        out = {"dir": str(self.dir), "running": server_up and namespace_exists(st.namespace),
               "namespace": st.namespace, "namespace_exists": namespace_exists(st.namespace),
               "bridges": st.bridges, "admin_address": f"{ADMIN_ADDRESS}/{ADMIN_PREFIX}",
               "endpoint": self.endpoint, "created_at": st.created_at,
               "server": {**st.server, "alive": server_up}, "vms": vms}
        if api_error:
            out["api_error"] = api_error
        return out

    # -- down -----------------------------------------------------------------------------------
    def down(self, keep_files: bool = False) -> list[str]:
        """Stop and remove everything the lab created; returns what was done. Idempotent.

        `keep_files` (a failed `up`): stop the processes and delete the namespace, but keep the
        state and the logs, for a later `down` to remove."""
        done: list[str] = []
        st = self.state
        if st is None:
            return done
        marker = str(self.dir)
        try:
            self._stop_processes(done)
        except StillRunning as exc:
            raise LabError(str(exc)) from None
        if namespace_exists(st.namespace):
            for vm in st.vms:
                for nic in vm.nics:
                    _run("ip", "-n", st.namespace, "link", "del", nic.tap, check=False)
            for bridge in st.bridges:
                _run("ip", "-n", st.namespace, "link", "del", bridge, check=False)
            _run("ip", "netns", "del", st.namespace)
            done.append(f"deleted namespace {st.namespace} with its taps and bridges")
        if namespace_exists(st.namespace):
            raise LabError(f"namespace {st.namespace} is still there")
        left = [pid for pid in [st.server.get("pid"), *(self.vm_pid(vm) for vm in st.vms)] if pid_alive(pid, marker)]
        if left:
            raise LabError(f"processes {left} are still running")
        if keep_files:
            return done
        self._remove_files()
        self.state = None
        return done

    def _stop_processes(self, done: list[str]) -> None:
        """The VMs, the server, what else runs in the namespace or uses the lab dir."""
        st, marker = self.state, str(self.dir)
        done += self._bmcs().stop()
        for vm in st.vms:
            for pid in {self.vm_pid(vm), vm.pid} - {None}:
                if stop_pid(pid, vm.dir, timeout=5):
                    done.append(f"stopped {vm.name} (qemu pid {pid})")
        if stop_pid(st.server.get("pid"), marker, timeout=20):
            done.append(f"stopped the server (pid {st.server['pid']})")
        if st.uplink:
            if stopped := uplink.stop(st.uplink.get("pids", []), Path(st.uplink["dir"])):
                done.append(f"stopped the uplink (tinyproxy and its relays: pids {', '.join(map(str, stopped))})")
        # What still runs in the namespace is the lab's too (dnsmasq, should the server have died
        # without stopping it; a VM the server started for a power-on).
        for pid in namespace_pids(st.namespace):
            what = cmdline(pid).split(" ")[0] or str(pid)
            if stop_pid(pid, None, timeout=5):
                done.append(f"stopped {what} (pid {pid}) left in {st.namespace}")
        for pid in self._stray_processes():
            what = cmdline(pid).split(" ")[0]
            if stop_pid(pid, marker, timeout=5):
                done.append(f"stopped {what} (pid {pid}), which was still using {self.dir}")

    def _stray_processes(self) -> list[int]:
        """The lab's dnsmasq, qemu and server processes that run outside the records (a namespace
        deleted by hand, a server killed with SIGKILL): found by their command lines, which name
        files in the lab dir. Other programs that merely mention the dir (a `tail -f`) are left."""
        inside = f"{self.dir}/"
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            argv = cmdline(int(entry.name)).split(" ")
            program = Path(argv[0]).name
            ours = (program in ("dnsmasq", Path(QEMU).name, *uplink.PROGRAMS) or "crowbar.cli.main" in argv
                    or "crowbar.lab.vmrun" in argv)
            if ours and any(inside in arg for arg in argv) and pid_alive(int(entry.name)):
                found.append(int(entry.name))
        return found

    def _remove_files(self) -> None:
        # The tokens the server published for the local CLI: the socket's, and the TCP listener's
        # (shared by every lab, so only when it is still this lab's token).
        config.registry_file_for_socket(str(self.socket)).unlink(missing_ok=True)
        try:
            token = (self.dir / "server" / "admin.token").read_text().strip()
            tcp = config.registry_file(ADMIN_ADDRESS, API_PORT)
            if tcp.read_text().strip() == token:
                tcp.unlink()
        except OSError:
            pass
        self.socket.unlink(missing_ok=True)
        shutil.rmtree(self.dir / "server", ignore_errors=True)
        shutil.rmtree(self.dir / "vms", ignore_errors=True)
        shutil.rmtree(self.dir / "redfish", ignore_errors=True)
        (self.dir / "server.log").unlink(missing_ok=True)
        self.state_file.unlink(missing_ok=True)
        try:
            self.dir.rmdir()  # only if nothing else lives there
        except OSError:
            pass


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} is missing)"
