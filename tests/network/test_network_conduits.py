import dataclasses

import pytest

from crowbar.errors import InvalidInput
from crowbar.network.conduits import (
    ConduitError, Nic, bus_order_for, order_nics, parse_speed, resolve_conduit,
    select_conduit_entry,
)
from crowbar.network.model import BusOrder, ConduitMapEntry


def nics(*specs) -> list[Nic]:
    """nics(("eth0", 1000), ("eth1", 10000)) in the given order (bus order follows it)."""
    return [Nic(name, speed=speed, bus=f"0000:0{i}:00.0") for i, (name, speed) in enumerate(specs)]


def names(resolved) -> list[str]:
    return [nic.name for nic in resolved]


@pytest.mark.parametrize("value, mbps", [
    (1000, 1000), ("1000", 1000), ("1g", 1000), ("10G", 10000), ("2.5g", 2500),
    ("100m", 100), ("1000Mb/s", 1000), ("25Gbps", 25000), (None, None),
])
def test_speeds_parse(value, mbps):
    assert parse_speed(value) == mbps


def test_bad_speed_is_an_input_error():
    with pytest.raises(InvalidInput, match="NIC speed 'fast' is not a number of Mb/s"):
        parse_speed("fast")


@pytest.mark.parametrize("speed, speed_class", [
    (10, "10m"), (100, "100m"), (1000, "1g"), (2500, "1g"), (10000, "10g"), (25000, "25g"),
    (40000, "40g"), (100000, "100g"), (200000, "100g"), (5, "10m"), (None, "1g"),
])
def test_speed_classes(speed, speed_class):
    assert Nic("eth0", speed=speed).speed_class == speed_class


def test_inventory_items_may_be_dicts_or_objects():
    class Item:
        name, mac, speed, driver, bus = "em1", "aa:bb:cc:dd:ee:ff", "10g", "ixgbe", "0000:03:00.0"

    assert Nic.from_inventory(Item()) == Nic("em1", "aa:bb:cc:dd:ee:ff", 10000, "ixgbe", "0000:03:00.0")
    assert Nic.from_inventory({"name": "em2"}) == Nic("em2")
    with pytest.raises(InvalidInput, match="has no name"):
        Nic.from_inventory({"mac": "aa:bb:cc:dd:ee:ff"})


def test_nics_are_ordered_by_bus_then_name():
    inventory = [Nic("eth10", bus=None), Nic("eth2", bus=None), Nic("eth1", bus="0000:02:00.0"),
                 Nic("eth0", bus="0000:01:00.1"), Nic("eth3", bus="0000:01:00.0")]
    assert names(order_nics(inventory)) == ["eth3", "eth0", "eth1", "eth2", "eth10"]


def test_bus_order_ranks_first_and_unlisted_buses_come_last():
    inventory = [Nic("a", bus="0000:01:00.0"), Nic("b", bus="0000:05:00.0"),
                 Nic("c", bus="0000:03:00.0"), Nic("d", bus="0000:05:00.1")]
    assert names(order_nics(inventory, ["0000:05", "0000:03"])) == ["b", "d", "c", "a"]


def test_bus_order_comes_from_the_hardware_model(template):
    with_map = dataclasses.replace(template, interface_map=(
        BusOrder("PowerEdge R7.0", ("0000:05",)), BusOrder(".*", ("0000:01",))))
    assert bus_order_for(with_map, "PowerEdge R710 ") == ("0000:05",)
    assert bus_order_for(with_map, "Other") == ("0000:01",)
    assert bus_order_for(with_map, None) == ()
    assert bus_order_for(template, "PowerEdge R710") == ()


@pytest.mark.parametrize("ref, expected", [
    ("1g1", "eth0"), ("1g2", "eth2"), ("10g1", "eth1"), ("100m1", "eth3"),
    ("+1g1", "eth0"), ("+1g3", "eth1"),   # the two 1g NICs first, then the 10g one
    ("+10g1", "eth1"), ("-1g3", "eth3"),  # 1g, 1g, then the slower 100m
    ("?10g1", "eth1"), ("?10g2", "eth0"),  # 10g, nothing faster, then slower: 1g
    ("?100m2", "eth0"),  # 100m, then faster ones upwards
])
def test_reference_resolution(ref, expected):
    inventory = nics(("eth0", 1000), ("eth1", 10000), ("eth2", 1000), ("eth3", 100))
    assert names(resolve_conduit("intf0", [ref], inventory)) == [expected]


