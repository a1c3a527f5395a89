"""The server's collector policy (crowbar/server/collector.py): what survives a round is frozen out
of the automatic passes, so those only see what was made since; garbage held in a frozen cycle
waits for the full pass on the clock, which frees it."""

from __future__ import annotations

import gc
import weakref

import pytest

from crowbar.server.collector import Collector


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Node:  # an object that can sit in a reference cycle and be watched through a weak reference
    pass


def cycle() -> Node:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a


@pytest.fixture
def collector():
    clock = Clock()
    c = Collector(full_every=600, clock=clock)
    c.clock = clock
    c.open()
    try:
        yield c
    finally:
        c.close()
        gc.collect()


def test_open_freezes_what_start_up_made_and_close_gives_it_back(collector):
    assert gc.get_freeze_count() > 0
    collector.close()
    assert gc.get_freeze_count() == 0


def test_a_round_freezes_survivors_and_the_full_pass_on_the_clock_frees_frozen_cycles(collector):
    kept = [Node() for _ in range(1000)]
    before = gc.get_freeze_count()
    collector.step()
    assert gc.get_freeze_count() >= before + 1000  # survivors are now out of the automatic passes
    # A cycle that becomes garbage after it was frozen: no automatic or explicit pass frees it ...
    held = cycle()
    ref = weakref.ref(held)
    collector.step()
    del held
    assert ref() is not None
    gc.collect()
    assert ref() is not None, "a frozen cycle is not visited by a pass over the other generations"
    # ... until the full pass, when the clock says so
    collector.clock.now = 599.0
    collector.step()
    assert ref() is not None and collector.full_passes == 0
    collector.clock.now = 600.0
    collector.step()
    assert ref() is None and collector.full_passes == 1 and collector.last_full_freed >= 2
    assert gc.get_freeze_count() >= len(kept)  # what is left is frozen again
    health = collector.health()
    assert health["full_passes"] == 1 and health["frozen_objects"] == gc.get_freeze_count()


def test_a_young_cycle_is_freed_by_the_round_itself(collector):
    ref = weakref.ref(cycle())  # garbage before any round froze it
    collector.step()
    assert ref() is None


def test_the_interval_between_full_passes_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        Collector(full_every=0)
