"""The agent's poll at fleet scale: an idle poll is a read (no write transaction, no event), its wait
is chosen by the server (longer in a larger fleet, jittered); what must write still does. And the
bulk allocate: many nodes in one call and one transaction."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import func, select

from crowbar.db.models import AgentJob, Event, Node
from crowbar.services import provisioning
from discoverykit import INVENTORY, discover


def agent(token):
    return {"authorization": f"Bearer {token}"}


def inventory(i: int) -> dict:
    mac = f"52:54:00:aa:{i // 256:02x}:{i % 256:02x}"
    return dict(INVENTORY, boot_mac=mac, nics=[dict(INVENTORY["nics"][0], mac=mac)],
                disks=[{"name": "vda", "size_bytes": 8 << 30}])


@pytest.fixture(autouse=True)
def fresh_count(monkeypatch):
    monkeypatch.setattr(provisioning, "_agents", {"count": 0, "at": float("-inf")})


def test_wait_grows_with_the_fleet_within_bounds_and_is_jittered():
    rng = random.Random(1)
    small = {provisioning.wait_seconds(5, rng) for _ in range(200)}
    assert small <= {2, 3, 4} and len(small) > 1  # jittered around WAIT_SECONDS, whole seconds
    big = [provisioning.wait_seconds(10_000, rng) for _ in range(200)]
    assert all(38 <= s <= 62 for s in big)  # 10,000 agents / 200 polls per second = 50 s
    assert max(provisioning.wait_seconds(10**7, rng) for _ in range(200)) <= 75  # capped (60 s + jitter)
    assert all(isinstance(s, int) and s >= 1 for s in big)


def test_an_idle_poll_writes_nothing(api, db):
    token = discover(api, INVENTORY).json()["token"]
    with db.session() as s:
        events = s.scalar(select(func.count()).select_from(Event))
    for _ in range(5):
        r = api.get("/api/v2/agent/next", headers=agent(token))
        assert r.status_code == 200 and r.json()["action"] == "wait" and 2 <= r.json()["seconds"] <= 4
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Event)) == events


def test_a_poll_that_must_write_still_does(api, db):
    body = discover(api, INVENTORY).json()
    with db.session() as s:  # a dead node polling again is alive
        s.get(Node, body["id"]).alive = False
    assert api.get("/api/v2/agent/next", headers=agent(body["token"])).json()["action"] == "wait"
    with db.session() as s:
        assert s.get(Node, body["id"]).alive is True
        s.add(AgentJob(node_id=body["id"], kind="script", script="true", timeout=10))
    taken = api.get("/api/v2/agent/next", headers=agent(body["token"])).json()
    assert taken["action"] == "run" and taken["script"] == "true"
    with db.session() as s:
        assert s.get(AgentJob, int(taken["job"])).state == "sent"
    assert api.get("/api/v2/agent/next", headers=agent("cb_not-a-token")).status_code == 401


def test_the_wait_follows_the_number_of_polling_agents(api, monkeypatch):
    monkeypatch.setattr(provisioning, "POLL_BUDGET", 1)  # one poll per second: 4 agents wait ~4 s
    tokens = [discover(api, inventory(i)).json()["token"] for i in range(8)]
    seconds = [api.get("/api/v2/agent/next", headers=agent(t)).json()["seconds"] for t in tokens]
    assert all(6 <= s <= 10 for s in seconds), seconds


def test_a_read_session_refuses_to_change_objects(db):
    with db.session() as s:
        node_id = s.scalar(select(Node.id).limit(1)) or s.add(Node(name="x.example.com")) or None
    with db.session() as s:
        node_id = node_id or s.scalar(select(Node.id).limit(1))
    with pytest.raises(RuntimeError, match="read session"):
        with db.read_session() as s:
            node = s.get(Node, node_id)
            node.description = "changed"
    with db.read_session() as s:  # setting a value it already has is no change
        node = s.get(Node, node_id)
        node.alive = node.alive


def test_a_read_session_is_autocommit_on_postgresql_and_a_deferred_begin_on_sqlite(db):
    """An agent's poll is one SELECT: on PostgreSQL its read session runs in autocommit (no BEGIN
    and ROLLBACK round trips), and the pooled connection is back in transactions for the next unit
    of work, which writes. SQLite keeps its deferred BEGIN, which reads beside the one writer."""
    from sqlalchemy import event

    sent: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda conn, cur, stmt, *a: sent.append(stmt))
    with db.read_session() as s:
        s.scalar(select(Node.id).limit(1))
        read_autocommit = getattr(s.connection().connection.dbapi_connection, "autocommit", None)
    with db.session() as s:
        s.scalar(select(Node.id).limit(1))
        write_autocommit = getattr(s.connection().connection.dbapi_connection, "autocommit", None)
    if db.postgresql:
        assert (read_autocommit, write_autocommit) == (True, False)
    else:
        assert [q for q in sent if q.startswith("BEGIN")] == ["BEGIN", "BEGIN IMMEDIATE"]


def test_bulk_allocate_is_all_or_none(api):
    names = [discover(api, inventory(i)).json()["node"] for i in range(5)]
    r = api.post("/api/v2/nodes/allocate", json={"nodes": names[:3]})
    assert r.status_code == 200, r.text
    assert [n["state"] for n in r.json()["items"]] == ["allocated"] * 3
    # one of them is allocated already: refused, and the others are not allocated either
    r = api.post("/api/v2/nodes/allocate", json={"nodes": [names[3], names[0], names[4]]})
    assert r.status_code == 409 and r.json()["error"] == "illegal_transition", r.text
    assert api.get(f"/api/v2/nodes/{names[3]}").json()["state"] == "discovered"
    for bad, code in (({"nodes": []}, 422), ({"nodes": [names[3], names[3]]}, 422), ({"nodes": "x"}, 422),
                      ({"nodes": ["no-such-node"]}, 404), ({}, 422)):
        r = api.post("/api/v2/nodes/allocate", json=bad)
        assert r.status_code == code and set(r.json()) >= {"error", "message"}, (bad, r.text)


def test_bulk_create_is_all_or_none_and_binds_the_discovery_roles(api):
    r = api.post("/api/v2/nodes/batch", json={"nodes": [{"name": f"b{i}.example.com"} for i in range(4)]})
    assert r.status_code == 201, r.text
    items = r.json()["items"]
    assert [n["name"] for n in items] == [f"b{i}.example.com" for i in range(4)]
    roles = api.list("/api/v2/node_roles", {"node": "b2.example.com"})
    assert "crowbar-managed-node" in {nr["role"] for nr in roles}
    for bad, code in (({"nodes": [{"name": "b0.example.com"}, {"name": "c.example.com"}]}, 409),
                      ({"nodes": [{"name": "d.example.com"}, {"name": "d.example.com"}]}, 409),
                      ({"nodes": [{"name": "not a name"}]}, 422), ({"nodes": []}, 422), ({"nodes": [{}]}, 422)):
        r = api.post("/api/v2/nodes/batch", json=bad)
        assert r.status_code == code and set(r.json()) >= {"error", "message"}, (bad, r.text)
    assert api.get("/api/v2/nodes/c.example.com").status_code == 404  # nothing of a refused batch stays
    assert api.get("/api/v2/nodes/d.example.com").status_code == 404


def test_deploy_with_allocate_allocates_the_discovered_in_the_same_transaction(db, admin_token, tmp_path):
    from fastapi.testclient import TestClient

    from crowbar.api.app import create_app
    from crowbar.api.settings import AppSettings
    from crowbar.lab.fleet import fake_image_store

    store = fake_image_store(tmp_path / "os")
    api = TestClient(create_app(AppSettings(db=db, wake=lambda kind: None, os_images=store)),
                     headers={"authorization": f"Bearer {admin_token}"})
    bodies = [discover(api, inventory(i)).json() for i in range(3)]
    names = [b["node"] for b in bodies]
    assert api.post("/api/v2/nodes/allocate", json={"nodes": names[:1]}).status_code == 200
    r = api.post("/api/v2/nodes/deploy", json={"nodes": names, "allocate": True})
    assert r.status_code == 200, r.text
    assert {n["state"] for n in r.json()["items"]} == {"hardware-installed"}
    for body in bodies:  # no reboot first: the install job is the next thing the agent gets
        assert api.get("/api/v2/agent/next", headers=agent(body["token"])).json()["action"] == "run"
    # without allocate, a discovered node is refused and nothing is deployed
    more = [discover(api, inventory(i)).json()["node"] for i in range(3, 5)]
    assert api.post("/api/v2/nodes/deploy", json={"nodes": more}).status_code == 409
    assert api.get(f"/api/v2/nodes/{more[0]}").json()["state"] == "discovered"
