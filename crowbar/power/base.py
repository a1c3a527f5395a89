"""The power driver interface and the registry that finds drivers by name.

Four verbs and a description, nothing else, because that is what every way of powering a machine
has in common:

- `qemu` (the lab) speaks QMP to the VM's monitor socket;
- `manual` tells the operator what to do;
- an IPMI driver (later) runs `ipmitool -I lanplus -H <address> -U <user> -E chassis power
  on|off|cycle|status` with the node's `address`, `username` and `password` settings, and maps
  "Chassis Power is on/off" to status;
- a Redfish driver (later) POSTs `{"ResetType": "On"|"ForceOff"|"ForceRestart"}` to the system's
  `Actions/ComputerSystem.Reset` and reads `PowerState`, with `address`, `username`, `password`
  and an optional `system` id.

Driver-specific data lives in `PowerNode.settings`, so new drivers need no new fields.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Literal

from crowbar import plugins

Status = Literal["on", "off", "unknown"]

class PowerError(Exception):
    """A power action failed; the message says which node, which action and why."""


@dataclass(frozen=True)
class PowerNode:
    """What a driver needs to know of a node: its name and the driver's own settings."""

    name: str
    settings: dict = field(default_factory=dict)

    def setting(self, key: str):
        try:
            return self.settings[key]
        except KeyError:
            raise PowerError(f"{self.name}: power setting {key!r} is missing") from None


class PowerDriver(abc.ABC):
    """One way of powering machines. Every action returns a line for the operator's log."""

    name: str = ""

    @abc.abstractmethod
    def power_on(self, node: PowerNode) -> str: ...

    @abc.abstractmethod
    def power_off(self, node: PowerNode) -> str:
        """Hard off, like holding the power button: the OS gets no say."""

    @abc.abstractmethod
    def power_cycle(self, node: PowerNode) -> str:
        """Off and on again (a hard reset); a node that is off is simply powered on."""

    @abc.abstractmethod
    def status(self, node: PowerNode) -> Status: ...

    @abc.abstractmethod
    def describe(self) -> dict:
        """{"name", "summary", "settings": {key: meaning}}, for the CLI and the API."""


def driver_names() -> list[str]:
    return plugins.names(plugins.POWER)


def get_driver(name: str) -> PowerDriver:
    """One shared instance per driver (drivers keep no per-node state); UnknownPlugin (a KeyError)
    naming the known drivers if there is none called `name`."""
    return plugins.get(plugins.POWER, name)
