"""The manual power driver: for machines nothing can power remotely, a person does it.

Every action succeeds at once and returns what the operator has to do; status is unknown.
"""

from __future__ import annotations

from crowbar.power.base import PowerDriver, PowerNode, Setting, Status


class ManualPower(PowerDriver):
    name = "manual"
    summary = "no remote power control: each action tells the operator what to do"
    settings = {"instructions": Setting("optional: where the machine is, how to reach it")}
    timeout = 5.0

    def power_on(self, node: PowerNode) -> str:
        return self._ask(node, "power on")

    def power_off(self, node: PowerNode) -> str:
        return self._ask(node, "power off (hold the power button)")

    def power_cycle(self, node: PowerNode) -> str:
        return self._ask(node, "power cycle (off, then on again)")

    def status(self, node: PowerNode) -> Status:
        return "unknown"

    @staticmethod
    def _ask(node: PowerNode, action: str) -> str:
        where = node.settings.get("instructions")
        return f"manual power: please {action} {node.name} by hand" + (f" ({where})" if where else "")
