"""The power worker: carries out queued power requests (`crowbar.services.power` has the protocol,
`crowbar.services.power_work` the worker's side of it).

Each round claims what it has room for (`parallel` requests at once, one per node, oldest first)
in one short transaction, then runs each driver call in a thread of its own, outside any
transaction, for at most the driver's `timeout` seconds. The outcome is recorded in another short
transaction, with its event. A call that times out fails its request ("no answer within Ns") and
is abandoned: Python cannot interrupt it, so it is left to end on its own, and until it does this
worker starts nothing else on that node (one call at a time per node, in request order).

Requests that a dead server left running are failed ("server died") when the worker starts and
every `reap_every` seconds; when this server stops, requests still running get a few seconds,
then fail ("server stopped before the request finished"). Queued ones wait for the next server.
"""

from __future__ import annotations

import logging
import threading
import time

from crowbar.db.session import Database
from crowbar.power.base import PowerError, PowerNode, get_driver
from crowbar.server.loop import Loop
from crowbar.services import power_work

log = logging.getLogger(__name__)

METHODS = {"on": "power_on", "off": "power_off", "cycle": "power_cycle", "status": "status", "soft-off": "soft_off"}


def _act(driver, action: str, node: PowerNode, params: dict | None = None) -> str:
    if action == "bios-apply":  # the node's wanted BIOS attributes (crowbar.services.bios)
        return driver.apply_bios(node, params or {})
    if action.startswith("boot-"):  # boot-pxe, boot-disk, boot-http: the next boot only
        return driver.boot_device(node, action.removeprefix("boot-"))
    return getattr(driver, METHODS[action])(node)


class PowerWorker(Loop):
    name = "power"
    interval = 1.0
    reap_every = 10.0
    stop_grace = 5.0

    def __init__(self, db: Database, server_id: int | None = None, parallel: int = 8,
                 interval: float | None = None):
        super().__init__(interval)
        self.db, self.server_id, self.parallel = db, server_id, max(1, parallel)
        self._lock = threading.Lock()
        self._runners: dict[int, threading.Thread] = {}  # request id -> the thread carrying it out
        self._calls: dict[int, threading.Thread] = {}    # node id -> its driver call, until it returns
        self._last_reap = 0.0

    def open(self) -> None:
        self._reap()

    def step(self) -> bool:
        if time.monotonic() - self._last_reap > self.reap_every:
            self._reap()
        with self._lock:
            self._runners = {i: t for i, t in self._runners.items() if t.is_alive()}
            self._calls = {n: t for n, t in self._calls.items() if t.is_alive()}
            room, busy = self.parallel - len(self._runners), list(self._calls)
        if room <= 0:
            return False
        with self.db.session() as s:
            claimed = power_work.claim(s, self.server_id, room, busy)
        for request in claimed:
            runner = threading.Thread(target=self._carry_out, args=(request,), name=f"power-{request.id}",
                                      daemon=True)
            with self._lock:
                self._runners[request.id] = runner
            runner.start()
        return False  # each runner wakes the loop when it is done

    def close(self) -> None:
        deadline = time.monotonic() + self.stop_grace
        with self._lock:
            runners = list(self._runners.values())
        for runner in runners:
            runner.join(max(0.0, deadline - time.monotonic()))
        if self.server_id is not None:
            with self.db.session() as s:
                power_work.fail_abandoned(s, "server stopped before the request finished", [self.server_id])

    @property
    def idle(self) -> bool:
        """No request of this worker's is being carried out (tests wait for this)."""
        with self._lock:
            return not any(t.is_alive() for t in self._runners.values())

    def _reap(self) -> None:
        """Fail what servers found dead left running (the annealer's reaper marks them stopped)."""
        with self.db.session() as s:
            failed = power_work.fail_abandoned(s, "server died")
        if failed:
            log.warning("failed %d power requests left running by servers that died", failed)
        self._last_reap = time.monotonic()

    # -- one request ------------------------------------------------------------------------------
    def _carry_out(self, request: power_work.Claimed) -> None:
        ok, result = self._call(request)
        for attempt in range(3):  # the database may be busy for a moment; the outcome must not be lost
            try:
                with self.db.session() as s:
                    if not power_work.finish(s, request, self.server_id, ok, result):
                        log.warning("power request %d was failed meanwhile; its outcome is dropped: %s",
                                    request.id, result)
                break
            except Exception:
                log.exception("recording the outcome of power request %d failed (attempt %d)", request.id,
                              attempt + 1)
                time.sleep(1.0)
        self.wake()

    def _call(self, request: power_work.Claimed) -> tuple[bool, str]:
        """Run the driver in a thread of its own; (succeeded, result or reason)."""
        try:
            driver = get_driver(request.driver)
        except KeyError as exc:
            return False, str(exc)
        node = PowerNode(name=request.node, settings=request.settings)
        outcome: list[tuple[bool, str]] = []

        def call() -> None:
            try:
                outcome.append((True, _act(driver, request.action, node, request.params)))
            except PowerError as exc:
                outcome.append((False, str(exc)))
            except Exception as exc:  # a driver bug is a failed request with the reason, not a dead worker
                log.exception("power driver %s crashed on request %d", request.driver, request.id)
                outcome.append((False, f"power driver {request.driver} crashed: {type(exc).__name__}: {exc}"))
            finally:
                self.wake()  # a call that outlived its timeout frees its node now

        thread = threading.Thread(target=call, name=f"power-{request.driver}-{request.node_id}", daemon=True)
        with self._lock:
            self._calls[request.node_id] = thread
        thread.start()
        thread.join(driver.timeout_for(request.action))
        if not outcome:
            return False, (f"{request.node}: power driver {request.driver} did not answer within "
                           f"{driver.timeout_for(request.action):g}s ({request.action} timed out)")
        return outcome[0]
