"""API additions the web UI reads (docs/ui.md): how full each network range is in GET /networks,
the nodes list's disk filter and column, each node's power state."""

from __future__ import annotations

from sqlalchemy import select
from sqlkit import statements

from crowbar.db.models import Node, PowerRequest, utcnow

V2 = "/api/v2"


def test_networks_list_counts_allocations_per_range(api):
    for i in range(3):
        assert api.post(f"{V2}/nodes", json={"name": f"r{i}.example.com"}).status_code == 201
    assert api.post(f"{V2}/networks/public/allocations", json={"node": "r0.example.com"}).status_code == 201
    for i in (0, 1, 2):
        r = api.post(f"{V2}/networks/admin/allocations", json={"node": f"r{i}.example.com"})
        assert r.status_code in (200, 201), r.text
    r = api.post(f"{V2}/networks/bmc/allocations", json={"node": "r2.example.com"})
    assert r.status_code == 201, r.text
    listed = {n["name"]: n for n in api.get(f"{V2}/networks").json()}
    assert listed["admin"]["allocations"] == 3 and listed["admin"]["ranges"]["host"]["used"] == 3
    assert listed["admin"]["ranges"]["dhcp"]["used"] == 0 and listed["admin"]["ranges"]["admin"]["used"] == 0
    assert listed["public"]["allocations"] == 1 and sum(r["used"] for r in listed["public"]["ranges"].values()) == 1
    assert listed["storage"]["allocations"] == 0
    assert all(r["used"] == 0 for r in listed["storage"]["ranges"].values())
    # the list and each network's page agree
    for name in ("admin", "public", "bmc"):
        shown = api.get(f"{V2}/networks/{name}").json()
        assert {k: v["used"] for k, v in shown["ranges"].items()} == {k: v["used"] for k, v in listed[name]["ranges"].items()}


def inventory(disks: list[int], memory_gib: int = 64) -> dict:
    return {"cpu": {"count": 8}, "memory": {"total_bytes": memory_gib * 2**30},
            "disks": [{"name": f"sd{chr(97 + i)}", "size_bytes": size} for i, size in enumerate(disks)]}


def test_nodes_list_filters_and_sorts_by_disk_and_shows_it(api, db):
    sizes = {"d0": [500 * 2**30], "d1": [500 * 2**30, 1500 * 2**30], "d2": [4000 * 2**30], "d3": None,
             "d4": "not a list"}
    for name in sizes:
        assert api.post(f"{V2}/nodes", json={"name": f"{name}.example.com"}).status_code == 201
    with db.session() as s:
        for name, disks in sizes.items():
            node = s.scalar(select(Node).where(Node.name == f"{name}.example.com"))
            if disks is None:
                continue
            node.discovery = inventory(disks) if isinstance(disks, list) else {"disks": disks}
        # a disk whose size is not a number counts as nothing
        node = s.scalar(select(Node).where(Node.name == "d0.example.com"))
        node.discovery = {**inventory([500 * 2**30]), "disks": [{"size_bytes": 500 * 2**30}, {"size_bytes": "big"}, 7]}
    rows = api.get(f"{V2}/nodes", params={"name": "d", "sort": "name"}).json()["items"]
    assert {n["name"].split(".")[0]: n["disk_bytes"] for n in rows} == {
        "d0": 500 * 2**30, "d1": 2000 * 2**30, "d2": 4000 * 2**30, "d3": None, "d4": None}
    big = api.get(f"{V2}/nodes", params={"disk_min": 1000}).json()["items"]
    assert [n["name"] for n in big] == ["d1.example.com", "d2.example.com"]
    by_disk = api.list(f"{V2}/nodes", {"sort": "-disk", "name": "d", "limit": 2})
    assert [n["name"].split(".")[0] for n in by_disk] == ["d2", "d1", "d0", "d4", "d3"]
    assert api.get(f"{V2}/nodes", params={"disk_min": -1}).status_code == 422


def test_power_state_from_the_latest_requests(api, db):
    for name in ("p0", "p1", "p2", "p3"):
        assert api.post(f"{V2}/nodes", json={"name": f"{name}.example.com"}).status_code == 201
    with db.session() as s:
        ids = {n.name.split(".")[0]: n.id for n in s.scalars(select(Node).where(Node.name.like("p%")))}
        now = utcnow()

        def req(node, action, state, result=""):
            s.add(PowerRequest(node_id=ids[node], action=action, state=state, result=result, actor="t",
                               finished_at=now if state in ("succeeded", "failed") else None))
            s.flush()

        req("p0", "on", "succeeded", "powered on")
        req("p0", "boot-pxe", "succeeded")            # not a power state: p0 stays on
        req("p1", "on", "succeeded")
        req("p1", "status", "succeeded", "off")         # the driver saw it off since
        req("p1", "cycle", "queued")
        req("p2", "off", "succeeded")
        req("p2", "on", "failed", "BMC unreachable")   # still off, and the failure said
    rows = {n["name"].split(".")[0]: n["power"] for n in api.get(f"{V2}/nodes", params={"name": "p"}).json()["items"]}
    assert (rows["p0"]["state"], rows["p0"]["by"], rows["p0"]["pending"], rows["p0"]["failed"]) == ("on", "on", None, None)
    assert (rows["p1"]["state"], rows["p1"]["by"], rows["p1"]["pending"]) == ("off", "status", "cycle")
    assert rows["p2"]["state"] == "off" and rows["p2"]["failed"]["result"] == "BMC unreachable"
    assert rows["p3"] == {"state": "unknown", "since": None, "by": None, "pending": None, "failed": None}
    assert api.get(f"{V2}/nodes/p1.example.com/power").json()["state"] == rows["p1"]
    queued = api.post(f"{V2}/nodes/p0.example.com/power", json={"action": "status"})
    assert queued.status_code == 202
    assert api.get(f"{V2}/nodes/p0.example.com/power").json()["state"]["pending"] == "status"


def test_power_state_reads_a_page_in_a_fixed_number_of_queries(api, db):
    from crowbar.services import power_state

    with db.session() as s:
        for i in range(30):
            api.post(f"{V2}/nodes", json={"name": f"q{i}.example.com"})
        ids = list(s.scalars(select(Node.id)))
        for node_id in ids:
            for action in ("on", "status", "cycle"):
                s.add(PowerRequest(node_id=node_id, action=action, state="succeeded", result="on", actor="t"))
    sent, stop = statements(db)
    try:
        with db.session() as s:
            out = power_state.states(s, ids)
    finally:
        stop()
    assert len(out) == len(ids) and {v["state"] for v in out.values()} == {"on"}
    assert len([x for x in sent if "power_requests" in x]) == 1, sent  # one per 500 nodes
