"""The network model: networks, conduit maps, and the template that holds them.

Pure data and rules. The DB layer stores what `export_template` returns and runs
`validate_template` before accepting a change, so a bad template is refused up front with a
message naming the network, the field and the reason (Crowbar 1 failed deep inside a Chef run).

Loading (`load_template`, or building a `Network` directly) only parses: it turns strings into
addresses and refuses values of the wrong type. The rules (VLAN bounds, ranges, overlaps, conduit
syntax...) live in `network_problems` / `template_problems`, so an invalid template can still be
loaded, shown and diffed.

Categories, when a network does not give one, come from its name (`CATEGORY_BY_NAME`):
admin -> admin; bmc, bmc_vlan -> bmc; storage -> storage; public and nova_floating -> public
(floating IPs are public addresses); nova_fixed and os_sdn -> tenant (VM traffic and its
tunnels); any other name -> general (Crowbar 2's catch-all category).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, fields
from importlib import resources
from itertools import combinations
from typing import Any, Collection, Iterator, Mapping, NamedTuple, Union

import yaml

from crowbar.errors import InvalidInput

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

VLAN_MIN, VLAN_MAX = 1, 4094
BOND_MODE_MIN, BOND_MODE_MAX = 0, 6
TEAM_MIN, TEAM_MAX = 2, 8
DEFAULT_TEAM_MODE = 5
DEFAULT_MTU = 1500
# 576 is the smallest datagram every IPv4 host must accept, 1280 the IPv6 minimum link MTU;
# 9216 is the largest jumbo frame common switches carry.
MTU_MIN = {4: 576, 6: 1280}
MTU_MAX = 9216
TEMPLATE_MODES = ("single", "dual", "team")
# The BMC's own port: configured through IPMI, never as an operating-system interface, so it
# needs no conduit_map entry.
BMC_CONDUIT = "bmc"

CATEGORY_BY_NAME = {
    "admin": "admin",
    "bmc": "bmc",
    "bmc_vlan": "bmc",
    "storage": "storage",
    "public": "public",
    "nova_floating": "public",
    "nova_fixed": "tenant",
    "os_sdn": "tenant",
}
DEFAULT_CATEGORY = "general"

# Interface references name NICs by speed and position ("the second 1g NIC"), not by kernel name.
REF_PATTERN = re.compile(r"^([-+?]?)(\d{1,3}[mg])(\d+)$")
SPEEDS_MBPS = {"10m": 10, "100m": 100, "1g": 1000, "10g": 10000, "25g": 25000, "40g": 40000,
               "100g": 100000}


class NetworkValidationError(InvalidInput):
    """A template value breaks a rule; `network` is None for template-level fields."""

    def __init__(self, network: str | None, field: str, reason: str):
        where = f"network {network!r}" if network is not None else "template"
        super().__init__(f"{where}: field {field!r}: {reason}", field=field)
        self.network = network
        self.reason = reason


def infer_category(network_name: str) -> str:
    return CATEGORY_BY_NAME.get(network_name, DEFAULT_CATEGORY)


class InterfaceRef(NamedTuple):
    """A parsed conduit reference such as `+10g2`; `index` counts from 1 like Crowbar 1."""

    sign: str  # "" exact speed, "+" or faster, "-" or slower, "?" any speed
    speed: str  # a key of SPEEDS_MBPS
    index: int

    def __str__(self) -> str:
        return f"{self.sign}{self.speed}{self.index}"


def parse_interface_ref(text: str) -> InterfaceRef:
    """Parse a conduit reference; ValueError says why it is not one."""
    match = REF_PATTERN.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{text!r} is not an interface reference like 1g1, +10g2 or ?1g1")
    sign, speed, index = match.groups()
    if speed not in SPEEDS_MBPS:
        raise ValueError(f"{text!r} has unknown speed {speed!r} (known: {', '.join(SPEEDS_MBPS)})")
    if int(index) < 1:
        raise ValueError(f"{text!r}: interfaces are counted from 1")
    return InterfaceRef(sign, speed, int(index))


def split_conduit_pattern(pattern: str) -> tuple[re.Pattern, re.Pattern, re.Pattern]:
    """`<mode>/<nic count>/<role regex>` as three regexes; the role part may itself hold '/'."""
    parts = pattern.split("/", 2) if isinstance(pattern, str) else []
    if len(parts) != 3:
        raise ValueError(f"{pattern!r} is not <mode>/<nic count>/<role regex>")
    try:
        return tuple(re.compile(part) for part in parts)  # type: ignore[return-value]
    except re.error as exc:
        raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None


class AddressRange(NamedTuple):
    start: IPAddress
    end: IPAddress

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"

    def overlaps(self, other: AddressRange) -> bool:
        return (self.start.version == other.start.version
                and int(self.start) <= int(other.end) and int(other.start) <= int(self.end))


def address_problem(subnet: IPNetwork, address: IPAddress,
                    segment: IPNetwork | None = None) -> str | None:
    """Why `address` cannot be a host address in `subnet`, or None when it can.

    The network and broadcast addresses that matter are those of `segment`, the widest subnet
    sharing this layer-2 segment (default: `subnet` itself); see `segment_subnet`.
    """
    if address.version != subnet.version or address not in subnet:
        return f"{address} is outside {subnet}"
    segment = segment or subnet
    if segment.version == 4 and segment.prefixlen < 31:  # /31 and /32 have no reserved addresses
        if address == segment.network_address:
            return f"{address} is the network address of {segment}"
        if address == segment.broadcast_address:
            return f"{address} is the broadcast address of {segment}"
    return None


def _require_int(network: str | None, name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise NetworkValidationError(network, name, f"expected an integer, got {value!r}")


def _require_bool(network: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise NetworkValidationError(network, name, f"expected true or false, got {value!r}")


def _parse_address(network: str, name: str, value: Any) -> IPAddress:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise NetworkValidationError(network, name, f"{value!r} is not an IP address") from None


def _parse_subnet(network: str, value: Any) -> IPNetwork:
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    if not isinstance(value, str) or "/" not in value:
        raise NetworkValidationError(network, "subnet",
                                     f"{value!r} needs a prefix length or a netmask")
    try:
        return ipaddress.ip_network(value)
    except ValueError as exc:
        raise NetworkValidationError(network, "subnet", f"{value!r}: {exc}") from None


def _parse_range(network: str, range_name: str, value: Any) -> AddressRange:
    field_name = f"ranges.{range_name}"
    if isinstance(value, Mapping):
        if set(value) != {"start", "end"}:
            raise NetworkValidationError(network, field_name, "needs exactly 'start' and 'end'")
        value = (value["start"], value["end"])
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise NetworkValidationError(network, field_name, f"{value!r} is not (start, end)")
    return AddressRange(*(_parse_address(network, field_name, end) for end in value))


@dataclass(frozen=True)
class Network:
    """One Crowbar network. Strings given for addresses are parsed on construction."""

    name: str
    subnet: IPNetwork
    conduit: str
    category: str | None = None  # None: inferred from the name
    vlan: int | None = None  # the switch VLAN; also set for untagged (native) networks
    use_vlan: bool = False  # whether the node tags its traffic with `vlan`
    add_bridge: bool = False
    mtu: int = DEFAULT_MTU
    router: IPAddress | None = None
    router_pref: int | None = None  # lower wins the default route; None loses to any number
    team_mode: int = DEFAULT_TEAM_MODE  # Linux bonding mode for a conduit of several NICs
    use_team: bool = False  # require the conduit to be a team of 2..8 NICs
    ranges: Mapping[str, AddressRange] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assign = object.__setattr__  # frozen: normalise once, here
        assign(self, "subnet", _parse_subnet(self.name, self.subnet))
        if self.router is not None:
            assign(self, "router", _parse_address(self.name, "router", self.router))
        if not isinstance(self.ranges, Mapping):
            raise NetworkValidationError(self.name, "ranges", "expected a mapping of named ranges")
        assign(self, "ranges", {str(name): _parse_range(self.name, str(name), value)
                                for name, value in self.ranges.items()})
        if self.category is None:
            assign(self, "category", infer_category(self.name))
        for name in ("vlan", "router_pref"):
            _require_int(self.name, name, getattr(self, name), optional=True)
        for name in ("mtu", "team_mode"):
            _require_int(self.name, name, getattr(self, name))
        for name in ("use_vlan", "add_bridge", "use_team"):
            _require_bool(self.name, name, getattr(self, name))
        for name in ("conduit", "category"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise NetworkValidationError(self.name, name, "must be a non-empty string")


@dataclass(frozen=True)
class ConduitMapEntry:
    """Conduits for nodes whose `<mode>/<nic count>/<role>` matches `pattern`."""

    pattern: str
    conduits: Mapping[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        if not isinstance(self.conduits, Mapping):
            raise NetworkValidationError(None, f"conduit_map[{self.pattern}].conduits",
                                         f"expected a mapping of conduits, got {self.conduits!r}")
        for name, refs in self.conduits.items():
            if isinstance(refs, str) or not isinstance(refs, (list, tuple)):
                raise NetworkValidationError(None, f"conduit_map[{self.pattern}].{name}",
                                             f"expected a list of interface references, got {refs!r}")
        object.__setattr__(self, "conduits",
                           {str(name): tuple(refs) for name, refs in self.conduits.items()})


@dataclass(frozen=True)
class BusOrder:
    """PCI bus order for hardware whose DMI product name matches `pattern` (Crowbar 1's
    `interface_map`): NICs on buses listed first are counted first."""

    pattern: str
    bus_order: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "bus_order", tuple(self.bus_order))


@dataclass(frozen=True)
class NetworkTemplate:
    mode: str = "single"
    teaming_mode: int = DEFAULT_TEAM_MODE  # `teaming.mode`: the default team_mode of networks
    conduit_map: tuple[ConduitMapEntry, ...] = ()
    networks: Mapping[str, Network] = field(default_factory=dict)
    interface_map: tuple[BusOrder, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "conduit_map", tuple(self.conduit_map))
        object.__setattr__(self, "interface_map", tuple(self.interface_map))


# ---------------------------------------------------------------------------------------------
# Loading and exporting (the format of network-template.yaml)

_NETWORK_KEYS = {f.name for f in fields(Network)} - {"name"} | {"netmask", "broadcast"}
_TEMPLATE_KEYS = {"mode", "teaming", "conduit_map", "networks", "interface_map"}


def load_network(name: str, data: Mapping[str, Any], *,
                 default_team_mode: int = DEFAULT_TEAM_MODE) -> Network:
    """A network from its template entry: `subnet` as CIDR, or `subnet` plus `netmask` (a mask
    or a prefix length). `broadcast`, when present, must agree with the subnet."""
    if not isinstance(data, Mapping):
        raise NetworkValidationError(name, "network", f"expected a mapping, got {data!r}")
    for key in data:
        if key not in _NETWORK_KEYS:
            raise NetworkValidationError(name, str(key), "unknown field")
    for key in ("subnet", "conduit"):
        if key not in data:
            raise NetworkValidationError(name, key, "is required")
    values = dict(data)
    netmask, broadcast = values.pop("netmask", None), values.pop("broadcast", None)
    if netmask is not None:
        values["subnet"] = f"{values['subnet']}/{netmask}"
    values.setdefault("team_mode", default_team_mode)
    network = Network(name=name, **values)
    if broadcast is not None:
        expected = network.subnet.broadcast_address
        if _parse_address(name, "broadcast", broadcast) != expected:
            raise NetworkValidationError(name, "broadcast",
                                         f"{broadcast} is not the broadcast address {expected}")
    return network


def _load_entries(data: Mapping[str, Any], key: str, build: Any, keys: tuple[str, str]) -> tuple:
    entries = data.get(key) or ()
    if not isinstance(entries, (list, tuple)):
        raise NetworkValidationError(None, key, "expected a list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or set(entry) != set(keys):
            raise NetworkValidationError(None, f"{key}[{i}]", f"needs exactly {' and '.join(keys)}")
    return tuple(build(*(entry[k] for k in keys)) for entry in entries)


def load_template(source: Mapping[str, Any] | str) -> NetworkTemplate:
    """A template from a dict or YAML text in the format of the built-in default."""
    data = yaml.safe_load(source) if isinstance(source, str) else source
    if not isinstance(data, Mapping):
        raise NetworkValidationError(None, "template", "expected a mapping")
    for key in data:
        if key not in _TEMPLATE_KEYS:
            raise NetworkValidationError(None, str(key), "unknown field")
    teaming = data.get("teaming") or {}
    teaming_mode = teaming.get("mode", DEFAULT_TEAM_MODE) if isinstance(teaming, Mapping) else teaming
    _require_int(None, "teaming.mode", teaming_mode)
    conduit_map = _load_entries(data, "conduit_map", ConduitMapEntry, ("pattern", "conduits"))
    interface_map = _load_entries(data, "interface_map", BusOrder, ("pattern", "bus_order"))
    networks = {str(name): load_network(str(name), body, default_team_mode=teaming_mode)
                for name, body in (data.get("networks") or {}).items()}
    return NetworkTemplate(mode=data.get("mode", "single"), teaming_mode=teaming_mode,
                           conduit_map=conduit_map, networks=networks,
                           interface_map=interface_map)


def export_network(network: Network) -> dict[str, Any]:
    """The template entry for `network`; IPv4 subnets as subnet + netmask like Crowbar's."""
    out: dict[str, Any] = {"category": network.category, "conduit": network.conduit}
    if network.vlan is not None:
        out["vlan"] = network.vlan
    out.update(use_vlan=network.use_vlan, add_bridge=network.add_bridge, mtu=network.mtu,
               team_mode=network.team_mode, use_team=network.use_team)
    if network.subnet.version == 4:
        out.update(subnet=str(network.subnet.network_address), netmask=str(network.subnet.netmask))
    else:
        out["subnet"] = str(network.subnet)
    if network.router is not None:
        out["router"] = str(network.router)
    if network.router_pref is not None:
        out["router_pref"] = network.router_pref
    out["ranges"] = {name: {"start": str(r.start), "end": str(r.end)}
                     for name, r in network.ranges.items()}
    return out


