"""The agent's long poll: an idle agent that asks to (`Prefer: wait=N`, RFC 7240) waits on the
server until a job or an action is queued for its node, or until its hold ends, holding neither a
thread nor a database session meanwhile.

`AgentWaiters` (one per application, `app.state.agent_waiters`) keeps an asyncio event per waiting
node. The database tells it, after each commit in this process that gave nodes' agents something to
do (`Database.on_agent_work`: a job queued, an action such as reboot set; from any thread: the API's
threadpool, the annealer, the power worker), and it sets those nodes' events in the event loop's
thread. On PostgreSQL the commits of other servers on the same database reach it the same way, a
moment later (their NOTIFY, heard by this server's notices loop: crowbar.db.notices); while that
connection is lost, an agent held here learns of such work when its hold ends.

No commit is missed between the poll's read and its wait: the poll notes the time before it reads,
and a node notified since then is read again instead of waiting.

A poll that comes straight back from a hold that ended with nothing (the agent asks again at once)
is not read again: the hold's end remembers the token's node and when it was last read (`quiet`),
and the next poll with that token, within QUIET_GRACE seconds, waits from that read as if it had
just made it (any notification since it wakes the poll at once, and it reads then). The poll after
it reads again, so at most every other poll skips its read. What such a poll does not see for one
more hold is what no notification tells this process: the token revoked or the node marked dead
(its answer is still only "wait"). A token's expiry is checked from what the read saw.

The number of waiters is bounded (`limit`, and PER_NODE per node): past it, a poll is answered at
once, as without a long poll (a wait with `seconds`), which every agent understands; nothing is
refused.

The agents' requests also run their database work in bounded sets of worker threads: a poll's read
among at most READERS (`AgentWaiters.read`), and every agent request that writes (discovery, a poll
that takes work, a job's result or progress, the installed system's calls home) among at most
WRITERS (`AgentWaiters.write`); the others wait their turn in the event loop, holding no thread.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TypeVar

import anyio.to_thread
from anyio import CapacityLimiter

from crowbar.db.models import utcnow

T = TypeVar("T")

PREFER_WAIT_MAX = 3600  # a larger `wait` than this in Prefer is read as this (the server holds far less)
REMEMBER = 300.0  # seconds a notification is remembered for polls that read before it
PER_NODE = 2  # held polls of one node at once (its agent has one; a token holder cannot fill the server)
QUIET_GRACE = 10.0  # seconds after a hold's end in which the agent's next poll may skip its read
READERS = 4  # polls reading the database at once, each in a worker thread; the rest wait in the event loop
WRITERS = 4  # agents' requests writing to the database at once (AgentWaiters.write)


NEXT_ACTION = "next-action"  # Prefer: an agent's job result answered with its next instruction


def preferences(prefer: str | None) -> dict[str, str]:
    """The preferences of a Prefer header (RFC 7240), by lower-case name: their values, unquoted
    ("" for one without a value)."""
    found: dict[str, str] = {}
    for part in (prefer or "").replace(";", ",").split(","):
        name, _, value = part.strip().partition("=")
        name = name.strip().lower()
        if name and name not in found:
            found[name] = value.strip().strip('"')
    return found


def requested_wait(prefer: str | None) -> float:
    """The `wait` preference of a Prefer header (`Prefer: wait=50`, RFC 7240), in seconds; 0 when
    there is none or it is not a number of seconds."""
    value = preferences(prefer).get("wait", "")
    if value.isascii() and value.isdigit():
        return float(min(int(value[:8]), PREFER_WAIT_MAX))
    return 0.0


class AgentWaiters:
    """Nodes' agents waiting in a long poll: at most `limit` at once."""

    def __init__(self, limit: int = 16384) -> None:
        self.limit = limit
        self._events: dict[int, list[asyncio.Event]] = {}
        self._count = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._notified: dict[int, float] = {}  # node id -> when it was last notified (monotonic)
        self._lock = threading.Lock()
        self._closed = False
        # token digest -> (node id, when it was last read (monotonic), until when a poll may skip
        # its read (monotonic), the token's expiry)
        self._quiet: dict[str, tuple[int, float, float, datetime | None]] = {}
        # the sizes past which the two are pruned of what is too old: at least twice what was kept
        # by the last pruning, so that pruning stays rare however many are young (10,000 nodes
        # notified within REMEMBER seconds once pruned all 10,000 at every notify)
        self._notified_limit = self._quiet_limit = 0
        self.woken = 0  # polls answered early because their node got work (for tests and metrics)
        self.skipped = 0  # polls that skipped their read, back from a quiet hold (for tests and metrics)
        self._readers: tuple[asyncio.AbstractEventLoop, CapacityLimiter] | None = None
        self._writers: tuple[asyncio.AbstractEventLoop, CapacityLimiter] | None = None

    @property
    def waiting(self) -> int:
        return self._count

    # -- any thread ----------------------------------------------------------------------------
    def notify(self, node_ids: Iterable[int]) -> None:
        """These nodes' agents have something to take (called after the commit that queued it)."""
        ids = list(node_ids)
        now = time.monotonic()
        with self._lock:
            for node_id in ids:
                self._notified[node_id] = now
            if len(self._notified) > max(self._notified_limit, 4 * max(1024, self._count)):
                self._notified = {k: t for k, t in self._notified.items() if now - t < REMEMBER}
                self._notified_limit = 2 * len(self._notified)
            loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._wake, ids)
            except RuntimeError:  # the loop closed meanwhile: nobody waits there
                pass

    def remember_quiet(self, digest: str, node_id: int, read_at: float, expires_at: datetime | None) -> None:
        """A hold ended with nothing for this token's node since its read at `read_at`: the agent's
        next poll, if it comes within QUIET_GRACE seconds, may skip its read (`take_quiet`)."""
        now = time.monotonic()
        with self._lock:
            self._quiet[digest] = (node_id, read_at, now + QUIET_GRACE, expires_at)
            if len(self._quiet) > max(self._quiet_limit, 4 * max(1024, self._count)):
                self._quiet = {k: v for k, v in self._quiet.items() if v[2] > now}
                self._quiet_limit = 2 * len(self._quiet)

    def take_quiet(self, digest: str | None) -> tuple[int, float] | None:
        """(node id, when it was read) for a poll that may skip its read, once; else None."""
        if digest is None:
            return None
        with self._lock:
            entry = self._quiet.pop(digest, None)
        if entry is None or self._closed:
            return None
        node_id, read_at, until, expires_at = entry
        if time.monotonic() > until or (expires_at is not None and expires_at <= utcnow()):
            return None
        self.skipped += 1
        return node_id, read_at

    def notified_since(self, node_id: int, since: float) -> bool:
        with self._lock:
            at = self._notified.get(node_id)
        return at is not None and at >= since

    # -- the event loop's thread ---------------------------------------------------------------
    async def read(self, fn: Callable[..., T], *args) -> T:
        """A poll's read, `fn(*args)`, in a worker thread: at most READERS at once (the others wait
        their turn in the event loop, holding no thread).

        Why a bound of its own: every thread that runs Python competes with the event loop for the
        interpreter's lock, and the loop gives it up at every socket call. With 10,000 agents polling,
        a burst of reads in the default pool's 40 threads (and as many SQLite connections opened
        and closed past the pool) kept the loop waiting for the lock for 100-320 ms at a time, and
        every held poll whose hold ended then was answered that late (docs/benchmarks.md, "What
        stalls the event loop"). A read is ~1 ms of CPU, so four at once keep two cores busy."""
        self._readers = self._bound(self._readers, READERS)
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._readers[1])

    async def write(self, fn: Callable[..., T], *args) -> T:
        """An agent's request that writes, `fn(*args)` (its whole unit of work), in a worker
        thread: at most WRITERS at once, the others waiting their turn in the event loop.

        In the default pool (40 threads) a fleet's writes mostly waited for each other: on SQLite
        for its one write lock, on PostgreSQL for row locks and the server's CPU, and every one of
        them competed for the interpreter's lock meanwhile. Four at once, 1,000 simulated machines
        through discover and deploy: the deploy phase 53 -> 35-38 s on SQLite (server CPU 51 -> 35-38
        s), the whole flow 94 -> 60 s on PostgreSQL; one or two at once did as well on SQLite
        (docs/benchmarks.md, "Bounded writers")."""
        self._writers = self._bound(self._writers, WRITERS)
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._writers[1])

    @staticmethod
    def _bound(current: tuple[asyncio.AbstractEventLoop, CapacityLimiter] | None,
               size: int) -> tuple[asyncio.AbstractEventLoop, CapacityLimiter]:
        """A limiter of `size` for the running event loop (tests run a loop per client)."""
        loop = asyncio.get_running_loop()
        if current is None or current[0] is not loop:
            return loop, CapacityLimiter(size)
        return current

    def _wake(self, node_ids: list[int] | None) -> None:
        for node_id in list(self._events) if node_ids is None else node_ids:
            for ev in self._events.get(node_id, ()):
                ev.set()

    async def wait(self, node_id: int, seconds: float, since: float) -> bool | None:
        """Wait until `node_id` is notified (True) or `seconds` pass (False); None when the poll
        cannot wait (the limit is reached, or the server is stopping): answer it at once.
        `since`: when the poll began to read; a notification after it ends the wait at once."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            with self._lock:  # a new event loop (tests run one per client): start afresh
                self._loop, self._events, self._count = loop, {}, 0
        if self._closed or self._count >= self.limit or len(self._events.get(node_id, ())) >= PER_NODE:
            return None
        ev = asyncio.Event()
        self._events.setdefault(node_id, []).append(ev)
        self._count += 1
        try:
            if self.notified_since(node_id, since):
                return True
            try:
                await asyncio.wait_for(ev.wait(), seconds)
            except asyncio.TimeoutError:
                return False
            if self._closed:
                return None
            self.woken += 1
            return True
        finally:
            self._count -= 1
            waiting = self._events.get(node_id)
            if waiting is not None:
                waiting.remove(ev)
                if not waiting:
                    del self._events[node_id]

    def close(self) -> None:
        """The server stops: every held poll is answered now (the agent asks again after its
        wait, of the next server); new polls are answered at once. Thread-safe."""
        self._closed = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._wake, None)
            except RuntimeError:
                pass
