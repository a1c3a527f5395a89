import dataclasses
import json

import pytest

from crowbar.network.conduits import ConduitError
from crowbar.network.model import ConduitMapEntry, NetworkValidationError
from crowbar.network.plan import PlanError, plan_interfaces

ADDRESSES = {"admin": "192.168.124.81", "storage": "192.168.125.10", "public": "192.168.126.2",
             "nova_fixed": "192.168.123.60", "bmc": "192.168.124.162"}


def summary(plan) -> list[tuple]:
    return [(i.name, i.kind, i.master, i.addresses, i.mtu) for i in plan.interfaces]


def test_single_mode_puts_everything_on_the_first_nic(template, two_nics):
    plan = plan_interfaces("d1", two_nics, ADDRESSES, template)
    assert plan.conduit_map_pattern == "single/.*/.*"
    assert summary(plan) == [
        ("eth0", "physical", None, ["192.168.124.81/24"], 1500),
        ("eth0.200", "vlan", None, ["192.168.125.10/24"], 1500),
        ("eth0.300", "vlan", None, ["192.168.126.2/24"], 1500),
        ("eth0.500", "vlan", None, ["192.168.123.60/24"], 1500),
    ]
    assert plan.interface("eth0").mac == "52:54:00:00:00:01"
    assert (plan.interface("eth0.300").parent, plan.interface("eth0.300").vlan) == ("eth0", 300)
    fixed = plan.attachments["nova_fixed"]
    assert (fixed.conduit, fixed.conduit_interface, fixed.interface) == ("intf1", "eth0", "eth0.500")


def test_one_default_route_from_the_lowest_router_pref(template, two_nics):
    plan = plan_interfaces("d1", two_nics, ADDRESSES, template)
    assert [dataclasses.astuple(r) for r in plan.routes] == [
        ("default", "192.168.126.1", "eth0.300", "public")]  # public (5) beats admin (10)
    without_public = {k: v for k, v in ADDRESSES.items() if k != "public"}
    plan = plan_interfaces("d1", two_nics, without_public, template)
    assert [(r.via, r.network) for r in plan.routes] == [("192.168.124.1", "admin")]


def test_router_without_pref_loses_to_any_pref(template, two_nics, with_networks):
    plan = plan_interfaces("d1", two_nics, ADDRESSES, with_networks(public={"router_pref": None}))
    assert [r.network for r in plan.routes] == ["admin"]


def test_no_router_means_no_route(template, two_nics):
    plan = plan_interfaces("d1", two_nics, {"storage": "192.168.125.10"}, template)
    assert plan.routes == []


def test_bmc_network_gets_no_os_interface(two_nics, with_networks):
    bridged_bmc = with_networks(bmc={"add_bridge": True})  # nothing on the OS side to bridge
    plan = plan_interfaces("d1", two_nics, {"bmc": "192.168.124.162"}, bridged_bmc)
    assert plan.interfaces == []
    bmc = plan.attachments["bmc"]
    assert (bmc.address, bmc.interface, bmc.conduit_interface) == ("192.168.124.162/24", None, None)


def test_team_mode_bonds_both_nics_once_for_all_conduits(template, two_nics):
    plan = plan_interfaces("d1", two_nics, ADDRESSES, dataclasses.replace(template, mode="team"))
    assert summary(plan) == [
        ("eth0", "physical", "bond0", [], 1500),
        ("eth1", "physical", "bond0", [], 1500),
        ("bond0", "bond", None, ["192.168.124.81/24"], 1500),
        ("bond0.200", "vlan", None, ["192.168.125.10/24"], 1500),
        ("bond0.300", "vlan", None, ["192.168.126.2/24"], 1500),
        ("bond0.500", "vlan", None, ["192.168.123.60/24"], 1500),
    ]
    bond = plan.interface("bond0")
    assert (bond.members, bond.bond_mode) == (["eth0", "eth1"], 5)
    assert plan.attachments["nova_fixed"].conduit_interface == "bond0"


def test_bond_mode_follows_team_mode(template, two_nics, with_networks):
    teamed = with_networks(dataclasses.replace(template, mode="team"),
                           **{n: {"team_mode": 1} for n in ("admin", "storage", "public", "nova_fixed")})
    assert plan_interfaces("d1", two_nics, ADDRESSES, teamed).interface("bond0").bond_mode == 1


def test_networks_sharing_a_bond_must_agree_on_the_mode(template, two_nics, with_networks):
    teamed = with_networks(dataclasses.replace(template, mode="team"), storage={"team_mode": 4})
    with pytest.raises(NetworkValidationError) as caught:
        plan_interfaces("d1", two_nics, ADDRESSES, teamed)
    assert str(caught.value) == ("network 'storage': field 'team_mode': 4 differs from mode 5 of "
                                 "bond0, chosen by network 'admin'")


