"""`crowbar server`: migrate the database, make sure an admin token exists, serve the API, and run
the loops beside it (crowbar.server): the annealer, the power worker, the lifecycle watchdog, and
(with --provision) the provisioner on the admin network with its DHCP reconciler. The loops start
before uvicorn and stop after it; the app only wakes them (`AppSettings.wake`).

The API can listen on several addresses at once, TCP (`HOST:PORT`) and unix sockets (`unix:PATH`):
in the lab the server listens on the admin bridge for booting machines and on a unix socket for
the CLI on the host. The provisioning routes (/boot, discovery, the agent's) are served on the
listeners named by --provision-only-on; with --provision and no such option, on the TCP listeners
on the provisioning address (or a wildcard), and bound to the link: a booting machine's requests
must come from its own MAC on the provisioning interface (docs/security.md).

TLS (`tls_cert`, `tls_key`): every TCP listener that is not a provisioning listener serves HTTPS
(booting machines fetch /boot over plain HTTP; unix sockets are guarded by their mode). Without
TLS, a TCP listener on an address other than loopback that is not a provisioning listener is
refused unless `allow_http`: a user's token would cross the network in clear.
Logs: crowbar.server.logs (levels, text or JSON, secrets removed); docs/operations.md.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
from pathlib import Path

import uvicorn
from sqlalchemy.exc import DBAPIError

from crowbar import config
from crowbar.api.app import create_app
from crowbar.api.settings import AppSettings
from crowbar.db.session import Database, UnusableDatabase, reason, shown
from crowbar.engine.annealer import HEARTBEAT_SECONDS, Annealer
from crowbar.provisioner import neighbors
from crowbar.provisioner.discovery import DEFAULT_BURST, DEFAULT_RATE, TokenBucket
from crowbar.provisioner.service import Provisioner, ProvisionerConfig
from crowbar.server.annealer import AnnealerLoop, server_preparer
from crowbar.server import logs, malloc
from crowbar.server.collector import FULL_EVERY, Collector
from crowbar.server.loop import Loop
from crowbar.server.notices import Notices
from crowbar.server.power import PowerWorker
from crowbar.server.proxies import Proxies
from crowbar.server.reconciler import Reconciler
from crowbar.server.watchdog import Watchdog
from crowbar.services import auth, bootstrap

log = logging.getLogger("crowbar.server")


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen must be HOST:PORT or unix:PATH (got {listen!r})")
    return host.strip("[]"), int(port)


def check_listen(spec: str) -> None:
    """ValueError, one line, for a --listen value that cannot be served on: HOST:PORT that is not,
    or unix:PATH whose directory does not exist (none is created) or that names something other
    than a socket (a stale socket is replaced; a file never is)."""
    if not spec.startswith("unix:"):
        parse_listen(spec)
        return
    path = Path(spec[5:])
    if not spec[5:]:
        raise ValueError(f"--listen {spec!r}: no socket path (expected unix:PATH)")
    try:
        if not path.parent.is_dir():
            raise ValueError(f"--listen {spec}: the directory {path.parent} does not exist (create it first)")
        if path.is_symlink() or path.exists() and not stat.S_ISSOCK(path.stat().st_mode):
            raise ValueError(f"--listen {spec}: {path} exists and is not a socket (not replacing it)")
    except OSError as exc:
        raise ValueError(f"--listen {spec}: {exc.strerror or exc}") from None


def bind(spec: str) -> socket.socket:
    """A bound socket for one --listen value; uvicorn starts listening on it."""
    check_listen(spec)
    if spec.startswith("unix:"):
        path = spec[5:]
        if os.path.exists(path):  # a socket left by a server that stopped (check_listen: nothing else)
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            raise ValueError(f"cannot listen on {spec}: {exc.strerror or exc}") from None
        os.chmod(path, 0o600)  # the token protects the API; the mode keeps other users off the socket too
        return sock
    host, port = parse_listen(spec)
    # proto=IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on connections whose socket
    # says it is TCP (base_events._set_nodelay), and accepted connections inherit this socket's proto.
    # Without it, Nagle held every response's body until the client's delayed ACK of its headers:
    # 40 ms per request on a keep-alive connection (an agent poll, a CLI's paged list).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {spec}: {exc.strerror}") from None
    return sock


def provisioning_listeners(listens: list[str], only_on: list[str] | tuple[str, ...],
                           provision_address: str | None) -> tuple[str, ...] | None:
    """The listeners that serve the provisioning routes (None: every listener).

    `only_on` (--provision-only-on) names them, each one of `listens`. Without it, a server that
    provisions (`provision_address`) serves them on its TCP listeners on that address or on a
    wildcard address; a server that does not, on every listener (as before).
    """
    if only_on:
        unknown = [spec for spec in only_on if spec not in listens]
        if unknown:
            raise ValueError(f"--provision-only-on {unknown[0]!r} is not one of the --listen values "
                             f"({', '.join(listens)})")
        return tuple(dict.fromkeys(only_on))
    if provision_address is None:
        return None
    try:
        wanted = ipaddress.ip_address(provision_address)
    except ValueError:
        raise ValueError(f"--provision: {provision_address!r} is not an IP address") from None
    picked = []
    for spec in listens:
        if spec.startswith("unix:"):
            continue
        host = parse_listen(spec)[0]
        if host in ("", "0.0.0.0", "::") or host == provision_address or _same_ip(host, wanted):
            picked.append(spec)
    if not picked:
        raise ValueError(f"--provision: no --listen on {provision_address} (or 0.0.0.0) for booting machines; "
                         "name the listener they reach with --provision-only-on")
    return tuple(picked)


def _same_ip(host: str, wanted) -> bool:
    try:
        return ipaddress.ip_address(host) == wanted
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The server's TLS context from a PEM certificate (chain) and its key; None without both.
    ValueError, one line, when only one is given or they cannot be loaded."""
    if not cert and not key:
        return None
    if not cert or not key:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ValueError(f"TLS: {exc.filename}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"TLS: cannot load the certificate {cert} and key {key}: "
                         f"{getattr(exc, 'reason', None) or exc.strerror or exc}") from None
    return context


