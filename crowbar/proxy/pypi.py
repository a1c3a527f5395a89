"""devpi-server as the nodes' PyPI cache: its command lines, its mirror index, its statistics.

devpi keeps what pip asked for (the project pages and the files) and serves it again; with
`--offline-mode` it never contacts the upstream and serves only what it holds, so pip reports
"No matching distribution found for NAME" for anything else. The one index, `root/pypi`, is a
mirror of the upstream with `mirror_no_project_list`: devpi asks the upstream for the projects
pip names and never downloads the upstream's list of every project.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from crowbar.proxy import ProxyConfig
from crowbar.proxy.apt import Counts

INDEX = "root/pypi"
LOG = "devpi.log"


def program(name: str) -> str:
    """devpi's commands live beside this Python (the venv crowbar runs from), or on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def server_dir(config: ProxyConfig) -> Path:
    return config.dir("pypi") / "server"


def initialized(config: ProxyConfig) -> bool:
    return (server_dir(config) / ".serverversion").exists()


def init_command(config: ProxyConfig, root_password: str) -> list[str]:
    """devpi-init without the default index: `index_config` creates it with our upstream, so devpi
    never runs with its default (all of pypi.org, project list included)."""
    return [program("devpi-init"), "--serverdir", str(server_dir(config)), "--no-root-pypi",
            "--root-passwd", root_password]


def command(config: ProxyConfig, offline: bool, secret_file: Path) -> list[str]:
    listen = [f"--listen={f'[{a}]' if ':' in a else a}:{config.pypi_port}" for a in config.listen]
    return [program("devpi-server"), "--serverdir", str(server_dir(config)), *listen,
            "--secretfile", str(secret_file), *(["--offline-mode"] if offline else [])]


def index_config(upstream: str) -> dict:
    return {"type": "mirror", "mirror_url": upstream.rstrip("/") + "/", "mirror_no_project_list": True,
            "title": "PyPI cache (crowbar)"}


def index_url(config: ProxyConfig, address: str | None = None) -> str:
    """The simple index URL pip uses (`--index-url`)."""
    return f"{config.url('pypi', address)}/{INDEX}/+simple/"


_FILE_GET = re.compile(r"\] GET /root/pypi/\+f/")
_REMOTE = re.compile(r"reading remote: URL\(")
_MISSING = re.compile(r"The project \S+ does not exist")


@dataclass
class _Log:
    files: int = 0
    remote: int = 0
    missing: int = 0


def stats(config: ProxyConfig) -> Counts:
    """From devpi's log: a file asked for is a hit unless devpi read it from the upstream for that
    request (a miss); a project devpi could not find (upstream, or offline: not cached) is a miss.
    Bytes are the cached files' sizes, counted once per fetch (devpi does not log bytes sent)."""
    seen = _Log()
    try:
        text = (config.dir("pypi") / LOG).read_text(errors="replace")
    except OSError:
        return Counts()
    for line in text.splitlines():
        seen.files += bool(_FILE_GET.search(line))
        seen.remote += bool(_REMOTE.search(line))
        seen.missing += bool(_MISSING.search(line))
    return Counts(hits=max(seen.files - seen.remote, 0), misses=seen.remote + seen.missing)
