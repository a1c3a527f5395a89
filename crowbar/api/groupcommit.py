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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[tuple[T, asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def submit(self, item: T) -> R:
        """`item`'s answer from the batch it joins (its exception raised here)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # tests run a loop per client: what the old one held is gone with it
            self._loop, self._waiting, self._task = loop, [], None
        future = loop.create_future()
        self._waiting.append((item, future))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:self.most], self._waiting[self.most:]
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