def export_template(template: NetworkTemplate) -> dict[str, Any]:
    """A plain dict (YAML/JSON-able) such that load_template(export_template(t)) == t."""
    out: dict[str, Any] = {
        "mode": template.mode,
        "teaming": {"mode": template.teaming_mode},
        "conduit_map": [{"pattern": e.pattern,
                         "conduits": {name: list(refs) for name, refs in e.conduits.items()}}
                        for e in template.conduit_map],
        "networks": {name: export_network(n) for name, n in template.networks.items()},
    }
    if template.interface_map:
        out["interface_map"] = [{"pattern": b.pattern, "bus_order": list(b.bus_order)}
                                for b in template.interface_map]
    return out


def default_template() -> NetworkTemplate:
    """Crowbar 1's default template (bc-template-network.json), shipped as YAML."""
    text = resources.files(__package__).joinpath("default-template.yaml").read_text("utf-8")
    return load_template(text)


# ---------------------------------------------------------------------------------------------
# Validation

def same_segment(a: Network, b: Network) -> bool:
    """Whether two networks may share addresses on one layer-2 segment.

    True when both are untagged on the node, when they name the same VLAN (admin on VLAN 100
    untagged and bmc_vlan on VLAN 100 tagged are one segment), or when one names no VLAN at all:
    an untagged network of unknown VLAN may be the switch's native VLAN of the other (bmc).
    """
    return ((not a.use_vlan and not b.use_vlan) or a.vlan == b.vlan
            or a.vlan is None or b.vlan is None)


