"""The power driver interface and the registry that finds drivers by name.

Four verbs and a description, because that is what every way of powering a machine
has in common:

- `qemu` (the lab) speaks QMP to the VM's monitor socket;
- `manual` tells the operator what to do;
- `ipmi` (crowbar.power.ipmi) speaks IPMI 2.0 LAN (RMCP+) to a BMC with pyghmi;
- `redfish` (crowbar.power.redfish) speaks Redfish to a BMC with sushy.

Besides the four verbs, a driver may offer `soft_off` (the OS is asked to shut down) and
`boot_device` (pxe, disk or http for the next boot only); the defaults refuse with a PowerError.

Driver-specific data lives in `PowerNode.settings`, so new drivers need no new fields. A driver
declares those settings (`settings`: name -> Setting, shown by `crowbar nodes power-drivers` and
`GET /api/v2/power_drivers`) and checks them in `validate`, which runs when they are set: bad or
missing credentials are refused then, not at 3 a.m. when the node needs a power cycle.

Actions run in the server's power worker, never inside a request or a transaction; each gets
`timeout` seconds (a class attribute), after which the request fails and the call is abandoned.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from crowbar import plugins
from crowbar.errors import InvalidInput

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


@dataclass(frozen=True)
class Setting:
    """One of a driver's settings: what it means, whether it is required, whether it is a secret
    (never shown back), and the JSON types its value may have."""

    description: str
    required: bool = False
    secret: bool = False
    types: tuple[type, ...] = (str,)

    @property
    def kind(self) -> str:
        """The JSON type(s) in words: string, number (an int or a float), list..."""
        if set(self.types) == {int, float}:
            return "number"
        names = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "object"}
        return " or ".join(names.get(t, t.__name__) for t in self.types)

    def to_dict(self) -> dict:
        return {"description": self.description, "required": self.required, "secret": self.secret,
                "type": self.kind}


class PowerDriver(abc.ABC):
    """One way of powering machines. Every action returns a line for the operator's log."""

    name: str = ""
    summary: str = ""
    settings: ClassVar[dict[str, Setting]] = {}
    timeout: float = 30.0  # seconds an action may take before the power worker gives up on it
    timeouts: ClassVar[dict[str, float]] = {}  # longer limits for some actions (bios-apply: a reboot)

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

    def soft_off(self, node: PowerNode) -> str:
        """Ask the OS to shut down (an ACPI power button press); drivers that can, override this."""
        raise PowerError(f"{node.name}: power driver {self.name} has no soft power off")

    def boot_device(self, node: PowerNode, device: str) -> str:
        """Boot from `device` (pxe, disk, http) at the next boot only; drivers that can, override this."""
        raise PowerError(f"{node.name}: power driver {self.name} cannot choose the boot device")

    def apply_bios(self, node: PowerNode, wanted: dict) -> str:
        """Make the BIOS attributes `wanted` (name -> value) the ones in effect: pending settings, a
        reset to apply them, then read back; PowerError naming every attribute that is not as
        wanted, with both values. Drivers that can, override this (`can_apply_bios`)."""
        raise PowerError(f"{node.name}: power driver {self.name} cannot apply BIOS settings")

    @property
    def can_apply_bios(self) -> bool:
        return type(self).apply_bios is not PowerDriver.apply_bios

    def timeout_for(self, action: str) -> float:
        return self.timeouts.get(action, self.timeout)

    def shown(self, settings: dict) -> dict:
        """`settings` as the API and CLI may show them: secret ones (passwords) only as "(set)"."""
        return {key: "(set)" if key in self.settings and self.settings[key].secret else value
                for key, value in (settings or {}).items()}

    def describe(self) -> dict:
        """{"name", "summary", "timeout", "settings": {key: {description, required, secret, type}}},
        for the CLI and the API."""
        return {"name": self.name, "summary": self.summary, "timeout": self.timeout,
                "settings": {key: setting.to_dict() for key, setting in self.settings.items()}}

    def validate(self, settings: Any) -> dict:
        """The settings, checked against `settings` (required ones present, no unknown ones, values
        of the declared types); InvalidInput naming the setting otherwise. Drivers that need more
        (a reachable address, a well-formed command) extend this."""
        if not isinstance(settings, dict):
            raise InvalidInput("power settings must be a JSON object", field="settings")
        unknown = sorted(set(settings) - set(self.settings))
        if unknown:
            raise InvalidInput(f"power driver {self.name}: unknown setting {unknown[0]!r}; known: "
                               f"{', '.join(self.settings) or 'none'}", field=f"settings.{unknown[0]}")
        for key, setting in self.settings.items():
            if key not in settings or settings[key] is None:
                if setting.required:
                    raise InvalidInput(f"power driver {self.name}: setting {key!r} is required "
                                       f"({setting.description})", field=f"settings.{key}")
                continue
            value = settings[key]
            if isinstance(value, bool) and bool not in setting.types or not isinstance(value, setting.types):
                raise InvalidInput(f"power driver {self.name}: setting {key!r} must be of type {setting.kind}",
                                   field=f"settings.{key}")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not _finite(value):
                raise InvalidInput(f"power driver {self.name}: setting {key!r} is out of range", field=f"settings.{key}")
        return {key: value for key, value in settings.items() if value is not None}


def _finite(number: int | float) -> bool:
    """A number the drivers can compute with (10**400 or 1e308 * 10 cannot be a float of seconds)."""
    try:
        return math.isfinite(float(number))
    except OverflowError:
        return False


def driver_names() -> list[str]:
    return plugins.names(plugins.POWER)


def get_driver(name: str) -> PowerDriver:
    """One shared instance per driver (drivers keep no per-node state); UnknownPlugin (a KeyError)
    naming the known drivers if there is none called `name`."""
    return plugins.get(plugins.POWER, name)
