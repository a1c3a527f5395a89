"""The event log as server-sent events: GET /api/v2/events/stream (docs/ui.md, "Live updates").

One reader per process (`EventHub`, on `app.state.event_hub`) reads the event log forward from the
last id it saw, every `POLL` seconds while anyone listens, in a worker thread (the database calls
are synchronous), and hands each new event to every subscriber's queue; a stream is an asyncio task
waiting on its queue, so open streams hold no thread and cost the database nothing each. The
reader starts with the first subscriber and stops a while after the last one left.

Resuming: the browser's EventSource sends `Last-Event-ID` when it reconnects; the stream then
first reads what was recorded after that id from the database (at most `BACKLOG` events; more, and
it says `reset`: reload), then goes on with what the reader hands it. Every message's `id` is the
highest event id the stream has sent, so a resume never goes back.

Ids and commits: an id is taken when the event is inserted, and on PostgreSQL a transaction that
inserted a lower id may commit after one with a higher id. The reader remembers the ids it skipped
(the holes below the highest it read) for `HOLE_SECONDS` and reads them again each time, so a late
commit is still delivered (to the streams then open; a hole that stays empty was rolled back).
Delivery is at least once: a page re-reads what an event touched, so a repeat does no harm.

A stream ends after `settings.event_stream_seconds` (120 s; the browser reconnects at once, with
Last-Event-ID), when its queue overflows (a client too slow to read: it reconnects and reads the
backlog), and when the server shuts down: crowbar.server calls `EventHub.close()` before uvicorn
waits for open connections, which would otherwise wait for every stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse
from sqlalchemy import func, or_, select
from starlette.concurrency import run_in_threadpool

from crowbar.db.models import Event
from crowbar.services import anneal

log = logging.getLogger(__name__)

POLL = 0.5             # seconds between the reader's reads while anyone listens
LINGER = 10.0          # seconds the reader keeps going after the last subscriber left
READ = 1000            # events per read
BACKLOG = 5000         # events a resuming stream reads from the database before it says `reset`
QUEUE = 2000           # events waiting for one stream; more: it ends, and the client resumes
HOLE_SECONDS = 10.0    # how long a skipped id is looked for again
KEEPALIVE = 15.0       # seconds between comments on a quiet stream (proxies close idle ones)
RETRY_MS = 1000        # what the browser waits before reconnecting


class Subscriber:
    def __init__(self, matches) -> None:
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUE)
        self.matches = matches
        self.overflowed = False

    def offer(self, event: dict | None) -> None:
        if event is not None and not self.matches(event):
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True


class EventHub:
    """The process's one reader of the event log, fanning out to the open streams."""

    def __init__(self, db, poll: float = POLL) -> None:
        self.db, self.poll = db, poll
        self.subscribers: set[Subscriber] = set()
        self.last: int | None = None      # the highest event id read
        self.holes: dict[int, float] = {}  # ids skipped below `last` -> when first missed
        self.closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._ready: asyncio.Event | None = None
        self.reads = 0  # database reads done (tests: one reader, whatever the number of streams)

    # -- the database side (a worker thread) --------------------------------------------------
    def _max_id(self) -> int:
        with self.db.session() as s:
            return s.scalar(select(func.max(Event.id))) or 0

    def _read(self, after: int, holes: list[int]) -> list[dict]:
        with self.db.session() as s:
            q = select(Event).where(or_(Event.id > after, Event.id.in_(holes)) if holes else Event.id > after)
            return [anneal.event_dict(e) for e in s.scalars(q.order_by(Event.id).limit(READ))]

    def backlog(self, after: int, upto: int, matches) -> tuple[list[dict], bool]:
        """The events after `after` up to `upto` that `matches` keeps (at most BACKLOG), and whether
        there were more than that."""
        out: list[dict] = []
        with self.db.session() as s:
            while after < upto and len(out) <= BACKLOG:
                rows = list(s.scalars(select(Event).where(Event.id > after, Event.id <= upto)
                                      .order_by(Event.id).limit(READ)))
                if not rows:
                    break
                after = rows[-1].id
                out += [e for e in map(anneal.event_dict, rows) if matches(e)]
        return out[:BACKLOG], len(out) > BACKLOG

    # -- the loop side ------------------------------------------------------------------------------
    async def subscribe(self, matches) -> tuple[Subscriber, int]:
        """A new subscriber and the id it starts after (what the reader has read so far)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (tests run one per client): start afresh
            self._loop, self._task, self.subscribers, self.last, self.holes = loop, None, set(), None, {}
        if self._task is None or self._task.done():
            self._ready = asyncio.Event()
            self._task = loop.create_task(self._run(), name="crowbar-event-hub")
        await self._ready.wait()
        sub = Subscriber(matches)
        if self.closed:
            sub.offer(None)
        self.subscribers.add(sub)
        return sub, self.last or 0

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def close(self) -> None:
        """End every stream now, and every later one at once (the server is shutting down). Call
        it in the event loop's thread."""
        self.closed = True
        for sub in list(self.subscribers):
            sub.offer(None)
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _run(self) -> None:
        idle_since = None
        try:
            self.last = await run_in_threadpool(self._max_id)
            self._ready.set()
            while not self.closed:
                await asyncio.sleep(self.poll)
                if not self.subscribers:
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > LINGER:
                        return
                    continue
                idle_since = None
                await self._step()
        except asyncio.CancelledError:
            pass
        except Exception:  # the database went away: end the streams; clients reconnect and resume
            log.exception("the event stream's reader failed")
        finally:
            self._ready.set()
            for sub in list(self.subscribers):
                sub.offer(None)
            self.subscribers.clear()
            self._task = None

    async def _step(self) -> None:
        now = time.monotonic()
        self.holes = {i: t for i, t in self.holes.items() if now - t < HOLE_SECONDS}
        rows = await run_in_threadpool(self._read, self.last, sorted(self.holes))
        self.reads += 1
        for e in rows:
            if e["id"] in self.holes:
                del self.holes[e["id"]]
            elif e["id"] > self.last:
                self.holes.update((i, now) for i in range(self.last + 1, min(e["id"], self.last + 1 + 100)))
                self.last = e["id"]
            for sub in list(self.subscribers):
                sub.offer(e)