def segment_subnet(template: NetworkTemplate, network: Network) -> IPNetwork:
    """The widest subnet on `network`'s segment that contains its subnet.

    nova_floating (192.168.126.128/26) is a pool carved out of public's 192.168.126.0/24 on the
    same VLAN: its last address .191 is an ordinary host of the /24, not a broadcast address.
    """
    containing = [other.subnet for other in template.networks.values()
                  if other.subnet.version == network.subnet.version
                  and other.subnet.supernet_of(network.subnet) and same_segment(network, other)]
    return min(containing, key=lambda subnet: subnet.prefixlen, default=network.subnet)


def _network_problems(network: Network, segment: IPNetwork) -> Iterator[NetworkValidationError]:
    def problem(field_name: str, reason: str) -> NetworkValidationError:
        return NetworkValidationError(network.name, field_name, reason)

    if network.vlan is not None and not VLAN_MIN <= network.vlan <= VLAN_MAX:
        yield problem("vlan", f"{network.vlan} is outside {VLAN_MIN}..{VLAN_MAX}")
    if network.use_vlan and network.vlan is None:
        yield problem("vlan", "use_vlan is set but no vlan is given")
    mtu_min = MTU_MIN[network.subnet.version]
    if not mtu_min <= network.mtu <= MTU_MAX:
        yield problem("mtu", f"{network.mtu} is outside {mtu_min}..{MTU_MAX}")
    if not BOND_MODE_MIN <= network.team_mode <= BOND_MODE_MAX:
        yield problem("team_mode",
                      f"{network.team_mode} is not a bonding mode ({BOND_MODE_MIN}..{BOND_MODE_MAX})")
    if network.router is not None:
        reason = address_problem(network.subnet, network.router, segment)
        if reason:
            yield problem("router", reason)
    for name, span in network.ranges.items():
        field_name = f"ranges.{name}"
        if span.start.version != span.end.version:
            yield problem(field_name, f"mixes IPv4 and IPv6 ({span})")
            continue
        reasons = [address_problem(network.subnet, end, segment) for end in span]
        if any(reasons):
            yield problem(field_name, "; ".join(r for r in reasons if r))
        elif span.start > span.end:
            yield problem(field_name, f"starts after it ends ({span})")
    # Sweep the well-formed ranges by start, comparing each with the one reaching furthest.
    well_formed = sorted(((name, span) for name, span in network.ranges.items()
                          if span.start.version == span.end.version and span.start <= span.end),
                         key=lambda item: (item[1].start.version, int(item[1].start)))
    reach: tuple[str, AddressRange] | None = None
    for name, span in well_formed:
        if reach and reach[1].overlaps(span):
            yield problem(f"ranges.{name}", f"{span} overlaps range {reach[0]!r} ({reach[1]})")
        if not reach or not reach[1].overlaps(span) or span.end > reach[1].end:
            reach = (name, span)


