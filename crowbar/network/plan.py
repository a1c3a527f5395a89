"""A node's interface plan: which NICs, bonds, VLAN subinterfaces and bridges carry which
addresses, the default route and every MTU. One plan feeds every renderer (render.py).

Layers, bottom up:
- physical NICs, chosen by the network's conduit (conduits.py);
- a bond when a conduit resolves to several NICs: `bond0`, `bond1`... in the order conduits are
  first used (networks in template order). Conduits resolving to the same NICs share one bond
  (the team template puts intf0, intf1 and intf2 on the same pair); a NIC cannot be in two
  bonds, nor be a bond member and carry traffic itself;
- a VLAN subinterface when the network has use_vlan: `<iface>.<vlan>`, shortened like Neutron's
  (linuxbridge.subinterface_name) so Neutron finds and reuses the same device;
- a bridge when the network has add_bridge: `br-<the interface it wraps>` (e.g. `br-eth0.300`,
  hashed down to 15 characters like Neutron when longer). Bridges are named after the interface
  they wrap, not the network, because networks can share a VLAN (public and nova_floating share
  300) and an interface can be enslaved to only one bridge. Once an interface is bridged, every
  address that would sit on it moves to the bridge.

Addresses carry the subnet's prefix length. Exactly one default route: via the router of the
network with the lowest router_pref among those the node has an address on (no pref loses to
any pref; ties go to template order). Every interface's MTU is the largest MTU of the networks
above it, so a parent never drops its children's frames. Networks on the `bmc` conduit are kept
as attachments without an interface: the BMC is configured over IPMI, not by the OS.
The plan expects a template that passed validate_template.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from crowbar.errors import InvalidInput
from crowbar.network.conduits import (
    ConduitError, Nic, bus_order_for, order_nics, resolve_conduit, select_conduit_entry,
)
from crowbar.network.linuxbridge import interface_name, subinterface_name
from crowbar.network.model import (
    BMC_CONDUIT, DEFAULT_MTU, TEAM_MAX, TEAM_MIN, ConduitMapEntry, IPAddress, Network,
    NetworkTemplate, NetworkValidationError, address_problem, segment_subnet,
)

BRIDGE_PREFIX = "br-"
BOND_PREFIX = "bond"
KIND_ORDER = ("physical", "bond", "vlan", "bridge")  # parents before children


class PlanError(InvalidInput):
    """The node's NICs or addresses cannot carry its networks as the template asks."""


@dataclass
class PlannedInterface:
    name: str
    kind: str  # one of KIND_ORDER
    mtu: int = DEFAULT_MTU
    mac: str | None = None  # physical only
    members: list[str] = field(default_factory=list)  # bond slaves, or the bridge's port
    parent: str | None = None  # vlan only: the interface it tags on
    vlan: int | None = None
    bond_mode: int | None = None
    master: str | None = None  # the bond or bridge this interface is enslaved to
    addresses: list[str] = field(default_factory=list)  # "192.168.124.81/24"
    networks: list[str] = field(default_factory=list)  # whose addresses are here


@dataclass
class Route:
    to: str  # "default"
    via: str
    interface: str
    network: str


@dataclass
class Attachment:
    network: str
    address: str  # with prefix length
    conduit: str
    conduit_interface: str | None  # the bond or NIC the conduit resolves to
    interface: str | None  # where the address lives (None: the BMC)
    gateway: str | None  # the network's router, whether or not it is the default route


