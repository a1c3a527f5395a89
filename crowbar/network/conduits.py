"""Conduits: naming a node's NICs by speed and position instead of by kernel name, so one
template fits machines whose interfaces are called eth0, em1 or enp3s0f0.

Choices:
- References count from 1, as Crowbar 1 did: `1g1` is the first 1g NIC, `1g2` the second.
- NICs are ordered by PCI bus: by the position of the first `bus_order` prefix their bus address
  starts with (the list for this hardware model, from the template's interface_map), then by bus
  address; NICs without a known bus come last; ties are broken by name (eth2 before eth10).
- Each NIC has one speed class, the largest of 10m, 100m, 1g, 10g, 25g, 40g, 100g not above its
  speed (2.5g counts as 1g). An unknown speed counts as 1g: the common case, and a NIC whose
  driver reports nothing should still be usable by the default template.
- `1g2` is the second NIC of class 1g. `+1g2` is the second NIC among those of class 1g or
  faster, nearest class first (all 1g NICs in bus order, then the 10g NICs...); `-1g2` the same
  downwards; `?1g2` tries 1g, then faster classes upwards, then slower ones downwards.
- Several references in a conduit make a team (bond); two references of one conduit may not
  resolve to the same NIC.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from crowbar.errors import InvalidInput
from crowbar.network._fields import field_of
from crowbar.network.model import (
    SPEEDS_MBPS, ConduitMapEntry, InterfaceRef, NetworkTemplate, parse_interface_ref,
    split_conduit_pattern,
)

SPEED_CLASSES = list(SPEEDS_MBPS)  # ascending
ASSUMED_SPEED_CLASS = "1g"
_SPEED_TEXT = re.compile(r"^(\d+(?:\.\d+)?)\s*([mg])?(?:b(?:/?s|ps)?)?$", re.IGNORECASE)


class ConduitError(InvalidInput):
    """A conduit cannot be resolved on a node; the message says what was asked and what the node
    has, e.g. `intf1 needs +10g1; node has eth0 1g, eth1 1g`."""

    def __init__(self, message: str, conduit: str | None = None):
        super().__init__(message, field="conduit")
        self.conduit = conduit


def parse_speed(value: Any) -> int | None:
    """Mb/s from an inventory speed: 1000, "1000", "1g", "10G", "2.5g", "100m", or None."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    match = _SPEED_TEXT.match(str(value).strip())
    if not match:
        raise InvalidInput(f"NIC speed {value!r} is not a number of Mb/s nor like 1g, 100m",
                           field="speed")
    number, unit = float(match.group(1)), (match.group(2) or "m").lower()
    if not math.isfinite(number):  # 400 digits read as inf
        raise InvalidInput(f"NIC speed ({len(str(value))} characters) is out of range", field="speed")
    return round(number * (1000 if unit == "g" else 1))


def format_speed(mbps: int) -> str:
    if mbps >= 1000:
        return f"{mbps / 1000:g}g"
    return f"{mbps}m"


@dataclass(frozen=True)
class Nic:
    name: str
    mac: str | None = None
    speed: int | None = None  # Mb/s; None when the driver does not say
    driver: str | None = None
    bus: str | None = None  # PCI address, e.g. 0000:01:00.0

    @classmethod
    def from_inventory(cls, item: Any) -> Nic:
        """From a dict or an object with name, mac, speed, driver and bus."""
        if isinstance(item, Nic):
            return item
        name = field_of(item, "name")
        if not name:
            raise InvalidInput(f"NIC {item!r} has no name", field="name")
        # What an agent posted: the text fields must be text, or they cannot be sorted or named.
        for key in ("name", "mac", "driver", "bus"):
            value = field_of(item, key)
            if value is not None and not isinstance(value, str):
                raise InvalidInput(f"NIC {str(name)[:40]!r}: {key} {str(value)[:40]!r} is not a string", field=key)
        return cls(name=name, mac=field_of(item, "mac"), speed=parse_speed(field_of(item, "speed")),
                   driver=field_of(item, "driver"), bus=field_of(item, "bus"))

    @property
    def speed_class(self) -> str:
        if self.speed is None:
            return ASSUMED_SPEED_CLASS
        fitting = [cls for cls in SPEED_CLASSES if SPEEDS_MBPS[cls] <= self.speed]
        return fitting[-1] if fitting else SPEED_CLASSES[0]

    def describe(self) -> str:
        if self.speed is None:
            return f"{self.name} {ASSUMED_SPEED_CLASS} (speed unknown)"
        return f"{self.name} {format_speed(self.speed)}"


