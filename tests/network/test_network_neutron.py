import configparser
import dataclasses

import pytest

from crowbar.errors import Conflict
from crowbar.network.linuxbridge import parse_network_vlan_ranges
from crowbar.network.model import NetworkValidationError
from crowbar.network.neutron import (
    NO_TENANT_NETWORK_AVAILABLE, NoNetworkAvailable, VlanInUse, dhcp_agent_ini, ensure_vlan_free,
    first_free, l3_agent_ini, largest_safe_start, linuxbridge_agent_ini, ml2_conf,
    physical_interface_mappings, tenant_vlan_range,
)
from crowbar.network.plan import plan_interfaces

ADDRESSES = {"admin": "192.168.124.81", "nova_fixed": "192.168.123.60", "os_sdn": "192.168.130.10"}


def sections(text: str) -> dict[str, dict[str, str]]:
    """Every section as written, [DEFAULT] included as an ordinary one."""
    parser = configparser.ConfigParser(interpolation=None, default_section="(none)")
    parser.read_string(text)
    return {name: dict(parser[name]) for name in parser.sections()}


# --- tenant VLAN range ----------------------------------------------------------------------

def test_tenant_range_starts_at_nova_fixeds_vlan(template):
    assert tenant_vlan_range(template) == (500, 2500)
    assert tenant_vlan_range(template, count=10) == (500, 510)


def test_largest_safe_start():
    assert largest_safe_start() == 2094
    assert largest_safe_start(1000) == 3094


def test_largest_safe_start_is_accepted(with_networks):
    assert tenant_vlan_range(with_networks(nova_fixed={"vlan": 2094})) == (2094, 4094)


def test_a_start_that_would_pass_4094_is_refused_with_the_largest_safe_start(with_networks):
    with pytest.raises(NetworkValidationError) as caught:
        tenant_vlan_range(with_networks(nova_fixed={"vlan": 2095}))
    assert str(caught.value) == (
        "network 'nova_fixed': field 'vlan': tenant VLAN range 2095..4095 passes 4094: with 2000 "
        "tenant VLANs the largest safe start is 2094 (or lower the count to 1999)")
    assert tenant_vlan_range(with_networks(nova_fixed={"vlan": 2095}), count=1999) == (2095, 4094)


def test_missing_or_untagged_nova_fixed(template, with_networks):
    without = dataclasses.replace(template, networks={
        k: v for k, v in template.networks.items() if k != "nova_fixed"})
    with pytest.raises(NetworkValidationError, match="^network 'nova_fixed': field 'vlan': is "
                                                     "missing from the template"):
        tenant_vlan_range(without)
    with pytest.raises(NetworkValidationError, match="^network 'nova_fixed': field 'vlan': has no vlan"):
        tenant_vlan_range(with_networks(nova_fixed={"vlan": None, "use_vlan": False}))


# --- segment allocation helpers -------------------------------------------------------------

def test_first_free_follows_grizzlys_order():
    used = {500}  # nova_fixed itself is a provider network on the first tag
    assert first_free([(500, 2500)], used) == 501
    used.add(501)
    assert first_free([(500, 2500)], used) == 502
    assert first_free([(3000, 3001), (10, 11)], {10, 11}) == 3000


def test_empty_pool_raises_neutrons_message():
    with pytest.raises(NoNetworkAvailable) as caught:
        first_free([(1, 2)], {1, 2})
    assert str(caught.value) == NO_TENANT_NETWORK_AVAILABLE == (
        "Unable to create the network. No tenant network is available for allocation.")
    assert isinstance(caught.value, Conflict)


def test_explicit_vlan_in_use_raises_neutrons_message():
    ensure_vlan_free("physnet1", 600, {500, 501})
    with pytest.raises(VlanInUse) as caught:
        ensure_vlan_free("physnet1", 501, {500, 501})
    assert str(caught.value) == ("Unable to create the network. The VLAN 501 on physical network "
                                 "physnet1 is in use.")


# --- configuration files --------------------------------------------------------------------

def test_ml2_conf(template):
    conf = sections(ml2_conf(template))
    assert conf == {
        "ml2": {"type_drivers": "flat,vlan,vxlan", "tenant_network_types": "vlan",
                "mechanism_drivers": "linuxbridge"},
        "ml2_type_vlan": {"network_vlan_ranges": "physnet1:500:2500"},
        "ml2_type_vxlan": {"vni_ranges": "1001:2000"},
    }
    ranges = parse_network_vlan_ranges([conf["ml2_type_vlan"]["network_vlan_ranges"]])
    assert ranges == {"physnet1": [(500, 2500)]}


def test_ml2_conf_options(template):
    conf = sections(ml2_conf(template, physnet="datacentre", tenant_vlan_count=100,
                             vni_range=(1, 500), tenant_network_types=("vxlan", "vlan")))
    assert conf["ml2"]["tenant_network_types"] == "vxlan,vlan"
    assert conf["ml2_type_vlan"] == {"network_vlan_ranges": "datacentre:500:600"}
    assert conf["ml2_type_vxlan"] == {"vni_ranges": "1:500"}


def test_linuxbridge_agent_maps_physnet1_to_the_nic(template, two_nics):
    plan = plan_interfaces("c1", two_nics, ADDRESSES, template)
    assert physical_interface_mappings(plan) == {"physnet1": "eth0"}
    assert sections(linuxbridge_agent_ini(plan)) == {
        "linux_bridge": {"physical_interface_mappings": "physnet1:eth0"},
        "vxlan": {"enable_vxlan": "false"},
        "securitygroup": {"enable_security_group": "true", "firewall_driver": "iptables"},
    }


def test_linuxbridge_agent_maps_physnet1_to_the_bond_not_the_vlan(template, two_nics):
    plan = plan_interfaces("c1", two_nics, ADDRESSES, dataclasses.replace(template, mode="team"))
    assert plan.attachments["nova_fixed"].interface == "bond0.500"
    conf = sections(linuxbridge_agent_ini(plan, enable_vxlan=True))
    assert conf["linux_bridge"] == {"physical_interface_mappings": "physnet1:bond0"}
    assert conf["vxlan"] == {"enable_vxlan": "true", "local_ip": "192.168.130.10"}


def test_linuxbridge_agent_needs_nova_fixed_and_for_vxlan_os_sdn(template, two_nics):
    admin_only = plan_interfaces("c1", two_nics, {"admin": "192.168.124.81"}, template)
    with pytest.raises(NetworkValidationError, match="^network 'nova_fixed': field 'conduit': "
                                                     "node 'c1' has no interface on it"):
        linuxbridge_agent_ini(admin_only)
    no_sdn = plan_interfaces("c1", two_nics, {"nova_fixed": "192.168.123.60"}, template)
    with pytest.raises(NetworkValidationError, match="^network 'os_sdn': field 'address': node "
                                                     "'c1' has no address on it"):
        linuxbridge_agent_ini(no_sdn, enable_vxlan=True)


def test_dhcp_and_l3_agents():
    assert sections(dhcp_agent_ini()) == {"DEFAULT": {
        "interface_driver": "linuxbridge", "dhcp_driver": "neutron.agent.linux.dhcp.Dnsmasq"}}
    assert sections(l3_agent_ini()) == {"DEFAULT": {"interface_driver": "linuxbridge"}}
