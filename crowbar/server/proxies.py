"""The caching proxies of online mode, supervised by `crowbar server --proxies` like dnsmasq:
apt-cacher-ng, devpi-server and git daemon, each a `provisioner.supervisor.Supervisor` (restarted
when it dies, killed with the server), bound to the admin address and loopback.

Configuration is rendered by crowbar.proxy at start; offline mode restarts apt-cacher-ng and devpi
with their offline switch (git daemon only serves; the server does not fetch while offline). A
daemon left by a server that was killed outright is stopped on the next start (pid files, checked
against the command line). devpi's index is created (or corrected) through its REST API as soon as
devpi answers, before anything can use it (`devpi-init --no-root-pypi`: devpi never runs with its
default index, which would fetch every project's name from pypi.org).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from crowbar.procs import read_pidfile, stop_pid
from crowbar.provisioner import osimage
from crowbar.provisioner.supervisor import Supervisor
from crowbar.proxy import KINDS, ProxyConfig, apt, git, pypi

log = logging.getLogger("crowbar.proxy")

DEVPI_START_TIMEOUT = 180.0


class Proxies:
    """The three daemons for one ProxyConfig; `start`, `stop`, `set_offline`, `running`."""

    def __init__(self, config: ProxyConfig):
        self.config = config
        self.supervisors: dict[str, Supervisor] = {}
        self.index_ready = threading.Event()
        self._lock = threading.Lock()
        self._configure: threading.Thread | None = None

    # -- the interface crowbar.services.proxy uses --

    def running(self) -> dict[str, int | None]:
        return {kind: (sup.pid if (sup := self.supervisors.get(kind)) else None) for kind in KINDS}

    def set_offline(self, offline: bool) -> None:
        with self._lock:
            if offline:
                self.config.offline_flag.write_text("staged content only\n")
            else:
                self.config.offline_flag.unlink(missing_ok=True)
            for kind in ("apt", "pypi"):
                self._restart(kind)
        self.wait_ready()

    # -- lifecycle --

    def start(self) -> None:
        """RuntimeError (one line) when a daemon's program is missing; else configure and start them."""
        missing = [name for name in (apt.PROGRAM, pypi.program("devpi-server"), pypi.program("devpi-init"), "git")
                   if not shutil.which(name)]
        if missing:
            raise RuntimeError(f"--proxies needs {', '.join(missing)} (Debian: apt-cacher-ng, git; "
                               "PyPI: devpi-server, the `proxy` extra)")
        config = self.config
        for kind in KINDS:
            config.dir(kind).mkdir(parents=True, exist_ok=True)
        git.mirror_root(config).mkdir(parents=True, exist_ok=True)
        upstream = osimage.host_mirror() if config.apt_upstream == "host" else config.apt_upstream
        self._apt_conf = apt.prepare(config, upstream)
        self._secret = _secret_file(config.dir("pypi") / "devpi.secret")
        password = _secret_value(config.dir("pypi") / "root.password")
        if not pypi.initialized(config):
            out = subprocess.run(pypi.init_command(config, password), capture_output=True, text=True, timeout=300)
            if out.returncode != 0:
                raise RuntimeError(f"devpi-init failed: {(out.stderr or out.stdout).strip().splitlines()[-1:]}")
        with self._lock:
            for kind in KINDS:
                self._restart(kind)
        self._configure = threading.Thread(target=self._configure_index, args=(password,),
                                           name="proxy-devpi-index", daemon=True)
        self._configure.start()
        log.info("proxies on %s: apt %s, PyPI %s, git %s%s (upstreams: apt %s, PyPI %s)", ", ".join(config.listen),
                 config.apt_port, config.pypi_port, config.git_port, ", OFFLINE" if config.offline else "",
                 upstream, config.pypi_upstream)

    def stop(self) -> None:
        with self._lock:
            for kind in reversed(KINDS):
                sup = self.supervisors.pop(kind, None)
                if sup:
                    sup.stop()
                self._pidfile(kind).unlink(missing_ok=True)

    def wait_ready(self, timeout: float = DEVPI_START_TIMEOUT) -> None:
        """Until every daemon answers on loopback (and devpi's index is set up)."""
        deadline = time.monotonic() + timeout
        for kind in KINDS:
            _wait_port(self.config.local_address, self.config.port(kind), deadline, kind)
        if not self.index_ready.wait(max(deadline - time.monotonic(), 0.1)):
            raise TimeoutError("devpi's index is not set up yet")
        _wait_http(f"{pypi.index_url(self.config, self.config.local_address)}", deadline)

    # -- the daemons --

    def _command(self, kind: str) -> list[str]:
        offline = self.config.offline
        if kind == "apt":
            return apt.command(self._apt_conf, offline)
        if kind == "pypi":
            return pypi.command(self.config, offline, self._secret)
        return git.command(self.config)

    def _pidfile(self, kind: str) -> Path:
        return self.config.dir(kind) / "daemon.pid"

    def _restart(self, kind: str) -> None:
        old = self.supervisors.pop(kind, None)
        if old:
            old.stop()
        argv = self._command(kind)
        marker = str(self.config.dir(kind))
        pid = read_pidfile(self._pidfile(kind))
        if stop_pid(pid, marker, timeout=5):
            log.warning("stopped %s proxy %d left by a previous server", kind, pid)
        log_path = self.config.dir(kind) / {"apt": "apt-cacher-ng.log", "pypi": pypi.LOG, "git": git.LOG}[kind]
        via = self.config.via_env()  # devpi fetches PyPI through the admin server's way out, if any
        sup = Supervisor(f"proxy-{kind}", argv, log_path=log_path,
                         env={**os.environ, **via} if via and kind == "pypi" else None)
        sup.start()
        self.supervisors[kind] = sup
        try:
            self._pidfile(kind).write_text(f"{sup.wait_running(10)}\n")
        except TimeoutError:
            log.error("%s proxy did not start: see %s", kind, log_path)

    def _configure_index(self, password: str) -> None:
        """Create or correct devpi's mirror index once devpi answers (a thread: devpi takes seconds)."""
        base = f"http://{_host(self.config.local_address)}:{self.config.pypi_port}"
        deadline = time.monotonic() + DEVPI_START_TIMEOUT
        try:
            _wait_port(self.config.local_address, self.config.pypi_port, deadline, "pypi")
            login = _request(f"{base}/+login", "POST", {"user": "root", "password": password})
            token = base64.b64encode(f"root:{login['result']['password']}".encode()).decode()
            wanted = pypi.index_config(self.config.pypi_upstream)
            try:
                current = _request(f"{base}/{pypi.INDEX}?no_projects=", "GET")["result"]
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
                _request(f"{base}/{pypi.INDEX}", "PUT", wanted, token)
            else:
                if any(current.get(k) != v for k, v in wanted.items()):
                    _request(f"{base}/{pypi.INDEX}", "PATCH", [f"{k}={v}" for k, v in wanted.items()], token)
            self.index_ready.set()
        except Exception as exc:  # noqa: BLE001 - logged; status shows the daemon, pip shows the index
            log.error("cannot set up devpi's index %s: %s", pypi.INDEX, exc)


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _request(url: str, method: str, body=None, token: str | None = None) -> dict:
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if token:
        headers["X-Devpi-Auth"] = token
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


def _wait_port(address: str, port: int, deadline: float, what: str) -> None:
    while True:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} proxy does not answer on {address}:{port}") from None
            time.sleep(0.2)


def _wait_http(url: str, deadline: float) -> None:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} does not answer") from None
            time.sleep(0.3)


def _secret_file(path: Path) -> Path:
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    return path


def _secret_value(path: Path) -> str:
    _secret_file(path)
    return path.read_text().strip()