def _natural_key(name: str) -> list:
    """eth2 before eth10."""
    # ASCII digits only: "²" is a digit to str.isdigit but not to int(), "٣" to \d but not to us;
    # split on [0-9] so that every odd part is a number and every even part text (comparable).
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"([0-9]+)", name))]


def order_nics(nics: Iterable[Any], bus_order: Sequence[str] = ()) -> list[Nic]:
    """NICs in counting order (see the module docstring)."""
    def key(nic: Nic) -> tuple:
        rank = next((i for i, prefix in enumerate(bus_order)
                     if nic.bus and nic.bus.startswith(prefix)), len(bus_order))
        return (rank, nic.bus is None, nic.bus or "", _natural_key(nic.name))

    return sorted((Nic.from_inventory(nic) for nic in nics), key=key)


def bus_order_for(template: NetworkTemplate, product_name: str | None) -> tuple[str, ...]:
    """The bus order of the first interface_map entry matching the DMI product name."""
    if product_name:
        for entry in template.interface_map:
            if re.fullmatch(entry.pattern, product_name.strip()):
                return entry.bus_order
    return ()


def select_conduit_entry(template: NetworkTemplate, nic_count: int,
                         roles: Iterable[str] = ()) -> ConduitMapEntry:
    """The first conduit_map entry whose `<mode>/<nic count>/<role regex>` matches the node.
    The role part must match one of the node's roles (the empty string when it has none)."""
    roles = list(roles) or [""]
    for entry in template.conduit_map:
        mode, count, role = split_conduit_pattern(entry.pattern)
        if (mode.fullmatch(template.mode) and count.fullmatch(str(nic_count))
                and any(role.fullmatch(r) for r in roles)):
            return entry
    tried = ", ".join(e.pattern for e in template.conduit_map) or "none"
    raise ConduitError(f"no conduit_map entry matches {template.mode}/{nic_count}/"
                       f"{','.join(roles)}; patterns: {tried}")


def _classes_to_try(ref: InterfaceRef) -> list[str]:
    i = SPEED_CLASSES.index(ref.speed)
    faster, slower = SPEED_CLASSES[i:], SPEED_CLASSES[i::-1]
    return {"": [ref.speed], "+": faster, "-": slower, "?": faster + slower[1:]}[ref.sign]


def _candidates(ref: InterfaceRef, nics: Sequence[Nic]) -> list[Nic]:
    return [nic for cls in _classes_to_try(ref) for nic in nics if nic.speed_class == cls]


def resolve_conduit(conduit: str, refs: Sequence[str], nics: Sequence[Nic]) -> tuple[Nic, ...]:
    """The NICs `refs` name on a node whose NICs are `nics`, already in counting order."""
    node_has = ", ".join(nic.describe() for nic in nics) or "no NICs"
    resolved: list[Nic] = []
    for text in refs:
        try:
            ref = parse_interface_ref(text)
        except ValueError as exc:
            raise ConduitError(f"{conduit}: {exc}", conduit) from None
        candidates = _candidates(ref, nics)
        if len(candidates) < ref.index:
            raise ConduitError(f"{conduit} needs {text}; node has {node_has}", conduit)
        nic = candidates[ref.index - 1]
        if nic in resolved:
            raise ConduitError(f"{conduit} needs {', '.join(refs)}, but {text} is {nic.name} "
                               f"again; node has {node_has}", conduit)
        resolved.append(nic)
    return tuple(resolved)
