import dataclasses
import ipaddress

import pytest
import yaml

from crowbar.errors import InvalidInput
from crowbar.network.model import (
    ConduitMapEntry, Network, NetworkValidationError, default_template, diff_templates,
    export_template, infer_category, load_network, load_template, network_problems,
    parse_interface_ref, template_problems, validate_network, validate_template,
)


def net(**fields) -> Network:
    base = {"name": "storage", "subnet": "192.168.125.0/24", "conduit": "intf1", "vlan": 200,
            "use_vlan": True, "ranges": {"host": ("192.168.125.10", "192.168.125.239")}}
    return Network(**{**base, **fields})


def messages(problems) -> list[str]:
    return [str(p) for p in problems]


# --- the built-in default -------------------------------------------------------------------

def test_default_template_validates_cleanly(template):
    assert template_problems(template) == []
    validate_template(template)


def test_default_template_holds_crowbars_networks(template):
    assert list(template.networks) == ["admin", "bmc", "bmc_vlan", "storage", "public",
                                       "nova_floating", "nova_fixed", "os_sdn"]
    assert template.mode == "single" and template.teaming_mode == 5
    admin = template.networks["admin"]
    assert admin.subnet == ipaddress.ip_network("192.168.124.0/24")
    assert admin.vlan == 100 and admin.use_vlan is False and admin.router_pref == 10
    assert str(admin.ranges["dhcp"]) == "192.168.124.21-192.168.124.80"
    assert template.networks["storage"].team_mode == 5  # inherited from teaming.mode
    assert template.networks["nova_floating"].subnet.prefixlen == 26
    assert [e.pattern for e in template.conduit_map] == ["team/.*/.*", "dual/.*/.*",
                                                         "single/.*/.*"]
    assert template.conduit_map[0].conduits["intf0"] == ("1g1", "1g2")


# --- loading and exporting ------------------------------------------------------------------

def test_export_round_trips(template):
    exported = export_template(template)
    assert load_template(exported) == template
    assert load_template(yaml.safe_dump(exported)) == template
    assert export_template(load_template(exported)) == exported


def test_export_uses_subnet_and_netmask_for_ipv4(template):
    admin = export_template(template)["networks"]["admin"]
    assert (admin["subnet"], admin["netmask"]) == ("192.168.124.0", "255.255.255.0")
    assert admin["ranges"]["host"] == {"start": "192.168.124.81", "end": "192.168.124.160"}
    assert admin["category"] == "admin" and admin["router"] == "192.168.124.1"


@pytest.mark.parametrize("subnet_fields", [
    {"subnet": "10.0.0.0/24"},
    {"subnet": "10.0.0.0", "netmask": "255.255.255.0"},
    {"subnet": "10.0.0.0", "netmask": 24},
    {"subnet": "10.0.0.0", "netmask": "255.255.255.0", "broadcast": "10.0.0.255"},
])
def test_subnet_spellings_load_alike(subnet_fields):
    network = load_network("x", {"conduit": "intf0", **subnet_fields})
    assert network.subnet == ipaddress.ip_network("10.0.0.0/24")


def test_ipv6_network_round_trips():
    data = {"mode": "single", "teaming": {"mode": 1},
            "conduit_map": [{"pattern": "single/.*/.*", "conduits": {"intf0": ["?1g1"]}}],
            "networks": {"v6": {"conduit": "intf0", "subnet": "2001:db8:1::/64",
                                "router": "2001:db8:1::1", "router_pref": 1,
                                "ranges": {"host": {"start": "2001:db8:1::10",
                                                    "end": "2001:db8:1::ffff"}}}}}
    template = load_template(data)
    assert template.networks["v6"].team_mode == 1
    assert export_template(template)["networks"]["v6"]["subnet"] == "2001:db8:1::/64"
    assert load_template(export_template(template)) == template
    assert template_problems(template) == []


def test_interface_map_round_trips(template):
    data = export_template(template)
    data["interface_map"] = [{"pattern": "PowerEdge R710", "bus_order": ["0000:00/0000:00:01"]}]
    loaded = load_template(data)
    assert loaded.interface_map[0].bus_order == ("0000:00/0000:00:01",)
    assert export_template(loaded) == data


