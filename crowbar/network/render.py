"""Renderers of an InterfacePlan: systemd-networkd, netplan and ifupdown. One plan, so the
three always agree on names, members, VLANs, addresses, the default route and MTUs.

Physical NICs are matched by MAC address (names can change across kernels and boots); a NIC
whose inventory has no MAC is matched by name. Bonds use MII link monitoring every 100 ms:
without it active-backup never notices a dead link.
"""

from __future__ import annotations

from typing import Any

import yaml

from crowbar.network.plan import InterfacePlan, PlannedInterface, Route

BOND_MODE_NAMES = ("balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad",
                   "balance-tlb", "balance-alb")
MII_MONITOR_MS = 100
NETWORKD_ORDER = {"physical": 10, "bond": 20, "vlan": 30, "bridge": 40}

# libyaml's safe dumper when PyYAML has it: the same text, a fifth of the time (a bulk deploy renders
# a netplan per node)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _vlans_on(plan: InterfacePlan, interface: PlannedInterface) -> list[str]:
    return [i.name for i in plan.interfaces if i.parent == interface.name]


def _route_on(plan: InterfacePlan, interface: PlannedInterface) -> Route | None:
    return next((r for r in plan.routes if r.interface == interface.name), None)


def _master_kind(plan: InterfacePlan, interface: PlannedInterface) -> str | None:
    return plan.interface(interface.master).kind if interface.master else None


# ---------------------------------------------------------------------------------------------
# systemd-networkd

def _unit(sections: list[tuple[str, list[tuple[str, Any]]]]) -> str:
    return "\n".join(f"[{section}]\n" + "".join(f"{key}={value}\n" for key, value in entries)
                     for section, entries in sections if entries)


def _netdev(interface: PlannedInterface) -> str:
    kind_section = {
        "bond": ("Bond", [("Mode", BOND_MODE_NAMES[interface.bond_mode or 0]),
                          ("MIIMonitorSec", f"{MII_MONITOR_MS}ms")]),
        "vlan": ("VLAN", [("Id", interface.vlan)]),
        "bridge": ("Bridge", [("STP", "no"), ("ForwardDelaySec", 0)]),
    }[interface.kind]
    return _unit([("NetDev", [("Name", interface.name), ("Kind", interface.kind),
                              ("MTUBytes", interface.mtu)]), kind_section])


def _network_unit(plan: InterfacePlan, interface: PlannedInterface) -> str:
    if interface.kind == "physical":
        match = [("MACAddress", interface.mac)] if interface.mac else [("Name", interface.name)]
        link = [("MTUBytes", interface.mtu)]
    else:
        match, link = [("Name", interface.name)], []
    settings: list[tuple[str, Any]] = []
    if interface.master:
        settings.append(("Bond" if _master_kind(plan, interface) == "bond" else "Bridge",
                         interface.master))
    settings += [("VLAN", name) for name in _vlans_on(plan, interface)]
    settings += [("Address", address) for address in interface.addresses]
    route = _route_on(plan, interface)
    if route:
        settings.append(("Gateway", route.via))
    if not interface.addresses:
        settings.append(("LinkLocalAddressing", "no"))
    return _unit([("Match", match), ("Link", link), ("Network", settings)])


def render_networkd(plan: InterfacePlan) -> dict[str, str]:
    """File name -> content for /etc/systemd/network."""
    files = {}
    for interface in plan.interfaces:
        stem = f"{NETWORKD_ORDER[interface.kind]}-{interface.name}"
        if interface.kind != "physical":
            files[f"{stem}.netdev"] = _netdev(interface)
        files[f"{stem}.network"] = _network_unit(plan, interface)
    return files


# ---------------------------------------------------------------------------------------------
# netplan

def _netplan_entry(plan: InterfacePlan, interface: PlannedInterface) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    if interface.kind == "physical" and interface.mac:
        entry.update({"match": {"macaddress": interface.mac}, "set-name": interface.name})
    elif interface.kind == "bond":
        entry.update(interfaces=list(interface.members),
                     parameters={"mode": BOND_MODE_NAMES[interface.bond_mode or 0],
                                 "mii-monitor-interval": MII_MONITOR_MS})
    elif interface.kind == "vlan":
        entry.update(id=interface.vlan, link=interface.parent)
    elif interface.kind == "bridge":
        entry.update(interfaces=list(interface.members),
                     parameters={"stp": False, "forward-delay": 0})
    entry["mtu"] = interface.mtu
    if interface.addresses:
        entry["addresses"] = list(interface.addresses)
    route = _route_on(plan, interface)
    if route:
        entry["routes"] = [{"to": route.to, "via": route.via}]
    return entry


def netplan_document(plan: InterfacePlan) -> dict[str, Any]:
    """The netplan v2 document (networkd renderer): `{"network": {...}}`, what render_netplan writes."""
    sections = {"physical": "ethernets", "bond": "bonds", "vlan": "vlans", "bridge": "bridges"}
    network: dict[str, Any] = {"version": 2, "renderer": "networkd"}
    for interface in plan.interfaces:
        network.setdefault(sections[interface.kind], {})[interface.name] = \
            _netplan_entry(plan, interface)
    return {"network": network}


def render_netplan(plan: InterfacePlan) -> str:
    """YAML for /etc/netplan/ (networkd renderer)."""
    return yaml.dump(netplan_document(plan), Dumper=_Dumper, sort_keys=False)


# ---------------------------------------------------------------------------------------------
# ifupdown

def _ifupdown_options(plan: InterfacePlan, interface: PlannedInterface) -> list[str]:
    options = [f"mtu {interface.mtu}"]
    if interface.kind == "bond":
        options += [f"bond-slaves {' '.join(interface.members)}",
                    f"bond-mode {BOND_MODE_NAMES[interface.bond_mode or 0]}",
                    f"bond-miimon {MII_MONITOR_MS}"]
    elif interface.kind == "vlan":
        options.append(f"vlan-raw-device {interface.parent}")
    elif interface.kind == "bridge":
        options += [f"bridge_ports {' '.join(interface.members)}", "bridge_stp off",
                    "bridge_fd 0"]
    return options


def _ifupdown_stanzas(plan: InterfacePlan, interface: PlannedInterface) -> list[str]:
    """One stanza per address (ifupdown's way to add addresses), options on the first; the
    gateway goes with the address of the network that owns the default route."""
    options = _ifupdown_options(plan, interface)
    if not interface.addresses:
        return [f"iface {interface.name} inet manual\n" + "".join(f"    {o}\n" for o in options)]
    route = _route_on(plan, interface)
    route_address = plan.attachments[route.network].address if route else None
    stanzas = []
    for i, address in enumerate(interface.addresses):
        family = "inet6" if ":" in address else "inet"
        lines = [f"address {address}"]
        if address == route_address:
            lines.append(f"gateway {route.via}")
        lines += options if i == 0 else []
        stanzas.append(f"iface {interface.name} {family} static\n"
                       + "".join(f"    {line}\n" for line in lines))
    return stanzas


def render_ifupdown(plan: InterfacePlan) -> str:
    """/etc/network/interfaces (Debian ifupdown with ifenslave, vlan and bridge-utils)."""
    blocks = [f"# Generated by Crowbar for {plan.node}\nauto lo\niface lo inet loopback\n"]
    for interface in plan.interfaces:
        blocks.append(f"auto {interface.name}\n" + "".join(_ifupdown_stanzas(plan, interface)))
    return "\n".join(blocks)
