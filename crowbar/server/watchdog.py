"""The lifecycle watchdog: nodes that outstayed a state waiting on the machine (installing,
discovering...) go to `problem`, with the reason. It runs on every server, with or without a
provisioner; the rule itself is `services.provisioning.expire_stuck`."""

from __future__ import annotations

import logging

from crowbar.db.session import Database
from crowbar.server.loop import Loop
from crowbar.services import provisioning

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
        return False
