"""Binding a role to many nodes in one call, on both engines: a list of nodes or every node with a
tag, in one transaction (a refusal on any node binds nothing), the tag remembered on the deployment
role so that a commit binds the nodes that gained it since, and the CLI's `deployments bind` with
several nodes or --tag."""

from __future__ import annotations

import json

import pytest
import test_cli_lists
from click.testing import CliRunner
from sqlkit import statements

from crowbar.cli import main
from crowbar.services import attribs, nodes

V2 = "/api/v2"
NODES = [f"n{i}.example.com" for i in range(1, 6)]
FX = {"barclamp.yml": "barclamp: {name: fx}\nroles:\n"
                      "  - {name: fx-a, jig: noop, conflicts: [fx-b]}\n  - {name: fx-b, jig: noop}\n"}


@pytest.fixture
def world(api, db):
    """Five nodes; n1..n3 tagged `db` (the operator's `tags` attrib), n4 `web`; deployment d1."""
    with db.session() as s:
        for name in NODES:
            nodes.create_node(s, name)
        for name in NODES[:3]:
            attribs.set_on_node(s, "tags", ["db"], name)
        attribs.set_on_node(s, "tags", ["web"], NODES[3])
    assert api.post(f"{V2}/deployments", json={"name": "d1"}).status_code == 201
    return api


def noderoles(api, **params) -> list[dict]:
    return api.list(f"{V2}/node_roles", params)


def bind(api, body: dict, deployment: str = "d1"):
    return api.post(f"{V2}/deployments/{deployment}/bind", json=body)


def test_a_list_of_nodes_is_bound_in_one_call_sharing_parents(world, db):
    sent, stop = statements(db)
    try:
        r = bind(world, {"role": "test-client-client", "nodes": NODES[:4] + [NODES[0]]})  # n1 twice: once
    finally:
        stop()
    inserts = [s for s in sent if s.lstrip().upper().startswith("INSERT INTO NODE_ROLES")]
    assert r.status_code == 201, r.text
    body = r.json()
    assert [nr["node"] for nr in body["noderoles"]] == NODES[:4]
    assert {nr["role"] for nr in body["noderoles"]} == {"test-client-client"} and "noderole" not in body
    assert len(inserts) == 1  # every noderole of the bind in one INSERT
    rows = noderoles(world, deployment="d1")
    assert len(body["created"]) == len(rows)
    per_role = {}
    for row in rows:
        per_role.setdefault(row["role"], set()).add(row["node"])
    # test-server and test-library are found in the deployment once made; test-client is implicit (per node)
    assert per_role["test-server"] == {NODES[0]} and per_role["test-library"] == {NODES[0]}
    assert per_role["test-client"] == per_role["test-client-client"] == set(NODES[:4])
    client = next(r for r in rows if r["role"] == "test-client" and r["node"] == NODES[3])
    parents = world.get(f"{V2}/node_roles/{client['id']}/parents").json()["items"]
    assert {(p["role"], p["node"]) for p in parents} == {("test-server", NODES[0]), ("test-library", NODES[0])}
    # binding again changes nothing and answers the same noderoles
    again = bind(world, {"role": "test-client-client", "nodes": NODES[:4]}).json()
    assert again["created"] == [] and [nr["id"] for nr in again["noderoles"]] == [nr["id"] for nr in body["noderoles"]]
    world.post(f"{V2}/deployments/d1/commit")
    world.anneal()
    assert {r["state"] for r in noderoles(world, deployment="d1")} == {"active"}


def test_one_refusal_binds_nothing(world):
    files = {"files": FX}
    assert world.post(f"{V2}/barclamps", json=files).status_code == 201
    assert world.post(f"{V2}/deployments", json={"name": "d2"}).status_code == 201
    assert bind(world, {"role": "fx-b", "node": NODES[2]}, "d2").status_code == 201
    before = noderoles(world)
    events = world.list(f"{V2}/events", {"marker": 0})

    # fx-a conflicts with fx-b, which n3 holds: found while binding n3, after n1 and n2 were bound
    r = bind(world, {"role": "fx-a", "nodes": NODES[:4]})
    assert r.status_code == 409 and "conflicts with fx-b already on n3.example.com" in r.json()["message"]
    # the role already on a node in another deployment: refused before any bind, naming it
    r = bind(world, {"role": "fx-b", "nodes": NODES[:3]})
    assert r.status_code == 409
    assert "fx-b" in r.json()["message"] and "n3.example.com in deployment 'd2'" in r.json()["message"]
    # an unknown node among known ones, and the other malformed requests
    r = bind(world, {"role": "test-client", "nodes": [NODES[0], "ghost.example.com"]})
    assert r.status_code == 404 and r.json()["field"] == "node" and "ghost.example.com" in r.json()["message"]
    for body, field in [({"role": "test-client", "nodes": []}, "nodes"),
                        ({"role": "test-client"}, "node"),
                        ({"role": "test-client", "node": NODES[0], "tag": "db"}, "tag"),
                        ({"role": "test-client", "nodes": [NODES[0]], "node": NODES[1]}, "nodes"),
                        ({"role": "test-client", "nodes": "n1.example.com"}, "nodes"),
                        ({"role": "test-client", "nodes": [NODES[0]] * 10_001}, "nodes")]:
        r = bind(world, body)
        assert r.status_code == 422 and r.json()["field"] == field, (body, r.text)
    assert noderoles(world) == before
    assert world.list(f"{V2}/events", {"marker": 0}) == events
    assert world.get(f"{V2}/deployments/d1").json()["roles"] == []


