import hashlib
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowbar.errors import InvalidInput
from crowbar.network.linuxbridge import (
    AmbiguousDevice, DeviceOwner, MappingError, NetworkTunnelRangeError, NetworkVlanRangeError,
    PhysicalNetworkNameError, bridge_name, dhcp_device_name, dhcp_namespace, interface_name,
    is_valid_vlan_tag, is_valid_vni, parse_mappings, parse_network_vlan_ranges, parse_vni_ranges,
    router_device_name, router_namespace, subinterface_name, tap_name, vxlan_name, whois,
)

NETWORK_ID = "7e4f1c2a-9b1d-4c55-8d2e-0a1b2c3d4e5f"
PORT_ID = "3f2a9c1e-5b6d-4e7f-8a9b-0c1d2e3f4a5b"


def sha6(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:6]


# --- Neutron's published cases --------------------------------------------------------------

def test_bridge_names():
    assert bridge_name("123456789101112") == "brq12345678910"
    assert bridge_name("") == "brq"


def test_tap_names():
    assert tap_name("123456789101112") == "tap12345678910"


def test_subinterface_keeps_short_names():
    assert subinterface_name("abcdefghijklm", "1") == "abcdefghijklm.1"
    assert subinterface_name("eth0", 4094) == "eth0.4094"


def test_subinterface_of_a_15_character_interface_keeps_one_prefix_for_every_vlan():
    first = subinterface_name("abcdefghijklmno", "1")
    second = subinterface_name("abcdefghijklmno", "1111")
    assert first.partition(".")[0] == second.partition(".")[0] == "abcd" + sha6("abcdefghijklmno")
    assert (first, len(second)) == ("abcd" + sha6("abcdefghijklmno") + ".1", 15)


def test_subinterface_hashes_only_when_too_long():
    assert subinterface_name("abcdefghijklm", "11") == "abcd" + sha6("abcdefghijklm") + ".11"


def test_vxlan_names():
    assert vxlan_name(16777215) == "vxlan-16777215"
    assert vxlan_name(16777216) is None
    assert vxlan_name("42") == "vxlan-42"
    assert vxlan_name(0) is None and vxlan_name("x") is None


@pytest.mark.parametrize("tag", [1, 3, 4092, 4094])
def test_valid_vlan_tags(tag):
    assert is_valid_vlan_tag(tag)


@pytest.mark.parametrize("tag", [0, -1, 4095, 4096, "5", True, None])
def test_invalid_vlan_tags(tag):
    assert not is_valid_vlan_tag(tag)


@pytest.mark.parametrize("vni, valid", [(1, True), (16777215, True), (0, False), (16777216, False)])
def test_vni_validity(vni, valid):
    assert is_valid_vni(vni) is valid


# --- other names ----------------------------------------------------------------------------

def test_namespace_device_names_are_cut_to_14():
    assert dhcp_device_name(PORT_ID) == "ns-3f2a9c1e-5b"
    assert router_device_name(PORT_ID) == "qr-3f2a9c1e-5b"
    assert router_device_name(PORT_ID, external=True) == "qg-3f2a9c1e-5b"
    assert dhcp_device_name("abc") == "ns-abc"


def test_namespaces_hold_the_full_id():
    assert dhcp_namespace(NETWORK_ID) == "qdhcp-" + NETWORK_ID
    assert router_namespace(NETWORK_ID) == "qrouter-" + NETWORK_ID


def test_interface_name_rule():
    assert interface_name("eth0", "br-") == "br-eth0"
    assert interface_name("abcdefghijklmno") == "abcdefghijklmno"
    assert interface_name("abcdefghijklmnop") == "abcdefghi" + sha6("abcdefghijklmnop")
    assert interface_name("enp129s0f1.300", "br-") == "br-enp129" + sha6("enp129s0f1.300")
    assert interface_name("abcdefgh", "pre-", max_len=10) == "pre-" + sha6("abcdefgh")


def test_interface_name_refuses_a_prefix_leaving_no_room_for_the_hash():
    with pytest.raises(ValueError) as caught:
        interface_name("abcdefghijklmnop", prefix="0123456789")
    assert str(caught.value).startswith(
        "Too long prefix provided. New name would exceed given length for an interface name")