def _message(event: dict, high: int) -> str:
    return f"id: {high}\nevent: event\ndata: {json.dumps(event, separators=(',', ':'), default=str)}\n\n"


async def stream(request: Request, hub: EventHub, after: int | None, seconds: float, matches) -> AsyncIterator[str]:
    sub, start = await hub.subscribe(matches)
    try:
        yield f"retry: {RETRY_MS}\n: crowbar events after {start if after is None else after}\n\n"
        high = start
        if after is not None and after < start:
            backlog, more = await run_in_threadpool(hub.backlog, after, start, matches)
            if more:  # too far behind to catch up event by event: the page reloads what it shows
                yield f"id: {start}\nevent: reset\ndata: {json.dumps({'after': after, 'last': start})}\n\n"
            else:
                for e in backlog:
                    yield _message(e, start if e is backlog[-1] else max(e["id"], after))
        elif after is not None:
            high = max(after, start)
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or sub.overflowed:
                break
            try:
                e = await asyncio.wait_for(sub.queue.get(), timeout=min(left, KEEPALIVE))
            except TimeoutError:
                if deadline - time.monotonic() > 0:
                    yield ": keepalive\n\n"
                continue
            if e is None:  # the server is shutting down, or the reader stopped
                break
            if after is not None and e["id"] <= after and e["id"] > start:
                continue  # sent already, by an earlier stream of this client
            high = max(high, e["id"])
            yield _message(e, high)
        yield "event: end\ndata: {}\n\n"
    finally:
        hub.unsubscribe(sub)


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"


def response(request: Request, hub: EventHub, after: int | None, seconds: float, matches) -> EventStreamResponse:
    return EventStreamResponse(stream(request, hub, after, seconds, matches),
                               headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
