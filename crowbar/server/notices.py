"""The notices loop (PostgreSQL only): hears the agent work other server processes on the same
database commit (crowbar.db.notices: their NOTIFY) and tells this process's listeners, so that an
agent whose long poll this server holds is answered at once, whichever server queued its work.

One step waits up to `interval` seconds on the listening connection. A lost connection (the
database restarted) is logged, shown in /health until it is back, and opened again at the next
step; what was committed meanwhile reaches the held agents when their hold ends.
"""

from __future__ import annotations

import logging

from crowbar.db.session import Database
from crowbar.server.loop import Loop

log = logging.getLogger(__name__)


class Notices(Loop):
    name = "notices"
    interval = 1.0  # seconds one step waits for notifications; also the wait before a reconnect

    def __init__(self, db: Database, interval: float | None = None):
        super().__init__(interval)
        self.db = db
        self.listener = db.listener()
        self.received = 0  # node ids heard from other processes (for /health and tests)
        self.lost: str | None = None  # why the listening connection is gone, until it is back

    def open(self) -> None:
        self.listener.connect()  # a database that cannot be listened to fails the start, once

    def step(self) -> bool:
        try:
            if not self.listener.connected:
                self.listener.connect()
                if self.lost is not None:
                    log.info("listening again for other servers' agent work")
                    self.lost = None
            for node_ids in self.listener.receive(self.interval):
                self.received += len(node_ids)
                self.db.deliver_agent_work(node_ids)
        except Exception as exc:  # noqa: BLE001 - the driver's errors: logged once, shown in /health
            if self.lost is None:
                log.warning("lost the connection that hears other servers' agent work (%s); until it is "
                            "back, their work reaches the polls this server holds when their hold ends",
                            " ".join(str(exc).split())[:200] or type(exc).__name__)
            self.lost = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
            self.listener.close()
            return False  # wait `interval`, then connect again
        return not self.stopping  # a step waits by itself: the next one follows at once

    def close(self) -> None:
        self.listener.close()

    def health(self) -> dict:
        health = super().health() | {"received_nodes": self.received}
        if self.lost is not None and health["ok"]:
            health |= {"ok": False, "detail": f"not listening to other servers: {self.lost}"}
        return health