def _cross_network_problems(template: NetworkTemplate) -> Iterator[NetworkValidationError]:
    for a, b in combinations(template.networks.values(), 2):
        if a.subnet.version != b.subnet.version or not a.subnet.overlaps(b.subnet):
            continue
        if not same_segment(a, b):
            yield NetworkValidationError(
                b.name, "subnet", f"{b.subnet} overlaps network {a.name!r} ({a.subnet}) on a "
                f"different VLAN ({b.vlan} vs {a.vlan})")
            continue
        for (a_name, a_range), (b_name, b_range) in (
                (x, y) for x in a.ranges.items() for y in b.ranges.items()):
            if a_range.overlaps(b_range):
                yield NetworkValidationError(
                    b.name, f"ranges.{b_name}", f"{b_range} overlaps range {a_name!r} of network "
                    f"{a.name!r} ({a_range}), which shares its addresses")


def _conduit_map_problems(template: NetworkTemplate) -> Iterator[NetworkValidationError]:
    if template.mode not in TEMPLATE_MODES:
        yield NetworkValidationError(None, "mode", f"{template.mode!r} is not one of "
                                     f"{', '.join(TEMPLATE_MODES)}")
    if not BOND_MODE_MIN <= template.teaming_mode <= BOND_MODE_MAX:
        yield NetworkValidationError(None, "teaming.mode", f"{template.teaming_mode} is not a "
                                     f"bonding mode ({BOND_MODE_MIN}..{BOND_MODE_MAX})")
    for i, entry in enumerate(template.conduit_map):
        try:
            split_conduit_pattern(entry.pattern)
        except ValueError as exc:
            yield NetworkValidationError(None, f"conduit_map[{i}].pattern", str(exc))
        for conduit, refs in entry.conduits.items():
            field_name = f"conduit_map[{i}].conduits.{conduit}"
            try:
                parsed = [parse_interface_ref(ref) for ref in refs]
            except ValueError as exc:
                yield NetworkValidationError(None, field_name, str(exc))
                continue
            if not parsed:
                yield NetworkValidationError(None, field_name, "lists no interfaces")
            elif len(parsed) > TEAM_MAX:
                yield NetworkValidationError(None, field_name,
                                             f"a team has at most {TEAM_MAX} members, got {len(parsed)}")
            elif len({(ref.sign, ref.speed) for ref in parsed}) > 1:
                yield NetworkValidationError(None, field_name, "members of a team must share sign "
                                             f"and speed: {', '.join(refs)}")
    for i, bus_order in enumerate(template.interface_map):
        try:
            re.compile(bus_order.pattern)
        except re.error as exc:
            yield NetworkValidationError(None, f"interface_map[{i}].pattern",
                                         f"{bus_order.pattern!r} is not a valid regular expression: {exc}")


