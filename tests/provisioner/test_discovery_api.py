"""Discovery, node tokens and the agent's job loop, through the real API on both engines."""

import json

import pytest

from crowbar.db.models import AgentJob, ApiToken
from crowbar.services import auth
from discoverykit import INVENTORY, boot_nonce, discover


def test_discovery_creates_a_node_in_discovered_with_a_node_token(api, db):
    r = discover(api)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["node"] == "d52-54-00-aa-00-01.crowbar.local" and body["created"] is True
    node = api.get(f"/api/v2/nodes/{body['node']}").json()
    assert node["state"] == "discovered" and node["bootenv"] == "discovery"
    assert node["boot_mac"] == "52:54:00:aa:00:01"
    assert node["discovery"]["cpu"]["count"] == 2 and node["discovery"]["product_name"] == "Standard PC"
    with db.session() as s:  # stored hashed, tied to the node
        row = s.query(ApiToken).filter_by(kind="node").one()
        assert row.token_hash == auth.hash_token(body["token"]) and body["token"] not in row.token_hash
    # the node token cannot use the admin API
    assert api.get("/api/v2/nodes", headers={"authorization": f"Bearer {body['token']}"}).status_code == 401


def test_booting_again_refinds_the_node_by_any_mac_and_revokes_the_old_token(api):
    first = discover(api).json()
    nonce = boot_nonce(api, "52:54:00:aa:00:02")  # the boot script the machine got from its 2nd NIC
    again = discover(api, dict(INVENTORY, boot_mac="52:54:00:aa:00:02"), nonce=nonce).json()
    assert again["node"] == first["node"] and again["created"] is False
    old = api.get("/api/v2/agent/next", headers={"authorization": f"Bearer {first['token']}"})
    assert old.status_code == 401
    assert api.get("/api/v2/agent/next", headers={"authorization": f"Bearer {again['token']}"}).status_code == 200
    assert len(api.list("/api/v2/nodes")) == 1


def test_a_deleted_node_that_boots_again_is_simply_discovered_again(api):
    first = discover(api).json()
    assert api.delete(f"/api/v2/nodes/{first['node']}").status_code == 200
    again = discover(api).json()
    assert again["created"] is True and again["node"] == first["node"]


def test_discovery_cannot_take_over_a_node_that_boots_its_disk(api, db):
    body = discover(api).json()
    from crowbar.db.models import Node

    with db.session() as s:
        node = s.query(Node).filter_by(name=body["node"]).one()
        node.state, node.bootenv = "ready", "local"
    r = discover(api)
    assert r.status_code == 409 and "reset it" in r.json()["message"]


@pytest.mark.parametrize("bad, field", [
    ("not json", "body"), ({"nics": []}, "nics"), ({"nics": [{"mac": "zz"}]}, "nics"), ([1, 2], "inventory"),
])
def test_bad_inventories_are_refused_with_the_field(api, bad, field):
    content = bad if isinstance(bad, str) else json.dumps(bad)
    r = api.post("/api/v2/discovery", content=content, headers={"authorization": ""})
    assert r.status_code == 422 and r.json()["field"] == field
    assert api.list("/api/v2/nodes") == []


def test_agent_jobs_round_trip_and_belong_to_their_node(api, db):
    body = discover(api).json()
    other = discover(api, dict(INVENTORY, boot_mac="52:54:00:bb:00:01",
                               nics=[{"name": "eth0", "mac": "52:54:00:bb:00:01"}])).json()
    hdr = {"authorization": f"Bearer {body['token']}"}
    assert api.get("/api/v2/agent/next", headers=hdr).json()["action"] == "wait"
    from crowbar.engine.annealer import queue_job

    with db.session() as s:
        job_id = queue_job(s, body["id"], "echo hi", 60, None, None)
    nxt = api.get("/api/v2/agent/next", headers=hdr).json()
    assert nxt == {"action": "run", "job": str(job_id), "script": "echo hi", "timeout": 60}
    # another node's token cannot report this job
    r = api.post(f"/api/v2/agent/jobs/{job_id}", json={"exit_code": 0, "output": "x"},
                 headers={"authorization": f"Bearer {other['token']}"})
    assert r.status_code == 404
    r = api.post(f"/api/v2/agent/jobs/{job_id}", json={"exit_code": 3, "output": "hi\n"}, headers=hdr)
    assert r.status_code == 200
    with db.session() as s:
        job = s.get(AgentJob, job_id)
        assert (job.state, job.exit_code, job.output) == ("done", 3, "hi\n")


