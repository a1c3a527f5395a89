"""Power drivers: the registry, the manual driver, and the qemu driver against a real qemu.

The VMs have no disk and no network: started with -S they sit before the BIOS, after `cont` they
sit in it. Every qemu a test starts is killed by its PID in teardown.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from crowbar import plugins
from crowbar.power import PowerDriver, PowerError, PowerNode, driver_names, get_driver
from crowbar.power.manual import ManualPower
from crowbar.power.qemu import QemuPower

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="needs qemu-system-x86_64 (Debian package "
                                                     "qemu-system-x86)")
BASE = ["-machine", "pc", "-accel", "tcg", "-m", "64", "-nodefaults", "-S"]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Events:
    """A second QMP monitor on the same VM, to see what the driver's commands did."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.reader = self.sock.makefile("rb")
        assert "QMP" in json.loads(self.reader.readline())
        self.sock.sendall(b'{"execute": "qmp_capabilities"}\n')
        assert json.loads(self.reader.readline()) == {"return": {}}

    def wait(self, name: str) -> dict:
        while True:
            message = json.loads(self.reader.readline())
            if message.get("event") == name:
                return message

    def close(self):
        self.reader.close()
        self.sock.close()


@pytest.fixture
def vm(tmp_path):
    """A paused qemu (plugged in, switched off) with the driver's QMP socket and an event socket."""
    qmp, events = tmp_path / "qmp.sock", tmp_path / "events.sock"
    proc = subprocess.Popen(
        [QEMU, *BASE, "-nographic", "-qmp", f"unix:{qmp},server,nowait",
         "-qmp", f"unix:{events},server,nowait"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: qmp.exists() and events.exists(), 10, "qemu's QMP sockets")
        watcher = Events(events)
        yield proc, PowerNode("vm1", {"qmp": str(qmp), "timeout": 5}), watcher
        watcher.close()
    finally:
        kill(proc.pid)
        proc.wait(10)


def test_the_registry_finds_the_builtin_drivers():
    assert {"qemu", "manual"} <= set(driver_names())
    assert isinstance(get_driver("qemu"), QemuPower)
    assert isinstance(get_driver("manual"), ManualPower)
    assert get_driver("qemu") is get_driver("qemu")
    for group in (plugins.POWER, plugins.JIGS):
        for target in plugins.BUILTIN[group].values():  # the fallback table names importable classes
            assert plugins._import(target).__name__ == target.rpartition(":")[2]
    with pytest.raises(KeyError, match="known: .*manual.*qemu"):
        get_driver("ipmi-from-the-future")


@pytest.mark.parametrize("name", ["qemu", "manual"])
def test_drivers_implement_the_interface_and_describe_themselves(name):
    driver = get_driver(name)
    assert isinstance(driver, PowerDriver)
    description = driver.describe()
    assert description["name"] == name and description["summary"]
    assert isinstance(description["settings"], dict)


def test_manual_tells_the_operator_what_to_do():
    driver = get_driver("manual")
    node = PowerNode("r3u12.example.com", {"instructions": "rack 3, unit 12"})
    assert driver.power_on(node) == ("manual power: please power on r3u12.example.com by hand "
                                     "(rack 3, unit 12)")
    assert "power off" in driver.power_off(PowerNode("n1")) and "n1" in driver.power_off(PowerNode("n1"))
    assert "power cycle" in driver.power_cycle(PowerNode("n1"))
    assert driver.status(node) == "unknown"


def test_qemu_needs_its_socket_setting():
    with pytest.raises(PowerError, match="vm9: power setting 'qmp' is missing"):
        get_driver("qemu").status(PowerNode("vm9"))


def test_qemu_without_a_vm_is_off_and_cannot_be_powered_on_without_a_command(tmp_path):
    driver, node = get_driver("qemu"), PowerNode("vm9", {"qmp": str(tmp_path / "none.sock")})
    assert driver.status(node) == "off"
    assert driver.power_off(node) == "vm9 is already off"
    with pytest.raises(PowerError, match="no VM answers on .*none.sock"):
        driver.power_on(node)
    with pytest.raises(PowerError, match="-daemonize"):
        driver.power_on(PowerNode("vm9", {"qmp": str(tmp_path / "none.sock"), "command": ["true"]}))


def test_qemu_a_busy_monitor_makes_status_unknown(tmp_path):
    path = tmp_path / "mute.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:   # listens, never greets
        mute.bind(str(path))
        mute.listen(1)
        node = PowerNode("vm9", {"qmp": str(path), "timeout": 0.3})
        assert get_driver("qemu").status(node) == "unknown"
        with pytest.raises(PowerError, match="vm9: qemu monitor"):
            get_driver("qemu").power_on(node)


@needs_qemu
def test_qemu_on_cycle_off(vm):
    proc, node, events = vm
    driver = get_driver("qemu")
    assert driver.status(node) == "off"                  # prelaunch: plugged in, not started

    assert driver.power_on(node) == "vm1 powered on"
    events.wait("RESUME")
    assert driver.status(node) == "on"
    assert driver.power_on(node) == "vm1 already on"

    assert driver.power_cycle(node) == "vm1 reset"
    events.wait("RESET")
    assert driver.status(node) == "on"

    assert driver.power_off(node) == "vm1 powered off (qemu quit)"
    proc.wait(10)
    assert driver.status(node) == "off"


@needs_qemu
def test_qemu_cycle_of_a_vm_that_is_off_powers_it_on(vm):
    _, node, events = vm
    driver = get_driver("qemu")
    assert driver.power_cycle(node) == "vm1 powered on"
    events.wait("RESUME")
    assert driver.status(node) == "on"


@needs_qemu
def test_qemu_power_on_starts_the_vm_from_its_command_after_a_power_off(tmp_path):
    qmp, pidfile = tmp_path / "qmp.sock", tmp_path / "vm.pid"
    command = [QEMU, *BASE, "-display", "none", "-qmp", f"unix:{qmp},server,nowait",
               "-daemonize", "-pidfile", str(pidfile)]
    node = PowerNode("vm2", {"qmp": str(qmp), "command": command, "timeout": 5})
    driver = get_driver("qemu")
    pids = []
    try:
        assert driver.status(node) == "off"
        assert driver.power_on(node) == "vm2 powered on (VM process started)"
        pids.append(int(pidfile.read_text()))
        assert driver.status(node) == "on" and alive(pids[0])

        driver.power_off(node)
        wait_for(lambda: not alive(pids[0]), 10, "the first VM process to end")
        assert driver.status(node) == "off"

        assert driver.power_on(node).endswith("(VM process started)")
        pids.append(int(pidfile.read_text()))
        assert pids[1] != pids[0] and driver.status(node) == "on"
    finally:
        if pidfile.exists():
            pids.append(int(pidfile.read_text()))
        for pid in pids:
            kill(pid)


def test_drivers_validate_their_settings_when_they_are_set():
    from crowbar.errors import InvalidInput

    manual, qemu = get_driver("manual"), get_driver("qemu")
    assert manual.validate({}) == {} and manual.validate({"instructions": "rack 3"}) == {"instructions": "rack 3"}
    with pytest.raises(InvalidInput, match="unknown setting 'address'") as refused:
        manual.validate({"address": "10.0.0.1"})
    assert refused.value.field == "settings.address"
    with pytest.raises(InvalidInput, match="setting 'qmp' is required") as refused:
        qemu.validate({"timeout": 3})
    assert refused.value.field == "settings.qmp"
    with pytest.raises(InvalidInput, match="'timeout' must be of type number"):
        qemu.validate({"qmp": "/x.sock", "timeout": True})
    with pytest.raises(InvalidInput, match="positive"):
        qemu.validate({"qmp": "/x.sock", "timeout": 0})
    with pytest.raises(InvalidInput, match="must be a JSON object"):
        qemu.validate(["qmp"])
    assert qemu.validate({"qmp": "/x.sock", "command": ["qemu", "-daemonize"], "timeout": 2.5}) == {
        "qmp": "/x.sock", "command": ["qemu", "-daemonize"], "timeout": 2.5}


def test_plugins_can_be_registered_in_process_and_removed_again():
    class Fake(ManualPower):
        name = "manual"

    builtin = get_driver("manual")
    with plugins.registered(plugins.POWER, "in-process", Fake) as fake:
        assert get_driver("in-process") is fake and "in-process" in driver_names()
        plugins.register(plugins.POWER, "manual", Fake)  # over a built-in
        assert isinstance(get_driver("manual"), Fake)
        plugins.unregister(plugins.POWER, "manual")
        assert type(get_driver("manual")) is type(builtin)  # the built-in is back
    assert "in-process" not in driver_names()
    with pytest.raises(KeyError, match="unknown power driver 'in-process'"):
        get_driver("in-process")
