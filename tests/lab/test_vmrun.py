"""crowbar.lab.vmrun against a real qemu: every reset is a new qemu process (a cold start), any
other end (power off, a signal) ends the wrapper; the qemu power driver drives it as a plain VM.

The VMs are tiny (64 MB, no disk, SeaBIOS with nothing to boot): what is tested is the process
around them. Every process a test starts is killed by its PID in teardown."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crowbar.lab.vmrun import EVENTS_SOCKET, LOG
from crowbar.power import PowerError, PowerNode, get_driver
from crowbar.power.qemu import Qmp
from crowbar.procs import cmdline, pid_alive, read_pidfile

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="needs qemu-system-x86_64 (Debian package qemu-system-x86)")
REPO = Path(__file__).resolve().parents[2]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return value


def wrappers(directory: Path) -> list[int]:
    """The vmrun processes whose command line names `directory`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and pid_alive(int(entry.name)):
            line = cmdline(int(entry.name))
            if "crowbar.lab.vmrun" in line and str(directory) in line:
                found.append(int(entry.name))
    return found


@pytest.fixture
def machine(tmp_path):
    """A VM's daemonizing command under vmrun, its power node, and cleanup of whatever runs."""
    qmp, pidfile = tmp_path / "qmp.sock", tmp_path / "qemu.pid"
    command = [sys.executable, "-m", "crowbar.lab.vmrun", "--", QEMU, "-name", "vmt", "-machine", "pc",
               "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none", "-S",
               "-qmp", f"unix:{qmp},server=on,wait=off", "-daemonize", "-pidfile", str(pidfile)]
    node = PowerNode("vmt", {"qmp": str(qmp), "command": command, "timeout": 10})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    yield command, node, pidfile, env
    for pid in [*wrappers(tmp_path), read_pidfile(pidfile)]:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_the_command_daemonizes_and_every_reset_is_a_new_qemu(machine, tmp_path):
    command, node, pidfile, env = machine
    driver = get_driver("qemu")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    first = read_pidfile(pidfile)
    assert pid_alive(first) and len(wrappers(tmp_path)) == 1
    assert (tmp_path / EVENTS_SOCKET).exists()
    assert driver.status(node) == "off"  # -S: plugged in, switched off
    assert driver.power_on(node) == "vmt powered on"
    assert driver.status(node) == "on"

    # the driver's cycle (QMP system_reset): the process ends and a new one runs, not paused
    assert driver.power_cycle(node) == "vmt reset"
    second = wait_for(lambda: (pid := read_pidfile(pidfile)) != first and pid_alive(pid) and pid, 30,
                      "a new qemu after the reset")
    assert not pid_alive(first)
    wait_for(lambda: driver.status(node) == "on", 30, "the new qemu to run")

    # the guest's own reset (a write to the reset control register, port 0xcf9, as an OS reboot does)
    with Qmp(node.setting("qmp")) as qmp:
        qmp.execute("human-monitor-command", **{"command-line": "o /b 0xcf9 0x06"})
    third = wait_for(lambda: (pid := read_pidfile(pidfile)) not in (first, second) and pid_alive(pid) and pid,
                     30, "a new qemu after the guest's reset")
    wait_for(lambda: driver.status(node) == "on", 30, "the third qemu to run")
    log = (tmp_path / LOG).read_text()
    assert "(host-qmp-system-reset): cold start #1" in log and "(guest-reset): cold start #2" in log
    assert len(wrappers(tmp_path)) == 1

    # power off (quit): no new qemu, and the wrapper ends with it
    assert driver.power_off(node) == "vmt powered off (qemu quit)"
    wait_for(lambda: not wrappers(tmp_path), 30, "the wrapper to end")
    assert not pid_alive(third) and driver.status(node) == "off"
    assert "ended (host-qmp-quit)" in (tmp_path / LOG).read_text()

    # and the driver starts it again from its command, as after any power off
    assert driver.power_on(node) == "vmt powered on (VM process started)"
    assert driver.status(node) == "on" and len(wrappers(tmp_path)) == 1


def test_a_signal_to_the_wrapper_stops_its_vm(machine, tmp_path):
    command, node, pidfile, env = machine
    assert subprocess.run(command, env=env, capture_output=True, timeout=60).returncode == 0
    vm, (wrapper,) = read_pidfile(pidfile), wrappers(tmp_path)
    os.kill(wrapper, signal.SIGTERM)
    wait_for(lambda: not pid_alive(vm) and not pid_alive(wrapper), 30, "the VM and its wrapper to end")
    assert get_driver("qemu").status(node) == "off"


def test_a_qemu_that_cannot_start_fails_the_command_with_its_error(machine, tmp_path):
    command, _, pidfile, env = machine
    done = subprocess.run([*command, "-no-such-option"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "-no-such-option" in done.stderr and "Traceback" not in done.stderr
    assert not wrappers(tmp_path) and not pid_alive(read_pidfile(pidfile))


def test_a_command_without_a_pid_file_is_refused_in_one_line():
    done = subprocess.run([sys.executable, "-m", "crowbar.lab.vmrun", "--", "qemu-system-x86_64", "-S"],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "-pidfile" in done.stderr


def test_the_driver_reports_a_wrapper_that_fails_as_a_power_error(machine, tmp_path):
    command, node, _, _ = machine
    bad = PowerNode("vmt", {**node.settings, "command": [*command, "-no-such-option"]})
    with pytest.raises(PowerError, match="the VM command failed"):
        get_driver("qemu").power_on(bad)
