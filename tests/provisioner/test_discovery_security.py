"""The discovery takeovers of issue 8, each reproduced as the attacker did it, through the real API on
both engines (docs/security.md): MAC hijack, token theft, oversized and hostile inventories, node
creation floods, machines held for approval."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from crowbar.api.app import create_app
from crowbar.api.settings import AppSettings
from crowbar.db.models import AgentJob, ApiToken, Event, Node, NodeMac
from crowbar.engine.annealer import queue_job
from crowbar.provisioner.discovery import MAX_INVENTORY_BYTES, TokenBucket
from discoverykit import INVENTORY, boot_nonce, boot_script, discover, inventory, nonce_in

A1, A2 = "52:54:00:aa:00:01", "52:54:00:aa:00:02"
DEPLOYED = "52:54:00:dd:00:01"


def error_body(r, status: int, kind: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) <= {"error", "message", "field", "details"} and body["message"], body
    if kind:
        assert body["error"] == kind, body
    return body


def snapshot(db) -> dict:
    """Everything discovery could change: nodes, their MACs, tokens, jobs, events."""
    with db.session() as s:
        return {
            "nodes": sorted((n.id, n.name, n.state, n.bootenv, n.boot_mac, json.dumps(n.discovery, sort_keys=True),
                             n.boot_nonce_hash, n.available) for n in s.scalars(select(Node))),
            "macs": sorted(s.execute(select(NodeMac.mac, NodeMac.node_id)).all()),
            "tokens": sorted(s.execute(select(ApiToken.id, ApiToken.token_hash)).all()),
            "jobs": sorted(s.execute(select(AgentJob.id, AgentJob.state)).all()),
            "events": s.scalar(select(func.count()).select_from(Event)),
        }


def agent(api, token: str) -> dict:
    r = api.get("/api/v2/agent/next", headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return r.json()


def deployed_node(api, db, mac: str = DEPLOYED) -> str:
    """A node that was discovered long ago and now boots its disk (ready)."""
    name = discover(api, inventory(mac)).json()["node"]
    with db.session() as s:
        node = s.scalar(select(Node).where(Node.name == name))
        node.state, node.bootenv = "ready", "local"
    return name


def app_client(db, admin_token, **settings) -> TestClient:
    return TestClient(create_app(AppSettings(db=db, **settings)), headers={"authorization": f"Bearer {admin_token}"})


# --- MAC hijack ----------------------------------------------------------------------------------

def test_mac_hijack_of_a_deployed_node_is_refused_and_moves_nothing(api, db):
    """The issue's attack: a first post with a made-up MAC, then that MAC plus a deployed node's.
    Before the fix: 201, the deployed node's MAC moved and it booted discovery instead of its disk."""
    victim = deployed_node(api, db)
    assert discover(api, {"nics": [{"mac": "00:00:00:00:00:01"}]}).status_code == 201
    before = snapshot(db)
    r = discover(api, {"nics": [{"mac": "00:00:00:00:00:01"}, {"mac": DEPLOYED}]})
    body = error_body(r, 409, "conflict")
    assert victim in body["message"] and "2 different nodes" in body["message"]
    assert snapshot(db) == before
    assert "bootenv local" in boot_script(api, DEPLOYED).text


def test_macs_of_two_discovered_nodes_are_refused_even_with_a_valid_nonce(api, db):
    first = discover(api, inventory(A1)).json()
    second = discover(api, inventory("52:54:00:bb:00:01")).json()
    nonce = boot_nonce(api, A1)
    before = snapshot(db)
    r = discover(api, inventory(A1, "52:54:00:bb:00:01"), nonce=nonce)
    body = error_body(r, 409, "conflict")
    assert first["node"] in body["message"] and second["node"] in body["message"]
    assert snapshot(db) == before
    assert agent(api, first["token"])["action"] == "wait" and agent(api, second["token"])["action"] == "wait"


def test_a_refind_takes_only_macs_that_belong_to_nobody(api, db):
    found = discover(api, inventory(A1)).json()
    r = discover(api, inventory(A1, A2), nonce=boot_nonce(api, A1))
    assert r.status_code == 201 and r.json()["node"] == found["node"], r.text
    with db.session() as s:
        assert sorted(s.scalars(select(NodeMac.mac).where(NodeMac.node_id == found["id"]))) == [A1, A2]


