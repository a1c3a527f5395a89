import ipaddress
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowbar.errors import Conflict, InvalidInput
from crowbar.network.ipam import RangeExhausted, UnknownRange, UsedAddresses, choose_address
from crowbar.network.model import Network

ip = ipaddress.ip_address


@pytest.fixture
def admin(template) -> Network:
    return template.networks["admin"]  # admin .10-.11, dhcp .21-.80, host .81-.160, switch .241-.250


def test_first_free_address_of_the_range(admin):
    assert choose_address(admin, "host", UsedAddresses()) == ip("192.168.124.81")
    used = UsedAddresses(["192.168.124.81", "192.168.124.82", "192.168.124.84"])
    assert choose_address(admin, "host", used) == ip("192.168.124.83")


def test_plain_iterables_of_strings_or_ints_are_accepted(admin):
    assert choose_address(admin, "admin", ["192.168.124.10"]) == ip("192.168.124.11")
    assert choose_address(admin, "admin", {int(ip("192.168.124.10"))}) == ip("192.168.124.11")


def test_existing_allocation_comes_first(admin):
    used = UsedAddresses(["192.168.124.100"])
    chosen = choose_address(admin, "host", used, existing="192.168.124.100", hint="192.168.124.90")
    assert chosen == ip("192.168.124.100")


def test_existing_allocation_outside_a_renumbered_subnet_is_replaced(admin):
    assert choose_address(admin, "host", UsedAddresses(), existing="10.0.0.5") == ip("192.168.124.81")


def test_free_hint_inside_the_range_is_taken(admin):
    assert choose_address(admin, "host", UsedAddresses(), hint="192.168.124.99") == ip("192.168.124.99")


def test_hint_outside_every_range_but_in_the_subnet_is_taken(admin):
    # a static address the operator picked, e.g. between the switch range and the broadcast
    assert choose_address(admin, "host", UsedAddresses(), hint="192.168.124.252") == ip("192.168.124.252")


@pytest.mark.parametrize("hint", [
    "192.168.124.90",   # in use
    "10.1.2.3",         # outside the subnet
    "192.168.124.0",    # network address
    "192.168.124.255",  # broadcast address
    "192.168.124.30",   # inside another range (dhcp)
    "2001:db8::1",      # another IP version
])
def test_unusable_hints_fall_back_to_the_range(admin, hint):
    used = UsedAddresses(["192.168.124.90"])
    assert choose_address(admin, "host", used, hint=hint) == ip("192.168.124.81")


def test_malformed_hint_is_an_input_error(admin):
    with pytest.raises(InvalidInput, match="network 'admin': hint 'nope' is not an IP address"):
        choose_address(admin, "host", UsedAddresses(), hint="nope")


def test_unknown_range_falls_back_to_host(admin):
    assert choose_address(admin, "storage", UsedAddresses()) == ip("192.168.124.81")


def test_unknown_range_without_host_is_an_error(template):
    fixed = template.networks["nova_fixed"]  # ranges: router, dhcp
    with pytest.raises(UnknownRange) as caught:
        choose_address(fixed, "switch", UsedAddresses())
    assert str(caught.value) == ("network 'nova_fixed': no range 'switch' and no 'host' range to "
                                 "fall back to (ranges: router, dhcp)")
    assert isinstance(caught.value, InvalidInput)


def test_exhausted_range_names_network_and_range(admin):
    used = UsedAddresses(["192.168.124.10", "192.168.124.11"])
    with pytest.raises(RangeExhausted) as caught:
        choose_address(admin, "admin", used)
    assert str(caught.value) == ("network 'admin': range 'admin' (192.168.124.10-192.168.124.11) "
                                 "is exhausted: all 2 addresses are in use")
    assert isinstance(caught.value, Conflict)


def test_ipv6_ranges_yield_ipv6_addresses_even_for_small_integers():
    network = Network(name="v6", subnet="::/112", conduit="intf0", ranges={"host": ("::10", "::20")})
    chosen = choose_address(network, "host", UsedAddresses(["::10"]))
    assert chosen == ipaddress.IPv6Address("::11")


def test_used_addresses_set_operations():
    used = UsedAddresses(["10.0.0.3", "10.0.0.1"])
    used.add("10.0.0.2")
    used.add(ip("10.0.0.2"))
    assert len(used) == 3 and "10.0.0.2" in used and ip("10.0.0.4") not in used
    start = int(ip("10.0.0.1"))
    assert used.first_free(start, start + 10) == start + 3
    assert used.first_free(start, start + 2) is None


def test_ten_thousand_allocations_are_fast_and_distinct():
    network = Network(name="big", subnet="10.0.0.0/16", conduit="intf0",
                      ranges={"host": ("10.0.0.1", "10.0.255.254")})
    used = UsedAddresses()
    began = time.perf_counter()
    for _ in range(10_000):
        used.add(choose_address(network, "host", used))
    elapsed = time.perf_counter() - began
    assert len(used) == 10_000
    assert used.first_free(int(ip("10.0.0.1")), int(ip("10.0.255.254"))) == int(ip("10.0.39.17"))
    assert elapsed < 2.0, f"10,000 allocations took {elapsed:.2f}s"


# --- properties -----------------------------------------------------------------------------

SUBNET = ipaddress.ip_network("10.20.0.0/24")
hosts = st.integers(min_value=1, max_value=254)


@st.composite
def range_and_used(draw):
    first, last = sorted((draw(hosts), draw(hosts)))
    used = draw(st.sets(hosts, max_size=40))
    network = Network(name="p", subnet=SUBNET, conduit="intf0",
                      ranges={"host": (SUBNET[first], SUBNET[last])})
    return network, {SUBNET[u] for u in used}


@settings(max_examples=150, deadline=None)
@given(range_and_used())
def test_repeated_allocation_fills_the_range_without_duplicates(case):
    network, taken = case
    span = network.ranges["host"]
    used = UsedAddresses(taken)
    free = [a for a in SUBNET.hosts() if span.start <= a <= span.end and a not in taken]
    chosen = []
    for _ in free:
        address = choose_address(network, "host", used)
        assert span.start <= address <= span.end and address not in used
        used.add(address)
        chosen.append(address)
    assert chosen == free  # lowest first, every free address exactly once
    with pytest.raises(RangeExhausted):
        choose_address(network, "host", used)


@settings(max_examples=150, deadline=None)
@given(range_and_used(), st.one_of(st.none(), hosts.map(lambda h: SUBNET[h])))
def test_choice_is_deterministic_and_respects_the_hint_rule(case, hint):
    network, taken = case
    span = network.ranges["host"]
    try:
        first = choose_address(network, "host", UsedAddresses(taken), hint=hint)
    except RangeExhausted:
        assert all(a in taken for a in SUBNET.hosts() if span.start <= a <= span.end)
        return
    assert choose_address(network, "host", UsedAddresses(sorted(taken, reverse=True)), hint=hint) == first
    assert first not in taken
    if hint is not None and hint not in taken:
        assert first == hint
    else:
        assert span.start <= first <= span.end


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(min_value=0, max_value=300), max_size=200),
       st.integers(min_value=0, max_value=300), st.integers(min_value=0, max_value=300))
def test_first_free_matches_a_linear_scan(taken, first, last):
    expected = next((v for v in range(first, last + 1) if v not in taken), None)
    assert UsedAddresses(taken).first_free(first, last) == expected
