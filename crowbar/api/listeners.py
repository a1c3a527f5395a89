"""The provisioning routes on the provisioning listener only (`crowbar server --provision-only-on`).

The server may listen on several addresses: the admin network, where machines boot, and others
(a management address, a unix socket for the local CLI). `/boot/*`, `/api/v2/discovery` and
`/api/v2/agent/*` are for booting machines; with `AppSettings.provision_listeners` set, a request
for one of them that arrived on any other listener answers 404 with the error body, before any
route, dependency or body is looked at.

A listener is a `--listen` value: `HOST:PORT` (a wildcard host, 0.0.0.0 or ::, matches every local
address on that port) or `unix:PATH`. The listener a request arrived on is the ASGI scope's
`server`: the connection's local address, or the socket's path for a unix socket.
"""

from __future__ import annotations

import ipaddress

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from crowbar.errors import NotFound

WILDCARDS = ("", "0.0.0.0", "::", "*")


def _ip(host: str):
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip


def listener_matches(spec: str, server: tuple | None) -> bool:
    """Whether a connection whose local end is `server` (host, port | None) came in on `spec`."""
    if not server:
        return False
    host, port = server[0], server[1]
    if spec.startswith("unix:"):
        return port is None and str(host) == spec[5:]
    want_host, _, want_port = spec.rpartition(":")
    if port is None or not want_port.isdigit() or int(want_port) != int(port):
        return False
    want_host = want_host.strip("[]")
    if want_host in WILDCARDS:
        return True
    want, got = _ip(want_host), _ip(str(host))
    if want is None:  # a name: localhost is the loopback, anything else must be the same text
        return (got is not None and got.is_loopback) if want_host == "localhost" else want_host == host
    return want == got


def is_provisioning(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p.rstrip("/") or path.startswith(p) for p in prefixes)


class ProvisioningListeners:
    """ASGI middleware: provisioning paths answer 404 unless they came in on one of `listeners`."""

    def __init__(self, app: ASGIApp, listeners: tuple[str, ...], prefixes: tuple[str, ...]):
        self.app, self.listeners, self.prefixes = app, tuple(listeners), prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and is_provisioning(scope.get("path", ""), self.prefixes)
                and not any(listener_matches(spec, scope.get("server")) for spec in self.listeners)):
            error = NotFound(f"{scope.get('path')} is served to booting machines on the provisioning "
                             "listener only")
            await JSONResponse(error.to_dict(), status_code=error.status)(scope, receive, send)
            return
        await self.app(scope, receive, send)