def tls_listeners(listens: list[str], provision_on: tuple[str, ...] | None, tls: bool,
                  allow_http: bool) -> list[str]:
    """The --listen values served over TLS: with TLS, every TCP listener that is not a provisioning
    listener. Without TLS, ValueError for a TCP listener off loopback that is not a provisioning
    listener, unless `allow_http` (a token would cross the network in clear)."""
    api_only = [spec for spec in listens if not spec.startswith("unix:")
                and (provision_on is None or spec not in provision_on)]
    if tls:
        return api_only
    exposed = [spec for spec in api_only if not is_loopback(parse_listen(spec)[0])]
    if exposed and not allow_http:
        raise ValueError(f"--listen {exposed[0]}: the API would take tokens in clear over the network; give "
                         "--tls-cert and --tls-key (or --allow-http on a network you trust)")
    return []


class _Server(uvicorn.Server):
    """uvicorn, with TLS on some of its sockets only (`tls`: socket -> context); uvicorn's own
    `ssl` setting would apply to every socket, the provisioning listener's and unix sockets too."""

    def __init__(self, config: uvicorn.Config, tls: dict[socket.socket, ssl.SSLContext],
                 before_shutdown: tuple = ()):
        super().__init__(config)
        self.tls = tls
        self.before_shutdown = before_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn waits for every open connection to finish its answer before it stops: end the
        # answers that never finish by themselves first (the event streams: crowbar.api.stream).
        for hook in self.before_shutdown:
            hook()
        await super().shutdown(sockets=sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[sock for sock in sockets or [] if sock not in self.tls])
        if self.should_exit:
            return
        loop = asyncio.get_running_loop()
        config = self.config

        def create_protocol(_loop=None):
            return config.http_protocol_class(config=config, server_state=self.server_state,
                                              app_state=self.lifespan.state, _loop=_loop)

        for sock, context in self.tls.items():
            self.servers.append(await loop.create_server(create_protocol, sock=sock, ssl=context,
                                                         backlog=config.backlog))


