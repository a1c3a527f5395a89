"""Processes by PID: is it alive, is it ours, stop it. The one home for these helpers (the server's
reaper, the provisioner's orphaned dnsmasq, the supervisor, the lab and the demo all use it).

"Alive" reads /proc/PID/stat: a zombie (exited, not yet reaped by its parent) counts as gone, and
a process of another user counts as alive (os.kill(pid, 0) would say PermissionError). A `marker`
is a string the process's command line must contain before it is believed to be ours: a PID that
was reused by an unrelated process is never signalled.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


class StillRunning(OSError):
    """A process survived SIGKILL (it is stuck in the kernel, or it is not ours to kill)."""


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def cmdline(pid: int) -> str:
    """The process's command line, arguments joined by spaces ("" when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pid_alive(pid: int | None, marker: str | None = None) -> bool:
    """Whether `pid` runs (zombies count as gone) and, given `marker`, its command line contains it."""
    if not pid or pid < 0:
        return False
    if _state(pid) in (None, "Z", "X"):
        return False
    return marker is None or marker in cmdline(pid)


def read_pidfile(path: str | Path) -> int | None:
    """The PID in a pid file (its first word), or None if there is no such file or no number in it."""
    try:
        words = Path(path).read_text().split()
        return int(words[0]) if words else None
    except (OSError, ValueError):
        return None


def stop_pid(pid: int | None, marker: str | None = None, timeout: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout` seconds; True if the process was running (and is now
    gone), False if it was not running or not ours (see `marker`). StillRunning if SIGKILL fails."""
    if not pid_alive(pid, marker):
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return True
            time.sleep(0.05)
    if pid_alive(pid):
        raise StillRunning(f"process {pid} survived SIGKILL")
    return True
