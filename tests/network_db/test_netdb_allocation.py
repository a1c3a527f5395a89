"""IP allocation in the database: the order (existing, hint, first free, fallback to host),
release, exhaustion, networks sharing a subnet, the database constraints, the bulk path."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from crowbar.db.network_models import NetworkAllocation, NetworkSettings
from crowbar.errors import InvalidInput
from crowbar.network.ipam import RangeExhausted
from crowbar.services import network
from crowbar.services.network import allocations

API = "/api/v2"


def alloc(api, net, node, **body):
    r = api.post(f"{API}/networks/{net}/allocations", json={"node": node, **body})
    assert r.status_code in (200, 201), r.text
    return r.json()


def test_allocation_order_existing_hint_first_free_fallback(api, make_nodes):
    make_nodes("n1", "n2", "n3", "n4", "n5")
    # first free of host
    first = alloc(api, "admin", "n1")
    assert first == {"network": "admin", "node": "n1", "range": "host", "address": "192.168.124.81",
                     "created": True}
    # the existing allocation wins over a new hint and a new range, and says so
    again = alloc(api, "admin", "n1", address="192.168.124.150", range="dhcp")
    assert (again["address"], again["created"]) == ("192.168.124.81", False)
    assert again["note"] == "the node already has 192.168.124.81 on 'admin'; release it first to change it"
    # a valid free hint
    hinted = alloc(api, "admin", "n2", address="192.168.124.150")
    assert (hinted["address"], hinted.get("note")) == ("192.168.124.150", None)
    # a hint outside every range (a static address) is fine too
    assert alloc(api, "admin", "n3", address="192.168.124.200")["address"] == "192.168.124.200"
    # an unusable hint is skipped, with the reason: taken, outside the subnet, in another range
    taken = alloc(api, "admin", "n4", address="192.168.124.150")
    assert taken["address"] == "192.168.124.82"
    assert taken["note"] == "192.168.124.150 was not used: it is already allocated"
    outside = alloc(api, "storage", "n4", address="10.0.0.1")
    assert (outside["address"], outside["note"]) == (
        "192.168.125.10", "10.0.0.1 was not used: 10.0.0.1 is outside 192.168.125.0/24")
    in_dhcp = alloc(api, "admin", "n5", address="192.168.124.30")
    assert in_dhcp["address"] == "192.168.124.83"
    assert in_dhcp["note"] == ("192.168.124.30 was not used: it is inside range 'dhcp' "
                               "(192.168.124.21-192.168.124.80)")
    # a named range, and the fallback to host when the network has no such range
    assert alloc(api, "admin", "n5")["address"] == "192.168.124.83"  # existing
    switch = alloc(api, "public", "n5", range="dhcp")
    assert (switch["range"], switch["address"]) == ("dhcp", "192.168.126.50")
    fallback = alloc(api, "storage", "n5", range="switch")
    assert (fallback["range"], fallback["address"]) == ("host", "192.168.125.11")
    # no such range and no host: 422
    r = api.post(f"{API}/networks/nova_fixed/allocations", json={"node": "n5", "range": "switch"})
    assert r.status_code == 422 and r.json()["field"] == "range"
    assert "no range 'switch' and no 'host' range" in r.json()["message"]
    assert alloc(api, "nova_fixed", "n5", range="router")["address"] == "192.168.123.1"
    rows = api.list(f"{API}/networks/admin/allocations")
    assert [(a["node"], a["address"]) for a in rows] == [
        ("n1", "192.168.124.81"), ("n4", "192.168.124.82"), ("n5", "192.168.124.83"),
        ("n2", "192.168.124.150"), ("n3", "192.168.124.200")]


def test_release_and_reuse_of_the_lowest_free_address(api, make_nodes):
    make_nodes("r1", "r2", "r3", "r4")
    for name in ("r1", "r2", "r3"):
        alloc(api, "storage", name)
    r = api.delete(f"{API}/networks/storage/allocations/r2")
    assert r.status_code == 200
    assert r.json() == {"network": "storage", "node": "r2", "range": "host", "address": "192.168.125.11",
                        "released": True}
    assert alloc(api, "storage", "r4")["address"] == "192.168.125.11"  # the gap first
    assert alloc(api, "storage", "r2")["address"] == "192.168.125.13"
    missing = api.delete(f"{API}/networks/storage/allocations/r2x")
    assert missing.status_code == 404 and missing.json()["message"] == "node 'r2x' does not exist"
    api.delete(f"{API}/networks/storage/allocations/r2")
    none = api.delete(f"{API}/networks/storage/allocations/r2")
    assert none.status_code == 404
    assert none.json()["message"] == "node 'r2' has no address on network 'storage'"


def test_exhaustion(api, make_nodes, tiny):
    make_nodes(*[f"x{i}" for i in range(7)])
    got = [alloc(api, tiny, f"x{i}")["address"] for i in range(5)]
    assert got == [f"10.99.0.{i}" for i in range(10, 15)]
    r = api.post(f"{API}/networks/tiny/allocations", json={"node": "x5"})
    assert r.status_code == 409
    assert r.json()["message"] == ("network 'tiny': range 'host' (10.99.0.10-10.99.0.14) is exhausted: "
                                   "all 5 addresses are in use")
    # a free hint outside the range still works when the range is full
    assert alloc(api, tiny, "x5", address="10.99.0.100")["address"] == "10.99.0.100"


def test_errors(api, make_nodes):
    make_nodes("e1")
    r = api.post(f"{API}/networks/nope/allocations", json={"node": "e1"})
    assert r.status_code == 404 and r.json()["message"].startswith("network 'nope' does not exist")
    r = api.post(f"{API}/networks/admin/allocations", json={"node": "ghost"})
    assert r.status_code == 404 and r.json()["message"] == "node 'ghost' does not exist"
    r = api.post(f"{API}/networks/admin/allocations", json={"node": "e1", "address": "1.2.3"})
    assert r.status_code == 422 and r.json()["field"] == "address"
    r = api.post(f"{API}/networks/admin/allocations", json={})
    assert r.status_code == 422 and r.json()["field"] == "node"
    assert api.get(f"{API}/networks/nope/allocations").status_code == 404


def test_no_duplicate_across_networks_sharing_a_subnet(db, make_nodes):
    """admin, bmc and bmc_vlan share 192.168.124.0/24: an address is taken for all three."""
    make_nodes("s1", "s2", "s3")
    with db.session() as s:
        assert network.allocate(s, "admin", "s1", address="192.168.124.200")["address"] == "192.168.124.200"
        # .200 lies in bmc's host range: bmc's first-free and hints skip it
        bmc = network.allocate(s, "bmc", "s2", address="192.168.124.200")
        assert bmc["address"] == "192.168.124.162"
        network.allocate(s, "bmc", "s1", address="192.168.124.199")
        network.allocate(s, "bmc", "s3", address="192.168.124.163")
    with db.session() as s:
        addresses = [a["address"] for net in ("admin", "bmc", "bmc_vlan")
                     for a in network.list_allocations(s, net)]
    assert len(addresses) == len(set(addresses))
    # fill bmc's range completely: it must step over admin's .200
    names = [f"b{i}" for i in range(80)]
    make_nodes(*names)
    with db.session() as s:
        with pytest.raises(RangeExhausted):
            network.allocate_many(s, "bmc", names)
    with db.session() as s:
        out = network.allocate_many(s, "bmc", names[:75])
        assert "192.168.124.200" not in [a["address"] for a in out]
        assert len(out) == 75 and out[-1]["address"] == "192.168.124.240"
        with pytest.raises(RangeExhausted):
            network.allocate(s, "bmc", names[75])
    with db.session() as s:
        addresses = [a["address"] for net in ("admin", "bmc", "bmc_vlan")
                     for a in network.list_allocations(s, net)]
    assert len(addresses) == len(set(addresses)) == 79


def test_the_database_refuses_duplicates_itself(db, make_nodes):
    n1, n2 = make_nodes("c1", "c2")
    with db.session() as s:
        network.allocate(s, "storage", "c1")
        network_id = s.execute(select(NetworkAllocation.network_id)).scalar()
    row = {"network_id": network_id, "range": "host", "address": "192.168.125.10",
           "address_key": network.address_key("192.168.125.10")}
    with pytest.raises(IntegrityError):  # same address, another node
        with db.session() as s:
            s.execute(insert(NetworkAllocation.__table__).values(node_id=n2, **row))
    with pytest.raises(IntegrityError):  # same node, another address
        with db.session() as s:
            s.execute(insert(NetworkAllocation.__table__).values(
                node_id=n1, **{**row, "address": "192.168.125.99",
                               "address_key": network.address_key("192.168.125.99")}))


def test_a_lost_race_is_retried(db, make_nodes, monkeypatch):
    """Whatever a concurrent writer slips in is caught by the constraint and retried."""
    make_nodes("q1", "q2")
    with db.session() as s:
        network.allocate(s, "storage", "q1")
    real = allocations.choose_address
    calls = []

    def stale(net, range_name, used, existing=None, hint=None):
        calls.append(1)
        if len(calls) == 1:  # as if q1's allocation had not been seen yet
            return __import__("ipaddress").ip_address("192.168.125.10")
        return real(net, range_name, used, existing=existing, hint=hint)

    monkeypatch.setattr(allocations, "choose_address", stale)
    with db.session() as s:
        assert network.allocate(s, "storage", "q2")["address"] == "192.168.125.11"
    assert len(calls) == 2


def test_deleting_a_node_releases_its_addresses(api, make_nodes, db):
    make_nodes("gone")
    alloc(api, "admin", "gone")
    alloc(api, "storage", "gone")
    assert api.delete(f"{API}/nodes/gone").status_code == 200
    assert api.list(f"{API}/networks/admin/allocations") == []
    with db.session() as s:
        assert s.execute(select(NetworkAllocation)).first() is None


def test_the_lowest_free_address_after_releases_deletions_and_hints(api, db, make_nodes):
    """The allocator starts from a per-range cursor; anything released (by release, a node's
    deletion cascading, a forced renumbering) voids it, so the lowest free address still wins."""
    make_nodes(*[f"k{i}" for i in range(8)])
    assert [alloc(api, "storage", f"k{i}")["address"] for i in range(3)] == [
        "192.168.125.10", "192.168.125.11", "192.168.125.12"]
    assert alloc(api, "storage", "k3", address="192.168.125.14")["address"] == "192.168.125.14"
    assert alloc(api, "storage", "k4")["address"] == "192.168.125.13"  # the gap below the hint
    assert alloc(api, "storage", "k5")["address"] == "192.168.125.15"  # and over it
    assert api.delete(f"{API}/nodes/k1").status_code == 200  # cascades to its allocation
    assert alloc(api, "storage", "k6")["address"] == "192.168.125.11"
    api.delete(f"{API}/networks/storage/allocations/k0")
    assert alloc(api, "storage", "k7")["address"] == "192.168.125.10"
    with db.session() as s:
        released = s.execute(select(NetworkSettings.released)).scalar()
    assert released >= 2  # counted by the database triggers


def test_bulk_allocation(api, db, make_nodes):
    names = [f"m{i:03d}" for i in range(120)]
    make_nodes(*names)
    r = api.post(f"{API}/networks/storage/allocations", json={"nodes": names[:3], "range": "host"})
    assert r.status_code == 201
    assert [a["address"] for a in r.json()] == ["192.168.125.10", "192.168.125.11", "192.168.125.12"]
    with db.session() as s:
        network.allocate(s, "storage", names[3], address="192.168.125.14")
        out = network.allocate_many(s, "storage", names[:10])
    assert [a["created"] for a in out] == [False] * 4 + [True] * 6
    assert [a["address"] for a in out][3:6] == ["192.168.125.14", "192.168.125.13", "192.168.125.15"]
    assert api.post(f"{API}/networks/storage/allocations",
                    json={"nodes": ["m000", "nobody"]}).status_code == 404
    r = api.post(f"{API}/networks/storage/allocations", json={"nodes": ["m000"], "node": "m001"})
    assert r.status_code == 422


def test_ipv6_network(api, make_nodes):
    make_nodes("v6a", "v6b")
    r = api.post(f"{API}/networks", json={
        "name": "v6", "conduit": "intf1", "vlan": 600, "use_vlan": True, "subnet": "fd00:600::/64",
        "ranges": {"host": {"start": "fd00:600::10", "end": "fd00:600::ff"}}})
    assert r.status_code == 201, r.text
    assert alloc(api, "v6", "v6a")["address"] == "fd00:600::10"
    assert alloc(api, "v6", "v6b", address="fd00:600::1:0")["address"] == "fd00:600::1:0"
    assert api.get(f"{API}/networks/export").json()["networks"]["v6"]["subnet"] == "fd00:600::/64"


def test_random_operations_match_the_pure_allocator(db, make_nodes):
    """300 random allocations (some with hints), releases and node deletions: the database
    allocator (cursor, scans, aggregates, triggers) answers exactly as ipam.choose_address over
    the full set of taken addresses would."""
    import ipaddress
    import random

    from sqlalchemy import text

    from crowbar.network.ipam import UsedAddresses, choose_address
    from crowbar.network.model import load_network

    body = {"conduit": "intf1", "vlan": 77, "use_vlan": True, "subnet": "10.77.0.0/24",
            "ranges": {"dhcp": {"start": "10.77.0.2", "end": "10.77.0.9"},
                       "host": {"start": "10.77.0.10", "end": "10.77.0.39"}}}
    with db.session() as s:
        network.create_network(s, "rnd", body)
    pure = load_network("rnd", body)
    rng = random.Random(7)
    names = [f"p{i}" for i in range(40)]
    make_nodes(*names)
    alive, held = set(names), {}
    for step in range(300):
        name = rng.choice(sorted(alive))
        roll = rng.random()
        if roll < 0.15 and name in held:
            with db.session() as s:
                network.release(s, "rnd", name)
            del held[name]
        elif roll < 0.2:
            with db.session() as s:
                s.execute(text("DELETE FROM nodes WHERE name = :n"), {"n": name})
            alive.discard(name)
            held.pop(name, None)
            if len(alive) < 5:
                fresh = [f"q{step}-{i}" for i in range(10)]
                make_nodes(*fresh)
                alive.update(fresh)
        else:
            hint = f"10.77.0.{rng.randrange(1, 60)}" if rng.random() < 0.3 else None
            try:
                expected = str(choose_address(pure, "host", UsedAddresses(held.values()),
                                              existing=held.get(name), hint=hint))
            except RangeExhausted:
                expected = None
            try:
                with db.session() as s:
                    got = network.allocate(s, "rnd", name, address=hint)["address"]
            except RangeExhausted:
                got = None
            assert got == expected, (step, name, hint, sorted(held.values(), key=ipaddress.ip_address))
            if got is not None:
                held[name] = got
    with db.session() as s:
        stored = {a["node"]: a["address"] for a in network.list_allocations(s, "rnd")}
    assert stored == held


def test_allocate_for_chooses_one_node_or_many_in_the_service(api, db, make_nodes):
    """The API's "node or nodes" is decided and checked by the service (`allocate_for`); the
    route only answers 201 when something was created, else 200."""
    make_nodes("f1", "f2", "f3")
    with db.session() as s:
        one = network.allocate_for(s, "storage", node="f1", address="192.168.125.20", actor="tester")
        many = network.allocate_for(s, "storage", nodes=["f1", "f2"], range_name="host")
    assert (one["address"], one["created"]) == ("192.168.125.20", True)
    assert [(a["node"], a["created"]) for a in many] == [("f1", False), ("f2", True)]
    for kwargs, field in (({"node": "f3", "nodes": ["f3"]}, "nodes"), ({}, "node"), ({"node": ""}, "node"),
                          ({"nodes": ["f3"], "address": "192.168.125.9"}, "nodes")):
        with db.session() as s, pytest.raises(InvalidInput) as refused:
            network.allocate_for(s, "storage", **kwargs)
        assert refused.value.field == field
    # Through the API: 201 when any allocation was made, 200 when all existed; 422 naming the field.
    url = f"{API}/networks/storage/allocations"
    assert api.post(url, json={"nodes": ["f1", "f2"]}).status_code == 200
    r = api.post(url, json={"nodes": ["f2", "f3"]})
    assert r.status_code == 201 and [a["created"] for a in r.json()] == [False, True]
    assert api.post(url, json={"node": "f3"}).status_code == 200
    assert api.post(url, json={}).json()["field"] == "node"
    r = api.post(url, json={"nodes": ["f1"], "address": "192.168.125.9"})
    assert (r.status_code, r.json()["field"]) == (422, "nodes")