def test_allocate_reserves_the_admin_address_and_asks_the_agent_to_reboot(api):
    body = discover(api).json()
    hdr = {"authorization": f"Bearer {body['token']}"}
    r = api.post(f"/api/v2/nodes/{body['node']}/allocate")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "allocated" and r.json()["admin_address"].startswith("192.168.124.")
    assert api.get("/api/v2/agent/next", headers=hdr).json() == {"action": "reboot"}
    assert api.get("/api/v2/agent/next", headers=hdr).json()["action"] == "wait"  # said once
    # allocating twice is an illegal lifecycle transition, with both states named
    r = api.post(f"/api/v2/nodes/{body['node']}/allocate")
    assert r.status_code == 409 and "allocated" in r.json()["message"]


def test_ipxe_script_follows_the_bootenv(api, db):
    unknown = api.get("/boot/52-54-00-99-99-99.ipxe", headers={"authorization": ""})
    assert unknown.status_code == 200 and "discovery/vmlinuz" in unknown.text
    body = discover(api).json()
    from crowbar.db.models import Node

    with db.session() as s:
        node = s.query(Node).filter_by(name=body["node"]).one()
        node.bootenv = "local"
    local = api.get("/boot/52-54-00-aa-00-02.ipxe", headers={"authorization": ""})  # found by its 2nd NIC
    assert "discovery/vmlinuz" not in local.text and "bootenv local" in local.text
    assert api.get("/boot/not-a-mac.ipxe", headers={"authorization": ""}).status_code == 404


def test_script_jig_runs_through_the_agent_on_a_discovered_node(api, db, tmp_path):
    """The agent side is played by this test: it answers jobs by running them with the host's sh."""
    import subprocess

    from crowbar.services import catalog

    bc = tmp_path / "agentbc"
    (bc / "scripts" / "facts").mkdir(parents=True)
    (bc / "barclamp.yml").write_text("barclamp: {name: agentbc}\nroles:\n  - {name: facts, jig: script}\n")
    (bc / "scripts" / "facts" / "10-facts.sh").write_text(
        '#!/bin/sh\necho "running on $CROWBAR_NODE"\nprintf \'{"facts": {"answer": 42}}\' > "$CROWBAR_WALL"\n')
    with db.session() as s:
        catalog.import_barclamp(s, bc)
    body = discover(api).json()
    hdr = {"authorization": f"Bearer {body['token']}"}
    api.post("/api/v2/deployments", json={"name": "d"})
    assert api.post("/api/v2/deployments/d/bind", json={"role": "facts", "node": body["node"]}).status_code == 201
    api.post("/api/v2/deployments/d/commit")
    from crowbar.engine.annealer import Annealer

    annealer = Annealer(db, workers=2)
    try:
        annealer.step()  # claims the noderole; the jig queues a job for the agent
        for _ in range(50):
            nxt = api.get("/api/v2/agent/next", headers=hdr).json()
            if nxt["action"] == "run":
                break
            annealer.step()
        assert nxt["action"] == "run"
        done = subprocess.run(["sh", "-c", nxt["script"]], capture_output=True, text=True, timeout=60)
        api.post(f"/api/v2/agent/jobs/{nxt['job']}", json={"exit_code": done.returncode,
                                                            "output": done.stdout + done.stderr}, headers=hdr)
        annealer.run_until_idle(30)
    finally:
        annealer._pool.shutdown()
    nr = api.list("/api/v2/node_roles", {"role": "facts"})[0]
    assert nr["state"] == "active", api.list(f"/api/v2/node_roles/{nr['id']}/runs")
    shown = api.get(f"/api/v2/node_roles/{nr['id']}").json()
    assert shown["wall"] == {"facts": {"answer": 42}}
    log = api.list(f"/api/v2/node_roles/{nr['id']}/runs")[-1]["log"]
    assert f"running on {body['node']}" in log