# --- token theft ---------------------------------------------------------------------------------

def test_knowing_a_mac_does_not_get_the_node_token_or_its_job(api, db):
    """The issue's attack: post the MAC of a node that boots discovery and receive its fresh token,
    lock the real agent out and take its queued job. Before the fix: 201 with a token."""
    real = discover(api).json()
    with db.session() as s:
        job = queue_job(s, real["id"], "echo secret-attributes", 60, None, None)
    before = snapshot(db)
    for nonce in (None, "", "x" * 32, "wrong-nonce-of-the-right-shape-000"):
        r = discover(api, inventory(A1), nonce=nonce)
        body = error_body(r, 403, "forbidden")
        assert "token" not in body and body["field"] == "nonce"
        assert snapshot(db) == before  # no token revoked or issued, no MAC moved, no job handed out
    # The real agent still holds the node: its token works and it gets its job.
    nxt = agent(api, real["token"])
    assert nxt["action"] == "run" and nxt["job"] == str(job)


def test_the_nonce_is_served_in_the_boot_script_used_once_and_expires(api, db):
    real = discover(api).json()
    assert nonce_in(boot_script(api, "52:54:00:99:99:99").text) is None  # unknown machines get none
    nonce = boot_nonce(api, A1)
    with db.session() as s:  # stored hashed
        node = s.get(Node, real["id"])
        assert node.boot_nonce_hash and nonce not in node.boot_nonce_hash
    again = discover(api, nonce=nonce)
    assert again.status_code == 201 and again.json()["node"] == real["node"]
    assert api.get("/api/v2/agent/next", headers={"authorization": f"Bearer {real['token']}"}).status_code == 401
    # used once: a replay changes nothing
    before = snapshot(db)
    error_body(discover(api, nonce=nonce), 403, "forbidden")
    assert snapshot(db) == before and agent(api, again.json()["token"])["action"] == "wait"
    # expired: refused
    late = boot_nonce(api, A1)
    with db.session() as s:
        s.get(Node, real["id"]).boot_nonce_expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)
    assert "expired" in error_body(discover(api, nonce=late), 403)["message"]
    # only the latest boot's nonce counts
    old, new = boot_nonce(api, A1), boot_nonce(api, A2)
    error_body(discover(api, nonce=old), 403)
    assert discover(api, nonce=new).status_code == 201


def test_a_node_that_boots_its_disk_gets_no_nonce(api, db):
    deployed_node(api, db)
    assert nonce_in(boot_script(api, DEPLOYED).text) is None
    with db.session() as s:
        assert s.scalar(select(Node.boot_nonce_hash).where(Node.boot_mac == DEPLOYED)) is None


def test_bound_to_the_link_a_script_asked_by_another_mac_carries_no_nonce(db, admin_token):
    """With --provision, the server knows the requester's MAC from its neighbour table (faked
    here; tests/provisioner/test_listeners.py checks the real table)."""
    seen = {"testclient": A1}
    api = app_client(db, admin_token, link_address=seen.get)
    real = discover(api).json()
    nonce = boot_nonce(api, A1)
    seen["testclient"] = "52:54:00:66:66:66"  # the attacker's machine asks for A1's script
    before = snapshot(db)
    script = boot_script(api, A1)
    assert script.status_code == 200 and "discovery/vmlinuz" in script.text and nonce_in(script.text) is None
    assert snapshot(db) == before  # the real boot's nonce stays valid
    # ... and cannot post the machine's inventory either, even with the nonce
    error_body(discover(api, nonce=nonce), 403, "forbidden")
    error_body(discover(api, inventory("52:54:00:77:77:77")), 403, "forbidden")  # nor invent a machine
    seen["testclient"] = None  # not a neighbour on the provisioning interface: routed from elsewhere
    error_body(discover(api, nonce=nonce), 403, "forbidden")
    assert snapshot(db) == before
    seen["testclient"] = A2  # the machine itself, from its other NIC
    again = discover(api, nonce=nonce)
    assert again.status_code == 201 and again.json()["node"] == real["node"]
    api.close()


# --- limits --------------------------------------------------------------------------------------

def _nested(depth: int) -> str:
    return '{"nics": [{"mac": "52:54:00:aa:00:01"}], "x": ' + "[" * depth + "]" * depth + "}"


