"""List endpoints: {"items", "next"} pages, keyset on the id (the address for allocations, the segment
for Neutron tenant networks), filters, every row exactly once while rows are added between pages,
and 422 for a bad limit or marker."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from crowbar.db.models import Run
from crowbar.services import network, nodes

V2 = "/api/v2"


def page(api, url: str, params: dict | None = None) -> dict:
    r = api.get(url, params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"items", "next"}, body
    return body


def read_while_adding(api, url: str, params: dict, add) -> list[dict]:
    """Every page of `url`, calling `add()` between two page fetches."""
    items, body = [], page(api, url, params)
    while True:
        items += body["items"]
        if body["next"] is None:
            return items
        add()
        body = page(api, body["next"])


def add_nodes(db, names: list[str]) -> None:
    with db.session() as s:
        for name in names:
            nodes.create_node(s, name, bind_roles=False)


def test_nodes_every_row_exactly_once_while_nodes_are_added(api, db):
    add_nodes(db, [f"n{i:03d}.example.com" for i in range(23)])
    added = iter(range(100, 200))

    def add():  # one through the API, two straight into the database
        assert api.post(f"{V2}/nodes", json={"name": f"n{next(added)}.example.com"}).status_code == 201
        add_nodes(db, [f"n{next(added)}.example.com", f"n{next(added)}.example.com"])

    seen = read_while_adding(api, f"{V2}/nodes", {"limit": 5}, add)
    ids = [n["id"] for n in seen]
    assert ids == sorted(ids) and len(ids) == len(set(ids)), ids
    # Rows added before the last page was read have higher ids than any page before: all are there.
    assert {n["name"] for n in seen} == {n["name"] for n in api.list(f"{V2}/nodes")}
    assert len(seen) > 23 + 3 * 4


def test_deployments_and_events_every_row_exactly_once_while_rows_are_added(api):
    for i in range(7):
        assert api.post(f"{V2}/deployments", json={"name": f"d{i}"}).status_code == 201
    made = iter(range(100, 200))

    def add():
        assert api.post(f"{V2}/deployments", json={"name": f"d{next(made)}"}).status_code == 201

    seen = read_while_adding(api, f"{V2}/deployments", {"limit": 3}, add)
    ids = [d["id"] for d in seen]
    assert ids == sorted(set(ids))
    assert [d["name"] for d in seen] == [d["name"] for d in api.list(f"{V2}/deployments")]
    # The event log read forward (marker=0) while every page adds an event: none twice, none lost.
    events = read_while_adding(api, f"{V2}/events", {"marker": 0, "limit": 2, "object_type": "deployment"}, add)
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids)) and {e["object_type"] for e in events} == {"deployment"}
    tail = page(api, f"{V2}/events", {"object_type": "deployment", "limit": 1000})
    assert tail["next"] is None and [e["id"] for e in tail["items"]] == ids


def test_allocations_page_by_address_while_nodes_are_allocated(api, db):
    names = [f"a{i:02d}.example.com" for i in range(40)]
    add_nodes(db, names)
    with db.session() as s:
        network.allocate_many(s, "admin", names[:12])
    more = iter(names[12:])

    def add():
        with db.session() as s:
            network.allocate(s, "admin", next(more))

    seen = read_while_adding(api, f"{V2}/networks/admin/allocations", {"limit": 4}, add)
    addresses = [a["address"] for a in seen]
    assert len(addresses) == len(set(addresses))
    assert seen == api.list(f"{V2}/networks/admin/allocations")  # address order, nothing lost
    assert [a["node"] for a in seen] == names[: len(seen)]
    first = page(api, f"{V2}/networks/admin/allocations", {"limit": 2})
    assert parse_qs(urlsplit(first["next"]).query)["marker"] == [first["items"][-1]["address"]]


def test_next_keeps_the_filters_and_is_null_at_the_end(api, db):
    add_nodes(db, [f"web{i}.example.com" for i in range(5)] + [f"db{i}.example.com" for i in range(3)])
    first = page(api, f"{V2}/nodes", {"name": "web", "limit": 2})
    assert [n["name"] for n in first["items"]] == ["web0.example.com", "web1.example.com"]
    path, query = urlsplit(first["next"]).path, parse_qs(urlsplit(first["next"]).query)
    assert path == f"{V2}/nodes"
    assert query == {"name": ["web"], "limit": ["2"], "marker": [str(first["items"][-1]["id"])]}
    assert [n["name"] for n in api.list(f"{V2}/nodes", {"name": "web", "limit": 2})] == \
        [f"web{i}.example.com" for i in range(5)]
    # Exactly `limit` rows left: the page holds them all and says there is nothing after it.
    assert page(api, f"{V2}/nodes", {"name": "db", "limit": 3})["next"] is None
    last = page(api, f"{V2}/nodes", {"name": "web", "limit": 3})
    assert page(api, last["next"])["next"] is None
    assert page(api, f"{V2}/nodes", {"name": "nothing"}) == {"items": [], "next": None}
    # Filters of the other lists.
    assert len(api.list(f"{V2}/nodes", {"state": "READY"})) == 8  # created nodes are ready
    assert api.list(f"{V2}/nodes", {"state": "discovered"}) == []
    assert {d["name"] for d in api.list(f"{V2}/deployments", {"state": "committed"})} == {"system"}
    assert {b["name"] for b in api.list(f"{V2}/barclamps", {"name": "tes"})} == {"test"}
    assert {r["barclamp"] for r in api.list(f"{V2}/roles", {"name": "test-"})} == {"test"}
    assert all(a["name"].startswith("test-") for a in api.list(f"{V2}/attribs", {"name": "test-"}))
    assert api.list(f"{V2}/nodes", {"name": "web_"}) == []  # a prefix, not a LIKE pattern


@pytest.mark.parametrize("url, params, field", [
    ("/nodes", {"limit": 0}, "limit"),
    ("/nodes", {"limit": 1001}, "limit"),
    ("/nodes", {"limit": "many"}, "limit"),
    ("/nodes", {"marker": -1}, "marker"),
    ("/nodes", {"marker": "n1.example.com"}, "marker"),
    ("/nodes", {"state": "sleepy"}, "state"),
    ("/deployments", {"state": "sleepy"}, "state"),
    ("/deployments", {"limit": 5000}, "limit"),
    ("/node_roles", {"marker": "x"}, "marker"),
    ("/barclamps", {"limit": -3}, "limit"),
    ("/roles", {"marker": "1.5"}, "marker"),
    ("/attribs", {"limit": 0}, "limit"),
    ("/events", {"limit": 10000}, "limit"),
    ("/events", {"after": "yesterday"}, "after"),
    ("/networks/admin/allocations", {"limit": 0}, "limit"),
    ("/networks/admin/allocations", {"marker": "not-an-address"}, "marker"),
    ("/node_roles/1/children", {"limit": 0}, "limit"),
    ("/node_roles/1/parents", {"marker": "x"}, "marker"),
    ("/node_roles/1/runs", {"marker": -1}, "marker"),
    ("/neutron/networks", {"limit": 1001}, "limit"),
    ("/neutron/networks", {"marker": "vlan-physnet1-500"}, "marker"),
    ("/neutron/networks", {"marker": "gre:physnet1:5"}, "marker"),
    ("/neutron/networks", {"marker": "vlan:physnet1:five"}, "marker"),
])
def test_a_bad_limit_or_marker_is_422_naming_it(api, url, params, field):
    r = api.get(V2 + url, params=params)
    assert r.status_code == 422, r.text
    body = r.json()
    assert (body["error"], body["field"]) == ("invalid", field), body
    assert body["message"]


def noderole_id(api, node: str, role: str) -> int:
    (row,) = api.list(f"{V2}/node_roles", {"node": node, "role": role})
    return row["id"]


def bind(api, deployment: str, role: str, node: str) -> None:
    r = api.post(f"{V2}/deployments/{deployment}/bind", json={"role": role, "node": node})
    assert r.status_code == 201, r.text


def test_noderole_children_parents_and_runs_every_row_exactly_once_while_rows_are_added(api, db):
    """A server role's children (one per client node) and a noderole's runs grow without bound:
    they are pages in id order like every other list."""
    clients = [f"c{i:02d}.example.com" for i in range(30)]
    add_nodes(db, ["srv.example.com", *clients])
    assert api.post(f"{V2}/deployments", json={"name": "d1"}).status_code == 201
    bind(api, "d1", "test-server", "srv.example.com")
    for name in clients[:10]:
        bind(api, "d1", "test-client", name)
    server = noderole_id(api, "srv.example.com", "test-server")
    more = iter(clients[10:])

    def add_client():  # a new child of the server noderole between two pages
        bind(api, "d1", "test-client", next(more))

    children = read_while_adding(api, f"{V2}/node_roles/{server}/children", {"limit": 3}, add_client)
    ids = [c["id"] for c in children]
    assert ids == sorted(set(ids)) and {c["role"] for c in children} == {"test-client"}
    shown = api.get(f"{V2}/node_roles/{server}").json()["children"]
    assert ids == sorted(shown) and len(ids) > 10 + 3  # every child, the ones added while paging too
    assert children == api.list(f"{V2}/node_roles/{server}/children")

    client = noderole_id(api, clients[0], "test-client")
    parents = read_while_adding(api, f"{V2}/node_roles/{client}/parents", {"limit": 1}, lambda: None)
    assert [p["id"] for p in parents] == sorted(api.get(f"{V2}/node_roles/{client}").json()["parents"])
    assert {p["role"] for p in parents} == {"test-server", "test-library"}

    def add_runs(count: int = 1) -> None:
        with db.session() as s:
            s.add_all(Run(node_role_id=server, state="succeeded", log=f"run {i}\n") for i in range(count))

    add_runs(7)
    runs = read_while_adding(api, f"{V2}/node_roles/{server}/runs", {"limit": 2}, add_runs)
    ids = [r["id"] for r in runs]
    assert ids == sorted(set(ids)) and {r["noderole"] for r in runs} == {server}
    assert len(runs) > 7 + 3 and runs == api.list(f"{V2}/node_roles/{server}/runs")
    first = page(api, f"{V2}/node_roles/{server}/runs", {"limit": 2})
    assert parse_qs(urlsplit(first["next"]).query) == {"limit": ["2"], "marker": [str(first["items"][-1]["id"])]}


def test_tenant_networks_page_by_segment_every_row_exactly_once(api):
    """Tenant networks are listed by segment (vlan before vxlan, then physical network, then id);
    the marker is the last segment, `type:physnet:id`. Every network there before the first page
    is seen exactly once, whatever is created or deleted between pages (the marker's own network
    too); one added while a client pages is seen once when its segment comes after the page
    boundary, and never twice."""
    def create(**body) -> dict:
        r = api.post(f"{V2}/neutron/networks", json=body)
        assert r.status_code == 201, r.text
        return r.json()

    for i in range(6):
        create(name=f"v{i}")
        create(name=f"x{i}", network_type="vxlan")
    before = api.list(f"{V2}/neutron/networks")
    assert [n["segmentation_id"] for n in before] == [500, *range(501, 507), *range(1001, 1007)]
    body = page(api, f"{V2}/neutron/networks", {"limit": 4})
    assert parse_qs(urlsplit(body["next"]).query)["marker"] == ["vlan:physnet1:503"]
    deleted = body["items"][-1]
    assert api.delete(f"{V2}/neutron/networks/{deleted['id']}").status_code == 200
    seen, late = [], []
    while True:
        seen += body["items"]
        if body["next"] is None:
            break
        late.append(create(name=f"late{len(late)}", network_type="vxlan", segmentation_id=70000 + len(late)))
        create(name=f"low{len(late)}")  # the lowest free VLAN: before the boundary by now (503 first)
        body = page(api, body["next"])
    keys = [(n["network_type"], n["physical_network"] or "", n["segmentation_id"]) for n in seen]
    assert keys == sorted(set(keys)) and len({n["id"] for n in seen}) == len(seen)
    assert [n["id"] for n in seen if n["id"] in {b["id"] for b in before}] == [b["id"] for b in before]
    assert [n["id"] for n in seen if n["name"].startswith("late")] == [n["id"] for n in late] and len(late) >= 3
    assert not any(n["name"].startswith("low") for n in seen)
    everything = api.list(f"{V2}/neutron/networks")
    assert deleted["id"] not in {n["id"] for n in everything}
    assert [n["segmentation_id"] for n in everything if n["network_type"] == "vlan"] == \
        [500, *range(501, 507 + len(late) - 1)]  # the lows filled 503 and went on from 507
