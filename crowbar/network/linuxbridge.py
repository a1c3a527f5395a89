"""Neutron's Linux Bridge conventions: device and namespace names, and the parsers of its
segment options, with Neutron's behaviour and error messages.

Names embed the first 11 characters of the Neutron object's id, so a device seen on a host can
be traced back to its network, port or router (`whois`, the seed's grep trick). Linux limits
interface names to 15 characters; longer names are shortened with a hash so they stay unique.

One deliberate difference: `vxlan_name` returns None for VNI 0 (Neutron's agent formats
`vxlan-0`), because 0 is not a valid VNI (`is_valid_vni`, neutron-lib's 1..16777215).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Iterable, NamedTuple

from crowbar.errors import InvalidInput
from crowbar.network._fields import field_of

DEVICE_NAME_MAX_LEN = 15
RESOURCE_ID_LENGTH = 11
INTERFACE_HASH_LEN = 6
MAX_VLAN_POSTFIX_LEN = 5  # ".4094"
NAMESPACE_DEVICE_NAME_LEN = 14  # ns-, qr-, qg- devices

BRIDGE_PREFIX = "brq"
LEGACY_BRIDGE_PREFIX = "br"  # how the seed article spells it: br<network uuid>
TAP_PREFIX = "tap"
VXLAN_PREFIX = "vxlan-"
DHCP_DEVICE_PREFIX = "ns-"
ROUTER_INTERNAL_PREFIX = "qr-"
ROUTER_GATEWAY_PREFIX = "qg-"
DHCP_NAMESPACE_PREFIX = "qdhcp-"
ROUTER_NAMESPACE_PREFIX = "qrouter-"

MIN_VLAN_TAG, MAX_VLAN_TAG = 1, 4094
MIN_VXLAN_VNI, MAX_VXLAN_VNI = 1, 2**24 - 1


class NetworkVlanRangeError(InvalidInput):
    def __init__(self, vlan_range: str | tuple[int, int], error: str):
        if isinstance(vlan_range, tuple):
            vlan_range = "%d:%d" % vlan_range
        super().__init__(f"Invalid network VLAN range: '{vlan_range}' - '{error}'.",
                         field="network_vlan_ranges")


class PhysicalNetworkNameError(InvalidInput):
    def __init__(self) -> None:
        super().__init__("Empty physical network name.", field="network_vlan_ranges")


class NetworkTunnelRangeError(InvalidInput):
    def __init__(self, tunnel_range: str | tuple[int, int], error: str):
        if isinstance(tunnel_range, tuple):
            tunnel_range = "%d:%d" % tunnel_range
        super().__init__(f"Invalid network tunnel range: '{tunnel_range}' - {error}.",
                         field="vni_ranges")


class MappingError(InvalidInput, ValueError):
    """Neutron raises ValueError for bad mappings; this is one, and a Crowbar input error."""

    def __init__(self, message: str):
        super().__init__(message, field="mappings")


class AmbiguousDevice(InvalidInput):
    def __init__(self, device: str, candidates: list[DeviceOwner]):
        listed = ", ".join(f"{c.kind} {c.id}" for c in candidates)
        super().__init__(f"device {device!r} matches several objects: {listed}", field="device")


# ---------------------------------------------------------------------------------------------
# Names

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_valid_vlan_tag(tag: Any) -> bool:
    return _is_int(tag) and MIN_VLAN_TAG <= tag <= MAX_VLAN_TAG


def is_valid_vni(vni: Any) -> bool:
    return _is_int(vni) and MIN_VXLAN_VNI <= vni <= MAX_VXLAN_VNI


def interface_name(name: str, prefix: str = "", max_len: int = DEVICE_NAME_MAX_LEN) -> str:
    """neutron-lib's get_interface_name: prefix + name if it fits, else prefix + the start of
    name + the first 6 hex digits of sha1(name), so different long names stay different."""
    if len(prefix + name) <= max_len:
        return prefix + name
    if len(prefix) + INTERFACE_HASH_LEN > max_len:
        raise ValueError("Too long prefix provided. New name would exceed given length for an "
                         f"interface name: prefix {prefix!r} leaves no room for the "
                         f"{INTERFACE_HASH_LEN}-character hash within {max_len} characters")
    kept = name[:max_len - len(prefix) - INTERFACE_HASH_LEN]
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:INTERFACE_HASH_LEN]
    return f"{prefix}{kept}{digest}"


def bridge_name(network_id: str) -> str:
    return BRIDGE_PREFIX + network_id[:RESOURCE_ID_LENGTH]


def tap_name(port_id: str) -> str:
    return TAP_PREFIX + port_id[:RESOURCE_ID_LENGTH]


def subinterface_name(interface: str, vlan: int | str) -> str:
    """`<interface>.<vlan>`; when longer than 15 characters the interface part becomes its
    first 4 characters + 6 hash digits, the same for every VLAN of that interface."""
    postfix = f".{vlan}"
    if len(interface) + len(postfix) > DEVICE_NAME_MAX_LEN:
        interface = interface_name(interface, max_len=DEVICE_NAME_MAX_LEN - MAX_VLAN_POSTFIX_LEN)
    return interface + postfix


def vxlan_name(vni: int | str) -> str | None:
    """`vxlan-<vni>`, or None when the VNI is not 1..16777215."""
    try:
        vni = int(vni)
    except (TypeError, ValueError):
        return None
    return f"{VXLAN_PREFIX}{vni}" if is_valid_vni(vni) else None


def dhcp_device_name(port_id: str) -> str:
    """The DHCP port's device inside the qdhcp namespace (its root-side peer is tap_name)."""
    return (DHCP_DEVICE_PREFIX + port_id)[:NAMESPACE_DEVICE_NAME_LEN]


