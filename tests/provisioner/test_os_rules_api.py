"""OS rules through the real API on both engines: set (YAML, checked whole, If-Match), show, explain,
test without saving, tags computed and searchable, deploy without --os taking the rules' OS and
root-device hints, and an upgrade (reinstall with a newer OS) re-running the node's noderoles once
it is ready again. The CLI's `os rules` commands and `nodes list --tag` against a live server are
in tests/lab/test_lab_os_rules.py, with real VMs."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from crowbar.db.models import NodeRole, NodeTag
from crowbar.engine.annealer import Annealer
from discoverykit import INVENTORY, discover
import test_deploy_api as deploy_kit
from test_deploy_api import agent, make_image, take_job

dapi, store = deploy_kit.dapi, deploy_kit.store  # the fixtures: the API with an image store

GIB = 1 << 30
RULES = """\
# which OS each node gets
rules:
  - name: big-disk
    when: "disks_gib[0] >= `15`"
    os: debian-13
    tags: [big-disk]
    root_device: {size: ">= 15"}
default:
  os: debian-12
  tags: [standard]
"""
SMALL = dict(INVENTORY, boot_mac="52:54:00:aa:10:01",
             nics=[{"name": "eth0", "mac": "52:54:00:aa:10:01"}],
             disks=[{"name": "vda", "size_bytes": 8 * GIB}])
BIG = dict(INVENTORY, boot_mac="52:54:00:aa:20:01",
           nics=[{"name": "eth0", "mac": "52:54:00:aa:20:01"}],
           disks=[{"name": "vda", "size_bytes": 8 * GIB}, {"name": "vdb", "size_bytes": 20 * GIB}])


def found(dapi, inventory):
    body = discover(dapi, inventory).json()
    assert dapi.post(f"/api/v2/nodes/{body['node']}/allocate").status_code == 200
    return body


def put_rules(dapi, text=RULES, **headers):
    return dapi.put("/api/v2/os_rules", json={"rules": text}, headers=headers)


def test_rules_are_set_shown_and_checked_whole(dapi):
    assert dapi.get("/api/v2/os_rules").json()["rules"] == []
    r = put_rules(dapi)
    assert r.status_code == 200, r.text
    shown = dapi.get("/api/v2/os_rules")
    body = shown.json()
    assert body["source"] == RULES  # as written, comments and all
    assert body["rules"][0]["name"] == "big-disk" and body["default"] == {"os": "debian-12", "tags": ["standard"]}
    assert body["updated_by"] and shown.headers["etag"]

    # one bad rule: 422 naming it, nothing saved
    bad = RULES.replace("disks_gib[0] >= `15`", "disks_gib[0] >=")
    r = put_rules(dapi, bad)
    assert r.status_code == 422 and r.json()["field"] == "rules" and "rule 1 (big-disk)" in r.json()["message"]
    r = put_rules(dapi, RULES.replace("debian-13", "plan9"))
    assert r.status_code == 422 and "not in the OS catalog" in r.json()["message"]
    assert dapi.get("/api/v2/os_rules").json()["source"] == RULES

    # If-Match: a stale ETag is refused, the current one goes through
    etag = shown.headers["etag"]
    assert put_rules(dapi, "rules: []\n", **{"if-match": etag}).status_code == 200
    r = put_rules(dapi, RULES, **{"if-match": etag})
    assert r.status_code == 412, r.text
    # a mapping is accepted too; the stored source is then its YAML
    r = dapi.put("/api/v2/os_rules", json={"rules": {"rules": [{"name": "all", "when": "`true`"}]}})
    assert r.status_code == 200 and "name: all" in r.json()["source"]
    events = dapi.get("/api/v2/events", params={"object_type": "os_rules"}).json()["items"]
    assert [e["action"] for e in events].count("set") == 3


def test_explain_and_test_show_every_verdict_and_write_nothing(dapi):
    small, big = found(dapi, SMALL), found(dapi, BIG)
    put_rules(dapi)
    explained = dapi.get(f"/api/v2/os_rules/explain/{big['node']}").json()
    assert explained["saved"] and explained["choice"] == {"rule": "big-disk", "os": "debian-13",
                                                          "root_device": {"size": ">= 15"}, "tags": ["big-disk"]}
    (verdict,) = explained["rules"]
    assert verdict["chosen"] and verdict["why"] == ["disks_gib[0] >= `15`: true (disks_gib[0] = 20)"]
    assert explained["facts"]["disks_gib"] == [20, 8] and "inventory" not in explained["facts"]
    small_explained = dapi.get(f"/api/v2/os_rules/explain/{small['node']}").json()
    assert small_explained["default_applies"] and small_explained["choice"]["os"] == "debian-12"

    candidate = "rules:\n  - {name: everyone, when: \"name != ''\", os: debian-13, tags: [new]}\n"
    tried = dapi.post("/api/v2/os_rules/test", json={"rules": candidate, "node": small["node"]})
    assert tried.status_code == 200, tried.text
    assert not tried.json()["saved"] and tried.json()["choice"]["rule"] == "everyone"
    assert dapi.get("/api/v2/os_rules").json()["source"] == RULES  # not saved
    assert dapi.get(f"/api/v2/nodes/{small['node']}").json()["tags"] == ["standard"]  # not applied
    r = dapi.post("/api/v2/os_rules/test", json={"rules": "rules: 5", "node": small["node"]})
    assert r.status_code == 422
    assert dapi.get("/api/v2/os_rules/explain/nosuchnode").status_code == 404


def test_tags_are_computed_and_searchable(dapi, db):
    small, big = found(dapi, SMALL), found(dapi, BIG)
    assert put_rules(dapi).json()["nodes_tagged"] >= 2
    assert [n["name"] for n in dapi.get("/api/v2/nodes", params={"tag": "big-disk"}).json()["items"]] == [big["node"]]
    listed = {n["name"]: n["tags"] for n in dapi.get("/api/v2/nodes").json()["items"]}
    assert listed[small["node"]] == ["standard"] and listed[big["node"]] == ["big-disk"]
    # the operator's own tags (an attrib on the node) join the rules'; the node is found by both
    r = dapi.put("/api/v2/attribs/tags", json={"value": ["rack-4"], "node": small["node"]})
    assert r.status_code == 200, r.text
    assert dapi.get(f"/api/v2/nodes/{small['node']}").json()["tags"] == ["rack-4", "standard"]
    assert [n["name"] for n in dapi.get("/api/v2/nodes", params={"tag": "rack-4"}).json()["items"]] == [small["node"]]
    bad = dapi.put("/api/v2/attribs/tags", json={"value": ["Rack 4"], "node": small["node"]})
    assert bad.status_code == 422
    # a node discovered after the rules were set is tagged by its inventory at once
    late = discover(dapi, dict(SMALL, boot_mac="52:54:00:aa:50:01", nics=[{"name": "eth0", "mac": "52:54:00:aa:50:01"}],
                               disks=[{"name": "vda", "size_bytes": 40 * GIB}])).json()
    assert dapi.get(f"/api/v2/nodes/{late['node']}").json()["tags"] == ["big-disk"]
    # new rules: every node's tags again; no rules: only the operator's
    put_rules(dapi, "rules: []\n")
    with db.session() as s:
        assert sorted(s.scalars(select(NodeTag.tag))) == ["rack-4"]
    assert dapi.get("/api/v2/nodes", params={"tag": "big-disk"}).json()["items"] == []


def test_deploy_without_an_os_takes_the_rules_choice(dapi, store):
    make_image(store)
    make_image(store, name="debian-13", digest="cd" * 32)
    put_rules(dapi)
    small, big = found(dapi, SMALL), found(dapi, BIG)
    r = dapi.post("/api/v2/nodes/deploy", json={"nodes": [small["node"], big["node"]]})
    assert r.status_code == 200, r.text
    by_name = {n["name"]: n for n in r.json()["items"]}
    assert by_name[small["node"]]["os"] == "debian-12" and by_name[small["node"]]["install"]["disk"] == "/dev/vda"
    assert by_name[small["node"]]["install"]["os_rule"] == "default"
    chosen = by_name[big["node"]]
    assert chosen["os"] == "debian-13" and chosen["install"]["os_rule"] == "big-disk"
    # the rule's root-device hints: the 20 GiB disk, not the smallest one
    assert chosen["install"]["disk"] == "/dev/vdb" and chosen["install"]["root_device_from"] == "rule big-disk"
    events = dapi.get("/api/v2/events", params={"object_type": "node"}).json()["items"]
    assert any(e["message"] == "deploying debian-13 (OS rule big-disk)" for e in events)
    # --os still wins over the rules
    other = found(dapi, dict(BIG, boot_mac="52:54:00:aa:30:01", nics=[{"name": "eth0", "mac": "52:54:00:aa:30:01"}]))
    r = dapi.post(f"/api/v2/nodes/{other['node']}/deploy", json={"os": "debian-12"})
    assert r.json()["os"] == "debian-12" and r.json()["install"]["disk"] == "/dev/vdb"  # the hints still apply
    # the operator's root-device hints win over the rules'
    third = found(dapi, dict(BIG, boot_mac="52:54:00:aa:40:01", nics=[{"name": "eth0", "mac": "52:54:00:aa:40:01"}]))
    dapi.put("/api/v2/attribs/root-device", json={"value": {"name": "vda"}, "node": third["node"]})
    r = dapi.post(f"/api/v2/nodes/{third['node']}/deploy", json={})
    assert r.json()["install"]["disk"] == "/dev/vda" and r.json()["install"]["root_device_from"] == "node"


def _ready(dapi, node, os_name):
    job = take_job(dapi, node["token"])
    assert job["action"] == "run", job
    dapi.post(f"/api/v2/agent/jobs/{job['job']}", json={"exit_code": 0}, headers=agent(node["token"]))
    for step in ("booted", "ready"):
        r = dapi.post("/api/v2/agent/booted", json={"step": step, "os": os_name}, headers=agent(node["token"]))
        assert r.status_code == 200, r.text
    assert dapi.get(f"/api/v2/nodes/{node['node']}").json()["state"] == "ready"


def _states(db, node_name):
    with db.session() as s:
        from crowbar.db.models import Node

        node_id = s.scalar(select(Node.id).where(Node.name == node_name))
        return [(nr.id, nr.state) for nr in s.scalars(select(NodeRole).where(NodeRole.node_id == node_id))]


def _anneal(db):
    annealer = Annealer(db, workers=2)
    try:
        annealer.run_until_idle(30)
    finally:
        annealer._pool.shutdown()


def test_an_upgrade_reinstalls_the_newer_os_and_runs_the_noderoles_again(dapi, store, db):
    make_image(store)
    make_image(store, name="debian-13", digest="cd" * 32)
    node = found(dapi, SMALL)
    dapi.post(f"/api/v2/nodes/{node['node']}/deploy", json={})
    _ready(dapi, node, "Debian GNU/Linux 12 (bookworm)")
    _anneal(db)
    before = _states(db, node["node"])
    assert before and all(state == "active" for _, state in before)
    runs = {i: len(dapi.get(f"/api/v2/node_roles/{i}/runs").json()["items"]) for i, _ in before}

    r = dapi.post(f"/api/v2/nodes/{node['node']}/reinstall", json={"os": "debian-13"})
    assert r.status_code == 200 and r.json()["os"] == "debian-13"
    assert r.json()["state_reason"] == "reinstall debian-12 -> debian-13 requested"
    assert all(state == "active" for _, state in _states(db, node["node"]))  # nothing runs while it installs
    _ready(dapi, node, "Debian GNU/Linux 13 (trixie)")
    # ready again: the annealer sees the node as changed, its noderoles run again
    assert all(state in ("todo", "blocked") for _, state in _states(db, node["node"]))
    events = dapi.get("/api/v2/events", params={"object_type": "noderole"}).json()["items"]
    assert any("was reinstalled (debian-13)" in (e["message"] or "") for e in events)
    _anneal(db)
    after = _states(db, node["node"])
    assert all(state == "active" for _, state in after)
    for i, _ in after:
        assert len(dapi.get(f"/api/v2/node_roles/{i}/runs").json()["items"]) == runs[i] + 1
    # a plain ready call home later (a reboot) does not run them again
    dapi.post("/api/v2/agent/booted", json={"step": "ready"}, headers=agent(node["token"]))
    assert all(state == "active" for _, state in _states(db, node["node"]))


@pytest.mark.parametrize("body", [{"rules": 5}, {"rules": ["a"]}, {}, {"rules": "x" * 300_000}])
def test_hostile_rules_bodies_are_refused(dapi, body):
    r = dapi.put("/api/v2/os_rules", json=body)
    assert r.status_code in (413, 422) and "error" in r.json(), r.text
