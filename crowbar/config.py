"""Where things live: the data directory, the database URL, the API endpoint.

Every setting has a command-line flag and an environment variable; the defaults let a single user
run a server and its CLI on one machine with no configuration at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from crowbar.procs import pid_alive

DEFAULT_LISTEN = "127.0.0.1:3000"
DEFAULT_DOMAIN = "crowbar.local"  # DNS domain of discovered nodes (`crowbar server --domain`)


def data_dir() -> Path:
    """The server's state (SQLite file, admin token); `CROWBAR_DATA_DIR` overrides it."""
    env = os.environ.get("CROWBAR_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "crowbar"


def database_url(explicit: str | None = None, directory: Path | None = None) -> str:
    if explicit:
        return explicit
    env = os.environ.get("CROWBAR_DATABASE_URL")
    if env:
        return env
    return f"sqlite:///{(directory or data_dir()) / 'crowbar.db'}"


def endpoint(explicit: str | None = None) -> str:
    """http://HOST:PORT, or unix:///path/to/socket for a server listening on a unix socket.

    Without --endpoint or CROWBAR_ENDPOINT: the running virtual lab's server (`crowbar lab up`) if
    the lab directory holds one, else http://127.0.0.1:3000.
    """
    url = explicit or os.environ.get("CROWBAR_ENDPOINT") or lab_endpoint() or f"http://{DEFAULT_LISTEN}"
    if url.startswith("unix:") and not url.startswith("unix://"):
        url = "unix://" + url[5:]
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def lab_dir() -> Path:
    """The virtual lab's state (`crowbar lab`): `CROWBAR_LAB_DIR`, else <data dir>/lab."""
    env = os.environ.get("CROWBAR_LAB_DIR")
    return Path(env) if env else data_dir() / "lab"


def lab_endpoint(directory: Path | None = None) -> str | None:
    """unix://<lab dir>/api.sock when the lab directory's state names a server process that still
    runs (not a zombie) and its socket exists; None otherwise. Cheap: one small file, one /proc read."""
    directory = Path(directory or lab_dir())
    try:
        state = json.loads((directory / "lab.json").read_text())
        pid, sock = int(state["server"]["pid"]), Path(state["server"]["socket"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return f"unix://{sock}" if pid_alive(pid) and sock.exists() else None


def unix_socket_path(url: str) -> str | None:
    return url[len("unix://"):] if url.startswith("unix://") else None


def token_registry() -> Path:
    """Per-user folder where a server leaves its admin token for the local CLI, keyed by endpoint."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "crowbar" / "endpoints"


def registry_file(host: str, port: int) -> Path:
    return token_registry() / f"{host}_{port}.token"


def registry_file_for_socket(path: str) -> Path:
    digest = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]
    return token_registry() / f"unix_{digest}.token"
