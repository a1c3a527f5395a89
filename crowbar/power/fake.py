"""The fake power driver: for simulated machines (`crowbar lab simulate`, benchmarks/fleet.py).

Nothing is powered: each action is recorded, and the node's power state follows it, as a real
BMC's would (on, off; a cycle leaves it on and counts a boot). The state lives in this process
(`FakePower.machines`, by node name) and, when the node's settings name a `state_dir`, in a JSON
file there (`<state_dir>/<node name>.json`), so that whoever simulates the machine on the same host
(or a test) sees what the server asked for. Settings are validated like every driver's: unknown or
ill-typed ones are refused when they are set.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

from crowbar.errors import InvalidInput
from crowbar.power.base import PowerDriver, PowerError, PowerNode, Setting, Status

MAX_DELAY = 60.0
ACTIONS = ("on", "off", "cycle", "soft-off", "boot-device")
MACHINE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class FakePower(PowerDriver):
    name = "fake"
    summary = "simulated machines: records each action and the power state it leaves, powers nothing"
    settings = {
        "machine": Setting("optional: the simulated machine's id (letters, digits, . _ : -)"),
        "state_dir": Setting("optional: an absolute directory where each node's power state is kept "
                             "as <node name>.json, for a simulator on this host"),
        "delay": Setting("optional: seconds each action takes (0 to 60)", types=(int, float)),
        "fail": Setting("optional: an action that fails (on, off, cycle, soft-off, boot-device), "
                        "for testing how failures are handled"),
    }
    timeout = 90.0

    # node name -> {"power": on|off, "boots": n, "actions": [...]}: every node this process powered
    machines: dict[str, dict] = {}
    _lock = threading.Lock()

    def validate(self, settings) -> dict:
        settings = super().validate(settings)
        machine = settings.get("machine")
        if machine is not None and not MACHINE_RE.match(machine):
            raise InvalidInput("power driver fake: setting 'machine' must be 1-128 letters, digits, '.', '_', "
                               "':' or '-'", field="settings.machine")
        state_dir = settings.get("state_dir")
        if state_dir is not None and (not os.path.isabs(state_dir) or "\0" in state_dir or len(state_dir) > 1024):
            raise InvalidInput("power driver fake: setting 'state_dir' must be an absolute path",
                               field="settings.state_dir")
        delay = settings.get("delay")
        if delay is not None and not 0 <= delay <= MAX_DELAY:
            raise InvalidInput(f"power driver fake: setting 'delay' must be 0 to {MAX_DELAY:g} seconds",
                               field="settings.delay")
        fail = settings.get("fail")
        if fail is not None and fail not in ACTIONS:
            raise InvalidInput(f"power driver fake: setting 'fail' must be one of {', '.join(ACTIONS)}",
                               field="settings.fail")
        return settings

    # -- the verbs -------------------------------------------------------------------------------
    def power_on(self, node: PowerNode) -> str:
        return self._act(node, "on", "on")

    def power_off(self, node: PowerNode) -> str:
        return self._act(node, "off", "off")

    def power_cycle(self, node: PowerNode) -> str:
        return self._act(node, "cycle", "on")

    def soft_off(self, node: PowerNode) -> str:
        return self._act(node, "soft-off", "off")

    def boot_device(self, node: PowerNode, device: str) -> str:
        if device not in ("pxe", "disk", "http"):
            raise PowerError(f"{node.name}: boot device {device!r}: expected pxe, disk or http")
        return self._act(node, "boot-device", None, device)

    def status(self, node: PowerNode) -> Status:
        state = self.state(node)
        return state["power"] if state else "off"

    # -- state -----------------------------------------------------------------------------------
    @staticmethod
    def _file(node: PowerNode) -> Path | None:
        state_dir = node.settings.get("state_dir")
        return Path(state_dir) / f"{node.name}.json" if state_dir else None

    @classmethod
    def _load(cls, node: PowerNode) -> dict | None:
        path = cls._file(node)
        if path is not None:
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                pass
        known = cls.machines.get(node.name)
        return json.loads(json.dumps(known)) if known else None

    @classmethod
    def state(cls, node: PowerNode) -> dict | None:
        """What the driver knows of the node: {"power", "boots", "boot_device", "actions"}; None if
        it was never powered (by this process, or through its state file)."""
        with cls._lock:
            return cls._load(node)

    def _act(self, node: PowerNode, action: str, power: str | None, device: str | None = None) -> str:
        delay = float(node.settings.get("delay") or 0)
        if delay:
            time.sleep(delay)
        if node.settings.get("fail") == action:
            raise PowerError(f"{node.name}: fake power {action} fails (setting 'fail')")
        with self._lock:
            state = self._load(node) or {"power": "off", "boots": 0, "boot_device": None, "actions": []}
            if power is not None:
                if power == "on" and (action == "cycle" or state["power"] != "on"):
                    state["boots"] += 1
                state["power"] = power
            if device is not None:
                state["boot_device"] = device
            entry = {"action": action, "at": round(time.time(), 3)} | ({"device": device} if device else {})
            state["actions"] = (state["actions"] + [entry])[-20:]
            self.machines[node.name] = state
            path = self._file(node)
            if path is not None:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(".tmp")
                    tmp.write_text(json.dumps(state))
                    tmp.replace(path)
                except OSError as exc:
                    raise PowerError(f"{node.name}: fake power could not record its state in {path}: {exc}") from None
        machine = node.settings.get("machine")
        return (f"fake power {action}: {node.name}" + (f" (machine {machine})" if machine else "")
                + f" is {state['power']}, boot {state['boots']}")
