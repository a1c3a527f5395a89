"""The C allocator's arenas: glibc gives each thread that allocates an arena (a heap) of its own,
up to eight per core, and memory freed in one arena is not reused by another's threads. The
server's worker threads (the API's, the agents' bounded readers and writers, the loops) each grew
one: 10,000 simulated machines' deploy took the server to 1,044-1,171 MB of RSS; with two arenas
936-968 MB, and the phase no slower (docs/benchmarks.md, "The agents' other writes together").
Threads allocate little at once under the interpreter's lock, so two arenas cost no contention
worth measuring."""

from __future__ import annotations

import ctypes
import os
import sys

M_ARENA_MAX = -8  # mallopt's parameter (glibc's malloc.h)
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """At most `arenas` malloc arenas from now on (call it before the threads start). Nothing when
    MALLOC_ARENA_MAX is set (glibc reads it itself: the operator's choice) or the C library has no
    mallopt (not glibc). True when the limit was set."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_ARENA_MAX, arenas) == 1
