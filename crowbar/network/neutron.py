"""Neutron (ML2 + Linux Bridge) settings derived from the network model, as Crowbar's OpenStack
barclamp did, and the pure part of tenant segment allocation.

Tenant VLAN range: start = nova_fixed's VLAN, end = start + count (count defaults to 2000).
The range is inclusive and holds count + 1 tags because nova_fixed itself is created as a
provider network on `start`: tenants get exactly `count` tags, start+1 (501 with the defaults,
as in the seed article) to start+count. This is the seed's "end = start + 2000"; later Crowbar
code used start + count - 1 clipped to 4094, which silently shrank the pool. Here a range that
would pass 4094 is refused with the largest safe start (4094 - count: 2094 for 2000).

physical_interface_mappings: physnet1 -> the interface nova_fixed's conduit resolves to on the
node (the bond or NIC, not the VLAN subinterface: Neutron adds its own `<iface>.<vlan>`).
"""

from __future__ import annotations

import configparser
import io
from typing import Iterable

from crowbar.errors import Conflict, InvalidInput
from crowbar.network.linuxbridge import MAX_VLAN_TAG, MIN_VLAN_TAG, is_valid_vlan_tag
from crowbar.network.model import NetworkTemplate, NetworkValidationError
from crowbar.network.plan import InterfacePlan

FIXED_NETWORK = "nova_fixed"
TUNNEL_NETWORK = "os_sdn"  # carries VXLAN between nodes: its address is the VTEP (local_ip)
DEFAULT_PHYSNET = "physnet1"
DEFAULT_TENANT_VLAN_COUNT = 2000
DEFAULT_VNI_RANGE = (1001, 2000)  # devstack's default vni_ranges

NO_TENANT_NETWORK_AVAILABLE = ("Unable to create the network. No tenant network is available "
                               "for allocation.")
VLAN_IN_USE = "Unable to create the network. The VLAN {vlan} on physical network {physnet} is in use."


class NoNetworkAvailable(Conflict):
    def __init__(self) -> None:
        super().__init__(NO_TENANT_NETWORK_AVAILABLE)


class VlanInUse(Conflict):
    def __init__(self, vlan: int, physnet: str):
        super().__init__(VLAN_IN_USE.format(vlan=vlan, physnet=physnet), field="segmentation_id")
        self.vlan, self.physnet = vlan, physnet


def largest_safe_start(count: int = DEFAULT_TENANT_VLAN_COUNT) -> int:
    return MAX_VLAN_TAG - count


def tenant_vlan_range(template: NetworkTemplate,
                      count: int = DEFAULT_TENANT_VLAN_COUNT) -> tuple[int, int]:
    """(start, end), inclusive: nova_fixed's VLAN and the `count` tags after it."""
    if count < 1:
        raise InvalidInput(f"tenant VLAN count {count} must be at least 1", field="count")
    fixed = template.networks.get(FIXED_NETWORK)
    if fixed is None or fixed.vlan is None:
        reason = "has no vlan" if fixed else "is missing from the template"
        raise NetworkValidationError(FIXED_NETWORK, "vlan", f"{reason}; Neutron's tenant VLAN "
                                     "range starts at it")
    start, end = fixed.vlan, fixed.vlan + count
    if not is_valid_vlan_tag(start):
        raise NetworkValidationError(FIXED_NETWORK, "vlan", f"{start} is outside "
                                     f"{MIN_VLAN_TAG}..{MAX_VLAN_TAG}")
    if end > MAX_VLAN_TAG:
        raise NetworkValidationError(
            FIXED_NETWORK, "vlan", f"tenant VLAN range {start}..{end} passes {MAX_VLAN_TAG}: with "
            f"{count} tenant VLANs the largest safe start is {largest_safe_start(count)}"
            + (f" (or lower the count to {MAX_VLAN_TAG - start})" if start < MAX_VLAN_TAG else ""))
    return start, end


def first_free(ranges: Iterable[tuple[int, int]], used: set[int]) -> int:
    """The lowest free id in the inclusive `ranges` (Grizzly's order: 501, 502...)."""
    for low, high in sorted(ranges):
        candidate = low
        while candidate <= high and candidate in used:
            candidate += 1
        if candidate <= high:
            return candidate
    raise NoNetworkAvailable()


def ensure_vlan_free(physnet: str, vlan: int, used: set[int]) -> None:
    """A provider network asking for an explicit tag (inside the ranges or not)."""
    if vlan in used:
        raise VlanInUse(vlan, physnet)


def physical_interface_mappings(plan: InterfacePlan,
                                physnet: str = DEFAULT_PHYSNET) -> dict[str, str]:
    attachment = plan.attachments.get(FIXED_NETWORK)
    if attachment is None or attachment.conduit_interface is None:
        raise NetworkValidationError(FIXED_NETWORK, "conduit", f"node {plan.node!r} has no "
                                     "interface on it, so Neutron has no physical interface")
    return {physnet: attachment.conduit_interface}


def _ini(sections: dict[str, dict[str, str]]) -> str:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_dict(sections)
    out = io.StringIO()
    parser.write(out)
    return out.getvalue()


def ml2_conf(template: NetworkTemplate, *, physnet: str = DEFAULT_PHYSNET,
             tenant_vlan_count: int = DEFAULT_TENANT_VLAN_COUNT,
             vni_range: tuple[int, int] = DEFAULT_VNI_RANGE,
             tenant_network_types: Iterable[str] = ("vlan",)) -> str:
    start, end = tenant_vlan_range(template, tenant_vlan_count)
    return _ini({
        "ml2": {"type_drivers": "flat,vlan,vxlan",
                "tenant_network_types": ",".join(tenant_network_types),
                "mechanism_drivers": "linuxbridge"},
        "ml2_type_vlan": {"network_vlan_ranges": f"{physnet}:{start}:{end}"},
        "ml2_type_vxlan": {"vni_ranges": "%d:%d" % vni_range},
    })


def linuxbridge_agent_ini(plan: InterfacePlan, *, physnet: str = DEFAULT_PHYSNET,
                          enable_vxlan: bool = False) -> str:
    vxlan = {"enable_vxlan": str(enable_vxlan).lower()}
    if enable_vxlan:
        tunnel = plan.attachments.get(TUNNEL_NETWORK)
        if tunnel is None:
            raise NetworkValidationError(TUNNEL_NETWORK, "address", f"node {plan.node!r} has no "
                                         "address on it, so VXLAN has no local_ip")
        vxlan["local_ip"] = tunnel.address.split("/")[0]
    mappings = physical_interface_mappings(plan, physnet)
    return _ini({
        "linux_bridge": {"physical_interface_mappings":
                         ",".join(f"{net}:{iface}" for net, iface in mappings.items())},
        "vxlan": vxlan,
        "securitygroup": {"enable_security_group": "true", "firewall_driver": "iptables"},
    })


def dhcp_agent_ini() -> str:
    return _ini({"DEFAULT": {"interface_driver": "linuxbridge",
                             "dhcp_driver": "neutron.agent.linux.dhcp.Dnsmasq"}})


def l3_agent_ini() -> str:
    return _ini({"DEFAULT": {"interface_driver": "linuxbridge"}})
