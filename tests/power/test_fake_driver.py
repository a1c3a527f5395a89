"""The fake power driver (simulated machines): settings validated like every driver's, state and
actions recorded in the process and, with `state_dir`, in a file per node."""

from __future__ import annotations

import json

import pytest

from crowbar.errors import InvalidInput
from crowbar.power import PowerError, PowerNode, driver_names, get_driver
from crowbar.power.fake import FakePower


@pytest.fixture
def fake():
    FakePower.machines.clear()
    yield get_driver("fake")
    FakePower.machines.clear()


def test_registered_as_a_builtin(fake):
    assert "fake" in driver_names() and isinstance(fake, FakePower)
    assert set(fake.describe()["settings"]) == {"machine", "state_dir", "delay", "fail"}


@pytest.mark.parametrize("settings, field", [
    ([], "settings"),
    ({"nope": 1}, "settings.nope"),
    ({"machine": 5}, "settings.machine"),
    ({"machine": "has space"}, "settings.machine"),
    ({"machine": "x" * 129}, "settings.machine"),
    ({"state_dir": "relative/dir"}, "settings.state_dir"),
    ({"state_dir": "/a\0b"}, "settings.state_dir"),
    ({"delay": -1}, "settings.delay"),
    ({"delay": 61}, "settings.delay"),
    ({"delay": True}, "settings.delay"),
    ({"delay": "1"}, "settings.delay"),
    ({"delay": 10 ** 400}, "settings.delay"),
    ({"fail": "explode"}, "settings.fail"),
])
def test_bad_settings_are_refused_naming_the_setting(fake, settings, field):
    with pytest.raises(InvalidInput) as exc:
        fake.validate(settings)
    assert exc.value.field == field


def test_good_settings_are_kept(fake, tmp_path):
    settings = {"machine": "sim-00001", "state_dir": str(tmp_path), "delay": 0.5, "fail": "cycle"}
    assert fake.validate(settings) == settings
    assert fake.validate({}) == {}
    assert fake.validate({"machine": None}) == {}


def test_actions_record_the_power_state_and_boots(fake):
    node = PowerNode("n1.example.com", {"machine": "sim-1"})
    assert fake.status(node) == "off" and fake.state(node) is None
    assert "is on, boot 1" in fake.power_on(node)
    assert fake.status(node) == "on"
    fake.power_on(node)  # already on: not a new boot
    assert fake.state(node)["boots"] == 1
    assert "is on, boot 2" in fake.power_cycle(node)
    fake.boot_device(node, "pxe")
    assert "is off" in fake.power_off(node)
    fake.soft_off(node)
    state = fake.state(node)
    assert state["power"] == "off" and state["boots"] == 2 and state["boot_device"] == "pxe"
    assert [a["action"] for a in state["actions"]] == ["on", "on", "cycle", "boot-device", "off", "soft-off"]
    with pytest.raises(PowerError, match="boot device"):
        fake.boot_device(node, "floppy")


def test_state_dir_holds_a_file_per_node(fake, tmp_path):
    node = PowerNode("n2.example.com", {"state_dir": str(tmp_path / "power")})
    fake.power_cycle(node)
    assert json.loads((tmp_path / "power" / "n2.example.com.json").read_text())["power"] == "on"
    FakePower.machines.clear()  # another process (the server) sees the same state through the file
    assert fake.status(node) == "on"


def test_fail_and_delay_settings(fake):
    node = PowerNode("n3.example.com", {"fail": "on"})
    with pytest.raises(PowerError, match="fails"):
        fake.power_on(node)
    assert fake.state(node) is None  # a failed action changes nothing
    assert "is off" in fake.power_off(PowerNode("n4", {"delay": 0.01}))
