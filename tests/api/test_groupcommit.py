"""api/groupcommit.GroupCommit: items that arrive together go in one batch, each gets its own answer."""

from __future__ import annotations

import asyncio
import threading
import time

import anyio.to_thread

from crowbar.api.groupcommit import GroupCommit


async def _in_thread(fn, *args):
    return await anyio.to_thread.run_sync(lambda: fn(*args))


def _doubling(batches: list[list]):
    def run(items: list) -> list:
        batches.append(list(items))
        time.sleep(0.05)  # the unit of work: what arrives meanwhile waits for the next batch
        return [ValueError(f"refused {i}") if i < 0 else 2 * i for i in items]
    return run


def test_items_that_arrive_together_share_a_batch_and_keep_their_own_answers():
    batches: list[list] = []
    group = GroupCommit(_doubling(batches), _in_thread)

    async def burst():
        first = asyncio.ensure_future(group.submit(1))
        await asyncio.sleep(0.01)  # its batch is being written: the others arrive meanwhile
        rest = await asyncio.gather(*(group.submit(i) for i in [2, -3, 4, 5]), return_exceptions=True)
        return [await first, *rest]

    answers = asyncio.run(burst())
    assert answers[:2] == [2, 4] and answers[3:] == [8, 10]
    assert isinstance(answers[2], ValueError) and str(answers[2]) == "refused -3"
    assert batches == [[1], [2, -3, 4, 5]]  # the first alone, at once; the rest together
    assert group.batches == 2 and group.largest == 4


def test_a_batch_holds_at_most_most_items():
    batches: list[list] = []
    group = GroupCommit(_doubling(batches), _in_thread, most=3)

    async def burst():
        return await asyncio.gather(*(group.submit(i) for i in range(8)))

    assert asyncio.run(burst()) == [2 * i for i in range(8)]
    assert max(len(b) for b in batches) == 3 and sorted(sum(batches, [])) == list(range(8))


def test_a_failed_batch_is_each_items_answer():
    def run(items):
        raise RuntimeError("the unit of work failed")

    group = GroupCommit(run, _in_thread)

    async def burst():
        return await asyncio.gather(*(group.submit(i) for i in range(3)), return_exceptions=True)

    assert [str(a) for a in asyncio.run(burst())] == ["the unit of work failed"] * 3


def test_two_event_loops_at_once_each_get_their_answers():
    """Tests run an event loop per client, sometimes two at once on one app: the items one loop
    has waiting must not be lost when the other submits."""
    batches: list[list] = []
    group = GroupCommit(_doubling(batches), _in_thread)
    answers: dict[str, object] = {}
    waiting = threading.Event()

    def first() -> None:
        async def two():
            a = asyncio.ensure_future(group.submit(1))
            await asyncio.sleep(0.01)  # 1's batch is being written
            b = asyncio.ensure_future(group.submit(2))  # 2 waits for the next
            await asyncio.sleep(0)
            waiting.set()
            return await asyncio.wait_for(asyncio.gather(a, b), 5)
        answers["first"] = asyncio.run(two())

    def second() -> None:
        waiting.wait(5)
        answers["second"] = asyncio.run(asyncio.wait_for(group.submit(3), 5))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert answers == {"first": [2, 4], "second": 6}