@pytest.mark.parametrize("fields, expected", [
    ({"subnet": "10.0.0.0"}, "network 'x': field 'subnet': '10.0.0.0' needs a prefix length or a netmask"),
    ({"subnet": "10.0.0.5/24"}, "network 'x': field 'subnet': '10.0.0.5/24': 10.0.0.5/24 has host bits set"),
    ({"subnet": "10.0.0.0/24", "broadcast": "10.0.0.254"},
     "network 'x': field 'broadcast': 10.0.0.254 is not the broadcast address 10.0.0.255"),
    ({"subnet": "10.0.0.0/24", "vlna": 3}, "network 'x': field 'vlna': unknown field"),
    ({"subnet": "10.0.0.0/24", "vlan": "abc"}, "network 'x': field 'vlan': expected an integer, got 'abc'"),
    ({"subnet": "10.0.0.0/24", "use_vlan": "no"}, "network 'x': field 'use_vlan': expected true or false, got 'no'"),
    ({"subnet": "10.0.0.0/24", "router": "10.0.0.300"}, "network 'x': field 'router': '10.0.0.300' is not an IP address"),
    ({"subnet": "10.0.0.0/24", "ranges": {"host": {"start": "10.0.0.1"}}},
     "network 'x': field 'ranges.host': needs exactly 'start' and 'end'"),
])
def test_loading_refuses_malformed_values(fields, expected):
    with pytest.raises(NetworkValidationError) as caught:
        load_network("x", {"conduit": "intf0", **fields})
    assert str(caught.value) == expected


def test_loading_requires_subnet_and_conduit():
    with pytest.raises(NetworkValidationError, match="field 'subnet': is required"):
        load_network("x", {"conduit": "intf0"})
    with pytest.raises(NetworkValidationError, match="field 'conduit': is required"):
        load_network("x", {"subnet": "10.0.0.0/24"})


def test_loading_refuses_unknown_template_keys_and_string_refs(template):
    data = export_template(template)
    with pytest.raises(NetworkValidationError, match="template: field 'networkz': unknown field"):
        load_template({**data, "networkz": {}})
    data["conduit_map"][0]["conduits"]["intf0"] = "1g1"
    with pytest.raises(NetworkValidationError, match="expected a list of interface references"):
        load_template(data)


def test_error_is_a_crowbar_input_error_with_field():
    error = NetworkValidationError("storage", "vlan", "4095 is outside 1..4094")
    assert isinstance(error, InvalidInput)
    assert (error.network, error.field, error.reason) == ("storage", "vlan", "4095 is outside 1..4094")
    assert error.to_dict()["field"] == "vlan"


# --- categories -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, category", [
    ("admin", "admin"), ("bmc", "bmc"), ("bmc_vlan", "bmc"), ("storage", "storage"),
    ("public", "public"), ("nova_floating", "public"), ("nova_fixed", "tenant"),
    ("os_sdn", "tenant"), ("backup", "general"),
])
def test_category_is_inferred_from_the_name(name, category):
    assert infer_category(name) == category
    assert net(name=name).category == category


def test_explicit_category_wins():
    assert net(name="admin", category="storage").category == "storage"


# --- per-network rules ----------------------------------------------------------------------

@pytest.mark.parametrize("vlan", [0, 4095, -1])
def test_vlan_outside_1_to_4094(vlan):
    with pytest.raises(NetworkValidationError) as caught:
        validate_network(net(vlan=vlan))
    assert str(caught.value) == f"network 'storage': field 'vlan': {vlan} is outside 1..4094"


@pytest.mark.parametrize("vlan", [1, 4094])
def test_vlan_bounds_are_valid(vlan):
    assert network_problems(net(vlan=vlan)) == []


def test_use_vlan_needs_a_vlan():
    assert messages(network_problems(net(vlan=None))) == [
        "network 'storage': field 'vlan': use_vlan is set but no vlan is given"]


@pytest.mark.parametrize("fields, expected", [
    ({"mtu": 575}, "network 'storage': field 'mtu': 575 is outside 576..9216"),
    ({"mtu": 9217}, "network 'storage': field 'mtu': 9217 is outside 576..9216"),
    ({"team_mode": 7}, "network 'storage': field 'team_mode': 7 is not a bonding mode (0..6)"),
    ({"team_mode": -1}, "network 'storage': field 'team_mode': -1 is not a bonding mode (0..6)"),
    ({"router": "10.1.1.1"}, "network 'storage': field 'router': 10.1.1.1 is outside 192.168.125.0/24"),
    ({"router": "192.168.125.255"},
     "network 'storage': field 'router': 192.168.125.255 is the broadcast address of 192.168.125.0/24"),
])
def test_scalar_rules(fields, expected):
    assert messages(network_problems(net(**fields))) == [expected]


def test_ipv6_mtu_minimum_is_1280():
    v6 = net(subnet="2001:db8::/64", ranges={})
    assert network_problems(dataclasses.replace(v6, mtu=1280)) == []
    assert messages(network_problems(dataclasses.replace(v6, mtu=1279))) == [
        "network 'storage': field 'mtu': 1279 is outside 1280..9216"]


