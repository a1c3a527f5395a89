"""Power drivers for the tests, registered in-process (`crowbar.plugins.register`)."""

from __future__ import annotations

import os
import socket
import threading
import time

from crowbar.power.base import PowerDriver, PowerError, PowerNode, Setting


class CallLog:
    """What the recording drivers were asked, with when: (node, action, started, ended)."""

    def __init__(self):
        self.calls: list[tuple[str, str, float, float]] = []
        self.lock = threading.Lock()

    def run(self, node: PowerNode, action: str, seconds: float) -> None:
        started = time.monotonic()
        time.sleep(seconds)
        with self.lock:
            self.calls.append((node.name, action, started, time.monotonic()))


class TestDriver(PowerDriver):
    """Records every call; each takes `delay` seconds; `status` is "on"."""

    __test__ = False
    name = "test"
    summary = "records calls (tests)"
    settings = {"rack": Setting("optional: where it is")}
    timeout = 10.0
    delay = 0.0
    log = CallLog()

    def _act(self, node: PowerNode, action: str) -> str:
        self.log.run(node, action, self.delay)
        return f"{node.name} {action} done"

    def power_on(self, node):
        return self._act(node, "on")

    def power_off(self, node):
        return self._act(node, "off")

    def power_cycle(self, node):
        return self._act(node, "cycle")

    def status(self, node):
        self._act(node, "status")
        return "on"


class FailingDriver(TestDriver):
    def _act(self, node, action):
        raise PowerError(f"{node.name}: the BMC said no")


def start_worker(db):
    """A PowerWorker on `db` under a server row of its own, started (its thread: this thread's
    network namespace)."""
    from crowbar.db.models import Server
    from crowbar.server.power import PowerWorker

    with db.session() as s:
        server = Server(hostname=socket.gethostname(), pid=os.getpid())
        s.add(server)
        s.flush()
        server_id = server.id
    worker = PowerWorker(db, server_id=server_id, interval=0.2)
    worker.start()
    return worker
