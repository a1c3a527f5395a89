"""The one shape of every long-running loop in the server: a named thread that calls `step()`,
then waits `interval` seconds or until `wake()`; a step that reports more work is followed at once.
An exception in a step is logged and the loop carries on (the step's transaction rolled back; the
next round retries). `stop()` ends the loop and joins its thread, then runs `close()`.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class Loop:
    name = "loop"
    interval = 1.0      # seconds between idle rounds

    def __init__(self, interval: float | None = None):
        if interval is not None:
            self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None  # the last step's failure, None once a step succeeds

    # -- what a loop does ---------------------------------------------------------------------
    def open(self) -> None:
        """Before the first step, in the caller's thread (registration, recovery)."""

    def step(self) -> bool:
        """One round; True when there may be more work right away."""
        raise NotImplementedError

    def close(self) -> None:
        """After the last step, in the thread that called `stop()`."""

    # -- running it ---------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"the {self.name} loop is already running")
        self.open()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def health(self) -> dict:
        """{"ok": bool, "detail"?}: the thread runs and its last step did not fail."""
        if self._thread is None or not self._thread.is_alive():
            return {"ok": False, "detail": "the thread is not running"}
        if self.last_error is not None:
            return {"ok": False, "detail": f"the last step failed: {self.last_error}"}
        return {"ok": True}

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the %s loop did not stop within %gs", self.name, timeout)
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.step()
                self.last_error = None
            except Exception as exc:  # keep going; the failure is in the log and its transaction rolled back
                log.exception("%s step failed", self.name)
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                busy = False
            if not busy:
                self._wake.wait(self.interval)
                self._wake.clear()
