"""server/malloc.py: the server's threads share two C heaps, not one each."""

from __future__ import annotations

import subprocess
import sys

from crowbar.server import malloc

# each of 6 threads allocates and frees; glibc's malloc_stats() then lists the arenas on stderr
PROBE = """
import ctypes, sys, threading
from crowbar.server import malloc
if sys.argv[1] == "limit":
    assert malloc.limit_arenas()
def work():
    for _ in range(50):
        held = [bytearray(300_000) for _ in range(4)]
        del held
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(None).malloc_stats()
"""


def arenas(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)})
    assert done.returncode == 0, done.stderr
    return sum(1 for line in done.stderr.splitlines() if line.startswith("Arena "))


def test_threads_get_at_most_two_arenas_once_limited():
    assert arenas("free") > malloc.ARENAS  # glibc's own way: a heap per thread that allocates
    assert 1 <= arenas("limit") <= malloc.ARENAS


def test_the_operators_malloc_arena_max_is_left_to_glibc(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert malloc.limit_arenas() is False