def _conduit_use_problems(template: NetworkTemplate) -> Iterator[NetworkValidationError]:
    """Each network's conduit must exist; a use_team network's conduit must be a team in every
    conduit_map entry this template's mode can select."""
    for network in template.networks.values():
        if network.conduit == BMC_CONDUIT:
            continue
        defining = [entry for entry in template.conduit_map if network.conduit in entry.conduits]
        if not defining:
            yield NetworkValidationError(network.name, "conduit", f"{network.conduit!r} is not "
                                         "defined in any conduit_map entry")
        if not network.use_team:
            continue
        for entry in defining:
            try:
                mode_pattern = split_conduit_pattern(entry.pattern)[0]
            except ValueError:
                continue  # reported by _conduit_map_problems
            size = len(entry.conduits[network.conduit])
            if mode_pattern.fullmatch(template.mode) and not TEAM_MIN <= size <= TEAM_MAX:
                yield NetworkValidationError(
                    network.name, "use_team", f"conduit {network.conduit!r} has {size} "
                    f"interface(s) in conduit_map entry {entry.pattern!r}; a team needs "
                    f"{TEAM_MIN}..{TEAM_MAX}")


def network_problems(network: Network) -> list[NetworkValidationError]:
    """Every rule one network breaks on its own (its subnet taken as its whole segment)."""
    return list(_network_problems(network, network.subnet))