@pytest.mark.parametrize("content, status, field", [
    pytest.param(json.dumps(dict(INVENTORY, pad="x" * MAX_INVENTORY_BYTES)), 413, "body", id="20MB-class body"),
    pytest.param(_nested(100_000), 422, "body", id="deeply nested (was 500)"),
    pytest.param(_nested(40), 422, "x", id="nested past the limit"),
    pytest.param(json.dumps(INVENTORY)[:-1] + ', "cpu_mhz": NaN}', 422, "body", id="NaN"),
    pytest.param(json.dumps(INVENTORY)[:-1] + ', "big": 1e999}', 422, "body", id="Infinity by exponent"),
    pytest.param(json.dumps(INVENTORY)[:-1] + ', "big": ' + "9" * 5000 + "}", 422, "body", id="huge integer"),
    pytest.param(json.dumps(INVENTORY)[:-1] + ', "dmi2": {"vendor": "\\ud800"}}', 422, "dmi2", id="lone surrogate"),
    pytest.param(json.dumps(inventory(*[f"52:54:00:00:01:{i:02x}" for i in range(65)])), 422, "nics", id="65 NICs"),
    pytest.param(json.dumps(dict(INVENTORY, kernel="k" * 1025)), 422, "kernel", id="long string"),
    pytest.param(json.dumps(dict(INVENTORY, **{"k" * 1025: 1})), 422, "inventory", id="long key"),
    pytest.param(json.dumps(dict(INVENTORY, disks=[{}] * 1025)), 422, "disks", id="long list"),
])
def test_hostile_inventories_are_refused_with_the_error_body_and_create_nothing(api, db, content, status, field):
    r = discover(api, content=content)
    assert error_body(r, status)["field"] == field
    assert snapshot(db)["nodes"] == []
    assert api.list("/api/v2/nodes") == []  # and every node can still be listed and shown


def test_a_body_over_the_limit_is_refused_without_reading_it(api, db):
    def chunks():  # no Content-Length: the server stops reading past the limit
        for _ in range(80):
            yield b" " * 65536

    r = api.post("/api/v2/discovery", content=chunks(), headers={"authorization": ""})
    assert error_body(r, 413, "too_large")["field"] == "body"
    r = api.post("/api/v2/discovery", content=b"{}", headers={"authorization": "", "content-length": str(20 << 20)})
    assert r.status_code == 413


def test_stored_inventories_can_always_be_shown(api):
    """Non-UTF-8 DMI bytes from firmware are replaced, never stored as something that breaks GET."""
    raw = json.dumps(INVENTORY).replace('"QEMU"', '"Q\\u00e9MU"', 1).encode().replace(b"Standard PC", b"Std \xff\xfe PC")
    body = discover(api, content=raw).json()
    shown = api.get(f"/api/v2/nodes/{body['node']}")
    assert shown.status_code == 200 and shown.json()["discovery"]["dmi"]["product"] == "Std \ufffd\ufffd PC"


# --- rate limit ----------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_node_creation_through_discovery_is_rate_limited(db, admin_token):
    """The issue created 300 nodes in 9.5 s. Here: bursts of 3, then one every 2 s; re-finds are
    not limited (a rack that reboots is not new machines)."""
    clock = Clock()
    api = app_client(db, admin_token, discovery_limit=TokenBucket(rate=0.5, burst=3, clock=clock))
    made = [discover(api, inventory(f"52:54:00:ee:00:{i:02x}")) for i in range(3)]
    assert [r.status_code for r in made] == [201] * 3
    before = snapshot(db)
    r = discover(api, inventory("52:54:00:ee:00:10"))
    body = error_body(r, 429, "rate_limited")
    assert r.headers["retry-after"] == "2" and "per second" in body["message"]
    assert snapshot(db) == before
    # a re-find of a known machine is not a new node
    assert discover(api, inventory("52:54:00:ee:00:00"), nonce=boot_nonce(api, "52:54:00:ee:00:00")).status_code == 201
    clock.now += 2
    assert discover(api, inventory("52:54:00:ee:00:10")).status_code == 201
    assert discover(api, inventory("52:54:00:ee:00:11")).status_code == 429
    assert len(snapshot(db)["nodes"]) == 4
    api.close()


