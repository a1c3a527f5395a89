"""Real git for the install-from-source tests: a repository made from files, and a stand-in for the
admin server's git mirror (`services.proxy.mirror_git`'s contract: fetch, resolve a ref to a commit,
answer the clone URL nodes use), built on a bare mirror repository and `git daemon` on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from crowbar.errors import CrowbarError, NotFound

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


class Mirror:
    """Bare mirrors under `root`, fetched from upstream on each call; nodes clone from `clone_base`
    (the git daemon's URL as they see it)."""

    def __init__(self, root: Path, clone_base: str):
        self.root, self.clone_base = root, clone_base.rstrip("/")
        self.calls: list[tuple[str, str]] = []

    def mirror_git(self, url: str, ref: str) -> dict:
        self.calls.append((url, ref))
        name = Path(url.rstrip("/")).name.removesuffix(".git") + ".git"
        bare = self.root / name
        try:
            if not bare.exists():
                git("clone", "-q", "--mirror", url, str(bare))
            else:
                git("remote", "update", "--prune", cwd=bare)
        except RuntimeError as exc:
            raise CrowbarError(f"cannot fetch: {exc}") from None
        try:
            sha = git("rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}", cwd=bare)
        except RuntimeError:
            raise NotFound(f"no commit {ref!r} in {url}") from None
        return {"url": f"{self.clone_base}/{name}", "sha": sha}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GitDaemon:
    """`git daemon` serving `base` read-only on 127.0.0.1 (stopped by `stop`, by its pid)."""

    def __init__(self, base: Path):
        self.base, self.port = base, free_port()
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1", f"--port={self.port}",
             f"--base-path={base}", str(base)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
