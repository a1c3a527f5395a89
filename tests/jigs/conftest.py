"""Fixtures for jig tests: a RunContext factory, and a real sshd on loopback for the script jig."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from crowbar.jigs.base import NodeInfo, RunContext

SSHD = Path("/usr/sbin/sshd")


@pytest.fixture
def make_ctx(tmp_path):
    """Build a RunContext for `scripts` (name -> content, in order) with a fresh workdir."""
    counter = iter(range(1, 1000))

    def make(scripts: dict[str, str], *, node: NodeInfo | None = None, attrs: dict | None = None,
             role: str = "test-role") -> RunContext:
        run_id = next(counter)
        workdir = tmp_path / f"run-{run_id}"
        workdir.mkdir()
        return RunContext(run_id=run_id, noderole_id=100 + run_id,
                          node=node or NodeInfo(id=1, name="admin.example.com", admin=True),
                          role=role, jig="script", attrs=attrs or {},
                          scripts=[{"name": n, "content": c} for n, c in scripts.items()],
                          workdir=workdir)

    return make


@pytest.fixture
def alive():
    """Whether a pid runs; zombies (an init that doesn't reap leaves them around) count as dead."""
    def check(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
        except FileNotFoundError:
            return False

    return check


@pytest.fixture
def gone(alive):
    """Whether a pid ends within `timeout`: a kill is delivered asynchronously, a loaded machine lags."""
    def wait(pid: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    return wait


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A throwaway sshd on 127.0.0.1 that accepts a generated client key for the current user.

    Yields the node attributes that point the script jig at it.
    """
    if not SSHD.exists():
        pytest.skip("/usr/sbin/sshd is missing (install openssh-server)")
    d = tmp_path_factory.mktemp("sshd")
    _keygen(d / "host_key")
    _keygen(d / "client_key")
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(f"""\
ListenAddress 127.0.0.1
ListenAddress 127.0.0.2
ListenAddress 127.0.0.3
Port {port}
HostKey {d / "host_key"}
AuthorizedKeysFile {d / "authorized_keys"}
PidFile {d / "sshd.pid"}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
""")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    with open(d / "sshd.log", "wb") as errors:
        proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config")],
                                stdout=errors, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        # its host key as a node's hint, so every jig test over SSH checks it strictly
        host_key = " ".join((d / "host_key.pub").read_text().split()[:2])
        yield {"crowbar": {"ssh": {"address": "127.0.0.1", "port": port, "user": getpass.getuser(),
                                   "key": str(d / "client_key"), "host_keys": [host_key]}}}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
