"""Where things live: the data directory, the database URL, the API endpoint.

Every setting has a command-line flag and an environment variable; the defaults let a single user
run a server and its CLI on one machine with no configuration at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

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


def cache_dir() -> Path:
    """Built images, cached by content and shared by every server and lab on this host (a second
    build with the same inputs reuses them): `CROWBAR_CACHE_DIR`, else ~/.cache/crowbar."""
    env = os.environ.get("CROWBAR_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "crowbar"


def os_image_dir() -> Path:
    """The OS image store (`crowbar os build` writes it, the server serves it)."""
    return cache_dir() / "os"


def database_url(explicit: str | None = None, directory: Path | None = None) -> str:
    if explicit:
        return explicit
    env = os.environ.get("CROWBAR_DATABASE_URL")
    if env:
        return env
    return f"sqlite:///{(directory or data_dir()) / 'crowbar.db'}"


def make_data_dir(explicit: Path | None = None) -> Path:
    """Create the data directory if it is missing, and no other directory: the default one with
    whatever is missing of ~/.local/share (or $XDG_DATA_HOME) under an existing home, an explicit
    one (--data-dir, CROWBAR_DATA_DIR) only inside a directory that exists. ValueError, one line,
    when it cannot be (or is not a directory)."""
    chosen = explicit or os.environ.get("CROWBAR_DATA_DIR")
    path = Path(chosen) if chosen else data_dir()
    try:
        if path.is_dir():
            return path
        if path.exists():
            raise ValueError(f"data directory {path}: exists and is not a directory")
        if chosen:
            anchor, what = path.parent, "its parent directory"
        elif os.environ.get("XDG_DATA_HOME"):
            anchor, what = Path(os.environ["XDG_DATA_HOME"]).parent, "the parent of XDG_DATA_HOME"
        else:
            anchor, what = Path.home(), "the home directory"
        if not anchor.is_dir():
            raise ValueError(f"data directory {path}: {what} {anchor} does not exist (create it first, "
                             "or choose another with --data-dir or CROWBAR_DATA_DIR)")
        path.mkdir(parents=not chosen, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ValueError(f"data directory {path}: {exc.strerror or exc}") from None
    return path


ENDPOINT_FORMS = "http://HOST:PORT, https://HOST:PORT or unix:///PATH/TO/SOCKET"


def endpoint(explicit: str | None = None) -> str:
    """http://HOST:PORT, or unix:///path/to/socket for a server listening on a unix socket.

    Without --endpoint or CROWBAR_ENDPOINT: the running virtual lab's server (`crowbar lab up`) if
    the lab directory holds one, else http://127.0.0.1:3000. ValueError, one line, for a value
    that is none of these forms.
    """
    url = explicit or os.environ.get("CROWBAR_ENDPOINT") or lab_endpoint() or f"http://{DEFAULT_LISTEN}"
    if url.startswith("unix:") and not url.startswith("unix://"):
        url = "unix://" + url[5:]
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    check_endpoint(url)
    return url


def check_endpoint(url: str) -> None:
    """ValueError with one readable line unless `url` is an endpoint a client can talk to."""
    if url.startswith("unix:"):  # any file name will do, but there must be one
        if not url.startswith("unix://") or not url[len("unix://"):]:
            raise ValueError(f"endpoint {url!r}: no socket path (expected {ENDPOINT_FORMS})")
        return
    if not url.isprintable() or " " in url:  # control characters, bytes that are not UTF-8 text
        raise ValueError(f"endpoint {url!r}: spaces, control characters and non-UTF-8 bytes are not allowed "
                         f"(expected {ENDPOINT_FORMS})")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  (reading it raises ValueError for a port that is not one)
    except ValueError as exc:
        raise ValueError(f"endpoint {url!r} is not a valid URL: {exc} (expected {ENDPOINT_FORMS})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"endpoint {url!r}: unsupported scheme {parts.scheme!r} (expected {ENDPOINT_FORMS})")
    if not host:
        raise ValueError(f"endpoint {url!r}: no host (expected {ENDPOINT_FORMS})")
    if parts.query or parts.fragment:
        raise ValueError(f"endpoint {url!r}: a query or fragment does not belong in it (expected {ENDPOINT_FORMS})")


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


def lab_namespace(endpoint: str | None, directory: Path | None = None) -> str | None:
    """The network namespace of the running lab whose server `endpoint` is, or None: the lab's nodes
    are reachable only from inside it (`crowbar nodes ssh` enters it)."""
    directory = Path(directory or lab_dir())
    if endpoint is None or endpoint != lab_endpoint(directory):
        return None
    try:
        return str(json.loads((directory / "lab.json").read_text())["namespace"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def unix_socket_path(url: str) -> str | None:
    return url[len("unix://"):] if url.startswith("unix://") else None


def token_registry() -> Path:
    """Per-user folder where a server leaves its admin token for the local CLI, keyed by endpoint."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "crowbar" / "endpoints"


def registry_file(host: str, port: int) -> Path:
    return token_registry() / f"{host}_{port}.token"


def registry_file_for_socket(path: str) -> Path:
    digest = hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()[:16]  # any file name's bytes
    return token_registry() / f"unix_{digest}.token"