# --- network_vlan_ranges --------------------------------------------------------------------

def test_vlan_ranges_parse():
    assert parse_network_vlan_ranges([" physnet1:500:2500", "physnet1:3000:3001", "physnet2",
                                      "physnet3:1:4094"]) == {
        "physnet1": [(500, 2500), (3000, 3001)], "physnet2": [], "physnet3": [(1, 4094)]}
    assert parse_network_vlan_ranges([]) == {}


@pytest.mark.parametrize("entry, message", [
    ("physnet1:100", "Invalid network VLAN range: 'physnet1:100' - 'Need exactly two values for VLAN range'."),
    ("physnet1:1:2:3", "Invalid network VLAN range: 'physnet1:1:2:3' - 'Need exactly two values for VLAN range'."),
    ("physnet1:abc:100", "Invalid network VLAN range: 'physnet1:abc:100' - 'abc is not a valid VLAN tag'."),
    ("physnet1:100:x", "Invalid network VLAN range: 'physnet1:100:x' - 'x is not a valid VLAN tag'."),
    ("physnet1:0:100", "Invalid network VLAN range: '0:100' - '0 is not a valid VLAN tag'."),
    ("physnet1:1:4095", "Invalid network VLAN range: '1:4095' - '4095 is not a valid VLAN tag'."),
    ("physnet1:200:100", "Invalid network VLAN range: '200:100' - 'End of VLAN range is less than start of VLAN range'."),
])
def test_vlan_range_errors_carry_neutrons_messages(entry, message):
    with pytest.raises(NetworkVlanRangeError) as caught:
        parse_network_vlan_ranges([entry])
    assert str(caught.value) == message
    assert isinstance(caught.value, InvalidInput)


def test_empty_physical_network_name():
    with pytest.raises(PhysicalNetworkNameError, match=r"^Empty physical network name\.$"):
        parse_network_vlan_ranges([":100:200"])


def test_vni_ranges():
    assert parse_vni_ranges(["1001:2000", " 1:16777215 "]) == [(1001, 2000), (1, 16777215)]


@pytest.mark.parametrize("entry, message", [
    ("1001", "Invalid network tunnel range: '1001' - not enough values to unpack (expected 2, got 1)."),
    ("0:10", "Invalid network tunnel range: '0:10' - 0 is not a valid vxlan identifier."),
    ("1:16777216", "Invalid network tunnel range: '1:16777216' - 16777216 is not a valid vxlan identifier."),
    ("20:10", "Invalid network tunnel range: '20:10' - End of tunnel range is less than start of tunnel range."),
])
def test_vni_range_errors(entry, message):
    with pytest.raises(NetworkTunnelRangeError) as caught:
        parse_vni_ranges([entry])
    assert str(caught.value) == message


# --- mappings -------------------------------------------------------------------------------

def test_mappings_parse():
    assert parse_mappings(["physnet1:eth1", " physnet2 : bond0 ", ""]) == {
        "physnet1": "eth1", "physnet2": "bond0"}
    assert parse_mappings(["a:x", "b:x"], unique_values=False) == {"a": "x", "b": "x"}
    assert parse_mappings(["a:x", "a:y", "a:x"], unique_keys=False) == {"a": {"x", "y"}}


@pytest.mark.parametrize("entries, message", [
    (["physnet1"], "Invalid mapping: 'physnet1'"),
    (["a:b:c"], "Invalid mapping: 'a:b:c'"),
    ([":eth1"], "Missing key in mapping: ':eth1'"),
    (["physnet1:"], "Missing value in mapping: 'physnet1:'"),
    (["physnet1:eth1", "physnet1:eth2"], "Key physnet1 in mapping: 'physnet1:eth2' not unique"),
    (["physnet1:eth1", "physnet2:eth1"], "Value eth1 in mapping: 'physnet2:eth1' not unique"),
])
def test_mapping_errors_carry_neutrons_messages(entries, message):
    with pytest.raises(ValueError) as caught:
        parse_mappings(entries)
    assert str(caught.value) == message
    assert isinstance(caught.value, MappingError)