@dataclass
class InterfacePlan:
    node: str
    conduit_map_pattern: str
    interfaces: list[PlannedInterface]
    routes: list[Route]
    attachments: dict[str, Attachment]

    def interface(self, name: str) -> PlannedInterface:
        return next(i for i in self.interfaces if i.name == name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _PlanBuilder:
    """Accumulates interfaces while networks are attached, enforcing the sharing rules."""

    def __init__(self, node: str, nics: list[Nic], entry: ConduitMapEntry):
        self.node, self.nics, self.entry = node, nics, entry
        self.interfaces: dict[str, PlannedInterface] = {}
        self.conduit_interfaces: dict[str, str] = {}
        self.bond_by_members: dict[tuple[str, ...], str] = {}
        self.nic_used_by: dict[str, str] = {}  # NIC name -> "direct" or its bond
        self.bond_mode_chosen_by: dict[str, str] = {}  # bond -> the network that created it

    def add(self, interface: PlannedInterface) -> PlannedInterface:
        return self.interfaces.setdefault(interface.name, interface)

    def conduit_interface(self, network: Network) -> str:
        """The NIC or bond `network.conduit` resolves to, created on first use."""
        if network.conduit in self.conduit_interfaces:
            name = self.conduit_interfaces[network.conduit]
        else:
            refs = self.entry.conduits.get(network.conduit)
            if refs is None:
                raise ConduitError(f"network {network.name!r}: conduit {network.conduit!r} is not "
                                   f"defined in conduit_map entry {self.entry.pattern!r}",
                                   network.conduit)
            members = resolve_conduit(network.conduit, refs, self.nics)
            name = self._bond(members, network) if len(members) > 1 else self._nic(members[0])
            self.conduit_interfaces[network.conduit] = name
        interface = self.interfaces[name]
        if network.use_team and interface.kind != "bond":
            raise NetworkValidationError(network.name, "use_team", f"conduit {network.conduit!r} "
                                         f"resolves to one interface ({name}); a team needs "
                                         f"{TEAM_MIN}..{TEAM_MAX}")
        if interface.kind == "bond" and interface.bond_mode != network.team_mode:
            raise NetworkValidationError(network.name, "team_mode", f"{network.team_mode} differs "
                                         f"from mode {interface.bond_mode} of {name}, chosen by "
                                         f"network {self.bond_mode_chosen_by[name]!r}")
        return name

    def _claim(self, nic: Nic, owner: str) -> None:
        previous = self.nic_used_by.setdefault(nic.name, owner)
        if previous != owner:
            where = "carries traffic itself" if previous == "direct" else f"is in {previous}"
            wanted = "carry traffic itself" if owner == "direct" else f"join {owner}"
            raise PlanError(f"node {self.node!r}: {nic.name} {where} and cannot also {wanted}; "
                            "the conduits of the template overlap on this node")

    def _nic(self, nic: Nic) -> str:
        self._claim(nic, "direct")
        return self.add(PlannedInterface(nic.name, "physical", mac=nic.mac)).name

    def _bond(self, members: tuple[Nic, ...], network: Network) -> str:
        key = tuple(nic.name for nic in members)
        if key not in self.bond_by_members:
            name = f"{BOND_PREFIX}{len(self.bond_by_members)}"
            self.bond_by_members[key] = name
            self.bond_mode_chosen_by[name] = network.name
            for nic in members:
                self._claim(nic, name)
                self.add(PlannedInterface(nic.name, "physical", mac=nic.mac, master=name))
            self.add(PlannedInterface(name, "bond", members=list(key),
                                      bond_mode=network.team_mode))
        return self.bond_by_members[key]

    def vlan_interface(self, base: str, vlan: int) -> str:
        name = subinterface_name(base, vlan)
        return self.add(PlannedInterface(name, "vlan", parent=base, vlan=vlan)).name

    def bridge(self, port: str) -> str:
        name = interface_name(port, prefix=BRIDGE_PREFIX)
        self.interfaces[port].master = name
        return self.add(PlannedInterface(name, "bridge", members=[port])).name

    def _lower(self, interface: PlannedInterface) -> list[str]:
        return interface.members + ([interface.parent] if interface.parent else [])

    def raise_mtu(self, name: str, mtu: int) -> None:
        interface = self.interfaces[name]
        interface.mtu = max(interface.mtu, mtu)
        for lower in self._lower(interface):
            self.raise_mtu(lower, interface.mtu)


def _address(template: NetworkTemplate, network: Network,
             value: IPAddress | str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """`value` with the subnet's prefix length, if it is a host address of the network (judged
    on its segment, like validate_template judges the ranges IPAM allocates from)."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise NetworkValidationError(network.name, "address",
                                     f"{value!r} is not an IP address") from None
    problem = address_problem(network.subnet, address, segment_subnet(template, network))
    if problem:
        raise NetworkValidationError(network.name, "address", problem)
    return ipaddress.ip_interface(f"{address}/{network.subnet.prefixlen}")


def plan_interfaces(node: str, nics: Iterable[Any], addresses: Mapping[str, IPAddress | str],
                    template: NetworkTemplate, roles: Iterable[str] = (),
                    product_name: str | None = None) -> InterfacePlan:
    """The interface plan of `node`, whose `addresses` map network names to its allocations."""
    unknown = [name for name in addresses if name not in template.networks]
    if unknown:
        raise PlanError(f"node {node!r}: no network named {', '.join(map(repr, unknown))} in "
                        "the template")
    ordered_nics = order_nics(nics, bus_order_for(template, product_name))
    entry = select_conduit_entry(template, len(ordered_nics), roles)
    builder = _PlanBuilder(node, ordered_nics, entry)
    networks = [n for n in template.networks.values() if n.name in addresses]

    attachments: dict[str, Attachment] = {}
    for network in networks:
        address = _address(template, network, addresses[network.name])
        gateway = str(network.router) if network.router else None
        if network.conduit == BMC_CONDUIT:
            attachments[network.name] = Attachment(network.name, str(address), network.conduit,
                                                   None, None, gateway)
            continue
        base = builder.conduit_interface(network)
        carrier = builder.vlan_interface(base, network.vlan) if network.use_vlan else base
        attachments[network.name] = Attachment(network.name, str(address), network.conduit,
                                               base, carrier, gateway)

    bridged = {attachments[n.name].interface for n in networks
               if n.add_bridge and attachments[n.name].interface is not None}
    bridge_of = {port: builder.bridge(port) for port in sorted(bridged)}
    for network in networks:
        attachment = attachments[network.name]
        if attachment.interface is None:
            continue
        attachment.interface = bridge_of.get(attachment.interface, attachment.interface)
        interface = builder.interfaces[attachment.interface]
        interface.addresses.append(attachment.address)
        interface.networks.append(network.name)
        builder.raise_mtu(interface.name, network.mtu)

    kind_rank = {kind: i for i, kind in enumerate(KIND_ORDER)}
    nic_rank = {nic.name: i for i, nic in enumerate(ordered_nics)}
    interfaces = sorted(builder.interfaces.values(),
                        key=lambda i: (kind_rank[i.kind], nic_rank.get(i.name, 0)))
    return InterfacePlan(node=node, conduit_map_pattern=entry.pattern, interfaces=interfaces,
                         routes=_default_route(networks, attachments), attachments=attachments)


def _default_route(networks: list[Network], attachments: Mapping[str, Attachment]) -> list[Route]:
    candidates = [(n.router_pref is None, n.router_pref or 0, i, n)
                  for i, n in enumerate(networks)
                  if n.router is not None and attachments[n.name].interface is not None]
    if not candidates:
        return []
    network = min(candidates, key=lambda c: c[:3])[3]
    return [Route("default", str(network.router), attachments[network.name].interface, network.name)]
