import configparser
import dataclasses

import pytest
import yaml

from crowbar.network.model import Network
from crowbar.network.plan import plan_interfaces
from crowbar.network.render import render_ifupdown, render_netplan, render_networkd

ADDRESSES = {"admin": "192.168.124.81", "storage": "192.168.125.10", "public": "192.168.126.2",
             "nova_floating": "192.168.126.129"}


@pytest.fixture
def team_plan(template, two_nics, with_networks):
    """Both NICs bonded; storage jumbo on VLAN 200; public + nova_floating bridged on VLAN 300."""
    teamed = with_networks(dataclasses.replace(template, mode="team"),
                           admin={"team_mode": 1}, storage={"team_mode": 1, "mtu": 9000},
                           public={"team_mode": 1, "add_bridge": True},
                           nova_floating={"team_mode": 1})
    return plan_interfaces("d1", two_nics, ADDRESSES, teamed)


def ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # networkd keys are case-sensitive
    parser.read_string(text)
    return parser


def entries(text: str, section: str) -> list[tuple[str, str]]:
    """Every key=value of a section in order; networkd repeats keys (VLAN=, Address=)."""
    current, found = None, []
    for line in text.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif "=" in line and current == section:
            found.append(tuple(line.split("=", 1)))
    return found


# --- systemd-networkd -----------------------------------------------------------------------

def test_networkd_files(team_plan):
    assert sorted(render_networkd(team_plan)) == [
        "10-eth0.network", "10-eth1.network",
        "20-bond0.netdev", "20-bond0.network",
        "30-bond0.200.netdev", "30-bond0.200.network",
        "30-bond0.300.netdev", "30-bond0.300.network",
        "40-br-bond0.300.netdev", "40-br-bond0.300.network",
    ]


def test_networkd_physical_nics_match_by_mac_and_join_the_bond(team_plan):
    unit = ini(render_networkd(team_plan)["10-eth1.network"])
    assert dict(unit["Match"]) == {"MACAddress": "52:54:00:00:00:02"}
    assert dict(unit["Link"]) == {"MTUBytes": "9000"}
    assert dict(unit["Network"]) == {"Bond": "bond0", "LinkLocalAddressing": "no"}


def test_networkd_bond(team_plan):
    files = render_networkd(team_plan)
    netdev = ini(files["20-bond0.netdev"])
    assert dict(netdev["NetDev"]) == {"Name": "bond0", "Kind": "bond", "MTUBytes": "9000"}
    assert dict(netdev["Bond"]) == {"Mode": "active-backup", "MIIMonitorSec": "100ms"}
    assert dict(ini(files["20-bond0.network"])["Match"]) == {"Name": "bond0"}
    assert entries(files["20-bond0.network"], "Network") == [
        ("VLAN", "bond0.200"), ("VLAN", "bond0.300"), ("Address", "192.168.124.81/24")]


def test_networkd_vlans(team_plan):
    files = render_networkd(team_plan)
    netdev = ini(files["30-bond0.200.netdev"])
    assert dict(netdev["NetDev"]) == {"Name": "bond0.200", "Kind": "vlan", "MTUBytes": "9000"}
    assert dict(netdev["VLAN"]) == {"Id": "200"}
    assert dict(ini(files["30-bond0.200.network"])["Network"]) == {"Address": "192.168.125.10/24"}
    assert dict(ini(files["30-bond0.300.network"])["Network"]) == {
        "Bridge": "br-bond0.300", "LinkLocalAddressing": "no"}


def test_networkd_bridge_carries_addresses_and_the_default_route(team_plan):
    files = render_networkd(team_plan)
    netdev = ini(files["40-br-bond0.300.netdev"])
    assert dict(netdev["NetDev"]) == {"Name": "br-bond0.300", "Kind": "bridge", "MTUBytes": "1500"}
    assert dict(netdev["Bridge"]) == {"STP": "no", "ForwardDelaySec": "0"}
    assert entries(files["40-br-bond0.300.network"], "Network") == [
        ("Address", "192.168.126.2/24"), ("Address", "192.168.126.129/26"),
        ("Gateway", "192.168.126.1")]


def test_networkd_matches_by_name_without_a_mac(template):
    plan = plan_interfaces("d1", [{"name": "eth0", "speed": 1000}], {"admin": "192.168.124.81"}, template)
    unit = ini(render_networkd(plan)["10-eth0.network"])
    assert dict(unit["Match"]) == {"Name": "eth0"}
    assert dict(unit["Network"]) == {"Address": "192.168.124.81/24", "Gateway": "192.168.124.1"}


