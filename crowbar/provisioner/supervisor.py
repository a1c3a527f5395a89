"""Keep one child process (dnsmasq, or any command) running for as long as its owner wants it.

A thread starts the command, waits for it, and starts it again when it dies, waiting longer after
each quick death (so a broken config does not spin) and starting afresh once a run lasted. `stop`
terminates it by PID, waits, and kills it if it does not go. The child is started through
`setpriv --pdeathsig TERM`, so it also dies when the supervising thread's process dies without
calling `stop` (a crashed server must not leave a DHCP server answering on the admin network).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from crowbar.procs import cmdline, stop_pid

log = logging.getLogger(__name__)


class Supervisor:
    """Runs `argv` and restarts it when it exits, until `stop()`.

    Output goes to `log_path` (appended) or is discarded. `pid` is the running child's PID, or
    None between runs; `starts` counts how many times the command was started.
    """

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path | None = None,
                 min_backoff: float = 0.5, max_backoff: float = 30.0, stable_after: float = 10.0,
                 stop_timeout: float = 5.0, env: dict[str, str] | None = None):
        self.name = name
        self.env = env  # the child's whole environment (None: this process's)
        self.argv = list(argv)
        self.log_path = log_path
        self.min_backoff, self.max_backoff, self.stable_after = min_backoff, max_backoff, stable_after
        self.stop_timeout = stop_timeout
        self.starts = 0
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._started = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"supervisor {self.name} already started")
        self._thread = threading.Thread(target=self._loop, name=f"supervise-{self.name}", daemon=True)
        self._thread.start()

    def wait_running(self, timeout: float = 10.0, *, other_than: int | None = None) -> int:
        """Wait until a child runs (one whose PID is not `other_than`) and return its PID."""
        deadline = time.monotonic() + timeout
        with self._started:
            while True:
                pid = self.pid
                if pid is not None and pid != other_than and _past_setpriv(pid):
                    return pid
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping.is_set():
                    raise TimeoutError(f"{self.name} is not running after {timeout}s")
                self._started.wait(min(left, 0.02 if pid is not None else 0.2))

    def signal(self, sig: int = signal.SIGHUP) -> None:
        """Send `sig` to the running child (SIGHUP: dnsmasq re-reads its host files)."""
        pid = self.pid
        if pid is None:
            raise ProcessLookupError(f"{self.name} is not running")
        os.kill(pid, sig)

    def stop(self) -> None:
        """Stop restarting, terminate the child (SIGTERM, then SIGKILL) and join the thread."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:  # not yet reaped: the PID is still our child's
            stop_pid(proc.pid, timeout=self.stop_timeout)
        if self._thread is not None:
            self._thread.join(self.stop_timeout + 5)

    def __enter__(self) -> Supervisor:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self) -> subprocess.Popen | None:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            return subprocess.Popen(_with_pdeathsig(self.argv), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=self.env)
        except OSError as exc:
            log.error("cannot start %s (%s): %s", self.name, self.argv[0], exc)
            return None
        finally:
            if out is not subprocess.DEVNULL:
                out.close()

    def _loop(self) -> None:
        backoff = self.min_backoff
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    break
                self._proc = self._spawn()
                if self._proc is not None:
                    self.starts += 1
                self._started.notify_all()
            began = time.monotonic()
            code = self._proc.wait() if self._proc is not None else None
            if self._stopping.is_set():
                break
            backoff = self.min_backoff if time.monotonic() - began >= self.stable_after else backoff
            log.warning("%s exited (%s); restarting in %.1fs", self.name, code, backoff)
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff)


def _past_setpriv(pid: int) -> bool:
    """Whether the child has exec'd its command, so setpriv has set the death signal: until then a
    parent killed outright would leave the child behind. A child already gone counts as past."""
    return os.path.basename(cmdline(pid).split(" ", 1)[0]) != "setpriv"


def _with_pdeathsig(argv: list[str]) -> list[str]:
    # setpriv (util-linux) sets the flag and execs, so the PID is the command's own. The kernel
    # sends the signal when the thread that forked the child ends: here, the supervisor thread,
    # which lives exactly as long as the child should.
    return ["setpriv", "--pdeathsig", "TERM", "--", *argv]