def server_checks(db: Database, annealer: Annealer, loops: dict[str, Loop], provisioner, proxy=None):
    """The server's own checks for GET /health and /metrics: each loop's thread and last step, the
    annealer's heartbeat in the database, dnsmasq (with --provision) and the proxies (--proxies)."""
    from crowbar.db.models import Server, utcnow

    stale = 5 * HEARTBEAT_SECONDS

    def checks() -> dict[str, dict]:
        out = {loop.name: loop.health() for loop in loops.values()}
        try:
            with db.session() as s:
                beat = s.get(Server, annealer.server_id).heartbeat_at
            age = (utcnow() - beat).total_seconds()
            out["annealer_heartbeat"] = {"ok": age <= stale, "age_seconds": round(age, 1)} | (
                {} if age <= stale else {"detail": f"no heartbeat for {age:.0f}s (expected every {HEARTBEAT_SECONDS:g}s)"})
        except Exception as exc:  # noqa: BLE001 - the database check says more
            out["annealer_heartbeat"] = {"ok": False, "detail": f"cannot read it: {type(exc).__name__}"}
        if provisioner is not None:
            pid = provisioner.dnsmasq.pid if provisioner.dnsmasq else None
            out["dnsmasq"] = {"ok": bool(pid), "pid": pid} | ({} if pid else {"detail": "dnsmasq is not running"})
        if proxy is not None:
            for kind, pid in proxy.running().items():
                out[f"proxy_{kind}"] = {"ok": bool(pid), "pid": pid} | (
                    {} if pid else {"detail": f"the {kind} proxy is not running"})
        return out

    return checks


def publish_token(data_dir: Path, listens: list[str]) -> None:
    """Copy the admin token where the local CLI looks for each endpoint's token."""
    token = (data_dir / "admin.token").read_text().strip()
    for spec in listens:
        if spec.startswith("unix:"):
            auth.write_secret(config.registry_file_for_socket(spec[5:]), token)
            continue
        host, port = parse_listen(spec)
        auth.write_secret(config.registry_file(host, port), token)
        if host in ("0.0.0.0", "::", "localhost"):
            auth.write_secret(config.registry_file("127.0.0.1", port), token)


