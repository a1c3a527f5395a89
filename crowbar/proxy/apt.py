"""apt-cacher-ng for the nodes' Debian packages: its configuration, command line and statistics.

The proxy remaps every known Debian mirror (apt-cacher-ng's own list, plus the upstream itself) to
one backend, the upstream: the mirror this host's apt uses unless configured. `ForceManaged`
refuses anything that is not remapped, so the proxy is not an open door to other hosts. Offline,
apt-cacher-ng serves only what is in its cache and answers anything else with 503 "Unable to
download in offline mode", which apt prints with the package file's URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crowbar.proxy import ProxyConfig

SUPPORT_DIR = Path("/usr/lib/apt-cacher-ng")   # the package's mirror lists (deb_mirrors.gz)
PROGRAM = "/usr/sbin/apt-cacher-ng"
TRANSFER_LOG = "apt-cacher.log"
CONF = "acng.conf"
MAX_PORT = 32767  # apt-cacher-ng 3.7 cannot bind a port above this ("Error resolving address for binding")


def conf_text(config: ProxyConfig, upstream: str) -> str:
    """acng.conf for the proxy: cache and logs in the state dir, bound to `config.listen`."""
    base = config.dir("apt")
    upstream = upstream.rstrip("/") + "/"
    also = upstream.split("://", 1)[-1].rstrip("/")
    return "\n".join([
        "# Written by crowbar (crowbar/proxy/apt.py): changes are overwritten at the next start.",
        f"CacheDir: {base / 'cache'}",
        f"LogDir: {base / 'log'}",
        f"SupportDir: {SUPPORT_DIR}",
        f"SocketPath: {base / 'acng.socket'}",
        f"Port: {config.apt_port}",
        f"BindAddress: {' '.join(config.listen)}",
        f"Remap-debrep: file:deb_mirror*.gz /debian {also} ; {upstream}",
        "Remap-secdeb: security.debian.org security.debian.org/debian-security deb.debian.org/debian-security "
        "/debian-security ; deb.debian.org/debian-security",
        "ForceManaged: 1",
        "ReportPage: acng-report.html",
        "ExThreshold: 4",
        "VerboseLog: 1",
        # a mirror that drops a connection is asked again: apt-cacher-ng 3.7 counts these retries
        # against one budget per client connection, not per file (tests/proxy/test_proxy_flaky_mirror.py:
        # the default 2 made CI's staging fail, "503 Connection closed, check DlMaxRetries")
        "DlMaxRetries: 20",
        # through a forward proxy: one request per connection (tinyproxy answers one and closes, so
        # requests pipelined after it were lost: "503 Connection closed")
        *([f"Proxy: {config.via}", "ReuseConnections: 0", "PipelineDepth: 1"] if config.via else []),
        "",
    ])


def prepare(config: ProxyConfig, upstream: str) -> Path:
    """Write the configuration directory; answers it (the `-c` argument)."""
    base = config.dir("apt")
    for sub in ("conf", "cache", "log"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "conf" / CONF).write_text(conf_text(config, upstream))
    return base / "conf"


def command(conf_dir: Path, offline: bool) -> list[str]:
    return [PROGRAM, "-c", str(conf_dir), "ForeGround=1", f"Offlinemode={int(offline)}"]


NODE_APT_CONF = "/etc/apt/apt.conf.d/00crowbar-proxy"


def node_apt_conf(proxy_url: str) -> str:
    """The apt.conf.d file installed nodes get: every HTTP fetch through the admin server's proxy."""
    return (f'// Written by crowbar at install time: apt fetches through the admin server\'s cache.\n'
            f'Acquire::http::Proxy "{proxy_url}";\n'
            f'Acquire::Retries "3";\n')


@dataclass
class Counts:
    hits: int = 0
    misses: int = 0
    bytes_served: int = 0
    bytes_upstream: int = 0


def stats(config: ProxyConfig) -> Counts:
    """Hits, misses and bytes from apt-cacher-ng's transfer log (`time|I|bytes|client|path` for bytes
    fetched from upstream, `|O|` for bytes sent to a client). A file sent that was fetched for it
    is a miss; one sent that is in the cache and was not fetched, a hit; one sent that is not in the
    cache (an error page: offline, or not found upstream), a miss."""
    counts = Counts()
    log = config.dir("apt") / "log" / TRANSFER_LOG
    cache = config.dir("apt") / "cache"
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return counts
    fetched: dict[str, int] = {}
    for line in lines:
        parts = line.split("|", 4)
        if len(parts) != 5 or not parts[2].isdigit():
            continue
        _when, kind, size, _client, path = parts
        if kind == "I":
            counts.bytes_upstream += int(size)
            fetched[path] = fetched.get(path, 0) + 1
        elif kind == "O":
            counts.bytes_served += int(size)
            if fetched.get(path):
                fetched[path] -= 1
                counts.misses += 1
            elif (cache / path).is_file():
                counts.hits += 1
            else:
                counts.misses += 1
    return counts


def apt_options(root: Path, proxy_url: str) -> list[str]:
    """apt-get options for a throwaway apt root (`root`) that fetches through `proxy_url` and trusts
    this host's archive keys: staging fills the cache the way a node's apt would, recommended
    packages included as a node's `apt-get install` takes them (staging `sl` without ncurses'
    recommended libgpm2 left the node's offline install one package short)."""
    return ["-o", f"Dir={root}", "-o", f"Dir::State::status={root}/var/lib/dpkg/status",
            "-o", f"Acquire::http::Proxy={proxy_url}", "-o", "Dir::Etc::trusted=/etc/apt/trusted.gpg",
            "-o", "Dir::Etc::trustedparts=/etc/apt/trusted.gpg.d", "-o", "Debug::NoLocking=1",
            "-o", "APT::Sandbox::User=root", "-o", "Acquire::Languages=none", "-o", "Acquire::Retries=3",
            "-o", "APT::Install-Recommends=true", "-o", "Dir::Etc::preferencesparts=/nonexistent"]


def make_apt_root(root: Path, mirror: str, suite: str, components: tuple[str, ...]) -> None:
    """An empty apt root whose only source is `mirror suite components` (nothing installed)."""
    for sub in ("etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d",
                "var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/lib/dpkg"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/status").touch()
    (root / "etc/apt/sources.list").write_text(f"deb {mirror.rstrip('/')} {suite} {' '.join(components)}\n")