@pytest.mark.parametrize("span, reason", [
    (("192.168.126.1", "192.168.126.9"), "192.168.126.1 is outside 192.168.125.0/24; "
                                         "192.168.126.9 is outside 192.168.125.0/24"),
    (("192.168.125.0", "192.168.125.9"), "192.168.125.0 is the network address of 192.168.125.0/24"),
    (("192.168.125.9", "192.168.125.255"),
     "192.168.125.255 is the broadcast address of 192.168.125.0/24"),
    (("192.168.125.20", "192.168.125.10"), "starts after it ends (192.168.125.20-192.168.125.10)"),
    (("192.168.125.10", "2001:db8::1"), "mixes IPv4 and IPv6 (192.168.125.10-2001:db8::1)"),
])
def test_range_rules(span, reason):
    assert messages(network_problems(net(ranges={"host": span}))) == [
        f"network 'storage': field 'ranges.host': {reason}"]


def test_overlapping_ranges_within_a_network_are_all_found():
    ranges = {"wide": ("192.168.125.1", "192.168.125.100"),
              "a": ("192.168.125.10", "192.168.125.20"),
              "b": ("192.168.125.30", "192.168.125.40"),
              "apart": ("192.168.125.101", "192.168.125.110")}
    assert messages(network_problems(net(ranges=ranges))) == [
        "network 'storage': field 'ranges.a': 192.168.125.10-192.168.125.20 overlaps range 'wide' "
        "(192.168.125.1-192.168.125.100)",
        "network 'storage': field 'ranges.b': 192.168.125.30-192.168.125.40 overlaps range 'wide' "
        "(192.168.125.1-192.168.125.100)"]


def test_point_to_point_subnets_have_no_reserved_addresses():
    assert network_problems(net(subnet="10.0.0.0/31", ranges={"host": ("10.0.0.0", "10.0.0.1")})) == []


def test_ipv6_ranges_may_end_on_the_last_address():
    v6 = net(subnet="2001:db8::/64", ranges={"host": ("2001:db8::", "2001:db8::ffff:ffff:ffff:ffff")})
    assert network_problems(v6) == []


# --- cross-network rules --------------------------------------------------------------------

def test_subnets_overlapping_on_different_vlans_are_refused(with_networks):
    template = with_networks(os_sdn={"subnet": "192.168.125.0/25",
                                     "ranges": {"host": ("192.168.125.240", "192.168.125.250")}})
    assert messages(template_problems(template)) == [
        "network 'os_sdn': field 'ranges.host': 192.168.125.240 is outside 192.168.125.0/25; "
        "192.168.125.250 is outside 192.168.125.0/25",
        "network 'os_sdn': field 'subnet': 192.168.125.0/25 overlaps network 'storage' "
        "(192.168.125.0/24) on a different VLAN (400 vs 200)"]


def test_untagged_networks_may_share_a_subnet_across_declared_vlans(with_networks):
    template = with_networks(bmc={"vlan": 999})  # admin says 100; both untagged on the node
    # ... but bmc_vlan tags VLAN 100 in the same subnet, which bmc now says is VLAN 999
    assert messages(template_problems(template)) == [
        "network 'bmc_vlan': field 'subnet': 192.168.124.0/24 overlaps network 'bmc' "
        "(192.168.124.0/24) on a different VLAN (100 vs 999)"]
    without_tagged = {name: n for name, n in template.networks.items() if name != "bmc_vlan"}
    assert template_problems(dataclasses.replace(template, networks=without_tagged)) == []


def test_a_network_without_vlan_may_share_with_a_tagged_one(template):
    bmc, bmc_vlan = template.networks["bmc"], template.networks["bmc_vlan"]
    assert bmc.vlan is None and bmc_vlan.use_vlan
    assert template_problems(template) == []


def test_tagged_network_on_another_vlan_cannot_share_admins_subnet(with_networks):
    template = with_networks(bmc_vlan={"vlan": 101})
    assert messages(template_problems(template)) == [
        "network 'bmc_vlan': field 'subnet': 192.168.124.0/24 overlaps network 'admin' "
        "(192.168.124.0/24) on a different VLAN (101 vs 100)"]


def test_ranges_of_networks_sharing_a_subnet_must_not_overlap(with_networks):
    template = with_networks(bmc_vlan={"ranges": {"host": ("192.168.124.160", "192.168.124.161")}})
    assert messages(template_problems(template)) == [
        "network 'bmc_vlan': field 'ranges.host': 192.168.124.160-192.168.124.161 overlaps range "
        "'host' of network 'admin' (192.168.124.81-192.168.124.160), which shares its addresses"]


