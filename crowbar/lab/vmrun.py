"""A lab VM whose every reset is a cold start: `python -m crowbar.lab.vmrun -- QEMU-ARGV...`.

Why: under TCG, the lab's UEFI (OVMF) VM hung after warm resets, in four CI runs of the lab tests, each
time right after a reset and never after a cold start: a QMP `system_reset` the VM never acted on (no
firmware output at all); the discovery image's boot script fetched, then nothing; GRUB's menu after
the installed OS's own `systemctl reboot`, then nothing. OVMF's warm-reset hangs are a known class
(tianocore/edk2 #12441: "cold boot works correctly every time, only warm reset triggers the hang").
A server's power cycle through its BMC is cold too. So a lab VM never resets warm:

- QEMU-ARGV is the VM's ordinary command line (`Vm.argv()`: paused with -S, -daemonize, -pidfile,
  the power driver's -qmp socket). The wrapper runs it in the foreground with
  `-action reboot=shutdown` (a reset ends the process) and a second QMP monitor of its own,
  `events.sock` beside the pid file, with `wait=on` (qemu starts only once the wrapper is connected,
  so no event is missed).
- A SHUTDOWN event whose reason is a reset (`guest-reset`: the OS rebooted, or the firmware did;
  `host-qmp-system-reset`: a power driver's cycle): when that qemu has exited, the wrapper starts a
  new one, running (without -S): firmware from the top, RAM cleared, the same disk, taps and sockets.
- Any other end (`host-qmp-quit`: powered off; `guest-shutdown`: the OS powered off; a signal) ends
  the wrapper too, with qemu's exit code.
- With -daemonize in QEMU-ARGV the wrapper daemonizes in qemu's stead: the command returns once the
  first qemu answers on its monitor (exit 0), or with qemu's exit code and its last output. So it
  is a valid `command` for the qemu power driver, which requires a daemonizing command.
- qemu's output and one line per cold restart go to `qemu.log` beside the pid file.
- SIGTERM (or SIGINT) to the wrapper stops its qemu and ends it; qemu gets SIGTERM should the wrapper
  die (PR_SET_PDEATHSIG): a VM never runs without its wrapper. Stopping qemu by its pid file ends the
  wrapper as well (the reason is a signal, not a reset).

The IPMI lab does not use it: there ipmi_sim runs qemu itself, and its chassis reset is qemu's.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from crowbar.cli import local

Qmp, QmpError, VmAbsent = local.qmp_client()

RESETS = frozenset({"guest-reset", "host-qmp-system-reset"})
EVENTS_SOCKET = "events.sock"
LOG = "qemu.log"
START_TIMEOUT = 60.0


class StartFailed(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def option(argv: list[str], name: str) -> str | None:
    """The value after `name` in argv (None when absent)."""
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def qemu_argv(argv: list[str], events: Path, running: bool) -> list[str]:
    """What the wrapper runs: argv in the foreground, resets ending the process, its own monitor;
    `running` (a restart after a reset) drops -S."""
    kept = [a for a in argv if a != "-daemonize" and not (running and a == "-S")]
    return kept + ["-action", "reboot=shutdown", "-qmp", f"unix:{events},server=on,wait=on"]


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _log(log, line: str) -> None:
    log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} vmrun: {line}\n".encode())
    log.flush()


def _tail(path: Path, limit: int = 600) -> str:
    try:
        return path.read_bytes()[-limit:].decode(errors="replace").strip()
    except OSError:
        return ""


class Runner:
    def __init__(self, argv: list[str]):
        pidfile = option(argv, "-pidfile")
        if not pidfile:
            raise StartFailed(2, "vmrun: the qemu command line must have -pidfile (its directory holds "
                                 "the wrapper's monitor socket and log)")
        self.argv = argv
        self.dir = Path(pidfile).parent
        self.events = self.dir / EVENTS_SOCKET
        self.log_path = self.dir / LOG
        self.proc: subprocess.Popen | None = None
        self.stopping = False

    def start(self, log, running: bool) -> Qmp:
        """One qemu, up to its monitor answering; StartFailed if it ends or never answers."""
        self.events.unlink(missing_ok=True)
        self.proc = subprocess.Popen(qemu_argv(self.argv, self.events, running), stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise StartFailed(self.proc.returncode or 1, _tail(self.log_path) or "qemu ended at once")
            try:
                qmp = Qmp(self.events, timeout=START_TIMEOUT)
                break
            except (VmAbsent, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    self.proc.terminate()
                    raise StartFailed(1, f"qemu did not open its monitor in {START_TIMEOUT:g} s") from None
                time.sleep(0.02)
        try:
            qmp.execute("query-status")  # answered once the main loop runs
        except (QmpError, ConnectionError, OSError) as exc:
            qmp.close()
            self.proc.wait()
            raise StartFailed(self.proc.returncode or 1, f"qemu ended while starting: {exc}; "
                                                         f"{_tail(self.log_path)}") from None
        return qmp

    def supervise(self, log, qmp: Qmp) -> int:
        """Wait for qemu to end; start it again while its ends are resets. qemu's exit code."""
        restarts = 0
        while True:
            reason = None
            with qmp:
                for event in qmp.events():
                    if event.get("event") == "SHUTDOWN":
                        reason = (event.get("data") or {}).get("reason")
            code = self.proc.wait()
            if self.stopping or reason not in RESETS:
                _log(log, f"qemu (pid {self.proc.pid}) ended ({reason or 'no shutdown event'}), exit code {code}")
                return code
            restarts += 1
            _log(log, f"qemu (pid {self.proc.pid}) ended by a reset ({reason}): cold start #{restarts}")
            try:
                qmp = self.start(log, running=True)
            except StartFailed as exc:
                _log(log, f"the cold start failed: {exc}")
                return exc.code
            _log(log, f"qemu runs again (pid {self.proc.pid})")

    def stop(self, *_):
        self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()


def main(args: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if args is None else args)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m crowbar.lab.vmrun -- QEMU-ARGV...", file=sys.stderr)
        return 2
    try:
        runner = Runner(args)
    except StartFailed as exc:
        print(exc, file=sys.stderr)
        return exc.code
    daemon = "-daemonize" in args
    report = None
    if daemon:
        read_end, write_end = os.pipe()
        if os.fork():  # the caller's side: qemu's -daemonize contract, exit once it runs
            os.close(write_end)
            with os.fdopen(read_end, "rb") as pipe:
                answer = pipe.read().decode(errors="replace")
            code, _, message = answer.partition(" ")
            if message:
                print(message, file=sys.stderr)
            return int(code) if code.isdigit() else 1
        os.close(read_end)
        os.setsid()
        report = os.fdopen(write_end, "wb")
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
    signal.signal(signal.SIGTERM, runner.stop)
    signal.signal(signal.SIGINT, runner.stop)
    with open(runner.log_path, "ab") as log:
        _log(log, f"starting qemu for {option(args, '-name') or runner.dir.name} (resets are cold starts)")
        try:
            qmp = runner.start(log, running=False)
        except StartFailed as exc:
            _log(log, f"qemu did not start: {exc}")
            if report:
                report.write(f"{exc.code} {exc}".encode())
                report.close()
                os._exit(exc.code)
            print(exc, file=sys.stderr)
            return exc.code
        if report:
            report.write(b"0")
            report.close()
        code = runner.supervise(log, qmp)
    if daemon:
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