def test_token_bucket_refills_at_its_rate_up_to_its_burst():
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=2, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0, 0, 0.5]
    clock.now += 0.5
    assert bucket.take() == 0 and bucket.take() == 0.5
    clock.now += 100  # never more than the burst
    assert [bucket.take() for _ in range(3)] == [0, 0, 0.5]
    assert TokenBucket(rate=None).take() == 0
    with pytest.raises(ValueError):
        TokenBucket(rate=-1)


# --- approval ------------------------------------------------------------------------------------

def test_held_for_approval_new_machines_wait_until_the_operator_approves(db, admin_token):
    from crowbar.engine.annealer import Annealer

    api = app_client(db, admin_token, approve_discovered=True)
    found = discover(api).json()
    assert found["state"] == "pending"
    node = api.get(f"/api/v2/nodes/{found['node']}").json()
    assert (node["state"], node["available"], node["bootenv"]) == ("pending", False, "discovery")
    annealer = Annealer(db, workers=2)
    try:
        annealer.run_until_idle(30)
        assert agent(api, found["token"])["action"] == "wait"  # nothing runs on it
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(AgentJob)) == 0
        body = error_body(api.post(f"/api/v2/nodes/{found['node']}/allocate"), 409, "illegal_transition")
        assert "pending" in body["message"]
        # a pending machine that boots again is still found by its nonce, and still waits
        again = discover(api, nonce=boot_nonce(api, A1)).json()
        assert again["node"] == found["node"] and again["state"] == "pending"
        approved = api.post(f"/api/v2/nodes/{found['node']}/approve")
        assert approved.status_code == 200, approved.text
        assert (approved.json()["state"], approved.json()["available"]) == ("discovered", True)
        error_body(api.post(f"/api/v2/nodes/{found['node']}/approve"), 409, "illegal_transition")
        error_body(api.post("/api/v2/nodes/nosuch.example.com/approve"), 404, "not_found")
        annealer.run_until_idle(30)
        assert api.post(f"/api/v2/nodes/{found['node']}/allocate").status_code == 200
    finally:
        annealer._pool.shutdown()
    assert api.post(f"/api/v2/nodes/{found['node']}/approve", headers={"authorization": ""}).status_code == 401
    api.close()


def test_crowbar_nodes_approve_takes_several_nodes_and_prints_json(db, admin_token, monkeypatch):
    from click.testing import CliRunner

    from crowbar.cli import main
    from crowbar.cli.client import CliError, Client

    api = app_client(db, admin_token, approve_discovered=True)
    names = [discover(api, inventory(f"52:54:00:ab:00:0{i}")).json()["node"] for i in range(3)]
    client = Client("http://testserver")
    client.http = TestClient(api.app, base_url="http://testserver/api/v2",
                             headers={"authorization": f"Bearer {admin_token}"})
    monkeypatch.setattr(main, "Client", lambda endpoint: client)
    run = CliRunner()
    done = run.invoke(main.cli, ["nodes", "approve", names[0], names[1], "-o", "json"])
    assert done.exit_code == 0, done.output
    assert [(n["name"], n["state"]) for n in json.loads(done.output)] == [(names[0], "discovered"),
                                                                          (names[1], "discovered")]
    failed = run.invoke(main.cli, ["nodes", "approve", names[0], names[2]])  # main() prints it as one line
    assert failed.exit_code == 1 and isinstance(failed.exception, CliError), failed.output
    assert names[0] in str(failed.exception) and "already discovered" in str(failed.exception)
    assert api.get(f"/api/v2/nodes/{names[2]}").json()["state"] == "discovered"  # the others are done
    client.http.close()
    api.close()


def test_one_nonce_posted_twice_at_once_finds_the_node_once(api, db):
    """Two posts racing with one nonce (PostgreSQL runs them concurrently; SQLite one after the
    other): the conditional update spends it once, so exactly one gets a token."""
    import threading

    discover(api)
    nonce = boot_nonce(api, A1)
    barrier, answers = threading.Barrier(2), []

    def post():
        with TestClient(api.app) as client:
            barrier.wait()
            answers.append(discover(client, nonce=nonce))

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(r.status_code for r in answers) == [201, 403], [r.text for r in answers]
    winner = next(r for r in answers if r.status_code == 201).json()
    assert agent(api, winner["token"])["action"] == "wait"
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.kind == "node")) == 1