def test_nested_pool_uses_the_enclosing_segments_broadcast(template):
    floating = template.networks["nova_floating"]
    assert str(floating.ranges["host"].end) == "192.168.126.191"  # broadcast of the /26 alone
    assert messages(network_problems(floating)) == [
        "network 'nova_floating': field 'ranges.host': 192.168.126.191 is the broadcast address "
        "of 192.168.126.128/26"]
    assert template_problems(template) == []  # but an ordinary host of public's /24


# --- conduit map rules ----------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("1g1", ("", "1g", 1)), ("+10g2", ("+", "10g", 2)), ("-100m1", ("-", "100m", 1)),
    ("?25g3", ("?", "25g", 3)), ("100g1", ("", "100g", 1)),
])
def test_interface_refs_parse(text, expected):
    ref = parse_interface_ref(text)
    assert tuple(ref) == expected and str(ref) == text


@pytest.mark.parametrize("text, reason", [
    ("1x1", "'1x1' is not an interface reference like 1g1, +10g2 or ?1g1"),
    ("*1g1", "'*1g1' is not an interface reference like 1g1, +10g2 or ?1g1"),
    ("1g", "'1g' is not an interface reference like 1g1, +10g2 or ?1g1"),
    ("2g1", "'2g1' has unknown speed '2g' (known: 10m, 100m, 1g, 10g, 25g, 40g, 100g)"),
    ("1g0", "'1g0': interfaces are counted from 1"),
])
def test_bad_interface_refs(text, reason, with_networks, template):
    with pytest.raises(ValueError) as caught:
        parse_interface_ref(text)
    assert str(caught.value) == reason
    entry = ConduitMapEntry("single/.*/.*", {"intf0": (text,), "intf1": ("?1g1",),
                                             "intf2": ("?1g1",)})
    broken = dataclasses.replace(template, conduit_map=(entry,))
    assert messages(template_problems(broken)) == [
        f"template: field 'conduit_map[0].conduits.intf0': {reason}"]


def test_team_sizes_and_member_consistency(template):
    entries = (ConduitMapEntry("team/.*/.*", {"intf0": tuple(f"1g{i}" for i in range(1, 10)),
                                              "intf1": ("1g1", "+1g2"),
                                              "intf2": ("1g1", "1g2")}),)
    broken = dataclasses.replace(template, conduit_map=entries)
    assert messages(template_problems(broken)) == [
        "template: field 'conduit_map[0].conduits.intf0': a team has at most 8 members, got 9",
        "template: field 'conduit_map[0].conduits.intf1': members of a team must share sign and "
        "speed: 1g1, +1g2"]


def test_use_team_needs_two_members_in_entries_the_mode_can_select(with_networks, template):
    single = with_networks(storage={"use_team": True})
    assert messages(template_problems(single)) == [
        "network 'storage': field 'use_team': conduit 'intf1' has 1 interface(s) in conduit_map "
        "entry 'single/.*/.*'; a team needs 2..8"]
    team = with_networks(dataclasses.replace(template, mode="team"), storage={"use_team": True})
    assert template_problems(team) == []


def test_conduits_must_be_defined_except_bmc(with_networks):
    template = with_networks(storage={"conduit": "intf9"})
    assert messages(template_problems(template)) == [
        "network 'storage': field 'conduit': 'intf9' is not defined in any conduit_map entry"]


@pytest.mark.parametrize("changes, expected", [
    ({"mode": "quad"}, "template: field 'mode': 'quad' is not one of single, dual, team"),
    ({"teaming_mode": 9}, "template: field 'teaming.mode': 9 is not a bonding mode (0..6)"),
])
def test_template_level_rules(template, changes, expected):
    assert messages(template_problems(dataclasses.replace(template, **changes))) == [expected]


@pytest.mark.parametrize("pattern, reason", [
    ("single/.*", "'single/.*' is not <mode>/<nic count>/<role regex>"),
    ("single/(/.*", "'single/(/.*' is not a valid regular expression"),
])
def test_bad_conduit_patterns(template, pattern, reason):
    entries = (dataclasses.replace(template.conduit_map[2], pattern=pattern),)
    problems = messages(template_problems(dataclasses.replace(template, conduit_map=entries)))
    assert len(problems) == 1
    assert problems[0].startswith(f"template: field 'conduit_map[0].pattern': {reason}")


