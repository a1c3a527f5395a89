"""One home for process helpers (crowbar.procs): zombies are dead, markers protect reused PIDs,
stop_pid escalates from SIGTERM to SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from crowbar.procs import cmdline, pid_alive, read_pidfile, stop_pid


def test_pid_alive_checks_the_command_line():
    assert pid_alive(os.getpid())
    assert pid_alive(os.getpid(), "python") or pid_alive(os.getpid(), "pytest")
    assert not pid_alive(os.getpid(), "/no/such/lab/dir")
    assert not pid_alive(None) and not pid_alive(2 ** 22 + 1)


def test_a_zombie_is_dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while pid_alive(child.pid):  # exited but not reaped: a zombie
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert os.path.exists(f"/proc/{child.pid}")
    child.wait()


def test_stop_pid_terminates_kills_the_stubborn_and_spares_strangers(tmp_path):
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "polite-marker"])
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
                                 "time.sleep(60)", "stubborn-marker"], stdout=subprocess.PIPE, text=True)
    try:
        assert stubborn.stdout.readline() == "ready\n"
        assert "polite-marker" in cmdline(polite.pid)
        assert not stop_pid(polite.pid, "someone-else")  # not ours: left alone
        assert pid_alive(polite.pid)
        assert stop_pid(polite.pid, "polite-marker", timeout=5)
        assert polite.wait(5) == -signal.SIGTERM
        started = time.monotonic()
        assert stop_pid(stubborn.pid, "stubborn-marker", timeout=0.3)
        assert stubborn.wait(5) == -signal.SIGKILL and time.monotonic() - started < 5
        assert not stop_pid(stubborn.pid)  # gone already
    finally:
        for proc in (polite, stubborn):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_read_pidfile(tmp_path):
    path = tmp_path / "x.pid"
    assert read_pidfile(path) is None
    path.write_text("1234\n")
    assert read_pidfile(path) == 1234
    path.write_text("1234 extra words\n")
    assert read_pidfile(path) == 1234
    path.write_text("")
    assert read_pidfile(path) is None
    path.write_text("garbage")
    assert read_pidfile(path) is None
