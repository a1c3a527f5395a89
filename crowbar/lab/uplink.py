"""The lab admin server's one way out (`crowbar lab up --proxies`): to the package mirrors, for
its caching proxies, and nothing else.

The lab's server runs in the lab's network namespace, which has no route out (its VMs must reach
nothing outside the lab). Online mode needs the proxies to fetch from the Debian mirror this host's
apt uses and from PyPI. So the lab gives the namespace an HTTP proxy on its loopback, which is
really tinyproxy on this host's loopback, joined by two socat relays over a unix socket in the lab
directory (a unix socket crosses namespaces; no veth, no route, no NAT):

    proxies (in the namespace) -> 127.0.0.1:PORT (socat, in the namespace) -> <lab>/uplink/uplink.sock
        -> socat (host) -> 127.0.0.1:PORT (tinyproxy, host) -> the mirror or PyPI, by name

tinyproxy refuses every other host (`FilterDefaultDeny`), and the VMs cannot reach the
namespace's loopback at all. The server gets it as `--proxy-via http://127.0.0.1:PORT`.
"""

from __future__ import annotations

import re
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from crowbar.procs import pid_alive, stop_pid

PROGRAMS = ("tinyproxy", "socat")
PYPI_HOSTS = ("pypi.org", "files.pythonhosted.org")


def missing_tools() -> list[str]:
    return [f"{p} (apt-get install {p})" for p in PROGRAMS if shutil.which(p) is None]


def allowed_hosts(mirror: str) -> list[str]:
    """What the uplink lets through: the Debian mirror's host and PyPI's."""
    host = urlsplit(mirror).hostname
    return list(dict.fromkeys([*([host] if host else []), *PYPI_HOSTS]))


def tinyproxy_conf(directory: Path, port: int, hosts: list[str]) -> tuple[str, str]:
    """tinyproxy's configuration and its filter file (the allowed host names)."""
    return "\n".join([
        "# Written by crowbar lab (crowbar/lab/uplink.py)",
        f"Port {port}",
        "Listen 127.0.0.1",
        "Allow 127.0.0.1",
        "Timeout 600",
        "MaxClients 64",
        "DisableViaHeader Yes",
        "FilterDefaultDeny Yes",
        "FilterType ere",
        f'Filter "{directory / "allowed"}"',
        "ConnectPort 443",
        f'LogFile "{directory / "tinyproxy.log"}"',
        "LogLevel Notice",
        "",
    ]), "".join(f"^{re.escape(h)}$\n" for h in hosts)


def _free_port() -> int:
    """A free loopback port below 32768: apt-cacher-ng 3.7 misreads a larger one in its `Proxy:`
    setting (as it cannot bind one: crowbar.proxy.apt.MAX_PORT)."""
    for _ in range(200):
        port = secrets.randbelow(32767 - 20000) + 20000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below 32768 for the lab's uplink")


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g}s")


def start(directory: Path, namespace: str, mirror: str) -> dict:
    """Start tinyproxy and the two relays; answers {"url", "pids"} for the lab's state."""
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    conf, allowed = tinyproxy_conf(directory, port, allowed_hosts(mirror))
    (directory / "tinyproxy.conf").write_text(conf)
    (directory / "allowed").write_text(allowed)
    sock = directory / "uplink.sock"
    sock.unlink(missing_ok=True)
    pids: list[int] = []
    log = open(directory / "relays.log", "ab")
    try:
        def spawn(argv: list[str]) -> subprocess.Popen:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            pids.append(proc.pid)
            return proc

        try:
            proxy = spawn(["tinyproxy", "-d", "-c", str(directory / "tinyproxy.conf")])
            _wait_port(port, proxy, "tinyproxy")
            host_relay = spawn(["socat", f"UNIX-LISTEN:{sock},fork,mode=600,unlink-early",
                                f"TCP:127.0.0.1:{port}"])
            deadline = time.monotonic() + 10
            while not sock.exists():
                if host_relay.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the host side relay (socat) did not start")
                time.sleep(0.05)
            spawn(["ip", "netns", "exec", namespace, "socat",
                   f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", f"UNIX-CONNECT:{sock}"])
        except BaseException:
            stop(pids, directory)
            raise
    finally:
        log.close()
    return {"url": f"http://127.0.0.1:{port}", "pids": pids, "dir": str(directory)}


def stop(pids: list[int], directory: Path) -> list[int]:
    """Stop what `start` started (by pid, checked against its command line, which names a file in
    `directory`); answers the pids stopped."""
    stopped = []
    for pid in reversed(pids):
        if pid_alive(pid, str(directory)) and stop_pid(pid, str(directory), timeout=5):
            stopped.append(pid)
    return stopped