def dhcp_namespace(network_id: str) -> str:
    return DHCP_NAMESPACE_PREFIX + network_id


def router_namespace(router_id: str) -> str:
    return ROUTER_NAMESPACE_PREFIX + router_id


def router_device_name(port_id: str, external: bool = False) -> str:
    """`qr-` (internal) or `qg-` (gateway) + port id, inside the qrouter namespace."""
    prefix = ROUTER_GATEWAY_PREFIX if external else ROUTER_INTERNAL_PREFIX
    return (prefix + port_id)[:NAMESPACE_DEVICE_NAME_LEN]


# ---------------------------------------------------------------------------------------------
# Option parsers

def _invalid_vlan_tag(tag: Any, vlan_range: str | tuple[int, int]) -> NetworkVlanRangeError:
    return NetworkVlanRangeError(vlan_range, f"{tag} is not a valid VLAN tag")


def parse_network_vlan_range(entry: str) -> tuple[str, tuple[int, int] | None]:
    """`physnet:min:max` -> (physnet, (min, max)); a bare `physnet` -> (physnet, None)."""
    entry = entry.strip()
    if ":" not in entry:
        return entry, None
    if entry.count(":") != 2:
        raise NetworkVlanRangeError(entry, "Need exactly two values for VLAN range")
    physnet, low, high = entry.split(":")
    if not physnet:
        raise PhysicalNetworkNameError()
    bounds = []
    for tag in (low, high):
        try:
            bounds.append(int(tag))
        except ValueError:
            raise _invalid_vlan_tag(tag, entry) from None
    vlan_range = (bounds[0], bounds[1])
    for tag in vlan_range:
        if not is_valid_vlan_tag(tag):
            raise _invalid_vlan_tag(tag, vlan_range)
    if vlan_range[1] < vlan_range[0]:
        raise NetworkVlanRangeError(vlan_range,
                                    "End of VLAN range is less than start of VLAN range")
    return physnet, vlan_range


def parse_network_vlan_ranges(entries: Iterable[str]) -> dict[str, list[tuple[int, int]]]:
    """Neutron's network_vlan_ranges: physnet -> its ranges (none for a bare physnet)."""
    networks: dict[str, list[tuple[int, int]]] = {}
    for entry in entries:
        physnet, vlan_range = parse_network_vlan_range(entry)
        networks.setdefault(physnet, [])
        if vlan_range:
            networks[physnet].append(vlan_range)
    return networks


def parse_vni_ranges(entries: Iterable[str]) -> list[tuple[int, int]]:
    """Neutron's ml2_type_vxlan vni_ranges: `min:max` entries."""
    ranges = []
    for entry in entries:
        entry = entry.strip()
        try:
            low, high = entry.split(":")
            vni_range = (int(low.strip()), int(high.strip()))
        except ValueError as exc:
            raise NetworkTunnelRangeError(entry, str(exc)) from None
        for vni in vni_range:
            if not is_valid_vni(vni):
                raise NetworkTunnelRangeError(vni_range, f"{vni} is not a valid vxlan identifier")
        if vni_range[1] < vni_range[0]:
            raise NetworkTunnelRangeError(vni_range,
                                          "End of tunnel range is less than start of tunnel range")
        ranges.append(vni_range)
    return ranges