def serve(listens: list[str], database: str | None, workers: int, data_dir: Path | None = None,
          provision: str | None = None, advertise_url: str | None = None,
          domain: str | None = None, *, provision_only_on: list[str] | tuple[str, ...] = (),
          approve_discovered: bool = False, discovery_rate: float = DEFAULT_RATE,
          discovery_burst: int = DEFAULT_BURST, tls_cert: str | None = None, tls_key: str | None = None,
          allow_http: bool = False, log_level: str = "info", log_format: str = "text",
          access_log: bool = True, os_images: str | Path | None = None, proxies: bool = False,
          proxy_apt_upstream: str | None = None, proxy_pypi_upstream: str | None = None,
          proxy_ports: str | None = None, proxy_via: str | None = None,
          full_collection_every: float = FULL_EVERY) -> None:
    # Startup refuses bad input before it binds or migrates anything: the --listen values, the data
    # directory (the one directory it creates, see config.make_data_dir), the database URL, and a
    # database that cannot be opened (UnusableDatabase, one line).
    for spec in listens:
        check_listen(spec)
    interface, _, address = (provision or "").partition("=")
    if provision and (not interface or not address):
        raise ValueError(f"--provision must be INTERFACE=ADDRESS (got {provision!r})")
    provision_on = provisioning_listeners(listens, provision_only_on, address if provision else None)
    tls = tls_context(tls_cert, tls_key)
    secure = tls_listeners(listens, provision_on, tls is not None, allow_http)
    logs.setup(log_level, log_format, access_log)
    malloc.limit_arenas()  # before any thread: two C heaps, not one per busy thread (server/malloc.py)
    discovery_limit = TokenBucket(discovery_rate, discovery_burst)
    data_dir = config.make_data_dir(data_dir)
    url = config.database_url(database, data_dir)
    db = Database(url)
    db.check()
    sockets = [bind(spec) for spec in listens]
    token_file = data_dir / "admin.token"
    try:
        bootstrap.prepare(db)
        with db.session() as s:
            created = auth.ensure_admin_token(s, token_file)
    except DBAPIError as exc:
        raise UnusableDatabase(f"cannot prepare the database {shown(url)}: {reason(exc)}") from None
    if created:
        log.info("created the admin API token in %s", token_file)
    elif not token_file.exists():
        log.warning("the admin token exists in the database but %s is missing", token_file)
    if token_file.exists():
        publish_token(data_dir, listens)
    (data_dir / "runs").mkdir(exist_ok=True)
    ssh_key = ensure_ssh_key(data_dir)
    provisioner = None
    if provision:
        tcp = next((parse_listen(s) for s in listens if not s.startswith("unix:")), None)
        advertise_url = advertise_url or (f"http://{address}:{tcp[1]}" if tcp else None)
        if not advertise_url:
            raise ValueError("--provision needs a TCP --listen (or --advertise-url) that machines can reach")
        provisioner = Provisioner(ProvisionerConfig(interface=interface, address=address,
                                                    advertise_url=advertise_url, data_dir=data_dir,
                                                    **({"domain": domain} if domain else {})))
    proxy = None
    if proxies:
        proxy = Proxies(proxy_config(data_dir, address if provision else None, proxy_apt_upstream,
                                     proxy_pypi_upstream, proxy_ports, proxy_via))
    # Roles' sources resolve through the caching proxies (online mode) when this server runs them;
    # the OpenStack roles get their attributes from the network model, passwords derived from the
    # admin server's private key (a secret that exists on every server and survives restarts).
    annealer = Annealer(db, workers=workers, workdir=data_dir / "runs",
                        prepare=server_preparer(proxy, db, ssh_key.read_bytes()))
    annealer.register()  # this server's row; recovers the runs of servers that are gone
    # Stopped in reverse: the power worker before the annealer, so that its unfinished requests
    # fail while this server is still alive; dnsmasq last.
    loops: dict[str, Loop] = {}
    if provisioner:
        loops["provisioner"] = Reconciler(db, provisioner)
    loops.update(anneal=AnnealerLoop(annealer, pipelined=db.postgresql), watchdog=Watchdog(db),
                 power=PowerWorker(db, server_id=annealer.server_id))
    if db.postgresql:  # other servers on this database: their agents' work wakes the polls held here
        loops["notices"] = Notices(db)
    if full_collection_every:  # the collector's long passes on a clock (server/collector.py)
        loops["collector"] = Collector(full_collection_every)

    def wake(kind: str) -> None:  # "anneal" | "power", after a unit of work that made such work
        if kind in loops:
            loops[kind].wake()

    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the handler that
    # was there before it: by default that kills the process before the `finally` below could stop
    # the loops and dnsmasq. Make that second SIGTERM an exception, stop them, then die of SIGTERM
    # as before (callers see the same exit status).
    signal.signal(signal.SIGTERM, _raise_terminated)
    terminated = False
    try:
        if proxy:
            proxy.start()
        for loop in loops.values():
            loop.start()  # the provisioner's first: it builds the discovery image and starts dnsmasq
        app = create_app(AppSettings(
            db=db, domain=domain or config.DEFAULT_DOMAIN, advertise_url=advertise_url,
            discovery_image=provisioner.image if provisioner else None, wake=wake,
            approve_discovered=approve_discovered, discovery_limit=discovery_limit,
            provision_listeners=provision_on,
            link_address=neighbors.resolver(interface) if provision else None,
            checks=server_checks(db, annealer, loops, provisioner, proxy), proxies=proxy,
            os_images=Path(os_images) if os_images else config.os_image_dir(),
            ssh_public_key=ssh_key.with_suffix(".pub").read_text().strip(), ssh_private_key=str(ssh_key)))
        log.info("database %s; API on %s (docs at /api/v2/docs)", db.engine.url.render_as_string(),
                 ", ".join(listens))
        log.info("provisioning routes on %s%s; new machines %s; at most %g new nodes/s through discovery "
                 "(bursts of %d)", ", ".join(provision_on) if provision_on else "every listener",
                 f", bound to the link on {interface}" if provision else "",
                 "wait for approval" if approve_discovered else "are accepted", discovery_rate, discovery_burst)
        if secure:
            log.info("TLS on %s", ", ".join(secure))
        server = _Server(uvicorn.Config(app, log_level=log_level, log_config=None, access_log=False,
                                        timeout_graceful_shutdown=30),
                         tls={sock: tls for spec, sock in zip(listens, sockets) if spec in secure},
                         before_shutdown=(app.state.event_hub.close, app.state.agent_waiters.close))
        asyncio.run(server.serve(sockets=sockets))
    except _Terminated:
        terminated = True
    finally:
        for loop in reversed(list(loops.values())):
            loop.stop()
        if proxy:
            proxy.stop()
        log.info("stopped")
    if terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)