def test_a_tag_binds_its_nodes_and_is_remembered(world):
    r = bind(world, {"role": "test-library", "tag": " DB "})  # tags are lower case, like the list's filter
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["tag"] == "db" and [nr["node"] for nr in body["noderoles"]] == NODES[:3]
    (dr,) = world.get(f"{V2}/deployment_roles", params={"deployment": "d1"}).json()
    assert (dr["role"], dr["tag"]) == ("test-library", "db")
    # a tag no node has: 404 naming it; not a tag at all: 422
    r = bind(world, {"role": "test-library", "tag": "nobody"})
    assert r.status_code == 404 and r.json()["field"] == "tag" and "'nobody'" in r.json()["message"]
    r = bind(world, {"role": "test-library", "tag": "no such tag!"})
    assert r.status_code == 422 and r.json()["field"] == "tag"
    assert world.get(f"{V2}/deployment_roles", params={"deployment": "d1"}).json() == [dr]

    committed = world.post(f"{V2}/deployments/d1/commit").json()
    assert committed["tag_binds"] == []
    world.anneal()
    # n5 gains the tag (as a rule or the operator would set it): the next commit binds it
    attribs_set = world.put(f"{V2}/attribs/tags", json={"value": ["db", "extra"], "node": NODES[4]})
    assert attribs_set.status_code == 200, attribs_set.text
    assert world.get(f"{V2}/deployments/d1").json()["state"] == "committed"  # nothing bound yet
    committed = world.post(f"{V2}/deployments/d1/commit").json()
    assert committed["tag_binds"] == [{"role": "test-library", "tag": "db", "nodes": [NODES[4]]}]
    assert committed["state"] == "committed"
    (added,) = noderoles(world, node=NODES[4], role="test-library")
    assert added["state"] == "todo" and added["deployment"] == "d1"
    world.anneal()
    assert {r["node"] for r in noderoles(world, role="test-library", state="active")} == set(NODES[:3] + NODES[4:])
    commits = [e for e in world.list(f"{V2}/events", {"object_type": "deployment", "marker": 0})
               if e["action"] == "commit"]
    assert "test-library bound to n5.example.com (tag db)" in commits[-1]["message"]
    # binding by another tag replaces the remembered one (what was bound stays)
    r = bind(world, {"role": "test-library", "tag": "web"})
    assert r.status_code == 201 and [nr["node"] for nr in r.json()["noderoles"]] == [NODES[3]]
    assert r.json()["reopened"] is True
    assert world.get(f"{V2}/deployment_roles", params={"deployment": "d1"}).json()[0]["tag"] == "web"
    assert len(noderoles(world, role="test-library")) == 5


def test_a_commit_that_cannot_bind_a_newly_tagged_node_is_refused_whole(world):
    assert bind(world, {"role": "test-library", "tag": "db"}).status_code == 201
    assert world.post(f"{V2}/deployments", json={"name": "other"}).status_code == 201
    assert bind(world, {"role": "test-library", "node": NODES[4]}, "other").status_code == 201
    assert world.put(f"{V2}/attribs/tags", json={"value": ["db"], "node": NODES[4]}).status_code == 200
    before = noderoles(world)
    r = world.post(f"{V2}/deployments/d1/commit")
    assert r.status_code == 409
    message = r.json()["message"]
    assert "n5.example.com in deployment 'other'" in message and "gained tag 'db'" in message
    assert noderoles(world) == before and world.get(f"{V2}/deployments/d1").json()["state"] == "proposed"


def test_binding_by_tag_into_system_commits_at_once(world):
    r = bind(world, {"role": "test-library", "tag": "web"}, "system")
    assert r.status_code == 201 and r.json()["reopened"] is False
    (nr,) = r.json()["noderoles"]
    assert (nr["node"], nr["state"]) == (NODES[3], "todo")


cli = test_cli_lists.cli  # the `crowbar ...` in-process fixture


def test_the_cli_binds_several_nodes_or_a_tag(cli, world):
    out = cli("deployments", "bind", "d1", "test-library", NODES[0], NODES[3])
    assert f"test-library on {NODES[0]} in d1 (proposed)" in out and f"test-library on {NODES[3]}" in out
    assert "2 noderoles created" in out
    result = json.loads(cli("deployments", "bind", "d1", "test-library", "--tag", "db", "-o", "json"))
    assert [nr["node"] for nr in result["noderoles"]] == NODES[:3] and len(result["created"]) == 2
    out = cli("deployments", "bind", "d1", "test-server", "--tag", "db")
    assert "tag db is remembered: a commit binds the nodes that gain it" in out
    one = json.loads(cli("deployments", "bind", "d1", "test-server", NODES[4], "-o", "json"))
    assert one["noderole"]["node"] == NODES[4]  # one node: the answer keeps its `noderole`
    for args in (["deployments", "bind", "d1", "test-server"],
                 ["deployments", "bind", "d1", "test-server", NODES[0], "--tag", "db"]):
        refused = CliRunner().invoke(main.cli, args)
        assert refused.exit_code == 2 and "--tag" in refused.output, refused.output
