"""Real git for the install-from-source tests: a repository made from files, `git daemon` serving
a directory on loopback (the upstream), and the proxies' context services.proxy takes."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}


def git(*args: str, cwd: Path | None = None) -> str:
    import os

    out = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, capture_output=True,
                         text=True, timeout=60)
    if out.returncode:
        raise RuntimeError(f"git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def make_repo(path: Path, files: Path | None = None) -> Path:
    """A repository at `path` (branch main) holding a copy of the directory `files`, committed."""
    if files is not None:
        shutil.copytree(files, path)
    path.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "-b", "main", cwd=path)
    commit(path, "first")
    return path


def commit(path: Path, message: str) -> str:
    git("add", "-A", cwd=path)
    git("commit", "-q", "--allow-empty", "-m", message, cwd=path)
    return git("rev-parse", "HEAD", cwd=path)


def proxies(state_dir: Path, node_address: str, **ports):
    """What `crowbar server --proxies` hands services.proxy (its `ctx`): a ProxyConfig under
    `state_dir`, bound to loopback, as nodes see it at `node_address`."""
    from crowbar.proxy import ProxyConfig

    return SimpleNamespace(config=ProxyConfig(state_dir=state_dir, listen=("127.0.0.1",),
                                              node_address=node_address, **ports))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GitDaemon:
    """`git daemon` serving `base` read-only on 127.0.0.1 (stopped by `stop`, by its pid), or the
    command line `argv` given (the proxies' own, listening on `port`)."""

    def __init__(self, base: Path, argv: list[str] | None = None, port: int | None = None):
        self.base, self.port = base, port or free_port()
        argv = argv or ["git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1",
                        f"--port={self.port}", f"--base-path={base}", str(base)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("git daemon did not start") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"git://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Terminate a process this test started, then kill it if it does not go in `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
