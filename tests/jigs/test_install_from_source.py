"""Install from source, end to end on a real target: a qemu guest booted from the Debian 12 OS image
(the one nodes get; real systemd), reached by the ansible jig over SSH. Software emulation (TCG),
as the lab's default: nested KVM on this kind of machine starts guests that never run.

The test makes a git repository of samples/barclamps/pyhello/app, tags v1, and serves it with
`git daemon` on loopback (the upstream). The admin server's side is online mode's: the source is
resolved by services.proxy.mirror_git into the proxies' mirror, which git daemon serves with the
proxies' own command line; the PyPI cache is a stand-in, a static simple index (bottle, setuptools)
served by `python -m http.server` at the path pip_index_url names. The guest's only network is
QEMU's user network with `restrict=on`, whose guest forwards reach the mirror and the index at the
admin address nodes are given, and nothing else. Through Crowbar's annealer: the pyhello role
clones at the resolved commit, installs into a virtualenv with bottle from the index, runs the
systemd unit, and the test reaches the service; then the ref moves to a new commit, the role runs
again, and the wall shows the old and the new commit.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from gitkit import GitDaemon, commit, free_port, git, make_repo, proxies, stop_process
from sqlalchemy import select

from crowbar.db.models import NodeRole, Role, Run
from crowbar.engine.annealer import Annealer
from crowbar.jigs.ansible import ansible_playbook
from crowbar.proxy import git as proxy_git
from crowbar.server.annealer import source_preparer
from crowbar.services import attribs, catalog, deployments, nodes, proxy

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "barclamps" / "pyhello"
NODE = "src1.example.com"
GUEST_HOST = "10.0.2.100"   # where the guest finds the admin server's git mirror and index (guest forwards)
WHEELS = ["bottle==0.13.4", "setuptools==75.8.0"]
BUSYBOX = shutil.which("busybox") or "busybox"   # its nc relays the guest's connections


def _missing() -> str | None:
    for tool, package in (("qemu-system-x86_64", "qemu-system-x86"), ("debugfs", "e2fsprogs"),
                          ("mmdebstrap", "mmdebstrap"), ("git", "git"), ("ssh", "openssh-client"),
                          ("ssh-keygen", "openssh-client"), ("busybox", "busybox-static")):
        if not shutil.which(tool):
            return f"{tool} is not installed (Debian package {package})"
    if ansible_playbook() is None:
        return "ansible-playbook missing (pip install ansible-core)"
    return None


pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def _wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    import socket

    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


def _index(root: Path, simple: str) -> None:
    """A PEP 503 simple index of the wheels WHEELS names, at the URL path `simple`, under root."""
    files = root / "files"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.11", "-d", str(files), *WHEELS], check=True, timeout=300)
    for wheel in sorted(files.glob("*.whl")):
        project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        d = root / simple.strip("/") / project
        d.mkdir(parents=True, exist_ok=True)
        (d / "index.html").write_text(f'<html><body><a href="/files/{wheel.name}">{wheel.name}</a></body></html>\n')


def _guest_disk(tmp: Path, public_key: str) -> tuple[Path, Path, Path]:
    """The Debian 12 image as the guest's disk (a copy), its kernel and initrd, and a NoCloud seed
    that lets the test's key in as root and configures DHCP, written into the copy with debugfs."""
    from crowbar import config
    from crowbar.provisioner import osimage

    image = osimage.build(config.os_image_dir(), "debian-12", lambda *a: None)  # cached by content
    disk = tmp / "root.img"
    with gzip.open(image.path, "rb") as src, open(disk, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    kernel = image.manifest["kernel"]
    seed = tmp / "seed"
    seed.mkdir()
    (seed / "meta-data").write_text(yaml.safe_dump({"instance-id": "src1", "local-hostname": NODE}))
    (seed / "user-data").write_text("#cloud-config\n" + yaml.safe_dump({
        "disable_root": False, "ssh_pwauth": False, "ssh_authorized_keys": [public_key],
        "ssh_genkeytypes": ["ed25519"], "resize_rootfs": False}))
    # eth0 by name: Debian 12's cloud-init (22.4) renders a `match:` entry for networkd as
    # `Name=<the entry's key>`, so an entry called "all" matches no interface
    (seed / "network-config").write_text(yaml.safe_dump({"version": 2, "ethernets": {"eth0": {"dhcp4": True}}}))
    commands = tmp / "debugfs.cmds"
    commands.write_text("mkdir /var/lib/cloud\nmkdir /var/lib/cloud/seed\nmkdir /var/lib/cloud/seed/nocloud\n"
                        + "".join(f"write {seed / n} /var/lib/cloud/seed/nocloud/{n}\n"
                                  for n in ("meta-data", "user-data", "network-config"))
                        + f"dump /boot/vmlinuz-{kernel} {tmp / 'vmlinuz'}\n"
                        + f"dump /boot/initrd.img-{kernel} {tmp / 'initrd'}\n")
    subprocess.run(["debugfs", "-w", "-f", str(commands), str(disk)], check=True, capture_output=True, timeout=120)
    return disk, tmp / "vmlinuz", tmp / "initrd"


class Guest:
    """A qemu guest on QEMU's restricted user network: SSH and the service forwarded to loopback,
    GUEST_HOST's ports forwarded to the given loopback ports."""

    def __init__(self, tmp: Path, forwards: dict[int, int]):
        self.tmp = tmp
        self.key = tmp / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        disk, kernel, initrd = _guest_disk(tmp, (tmp / "id_ed25519.pub").read_text().strip())
        self.ssh_port, self.web_port = free_port(), free_port()
        net = ["user", "id=n0", "restrict=on", f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
               f"hostfwd=tcp:127.0.0.1:{self.web_port}-:8090"]
        # `cmd:` runs a relay per connection (a `tcp:` target is one connection, made at start)
        net += [f"guestfwd=tcp:{GUEST_HOST}:{guest}-cmd:{BUSYBOX} nc 127.0.0.1 {host}" for guest, host in forwards.items()]
        self.console = tmp / "console.log"
        self.proc = subprocess.Popen(
            ["qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-smp", "1", "-nodefaults",
             "-display", "none", "-serial", f"file:{self.console}", "-kernel", str(kernel), "-initrd", str(initrd),
             "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0",
             "-drive", f"file={disk},if=virtio,format=raw", "-netdev", ",".join(net),
             "-device", "virtio-net-pci,netdev=n0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-i", str(self.key), "-p", str(self.ssh_port), "-o", "BatchMode=yes",
                               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                               "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "root@127.0.0.1", command],
                              capture_output=True, text=True, timeout=timeout)

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"qemu exited: {self.proc.stderr.read().decode()}")
            try:
                # cloud-init done: the key is in, the network up
                if self.ssh("cloud-init status --wait >/dev/null; true", timeout=120).returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                tail = self.console.read_text(errors="replace")[-3000:] if self.console.exists() else ""
                raise RuntimeError(f"the guest did not answer SSH in {timeout}s; console:\n{tail}")
            time.sleep(2)

    def stop(self) -> None:
        stop_process(self.proc)


def _page(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
        return r.read().decode()


def _state(db) -> tuple[NodeRole, Run]:
    with db.session() as s:
        nr = s.scalars(select(NodeRole).join(Role, Role.id == NodeRole.role_id).where(Role.name == "pyhello")).one()
        run = s.scalars(select(Run).where(Run.node_role_id == nr.id).order_by(Run.id.desc())).first()
        s.expunge_all()
        return nr, run


def test_pyhello_from_source_at_a_commit_then_at_a_new_one(sqlite_db, tmp_path):
    db = sqlite_db  # one engine: tests/engine/test_sources.py runs the resolution on both
    upstream = make_repo(tmp_path / "upstream" / "pyhello", SAMPLE / "app")
    v1 = git("rev-parse", "HEAD", cwd=upstream)
    git("tag", "v1", cwd=upstream)
    origin = GitDaemon(tmp_path / "upstream")
    repo = f"{origin.url}/pyhello"
    # the admin server's proxies as the guest sees them (GUEST_HOST), on ports free here
    ctx = proxies(tmp_path / "proxy", GUEST_HOST, git_port=free_port(), pypi_port=free_port())
    config = ctx.config
    proxy_git.mirror_root(config).mkdir(parents=True)
    mirror = GitDaemon(proxy_git.mirror_root(config), argv=proxy_git.command(config), port=config.git_port)
    index = tmp_path / "index"
    _index(index, urllib.parse.urlsplit(proxy.pip_index_url(ctx)).path)
    index_log = open(tmp_path / "index.log", "wb")
    index_server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                                     str(config.pypi_port), "--directory", str(index)],
                                    stdout=index_log, stderr=subprocess.STDOUT)
    guest = annealer = None
    try:
        _wait_port(config.pypi_port, index_server, "the index")
        (tmp_path / "guest").mkdir()
        guest = Guest(tmp_path / "guest", {config.git_port: config.git_port, config.pypi_port: config.pypi_port})
        guest.wait_ready()
        with db.session() as s:
            catalog.import_barclamp(s, SAMPLE)
            nodes.create_node(s, NODE)
            for attrib, value in (("ssh-address", "127.0.0.1"), ("ssh-port", guest.ssh_port), ("ssh-user", "root"),
                                  ("ssh-key", str(guest.key))):
                attribs.set_on_node(s, attrib, value, NODE)
            deployments.create_deployment(s, "src")
            deployments.bind(s, "src", "pyhello", NODE)
            deployments.set_role_data(s, "src", "pyhello", {"source": {"repo": repo, "ref": "v1"},
                                                            "pyhello_message": "Hello from a guest"})
            deployments.commit(s, "src")
        annealer = Annealer(db, workers=1, prepare=source_preparer(ctx))   # what `crowbar server` gives it

        # 1. v1: cloned at the tag's commit, installed with bottle from the index, run by systemd
        annealer.run_until_idle(timeout=900)
        nr, run = _state(db)
        assert nr.state == "active", run.log
        assert nr.wall == {"source": {"repo": repo, "ref": "v1", "sha": v1},
                           "pyhello_url": "http://127.0.0.1:8090/", "pyhello_commit": v1,
                           "pyhello_commit_before": ""}   # the git module: nothing before a first clone
        clone = f"git://{GUEST_HOST}:{config.git_port}/127.0.0.1_{origin.port}/pyhello.git"
        assert run.log.startswith(f"source {repo} at v1: commit {v1} (cloned from {clone})"), run.log
        assert _page(guest.web_port) == "Hello from a guest (pyhello 1.0)\n"
        on_node = guest.ssh("systemctl is-active pyhello; git -C /opt/pyhello/src rev-parse HEAD; "
                            "/opt/pyhello/venv/bin/python -c 'import bottle; print(bottle.__version__)'")
        assert on_node.stdout.split() == ["active", v1, "0.13.4"], on_node.stderr
        served = (tmp_path / "index.log").read_text()
        assert "GET /root/pypi/+simple/bottle/ " in served, served
        assert "GET /files/bottle-0.13.4-py2.py3-none-any.whl " in served, served

        # 2. a new commit on main, and the deployment's ref moves there: the role runs again
        app = upstream / "pyhello" / "__init__.py"
        app.write_text(app.read_text().replace('VERSION = "1.0"', 'VERSION = "2.0"'))
        project = upstream / "pyproject.toml"
        project.write_text(project.read_text().replace('version = "1.0"', 'version = "2.0"'))
        v2 = commit(upstream, "pyhello 2.0")
        with db.session() as s:
            deployments.set_role_data(s, "src", "pyhello", {"source": {"repo": repo, "ref": "main"},
                                                            "pyhello_message": "Hello from a guest"})
            deployments.commit(s, "src")
        annealer.run_until_idle(timeout=900)
        nr, run = _state(db)
        assert nr.state == "active", run.log
        assert nr.wall["source"] == {"repo": repo, "ref": "main", "sha": v2, "previous_sha": v1}
        assert (nr.wall["pyhello_commit"], nr.wall["pyhello_commit_before"]) == (v2, v1)
        assert _page(guest.web_port) == "Hello from a guest (pyhello 2.0)\n"
        on_node = guest.ssh("systemctl is-active pyhello; git -C /opt/pyhello/src rev-parse HEAD")
        assert on_node.stdout.split() == ["active", v2], on_node.stderr
    finally:
        if annealer is not None:
            annealer._pool.shutdown(wait=True)
        if guest is not None:
            guest.stop()
        stop_process(index_server)
        index_log.close()
        mirror.stop()
        origin.stop()
