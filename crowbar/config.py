"""Where things live: the data directory, the database URL, the API endpoint.

Every setting has a command-line flag and an environment variable; the defaults let a single user
run a server and its CLI on one machine with no configuration at all.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

DEFAULT_LISTEN = "127.0.0.1:3000"


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
    """http://HOST:PORT, or unix:///path/to/socket for a server listening on a unix socket."""
    url = explicit or os.environ.get("CROWBAR_ENDPOINT") or f"http://{DEFAULT_LISTEN}"
    if url.startswith("unix:") and not url.startswith("unix://"):
        url = "unix://" + url[5:]
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


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