def template_problems(template: NetworkTemplate) -> list[NetworkValidationError]:
    """Every rule the template breaks, in template order: for editors that show them all."""
    problems = [problem for network in template.networks.values()
                for problem in _network_problems(network, segment_subnet(template, network))]
    problems += _cross_network_problems(template)
    problems += _conduit_map_problems(template)
    problems += _conduit_use_problems(template)
    return problems


def validate_network(network: Network) -> None:
    """Raise the first NetworkValidationError of `network_problems`."""
    for problem in network_problems(network):
        raise problem


def validate_template(template: NetworkTemplate) -> None:
    """Raise the first NetworkValidationError of `template_problems`."""
    for problem in template_problems(template):
        raise problem


# ---------------------------------------------------------------------------------------------
# Differences between two templates (to show what a change affects before applying it)

class FieldChange(NamedTuple):
    field: str
    old: Any  # None when the field is new
    new: Any  # None when the field is gone


@dataclass(frozen=True)
class TemplateDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: Mapping[str, tuple[FieldChange, ...]]  # network name -> its changed fields
    template: tuple[FieldChange, ...]  # mode, teaming.mode, conduit_map, interface_map

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.template)

    def reasons(self, network: str, watched: Collection[str], present: bool) -> list[str]:
        """Why a role whose runs derive values from the `watched` fields of `network` (none: any
        field) must run again after this change, as lines to show ([]: it need not). `present`:
        the network is in the old or the new template. Adding or removing the network counts;
        a template-level change (mode, conduit_map, interface_map, teaming) counts for `conduit`,
        since it can change what the conduit resolves to on a node."""
        if network in self.added or network in self.removed:
            return [f"{network} {'added' if network in self.added else 'removed'}"]
        out = [f"{network}.{c.field}: {c.old} -> {c.new}" for c in self.changed.get(network, ())
               if not watched or c.field.split(".")[0] in watched]
        if present and (not watched or "conduit" in watched):
            out += [f"template {c.field}: {c.old} -> {c.new}" for c in self.template]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"added": list(self.added), "removed": list(self.removed),
                "changed": {name: [c._asdict() for c in changes]
                            for name, changes in self.changed.items()},
                "template": [c._asdict() for c in self.template]}