def proxy_config(data_dir: Path, admin_address: str | None, apt_upstream: str | None,
                 pypi_upstream: str | None, ports: str | None, via: str | None = None):
    """The proxies' settings (--proxies): bound to the admin address (with --provision) and loopback;
    `ports` is "APT,PYPI,GIT" (default 3142,3141,9418); `via`, an http://HOST:PORT proxy the
    proxies fetch their upstreams through (a site whose admin server has no direct way out)."""
    from crowbar.proxy import DEFAULT_PORTS, DEFAULT_PYPI_UPSTREAM, ProxyConfig, apt

    numbers = list(DEFAULT_PORTS.values())
    if ports:
        words = ports.split(",")
        if len(words) != 3 or not all(w.strip().isdigit() and 0 < int(w) < 65536 for w in words):
            raise ValueError(f"--proxy-ports must be APT,PYPI,GIT port numbers (got {ports!r})")
        numbers = [int(w) for w in words]
        if numbers[0] > apt.MAX_PORT:
            raise ValueError(f"--proxy-ports: apt-cacher-ng cannot listen on a port above {apt.MAX_PORT} "
                             f"(got {numbers[0]})")
    listen = tuple(dict.fromkeys([*([admin_address] if admin_address else []), "127.0.0.1"]))
    return ProxyConfig(state_dir=data_dir / "proxy", listen=listen, node_address=admin_address or "127.0.0.1",
                       apt_port=numbers[0], pypi_port=numbers[1], git_port=numbers[2],
                       apt_upstream=apt_upstream or "host", pypi_upstream=pypi_upstream or DEFAULT_PYPI_UPSTREAM,
                       via=_check_via(via))


def _check_via(via: str | None) -> str | None:
    if via is None:
        return None
    m = re.fullmatch(r"http://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):(\d{1,5})/?", via)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"--proxy-via must be http://HOST:PORT, an HTTP proxy (got {via!r})")
    return via.rstrip("/")


def ensure_ssh_key(data_dir: Path) -> Path:
    """The admin server's SSH key pair (<data dir>/ssh/id_ed25519), made on first start: its public
    key goes to root on every installed node, the script jig and `crowbar nodes ssh` use it."""
    key = data_dir / "ssh" / "id_ed25519"
    if key.is_file() and key.with_suffix(".pub").is_file():
        return key
    key.parent.mkdir(mode=0o700, exist_ok=True)
    key.unlink(missing_ok=True)
    out = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "crowbar-admin", "-f", str(key)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"cannot make the admin SSH key {key}: {out.stderr.strip() or out.returncode}")
    log.info("created the admin SSH key pair %s", key)
    return key


class _Terminated(BaseException):
    """SIGTERM, once uvicorn has shut down."""


def _raise_terminated(_signum, _frame) -> None:
    raise _Terminated