def parse_mappings(entries: Iterable[str], unique_values: bool = True,
                   unique_keys: bool = True) -> dict[str, Any]:
    """neutron-lib's parse_mappings: `key:value` entries -> {key: value}, or, when keys need
    not be unique, {key: set of values}."""
    mappings: dict[str, Any] = {}
    for mapping in entries:
        mapping = mapping.strip()
        if not mapping:
            continue
        parts = mapping.split(":")
        if len(parts) != 2:
            raise MappingError(f"Invalid mapping: '{mapping}'")
        key, value = parts[0].strip(), parts[1].strip()
        if not key:
            raise MappingError(f"Missing key in mapping: '{mapping}'")
        if not value:
            raise MappingError(f"Missing value in mapping: '{mapping}'")
        if not unique_keys:
            mappings.setdefault(key, set()).add(value)
            continue
        if key in mappings:
            raise MappingError(f"Key {key} in mapping: '{mapping}' not unique")
        if unique_values and value in mappings.values():
            raise MappingError(f"Value {value} in mapping: '{mapping}' not unique")
        mappings[key] = value
    return mappings


# ---------------------------------------------------------------------------------------------
# Which Neutron object does a device belong to?

class DeviceOwner(NamedTuple):
    kind: str  # "network", "port" or "router"
    id: str
    name: str | None


_ID_FRAGMENT = re.compile(r"^[0-9a-f-]+$")
_PORT_PREFIXES = (TAP_PREFIX, DHCP_DEVICE_PREFIX, ROUTER_INTERNAL_PREFIX, ROUTER_GATEWAY_PREFIX)
_VLAN_DEVICE = re.compile(r"^.+\.([0-9]+)$")


def segment_of(network: Any) -> tuple[str | None, int | None]:
    """(network_type, segmentation_id) of a network, in Crowbar's or the API's provider: spelling;
    an id that is not a number is None."""
    kind = field_of(network, "network_type", "provider:network_type")
    segmentation_id = field_of(network, "segmentation_id", "provider:segmentation_id")
    if segmentation_id is None:
        return kind, None
    try:  # what a client posted (a port list, a network list): not always a number
        return kind, int(segmentation_id)
    except (TypeError, ValueError, OverflowError):
        return kind, None


def _owner(kind: str, item: Any) -> DeviceOwner:
    return DeviceOwner(kind, str(field_of(item, "id")), field_of(item, "name") or None)


def _unique(device: str, owners: list[DeviceOwner]) -> DeviceOwner | None:
    if len(owners) > 1:
        raise AmbiguousDevice(device, owners)
    return owners[0] if owners else None


def _by_id_prefix(device: str, kind: str, fragment: str, items: Iterable[Any]) -> DeviceOwner | None:
    if not fragment or not _ID_FRAGMENT.match(fragment):
        return None
    return _unique(device, [_owner(kind, item) for item in items
                            if str(field_of(item, "id", default="")).startswith(fragment)])


def _by_segment(device: str, kind: str, segmentation_id: int,
                networks: Iterable[Any]) -> DeviceOwner | None:
    return _unique(device, [_owner("network", n) for n in networks
                            if segment_of(n) == (kind, segmentation_id)])


def whois(device: str, networks: Iterable[Any] = (), ports: Iterable[Any] = (),
          routers: Iterable[Any] = ()) -> DeviceOwner | None:
    """The network, port or router a host device (or namespace) belongs to, or None.

    `networks` have id, name, and network_type + segmentation_id (or the API's provider:
    spellings); `ports` and `routers` have id and name. Bridges, taps, ns-/qr-/qg- devices and
    namespaces are matched by id prefix; `vxlan-N` and `<iface>.<vlan>` by segment.
    """
    networks, ports, routers = list(networks), list(ports), list(routers)
    for prefix, kind, items in ((DHCP_NAMESPACE_PREFIX, "network", networks),
                                (ROUTER_NAMESPACE_PREFIX, "router", routers),
                                (BRIDGE_PREFIX, "network", networks),
                                *((p, "port", ports) for p in _PORT_PREFIXES)):
        if device.startswith(prefix):
            return _by_id_prefix(device, kind, device[len(prefix):], items)
    if device.startswith(VXLAN_PREFIX):
        vni = device[len(VXLAN_PREFIX):]
        return _by_segment(device, "vxlan", int(vni), networks) if vni.isascii() and vni.isdigit() else None
    vlan = _VLAN_DEVICE.match(device)
    if vlan:
        return _by_segment(device, "vlan", int(vlan.group(1)), networks)
    if device.startswith(LEGACY_BRIDGE_PREFIX):
        return _by_id_prefix(device, "network", device[len(LEGACY_BRIDGE_PREFIX):], networks)
    return None