def test_bridge_wraps_the_shared_vlan_and_carries_its_addresses(template, two_nics, with_networks):
    bridged = with_networks(public={"add_bridge": True})
    addresses = {**ADDRESSES, "nova_floating": "192.168.126.129"}
    plan = plan_interfaces("d1", two_nics, addresses, bridged)
    vlan, bridge = plan.interface("eth0.300"), plan.interface("br-eth0.300")
    assert (vlan.master, vlan.addresses) == ("br-eth0.300", [])
    assert bridge.kind == "bridge" and bridge.members == ["eth0.300"]
    assert bridge.addresses == ["192.168.126.2/24", "192.168.126.129/26"]
    assert bridge.networks == ["public", "nova_floating"]
    assert plan.routes[0].interface == "br-eth0.300"
    assert plan.attachments["public"].conduit_interface == "eth0"
    assert [i.name for i in plan.interfaces][-1] == "br-eth0.300"  # children after parents


def test_parents_carry_the_largest_mtu_of_their_children(template, two_nics, with_networks):
    jumbo = with_networks(dataclasses.replace(template, mode="team"), storage={"mtu": 9000},
                          public={"add_bridge": True, "mtu": 4000})
    plan = plan_interfaces("d1", two_nics, ADDRESSES, jumbo)
    mtus = {i.name: i.mtu for i in plan.interfaces}
    assert mtus == {"eth0": 9000, "eth1": 9000, "bond0": 9000, "bond0.200": 9000,
                    "bond0.300": 4000, "br-bond0.300": 4000, "bond0.500": 1500}


def test_long_nic_names_get_neutron_style_vlan_names(template):
    inventory = [{"name": "enp129s0f1np1", "mac": "52:54:00:00:00:09", "speed": 1000}]
    plan = plan_interfaces("d1", inventory, {"storage": "192.168.125.10"}, template)
    vlan = plan.interfaces[1]
    assert len(vlan.name) <= 15 and vlan.name.startswith("enp1") and vlan.name.endswith(".200")
    assert vlan.parent == "enp129s0f1np1"


def test_missing_nic_for_a_team_names_the_conduit(template):
    one_nic = [{"name": "eth0", "mac": "52:54:00:00:00:01", "speed": 1000}]
    with pytest.raises(ConduitError) as caught:
        plan_interfaces("d1", one_nic, {"admin": "192.168.124.81"},
                        dataclasses.replace(template, mode="team"))
    assert str(caught.value) == "intf0 needs 1g2; node has eth0 1g"


def test_conduit_missing_from_the_selected_entry(template, two_nics):
    entry = ConduitMapEntry("single/.*/.*", {"intf0": ("?1g1",)})
    with pytest.raises(ConduitError) as caught:
        plan_interfaces("d1", two_nics, ADDRESSES, dataclasses.replace(template, conduit_map=(entry,)))
    assert str(caught.value) == ("network 'storage': conduit 'intf1' is not defined in conduit_map "
                                 "entry 'single/.*/.*'")


def test_a_nic_cannot_be_both_bonded_and_direct(template, two_nics):
    entry = ConduitMapEntry("single/.*/.*", {"intf0": ("1g1", "1g2"), "intf1": ("?1g1",)})
    with pytest.raises(PlanError) as caught:
        plan_interfaces("d1", two_nics, ADDRESSES, dataclasses.replace(template, conduit_map=(entry,)))
    assert str(caught.value) == ("node 'd1': eth0 is in bond0 and cannot also carry traffic itself; "
                                 "the conduits of the template overlap on this node")


def test_use_team_refuses_a_single_nic(template, two_nics, with_networks):
    with pytest.raises(NetworkValidationError) as caught:
        plan_interfaces("d1", two_nics, ADDRESSES, with_networks(admin={"use_team": True}))
    assert str(caught.value) == ("network 'admin': field 'use_team': conduit 'intf0' resolves to one "
                                 "interface (eth0); a team needs 2..8")


@pytest.mark.parametrize("address, reason", [
    ("10.0.0.5", "10.0.0.5 is outside 192.168.125.0/24"),
    ("192.168.125.255", "192.168.125.255 is the broadcast address of 192.168.125.0/24"),
    ("banana", "'banana' is not an IP address"),
])
def test_addresses_must_be_hosts_of_the_subnet(template, two_nics, address, reason):
    with pytest.raises(NetworkValidationError) as caught:
        plan_interfaces("d1", two_nics, {"storage": address}, template)
    assert str(caught.value) == f"network 'storage': field 'address': {reason}"


def test_unknown_network_names_are_refused(template, two_nics):
    with pytest.raises(PlanError, match="node 'd1': no network named 'backup' in the template"):
        plan_interfaces("d1", two_nics, {"backup": "10.0.0.1"}, template)


def test_plan_is_json_and_deterministic(template, two_nics):
    first = plan_interfaces("d1", two_nics, ADDRESSES, template).to_dict()
    again = plan_interfaces("d1", list(reversed(two_nics)), dict(reversed(ADDRESSES.items())), template)
    assert json.loads(json.dumps(first)) == first == again.to_dict()
    assert set(first) == {"node", "conduit_map_pattern", "interfaces", "routes", "attachments"}
