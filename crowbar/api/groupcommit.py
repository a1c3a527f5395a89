"""Group commit: requests of one kind that arrive together are written together.

A machine's discovery post is the hottest write of a rack powered on at once, and most of its cost
is the unit of work around it (a session, SQLite's write lock, the commit, the thread's trip) and
the statements each new node takes (its row, its MACs, token, events, roles, tags) rather than its
own data. `GroupCommit` lets each request put its item in a queue and wait in the event loop; one
task at a time takes every item waiting (at most `most`), runs `run(items)` in a worker thread
among the agents' bounded writers (`AgentWaiters.write`), and hands each request its own answer or
exception. Under load the batch is whatever arrived while the previous one ran; a lone request is
a batch of one, at once (no timer: nothing waits for company).

`run` answers one result per item, an exception for an item it refused; an exception raised by
`run` itself (the whole unit of work failed: a commit that lost a race with another server) is
every item's answer, so `run` itself falls back to items one by one where that is safer.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(self, run: Callable[[list[T]], list[R | BaseException]],
                 write: Callable[..., Awaitable[list[R | BaseException]]], most: int = 250) -> None:
        self.run, self.write, self.most = run, write, most
        self.batches = 0  # batches run (for tests and benchmarks)
        self.largest = 0  # the most items one batch held
        # what waits, and the task draining it, per event loop (the server runs one; tests run a
        # loop per client, sometimes two at once)
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue] = weakref.WeakKeyDictionary()

    async def submit(self, item: T) -> R:
        """`item`'s answer from the batch it joins (its exception raised here)."""
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _Queue()
        future = loop.create_future()
        queue.waiting.append((item, future))
        if queue.task is None or queue.task.done():
            queue.task = loop.create_task(self._drain(queue))
        return await future

    async def _drain(self, queue: "_Queue") -> None:
        while queue.waiting:
            batch, queue.waiting = queue.waiting[:self.most], queue.waiting[self.most:]
            self.batches += 1
            self.largest = max(self.largest, len(batch))
            try:
                answers = await self.write(self.run, [item for item, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - the batch's failure is each of its requests' answer
                answers = [exc] * len(batch)
            for (_, future), answer in zip(batch, answers):
                if future.done():  # its request went away (the client hung up)
                    continue
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)


class _Queue:
    """One event loop's items waiting for a batch, and the task that drains them."""

    def __init__(self) -> None:
        self.waiting: list[tuple[object, asyncio.Future]] = []
        self.task: asyncio.Task | None = None
