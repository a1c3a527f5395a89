"""What the API application is built from: one frozen, typed settings object.

`create_app(settings)` stores it once (`app.state.settings`); routes read it only through the
`crowbar.api.deps.settings` dependency. The application starts no background loop: whoever runs
the process (crowbar.server) runs the loops and passes `wake`, which the unit of work calls after a
successful commit for each kind of work a service signalled (`crowbar.db.session.signal_work`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from crowbar.config import DEFAULT_DOMAIN
from crowbar.db.session import Database
from crowbar.provisioner.discovery import TokenBucket


def _nobody_to_wake(kind: str) -> None:
    """No background loop runs (tests drive the annealer themselves)."""


@dataclass(frozen=True)
class AppSettings:
    db: Database
    domain: str = DEFAULT_DOMAIN  # DNS domain of discovered nodes
    advertise_url: str | None = None  # the URL booting machines reach the API at (default: as asked)
    discovery_image: object | None = None  # has .kernel and .initrd paths (served under /boot/discovery)
    wake: Callable[[str], None] = _nobody_to_wake  # kind: "anneal" | "power"
    # Discovery and the provisioning routes (docs/security.md):
    approve_discovered: bool = False  # new machines wait in `pending` until `crowbar nodes approve`
    discovery_limit: TokenBucket = field(default_factory=TokenBucket)  # nodes created through discovery
    # The listeners (`--listen` values) that serve /boot, discovery and the agent; None: every one.
    provision_listeners: tuple[str, ...] | None = None
    # The requester's MAC on the provisioning interface, from its address (None: not a neighbour
    # there); unset, the server does not bind provisioning requests to the link.
    link_address: Callable[[str | None], str | None] | None = None
    # The server process's own checks for GET /health and /metrics: name -> {"ok": bool, "detail"?}
    # (its loops, the annealer's heartbeat, dnsmasq); None: the database is the only check.
    checks: Callable[[], dict[str, dict]] | None = None
    max_body: int = 1 << 20  # bytes of a request body, unless the route has its own limit (crowbar.api.body)
    # OS deployment (crowbar.services.install): the image store served under /boot/os, and the
    # admin server's SSH key pair (the public key goes to root on every installed node).
    os_images: Path | None = None
    ssh_public_key: str = ""
    ssh_private_key: str | None = None
    # Online mode's caching proxies (crowbar.server.proxies.Proxies; None without --proxies):
    # crowbar.services.proxy reads and stages through them, installs point the nodes' apt at them.
    proxies: object | None = None
    # GET /events/stream (crowbar.api.stream): how long one stream lasts before the browser reconnects.
    event_stream_seconds: float = 120.0
    # The agents' long polls (crowbar.api.longpoll): at most this many held at once; past it, a poll
    # is answered at once (a wait with `seconds`). 0: no long poll.
    agent_waiters: int = 16384
