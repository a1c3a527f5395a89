"""Real upstreams and real proxies on loopback for the online-mode tests: a PyPI simple index of
tiny wheels made here (served by http.server), a git repository made here (served by its own
`git daemon`), and crowbar's Proxies (apt-cacher-ng, devpi-server, git daemon) on free ports. The
apt upstream is the Debian mirror this host's apt uses."""

from __future__ import annotations

import base64
import hashlib
import random
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from crowbar.proxy import apt, pypi

NEEDED = {"apt-cacher-ng": apt.PROGRAM, "devpi-server": pypi.program("devpi-server"),
          "devpi-init": pypi.program("devpi-init"), "git": "git", "apt-get": "apt-get"}


def missing_tools() -> list[str]:
    return [name for name, path in NEEDED.items() if not shutil.which(path)]


def free_port(below: int | None = None) -> int:
    """A free loopback port; `below`: one under that number (apt-cacher-ng refuses ports from 32768
    on, where the kernel's ephemeral ports begin), picked at random among 20000..below."""
    if below is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    for _ in range(200):
        port = random.randrange(20000, below)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port below {below}")


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def make_wheel(index: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """A pure-Python wheel of one module, and its project page in the simple index at `index`."""
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                 + "".join(f"Requires-Dist: {r}\n" for r in requires),
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: crowbar-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(text.encode())}" for path, text in files.items()]
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    project = index / name
    project.mkdir(parents=True, exist_ok=True)
    wheel = project / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (project / "index.html").write_text(f'<html><body><a href="{wheel.name}#sha256={digest}">{wheel.name}</a>'
                                        "</body></html>\n")


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(path: Path, files: dict[str, str]) -> str:
    """A repository at `path` (branch main) with one commit of `files`; answers its sha."""
    path.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "-b", "main", str(path))
    return commit(path, files, "first")


def commit(path: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (path / name).write_text(text)
    git("add", "-A", cwd=path)
    git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", message, cwd=path)
    return git("rev-parse", "HEAD", cwd=path)


class Daemons:
    """Child processes the tests start, stopped by PID (in reverse) even when a test failed."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def http_server(self, root: Path, port: int, log: Path) -> None:
        self.start([sys.executable, "-m", "http.server", "-b", "127.0.0.1", "-d", str(root), str(port)], log)
        wait_port(port)

    def git_daemon(self, base: Path, port: int, log: Path) -> None:
        self.start(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}", "--listen=127.0.0.1",
                    f"--port={port}", str(base)], log)
        wait_port(port)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class AptRoot:
    """A throwaway apt root (nothing installed) whose source is `mirror suite main`, through `proxy`."""

    def __init__(self, root: Path, proxy: str, mirror: str, suite: str):
        apt.make_apt_root(root, mirror, suite, ("main",))
        self.root, self.options = root, apt.apt_options(root, proxy)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["apt-get", *self.options, *args], capture_output=True, text=True, timeout=900,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"})

    def debs(self) -> list[str]:
        return sorted(p.name for p in (self.root / "var/cache/apt/archives").glob("*.deb"))
