"""When the server's garbage collector makes its long passes (docs/scaling.md, "The collector").

CPython's cycle collector stops every thread of the process while it runs, for a time that grows
with the number of objects it tracks. A server holding 10,000 agents' long polls tracks ~1.8 million
objects (each held poll is ~150: its coroutines, closures, request and timer), and the collector's
own rule (a full pass when the objects that reached the oldest generation since the last one are a
quarter of it) then ran a full pass every 10-20 s that stopped the event loop for 0.6-1.4 s: the
polls whose hold ended meanwhile were answered that late (benchmarks.md, the long poll at 10,000).

So the server takes the oldest generation out of the collector's automatic passes and makes its full
passes itself, on a clock:

- every `interval` (1 s) it collects the youngest generation (cheap: at most ~700 objects) and then
  freezes everything that survived (`gc.freeze()`, which takes no time: the objects move to the
  permanent generation, which no automatic pass visits). The automatic passes then only ever see
  what was made in the last second. (Collecting the middle generation there too was measured: with
  10,000 held polls it stopped the server for 20-33 ms every second, for no gain.)
- every `full_every` seconds (600) it unfreezes everything and makes one full pass, then freezes
  again. That pass is as long as before (about a second at 10,000 held polls), but once in ten
  minutes instead of every 10-20 s.

What it costs: an object kept alive only by a reference cycle, and old enough to have been frozen,
is freed at the next full pass instead of the next automatic one, so memory may hold up to
`full_every` seconds' worth of such garbage (measured in docs/benchmarks.md, with the peak RSS).
Objects freed by their reference count (nearly all of them) are freed at once, frozen or not.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

from crowbar.server.loop import Loop

log = logging.getLogger(__name__)

FULL_EVERY = 600.0  # seconds between full passes


class Collector(Loop):
    name = "collector"
    interval = 1.0

    def __init__(self, full_every: float = FULL_EVERY, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(interval)
        if full_every <= 0:
            raise ValueError("full_every must be a positive number of seconds")
        self.full_every = full_every
        self._clock = clock
        self._last_full = clock()
        self.full_passes = 0            # full passes made since start (not counting the first)
        self.last_full_seconds = 0.0    # how long the last one stopped the process
        self.last_full_freed = 0        # the objects it found unreachable

    def open(self) -> None:
        # Whatever start-up made (modules, the ORM's mappers, the app) is here to stay.
        gc.collect()
        gc.freeze()
        self._last_full = self._clock()

    def step(self) -> bool:
        if self._clock() - self._last_full >= self.full_every:
            self.full()
        else:
            gc.collect(0)
            gc.freeze()
        return False

    def full(self) -> None:
        """One full pass over every object, frozen or not; then freeze what is left."""
        started = time.perf_counter()
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        self.last_full_seconds = time.perf_counter() - started
        self.last_full_freed = freed
        self.full_passes += 1
        self._last_full = self._clock()
        log.debug("full collection: %d objects freed in %.3f s; %d kept", freed, self.last_full_seconds,
                  gc.get_freeze_count())

    def close(self) -> None:
        gc.unfreeze()  # back to the collector's own rule (tests start servers in their process)

    def health(self) -> dict:
        return super().health() | {"frozen_objects": gc.get_freeze_count(), "full_passes": self.full_passes,
                                   "last_full_ms": round(self.last_full_seconds * 1000, 1)}