def _network_fields(network: Network) -> dict[str, Any]:
    """Flat, comparable, JSON-able values: one entry per field and per named range."""
    flat: dict[str, Any] = {}
    for f in fields(Network):
        value = getattr(network, f.name)
        if f.name == "ranges":
            flat.update({f"ranges.{name}": str(span) for name, span in value.items()})
        elif f.name != "name":
            flat[f.name] = value if value is None or isinstance(value, (bool, int, str)) else str(value)
    return flat


def _template_fields(template: NetworkTemplate) -> dict[str, Any]:
    flat: dict[str, Any] = {"mode": template.mode, "teaming.mode": template.teaming_mode,
                            "conduit_map": [e.pattern for e in template.conduit_map]}
    for entry in template.conduit_map:
        for conduit, refs in entry.conduits.items():
            flat[f"conduit_map[{entry.pattern}].{conduit}"] = ",".join(refs)
    for bus_order in template.interface_map:
        flat[f"interface_map[{bus_order.pattern}]"] = ",".join(bus_order.bus_order)
    return flat


def _field_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[FieldChange, ...]:
    keys = list(old) + [key for key in new if key not in old]
    return tuple(FieldChange(key, old.get(key), new.get(key))
                 for key in keys if old.get(key) != new.get(key))


NETWORK_FIELDS = tuple(f.name for f in fields(Network) if f.name != "name")


def watch_problem(watch: Any) -> str | None:
    """What is wrong with a role's `reruns-on-networks` (barclamp.yml), or None: a list of network
    names, or a mapping of network names to lists of their fields (NETWORK_FIELDS; an empty list is
    any field)."""
    items = {name: [] for name in watch} if isinstance(watch, list) else watch
    if not isinstance(items, dict):
        return "expected a list of network names or a mapping of network names to lists of fields"
    for name, watched in items.items():
        if not isinstance(name, str) or not name or len(name) > 64:
            return f"{name!r} is not a network name"
        if not isinstance(watched, list) or any(f not in NETWORK_FIELDS for f in watched):
            return (f"network {name!r}: expected a list of its fields ({', '.join(NETWORK_FIELDS)}), "
                    f"got {watched!r}")
    return None


def diff_templates(old: NetworkTemplate, new: NetworkTemplate) -> TemplateDiff:
    """Networks added, removed and changed (field by field), and template-level changes."""
    changed = {}
    for name in old.networks.keys() & new.networks.keys():
        changes = _field_changes(_network_fields(old.networks[name]),
                                 _network_fields(new.networks[name]))
        if changes:
            changed[name] = changes
    return TemplateDiff(
        added=tuple(name for name in new.networks if name not in old.networks),
        removed=tuple(name for name in old.networks if name not in new.networks),
        changed={name: changed[name] for name in new.networks if name in changed},
        template=_field_changes(_template_fields(old), _template_fields(new)),
    )