# --- netplan --------------------------------------------------------------------------------

def test_netplan(team_plan):
    assert yaml.safe_load(render_netplan(team_plan)) == {"network": {
        "version": 2,
        "renderer": "networkd",
        "ethernets": {
            "eth0": {"match": {"macaddress": "52:54:00:00:00:01"}, "set-name": "eth0", "mtu": 9000},
            "eth1": {"match": {"macaddress": "52:54:00:00:00:02"}, "set-name": "eth1", "mtu": 9000},
        },
        "bonds": {"bond0": {"interfaces": ["eth0", "eth1"], "mtu": 9000,
                            "parameters": {"mode": "active-backup", "mii-monitor-interval": 100},
                            "addresses": ["192.168.124.81/24"]}},
        "vlans": {
            "bond0.200": {"id": 200, "link": "bond0", "mtu": 9000, "addresses": ["192.168.125.10/24"]},
            "bond0.300": {"id": 300, "link": "bond0", "mtu": 1500},
        },
        "bridges": {"br-bond0.300": {
            "interfaces": ["bond0.300"], "parameters": {"stp": False, "forward-delay": 0},
            "mtu": 1500, "addresses": ["192.168.126.2/24", "192.168.126.129/26"],
            "routes": [{"to": "default", "via": "192.168.126.1"}]}},
    }}


def test_netplan_single_nic_plan_has_only_the_sections_it_needs(template, two_nics):
    plan = plan_interfaces("d1", two_nics, {"admin": "192.168.124.81"}, template)
    network = yaml.safe_load(render_netplan(plan))["network"]
    assert set(network) == {"version", "renderer", "ethernets"}
    assert network["ethernets"]["eth0"]["routes"] == [{"to": "default", "via": "192.168.124.1"}]


# --- ifupdown -------------------------------------------------------------------------------

def stanzas(text: str) -> list[tuple[str, list[str]]]:
    """('iface <name> <family> <method>', its option lines), in order."""
    found: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("iface "):
            found.append((line, []))
        elif line.startswith("    "):
            found[-1][1].append(line.strip())
    return found


def test_ifupdown(team_plan):
    text = render_ifupdown(team_plan)
    assert [line for line in text.splitlines() if line.startswith("auto ")] == [
        "auto lo", "auto eth0", "auto eth1", "auto bond0", "auto bond0.200", "auto bond0.300",
        "auto br-bond0.300"]
    assert stanzas(text) == [
        ("iface lo inet loopback", []),
        ("iface eth0 inet manual", ["mtu 9000"]),
        ("iface eth1 inet manual", ["mtu 9000"]),
        ("iface bond0 inet static", ["address 192.168.124.81/24", "mtu 9000",
                                     "bond-slaves eth0 eth1", "bond-mode active-backup",
                                     "bond-miimon 100"]),
        ("iface bond0.200 inet static", ["address 192.168.125.10/24", "mtu 9000",
                                         "vlan-raw-device bond0"]),
        ("iface bond0.300 inet manual", ["mtu 1500", "vlan-raw-device bond0"]),
        ("iface br-bond0.300 inet static", ["address 192.168.126.2/24", "gateway 192.168.126.1",
                                            "mtu 1500", "bridge_ports bond0.300",
                                            "bridge_stp off", "bridge_fd 0"]),
        # a second address gets its own stanza, without repeating the options
        ("iface br-bond0.300 inet static", ["address 192.168.126.129/26"]),
    ]


def test_ifupdown_ipv6_addresses_use_inet6(template, two_nics):
    v6 = Network(name="v6", subnet="2001:db8::/64", conduit="intf0", router="2001:db8::1",
                  router_pref=1)
    with_v6 = dataclasses.replace(template, networks={**template.networks, "v6": v6})
    plan = plan_interfaces("d1", two_nics, {"admin": "192.168.124.81", "v6": "2001:db8::5"}, with_v6)
    assert stanzas(render_ifupdown(plan))[1:] == [
        ("iface eth0 inet static", ["address 192.168.124.81/24", "mtu 1500"]),
        ("iface eth0 inet6 static", ["address 2001:db8::5/64", "gateway 2001:db8::1"]),
    ]