def test_validate_raises_the_first_of_all_problems(with_networks):
    template = with_networks(storage={"vlan": 4095}, public={"mtu": 100})
    problems = messages(template_problems(template))
    assert problems == ["network 'storage': field 'vlan': 4095 is outside 1..4094",
                        "network 'public': field 'mtu': 100 is outside 576..9216"]
    with pytest.raises(NetworkValidationError) as caught:
        validate_template(template)
    assert str(caught.value) == problems[0]


# --- diffs ----------------------------------------------------------------------------------

def test_identical_templates_have_an_empty_diff(template):
    diff = diff_templates(template, default_template())
    assert not diff
    assert diff.to_dict() == {"added": [], "removed": [], "changed": {}, "template": []}


def test_diff_reports_networks_fields_and_template_changes(template, with_networks):
    new = with_networks(storage={"vlan": 201, "ranges": {"host": ("192.168.125.10", "192.168.125.99"),
                                                         "extra": ("192.168.125.200", "192.168.125.210")}},
                        admin={"router_pref": None})
    networks = {k: v for k, v in new.networks.items() if k != "os_sdn"}
    networks["backup"] = Network(name="backup", subnet="10.9.0.0/16", conduit="intf1")
    new = dataclasses.replace(new, networks=networks, mode="team")
    assert diff_templates(template, new).to_dict() == {
        "added": ["backup"],
        "removed": ["os_sdn"],
        "changed": {
            "admin": [{"field": "router_pref", "old": 10, "new": None}],
            "storage": [{"field": "vlan", "old": 200, "new": 201},
                        {"field": "ranges.host", "old": "192.168.125.10-192.168.125.239",
                         "new": "192.168.125.10-192.168.125.99"},
                        {"field": "ranges.extra", "old": None,
                         "new": "192.168.125.200-192.168.125.210"}],
        },
        "template": [{"field": "mode", "old": "single", "new": "team"}],
    }


def test_diff_reports_conduit_map_changes(template):
    entries = list(template.conduit_map)
    entries[2] = ConduitMapEntry("single/.*/.*", {**entries[2].conduits, "intf1": ("?1g2",)})
    diff = diff_templates(template, dataclasses.replace(template, conduit_map=tuple(entries)))
    assert [tuple(c) for c in diff.template] == [("conduit_map[single/.*/.*].intf1", "?1g1", "?1g2")]


def test_which_changes_a_role_watching_a_network_must_rerun_for(template, with_networks):
    """TemplateDiff.reasons: the watched fields of the network (none watched: any field); adding or
    removing it; a template-level change counts for `conduit` (it can change what the conduit
    resolves to); ranges.NAME counts as `ranges`."""
    vlan = diff_templates(template, with_networks(nova_fixed={"vlan": 600}))
    assert vlan.reasons("nova_fixed", ["vlan"], True) == ["nova_fixed.vlan: 500 -> 600"]
    assert vlan.reasons("nova_fixed", [], True) == ["nova_fixed.vlan: 500 -> 600"]
    assert vlan.reasons("nova_fixed", ["conduit"], True) == []
    assert vlan.reasons("admin", [], True) == []
    mtu = diff_templates(template, with_networks(nova_fixed={"mtu": 9000}))
    assert mtu.reasons("nova_fixed", ["vlan", "conduit"], True) == []
    ranges = diff_templates(template, with_networks(nova_fixed={"ranges": {}}))
    assert ranges.reasons("nova_fixed", ["ranges"], True) == [
        "nova_fixed.ranges.router: 192.168.123.1-192.168.123.49 -> None",
        "nova_fixed.ranges.dhcp: 192.168.123.50-192.168.123.254 -> None"]
    mode = diff_templates(template, dataclasses.replace(template, mode="dual"))
    assert mode.reasons("nova_fixed", ["conduit"], True) == ["template mode: single -> dual"]
    assert mode.reasons("nova_fixed", ["vlan"], True) == []
    assert mode.reasons("absent", ["conduit"], False) == []  # a network in neither template
    gone = diff_templates(template, dataclasses.replace(
        template, networks={k: v for k, v in template.networks.items() if k != "nova_fixed"}))
    assert gone.reasons("nova_fixed", ["vlan"], True) == ["nova_fixed removed"]


@pytest.mark.parametrize("watch, problem", [
    (["nova_fixed"], None), ({"nova_fixed": ["vlan", "conduit"]}, None), ({}, None),
    ({"nova_fixed": ["name"]}, "expected a list of its fields"), ({"": []}, "'' is not a network name"),
    ({"nova_fixed": [["vlan"]]}, "expected a list of its fields"), (5, "expected a list of network names"),
])
def test_reruns_on_networks_declarations(watch, problem):
    from crowbar.network.model import watch_problem

    found = watch_problem(watch)
    assert found == problem if problem is None else problem in found