def test_any_speed_prefers_faster_over_slower():
    inventory = nics(("eth0", 100), ("eth1", 10000))
    assert names(resolve_conduit("intf0", ["?1g1"], inventory)) == ["eth1"]
    assert names(resolve_conduit("intf0", ["?1g2"], inventory)) == ["eth0"]


def test_counting_starts_at_one():
    inventory = nics(("eth0", 1000), ("eth1", 1000))
    assert names(resolve_conduit("intf0", ["1g1", "1g2"], inventory)) == ["eth0", "eth1"]


def test_unknown_speed_counts_as_1g():
    inventory = [Nic("eth0", bus="0000:01:00.0"), Nic("eth1", speed=10000, bus="0000:02:00.0")]
    assert names(resolve_conduit("intf0", ["1g1"], inventory)) == ["eth0"]
    with pytest.raises(ConduitError) as caught:
        resolve_conduit("intf0", ["1g2"], inventory)
    assert str(caught.value) == "intf0 needs 1g2; node has eth0 1g (speed unknown), eth1 10g"


def test_failure_says_what_was_asked_and_what_the_node_has():
    with pytest.raises(ConduitError) as caught:
        resolve_conduit("intf1", ["+10g1"], nics(("eth0", 1000), ("eth1", 1000)))
    assert str(caught.value) == "intf1 needs +10g1; node has eth0 1g, eth1 1g"
    assert caught.value.conduit == "intf1"


def test_exact_speed_does_not_take_faster_nics():
    with pytest.raises(ConduitError, match=r"^intf0 needs 1g1; node has eth0 10g$"):
        resolve_conduit("intf0", ["1g1"], nics(("eth0", 10000)))


def test_node_without_nics():
    with pytest.raises(ConduitError, match=r"^intf0 needs \?1g1; node has no NICs$"):
        resolve_conduit("intf0", ["?1g1"], [])


def test_two_references_cannot_be_the_same_nic():
    with pytest.raises(ConduitError) as caught:
        resolve_conduit("intf0", ["?1g1", "?1g1"], nics(("eth0", 1000), ("eth1", 1000)))
    assert str(caught.value) == ("intf0 needs ?1g1, ?1g1, but ?1g1 is eth0 again; node has "
                                 "eth0 1g, eth1 1g")


def test_bad_reference_at_resolution_time():
    with pytest.raises(ConduitError, match="^intf0: '1x1' is not an interface reference"):
        resolve_conduit("intf0", ["1x1"], nics(("eth0", 1000)))


# --- conduit map selection ------------------------------------------------------------------

def test_first_matching_entry_wins(template):
    assert select_conduit_entry(template, 2).pattern == "single/.*/.*"
    assert select_conduit_entry(dataclasses.replace(template, mode="team"), 2).pattern == "team/.*/.*"
    assert select_conduit_entry(dataclasses.replace(template, mode="dual"), 4).pattern == "dual/.*/.*"


def test_nic_count_and_roles_select_entries(template):
    entries = (ConduitMapEntry("single/4/nova-compute", {"intf0": ("1g1",)}),
               ConduitMapEntry("single/[12]/.*", {"intf0": ("?1g1",)}))
    custom = dataclasses.replace(template, conduit_map=entries)
    assert select_conduit_entry(custom, 4, ["ceph", "nova-compute"]).pattern == "single/4/nova-compute"
    assert select_conduit_entry(custom, 2, ["nova-compute"]).pattern == "single/[12]/.*"
    assert select_conduit_entry(custom, 1).pattern == "single/[12]/.*"  # no roles: matches ""
    with pytest.raises(ConduitError) as caught:
        select_conduit_entry(custom, 4, ["ceph"])
    assert str(caught.value) == ("no conduit_map entry matches single/4/ceph; patterns: "
                                 "single/4/nova-compute, single/[12]/.*")
