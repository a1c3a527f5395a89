"""The caching proxies on the admin server (online mode, docs/online-mode.md): pure configuration.

One module per kind renders its daemon's files and command line and reads its logs:
`apt` (apt-cacher-ng), `pypi` (devpi-server, a PyPI mirror that caches what it is asked for),
`git` (bare mirrors served by `git daemon`). No database and no processes here: the server
(`crowbar.server.proxies`) supervises the daemons, `crowbar.services.proxy` stages content and
answers status. Offline mode is a flag file in the proxies' state directory: the daemons are
started with it (apt-cacher-ng `Offlinemode`, devpi `--offline-mode`) and the git mirror is not
fetched while it is set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KINDS = ("apt", "pypi", "git")
DEFAULT_PORTS = {"apt": 3142, "pypi": 3141, "git": 9418}
DEFAULT_PYPI_UPSTREAM = "https://pypi.org/simple/"


@dataclass(frozen=True)
class ProxyConfig:
    """Where the proxies keep their state, what they bind, how nodes reach them, their upstreams."""

    state_dir: Path                      # <data dir>/proxy
    listen: tuple[str, ...]              # addresses the daemons bind: the admin address and loopback
    node_address: str                    # the address nodes use (the admin address)
    apt_port: int = DEFAULT_PORTS["apt"]
    pypi_port: int = DEFAULT_PORTS["pypi"]
    git_port: int = DEFAULT_PORTS["git"]
    apt_upstream: str = "host"           # a Debian mirror URL, or "host": the one this host's apt uses
    pypi_upstream: str = DEFAULT_PYPI_UPSTREAM
    via: str | None = None               # the admin server's own way out: an HTTP proxy URL, or None

    def via_env(self) -> dict[str, str]:
        """Environment for a daemon that fetches upstream through `via` (nothing when direct):
        the admin and loopback addresses stay direct."""
        if not self.via:
            return {}
        direct = ",".join(dict.fromkeys(["127.0.0.1", "localhost", "::1", *self.listen, self.node_address]))
        return {"http_proxy": self.via, "https_proxy": self.via, "HTTP_PROXY": self.via,
                "HTTPS_PROXY": self.via, "no_proxy": direct, "NO_PROXY": direct}

    def port(self, kind: str) -> int:
        return {"apt": self.apt_port, "pypi": self.pypi_port, "git": self.git_port}[kind]

    def dir(self, kind: str) -> Path:
        return Path(self.state_dir) / kind

    def url(self, kind: str, address: str | None = None) -> str:
        """The base URL of a proxy, as nodes (or, with `address`, someone else) reach it."""
        host = address or self.node_address
        host = f"[{host}]" if ":" in host else host
        scheme = "git" if kind == "git" else "http"
        return f"{scheme}://{host}:{self.port(kind)}"

    @property
    def local_address(self) -> str:
        """The address the server itself uses to reach its proxies (loopback when they bind it)."""
        return next((a for a in self.listen if a in ("127.0.0.1", "::1")), self.listen[0])

    @property
    def offline_flag(self) -> Path:
        return Path(self.state_dir) / "offline"

    @property
    def offline(self) -> bool:
        return self.offline_flag.exists()


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (0 when it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