# --- whois ----------------------------------------------------------------------------------

NETWORKS = [
    {"id": NETWORK_ID, "name": "tenant-a", "network_type": "vlan", "segmentation_id": 501},
    SimpleNamespace(id="9a8b7c6d-0000-4000-8000-000000000001", name="tenant-b",
                    network_type="vxlan", segmentation_id=1001),
    {"id": "55aa55aa-0000-4000-8000-000000000002", "name": "ext",
     "provider:network_type": "vlan", "provider:segmentation_id": 300},
]
PORTS = [{"id": PORT_ID, "name": "vm1-port", "network_id": NETWORK_ID},
         {"id": "c0ffee00-1111-4222-8333-444455556666", "name": "", "network_id": NETWORK_ID}]
ROUTERS = [{"id": "abcdef01-2345-4678-9abc-def012345678", "name": "router1"}]


@pytest.mark.parametrize("device, owner", [
    (bridge_name(NETWORK_ID), ("network", NETWORK_ID, "tenant-a")),
    ("br" + NETWORK_ID, ("network", NETWORK_ID, "tenant-a")),  # the seed article's spelling
    (tap_name(PORT_ID), ("port", PORT_ID, "vm1-port")),
    (dhcp_device_name(PORT_ID), ("port", PORT_ID, "vm1-port")),
    (router_device_name(PORT_ID), ("port", PORT_ID, "vm1-port")),
    (router_device_name("c0ffee00-1111-4222-8333-444455556666", external=True),
     ("port", "c0ffee00-1111-4222-8333-444455556666", None)),
    ("vxlan-1001", ("network", "9a8b7c6d-0000-4000-8000-000000000001", "tenant-b")),
    ("eth1.501", ("network", NETWORK_ID, "tenant-a")),
    (subinterface_name("enp129s0f1np1", 300) , ("network", "55aa55aa-0000-4000-8000-000000000002", "ext")),
    (dhcp_namespace(NETWORK_ID), ("network", NETWORK_ID, "tenant-a")),
    (router_namespace(ROUTERS[0]["id"]), ("router", ROUTERS[0]["id"], "router1")),
])
def test_whois_finds_the_owner(device, owner):
    assert whois(device, NETWORKS, PORTS, ROUTERS) == DeviceOwner(*owner)


@pytest.mark.parametrize("device", ["eth0", "brq", "br-public", "brqffffffffff", "vxlan-7",
                                    "eth1.999", "tapzzz", "lo"])
def test_whois_returns_none_for_unknown_devices(device):
    assert whois(device, NETWORKS, PORTS, ROUTERS) is None


def test_whois_refuses_to_guess_between_two_owners():
    twins = [{"id": "12345678901-a", "name": "one"}, {"id": "12345678901-b", "name": "two"}]
    with pytest.raises(AmbiguousDevice, match="device 'brq12345678901' matches several objects"):
        whois("brq12345678901", twins)


# --- properties of names --------------------------------------------------------------------

device_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(device_names, st.sampled_from(["", "br-", "tap", "qr-", "qvo"]))
def test_interface_names_fit_and_are_stable(name, prefix):
    result = interface_name(name, prefix)
    assert len(result) <= 15 and result.startswith(prefix)
    assert result == interface_name(name, prefix)
    if len(prefix + name) <= 15:
        assert result == prefix + name
    else:
        assert result.endswith(sha6(name))


@settings(max_examples=200, deadline=None)
@given(device_names.filter(lambda n: len(n) <= 15), st.integers(min_value=1, max_value=4094))
def test_subinterface_names_fit_and_keep_the_vlan(interface, vlan):
    result = subinterface_name(interface, vlan)
    assert len(result) <= 15 and result.endswith(f".{vlan}")
    assert result == subinterface_name(interface, vlan)


@settings(max_examples=200, deadline=None)
@given(st.lists(device_names.filter(lambda n: len(n) > 15), min_size=2, max_size=2, unique=True))
def test_distinct_long_names_stay_distinct(pair):
    first, second = pair
    assert interface_name(first) != interface_name(second)
    assert subinterface_name(first, 100) != subinterface_name(second, 100)
