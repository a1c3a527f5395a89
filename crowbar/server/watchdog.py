"""The lifecycle watchdog: nodes that outstayed a state waiting on the machine (installing,
discovering...) go to `problem`, with the reason; a node power-cycled into the discovery image
whose agent stays silent is powered off and on again, a few times, before that. It runs on every
server, with or without a provisioner; the rules are `services.provisioning.expire_stuck` and
`services.install.retry_silent_netboots`."""

from __future__ import annotations

import logging

from crowbar.db.session import Database
from crowbar.server.loop import Loop
from crowbar.services import install, provisioning

log = logging.getLogger(__name__)


class Watchdog(Loop):
    name = "watchdog"
    interval = 10.0

    def __init__(self, db: Database, interval: float | None = None):
        super().__init__(interval)
        self.db = db

    def step(self) -> bool:
        with self.db.session() as s:
            moved = provisioning.expire_stuck(s)
        if moved:
            log.warning("nodes stuck too long, now in problem: %s", ", ".join(moved))
        with self.db.session() as s:
            silent = install.retry_silent_netboots(s)
        if silent:
            log.warning("nodes silent after a power cycle into the discovery image, powered off and on "
                        "(or in problem after %d tries): %s", install.NETBOOT_RETRIES, ", ".join(silent))
        return False
