"""Import and export through the API, on both engines: a deployment round trip with its plan, a
refused document that writes nothing, a deployment bound by tag exported as its tag and imported
onto the nodes with that tag here (on this server and another), the whole server with its OS rules
into an empty database (identical export), refused into a non-empty one unless merge, and the
Ansible inventory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_cli_lists
import yaml
from click.testing import CliRunner
from fastapi.testclient import TestClient

from crowbar.api.app import create_app
from crowbar.api.settings import AppSettings
from crowbar.cli import main
from crowbar.cli.client import CliError
from crowbar.services import attribs, auth, catalog, deployments, network, nodes, os_rules

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "barclamps" / "webhello"
RULES = """\
# n3 serves the web
rules:
  - name: web
    when: "name == 'n3.example.com'"
    tags: [web-tier]
default:
  os: debian-12
"""


def _state(db) -> None:
    """A server with something of everything: a barclamp of its own, nodes with hints and
    addresses, two deployments (one a child of the other), committed and annealed in part."""
    with db.session() as s:
        catalog.import_barclamp(s, SAMPLE)
        for name in ("n1.example.com", "n2.example.com", "n3.example.com"):
            nodes.create_node(s, name)
            network.allocate(s, "admin", name)
        attribs.set_on_node(s, "ssh-address", "10.0.0.1", "n1.example.com")
        deployments.create_deployment(s, "d1", description="the first")
        deployments.bind(s, "d1", "test-client", "n2.example.com")
        deployments.bind(s, "d1", "webhello", "n3.example.com")
        deployments.set_role_data(s, "d1", "test-server", {"test": {"marker": "m-d1"}})
        deployments.set_role_data(s, "d1", "webhello", {"webhello_port": 9000})
        deployments.commit(s, "d1")
        deployments.create_deployment(s, "d2", parent="d1")
        deployments.bind(s, "d2", "test-library", "n1.example.com")
        os_rules.set_rules(s, RULES)  # n3 gets tag web-tier from a rule, n1 rack-1 from the operator
        attribs.set_on_node(s, "tags", ["rack-1"], "n1.example.com")
        deployments.create_deployment(s, "d3")  # by tag, and one role by name
        deployments.bind(s, "d3", "test-client-client", tag="web-tier")
        deployments.bind(s, "d3", "test-async", "n1.example.com")


def test_a_deployment_round_trip_with_a_plan_first(api, db):
    _state(db)
    doc = api.get("/api/v2/deployments/d1/export").json()
    assert doc["format"] == "crowbar-deployment/1"
    assert doc["deployment"] == {"name": "d1", "description": "the first", "parent": None}
    assert {"role": "webhello", "barclamp": "webhello", "data": {"webhello_port": 9000}} in doc["roles"]
    assert {"node": "n3.example.com", "role": "webhello", "data": {}} in doc["noderoles"]
    assert doc["networks"] == [{"name": "admin", "subnet": "192.168.124.0/24"}]
    d2 = api.get("/api/v2/deployments/d2/export").json()
    assert api.delete("/api/v2/deployments/d2").status_code == 200
    assert api.delete("/api/v2/deployments/d1").status_code == 200

    r = api.post("/api/v2/deployments/import?dry_run=true", json=doc)
    assert r.status_code == 200, r.text
    plan = r.json()["plan"]
    assert plan[0] == "create deployment d1 under system"
    assert "bind webhello to n3.example.com (and what it requires)" in plan
    assert "set the data of role webhello" in plan
    assert api.get("/api/v2/deployments/d1").status_code == 404   # a dry run writes nothing

    r = api.post("/api/v2/deployments/import", json=doc)
    assert r.status_code == 200, r.text
    assert r.json()["applied"] is True
    assert api.get("/api/v2/deployments/d1").json()["state"] == "proposed"
    assert api.get("/api/v2/deployments/d1/export").json() == doc
    assert api.post("/api/v2/deployments/import", json=d2).status_code == 200
    assert api.get("/api/v2/deployments/d2/export").json() == d2
    # Importing it again changes nothing
    again = api.post("/api/v2/deployments/import?dry_run=true", json=doc).json()["plan"]
    assert again[0] == "deployment d1 exists: update it" and len(again) == 2


def test_unknown_roles_are_refused_with_their_names_and_nothing_is_written(api, db):
    _state(db)
    doc = api.get("/api/v2/deployments/d1/export").json()
    doc["deployment"]["name"] = "copy"
    doc["noderoles"].append({"node": "n1.example.com", "role": "no-such-role", "data": {}})
    doc["roles"].append({"role": "neither-this", "data": {}})
    before = api.list("/api/v2/deployments")
    r = api.post("/api/v2/deployments/import", json=doc)
    assert r.status_code == 422
    body = r.json()
    assert "neither-this, no-such-role" in body["message"] and body["field"] == "roles"
    assert api.list("/api/v2/deployments") == before
    doc["roles"].pop()
    doc["noderoles"].pop()
    doc["noderoles"].append({"node": "n9.example.com", "role": "webhello", "data": {}})
    r = api.post("/api/v2/deployments/import", json=doc)
    assert r.status_code == 422 and "n9.example.com" in r.json()["message"]
    # A role already bound to that node in another deployment is a conflict, also before any write
    doc["noderoles"].pop()
    r = api.post("/api/v2/deployments/import", json=doc)
    assert r.status_code == 409 and "webhello on n3.example.com (in d1)" in r.json()["message"]
    assert api.list("/api/v2/deployments") == before


def test_a_deployment_bound_by_tag_exports_the_tag_and_imports_onto_the_tagged_nodes(api, db):
    _state(db)
    doc = api.get("/api/v2/deployments/d3/export").json()
    assert doc["format"] == "crowbar-deployment/2"  # older servers refuse it rather than drop the tag
    by_tag = {"role": "test-client-client", "barclamp": "test", "data": {},
              "nodes": {"tag": "web-tier", "names": ["n3.example.com"]}}
    assert by_tag in doc["roles"]
    assert [r for r in doc["roles"] if "nodes" in r] == [by_tag]
    # what the bind by tag made on n3 (test-client and what it requires there) is not named: the
    # import binds it again; test-async, bound by name, is
    assert doc["noderoles"] == [{"node": "n1.example.com", "role": "test-async", "data": {}}]
    assert doc["nodes"] == ["n1.example.com"]
    assert api.delete("/api/v2/deployments/d3").status_code == 200

    # a tag no node has here: refused, naming it, nothing written
    before = api.list("/api/v2/deployments")
    nobody = json.loads(json.dumps(doc))
    nobody["roles"][nobody["roles"].index(by_tag)]["nodes"]["tag"] = "nobody"
    r = api.post("/api/v2/deployments/import", json=nobody)
    assert r.status_code == 422 and r.json()["field"] == "roles"
    assert "nobody (role test-client-client)" in r.json()["message"]
    bad = json.loads(json.dumps(doc))
    bad["roles"][bad["roles"].index(by_tag)]["nodes"] = ["n3.example.com"]
    assert api.post("/api/v2/deployments/import", json=bad).status_code == 422
    assert api.list("/api/v2/deployments") == before

    # n2 gained the tag since the export: the plan names both nodes the tag resolves to now
    assert api.put("/api/v2/attribs/tags", json={"value": ["web-tier"], "node": "n2.example.com"}).status_code == 200
    plan = api.post("/api/v2/deployments/import?dry_run=true", json=doc).json()["plan"]
    assert ("bind test-client-client to the nodes tagged web-tier: n2.example.com, n3.example.com (and what it "
            "requires; a commit binds the nodes that gain the tag)") in plan
    assert "bind test-async to n1.example.com (and what it requires)" in plan
    r = api.post("/api/v2/deployments/import", json=doc)
    assert r.status_code == 200, r.text
    again = api.get("/api/v2/deployments/d3/export").json()
    by_tag["nodes"]["names"] = ["n2.example.com", "n3.example.com"]
    assert again == {**doc, "roles": [by_tag if "nodes" in r else r for r in doc["roles"]]}
    (dr,) = [dr for dr in api.get("/api/v2/deployment_roles", params={"deployment": "d3"}).json()
             if dr["role"] == "test-client-client"]
    assert dr["tag"] == "web-tier"
    assert len(api.post("/api/v2/deployments/import?dry_run=true", json=again).json()["plan"]) == 2  # nothing new
    # n2 loses the tag: its noderole stays, and the export names it like any other
    assert api.put("/api/v2/attribs/tags", json={"value": [], "node": "n2.example.com"}).status_code == 200
    lost = api.get("/api/v2/deployments/d3/export").json()
    assert [r["nodes"]["names"] for r in lost["roles"] if "nodes" in r] == [["n3.example.com"]]
    assert {"node": "n2.example.com", "role": "test-client-client", "data": {}} in lost["noderoles"]
    assert lost["nodes"] == ["n1.example.com", "n2.example.com"]


def test_a_deployment_by_tag_moves_to_another_server(api, db, request, tmp_path):
    _state(db)
    doc = api.get("/api/v2/deployments/d3/export").json()
    doc["noderoles"], doc["nodes"] = [], []  # only what is bound by tag: no node names
    doc["roles"] = [r for r in doc["roles"] if r["role"] != "test-async"]
    other = _second_server(db, request, tmp_path)
    try:
        for name in ("x1.other.test", "x2.other.test", "x3.other.test"):
            assert other.post("/api/v2/nodes", json={"name": name}).status_code == 201
        r = other.post("/api/v2/deployments/import", json=doc)
        assert r.status_code == 422 and "web-tier (role test-client-client)" in r.json()["message"]
        for name in ("x1.other.test", "x3.other.test"):
            assert other.put("/api/v2/attribs/tags", json={"value": ["web-tier"], "node": name}).status_code == 200
        r = other.post("/api/v2/deployments/import", json=doc)
        assert r.status_code == 200, r.text
        assert any("tagged web-tier: x1.other.test, x3.other.test" in step for step in r.json()["plan"])
        held = other.get("/api/v2/node_roles", params={"deployment": "d3", "role": "test-client-client"}).json()
        assert sorted(nr["node"] for nr in held["items"]) == ["x1.other.test", "x3.other.test"]
        exported = other.get("/api/v2/deployments/d3/export").json()
        names = [r["nodes"]["names"] for r in exported["roles"] if "nodes" in r]
        assert names == [["x1.other.test", "x3.other.test"]]
    finally:
        other.close()


def _second_server(db, request, tmp_path) -> TestClient:
    """A client on another, empty database of the same engine (made like the `db` fixture's)."""
    conftest = request.config.pluginmanager.get_plugin(str(Path(__file__).resolve().parents[1] / "conftest.py"))
    kind = "postgresql" if db.postgresql else "sqlite"
    (tmp_path / "second").mkdir()
    other = conftest.make_database(kind, tmp_path / "second", request)
    request.addfinalizer(other.dispose)
    with other.session() as s:
        token = auth.ensure_admin_token(s, tmp_path / "second" / "admin.token")
    client = TestClient(create_app(AppSettings(db=other, wake=lambda _kind: None)),
                        headers={"authorization": f"Bearer {token}"})
    client.list = lambda path, params=None: conftest.every_item(client, path, params)
    return client


def test_the_whole_server_into_an_empty_database_exports_the_same(api, db, request, tmp_path):
    _state(db)
    api.anneal()  # walls, run counts, states beyond todo
    doc = api.get("/api/v2/export").json()
    assert doc["format"] == "crowbar-server/1"
    assert {b["name"] for b in doc["barclamps"]} >= {"crowbar", "test", "webhello"}
    webhello = next(b for b in doc["barclamps"] if b["name"] == "webhello")
    assert any(f["name"] == "roles/webhello/tasks/main.yml" for f in webhello["roles"][0]["scripts"])
    assert len(doc["allocations"]) == 3

    assert doc["os_rules"] == {"source": RULES}  # the rules as written, comments and all
    (d3,) = [d for d in doc["deployments"] if d["name"] == "d3"]
    assert {r["role"]: r["tag"] for r in d3["roles"]}["test-client-client"] == "web-tier"

    other = _second_server(db, request, tmp_path)
    try:
        r = other.post("/api/v2/import", json=doc)
        assert r.status_code == 200, r.text
        assert r.json()["imported"]["nodes"] == 3 and r.json()["imported"]["os_rules"] == 1
        assert other.get("/api/v2/export").json() == doc     # identical state
        assert other.get("/api/v2/os_rules").json()["source"] == RULES
        # the nodes' tags are computed here, from the rules and the operator's `tags` attrib
        assert [n["name"] for n in other.list("/api/v2/nodes", {"tag": "web-tier"})] == ["n3.example.com"]
        assert [n["name"] for n in other.list("/api/v2/nodes", {"tag": "rack-1"})] == ["n1.example.com"]
        # Now it is not empty: refused, unless merge, which finds nothing missing
        r = other.post("/api/v2/import", json=doc)
        assert r.status_code == 409 and "not empty" in r.json()["message"]
        r = other.post("/api/v2/import?merge=true", json=doc)
        assert r.status_code == 200 and r.json()["imported"] == {}
        assert other.get("/api/v2/export").json() == doc
    finally:
        other.close()


def test_merge_adds_what_is_missing(api, db, request, tmp_path):
    _state(db)
    doc = api.get("/api/v2/export").json()
    other = _second_server(db, request, tmp_path)
    own_rules = "rules: []\ndefault: {tags: [here]}\n"
    try:
        # OS rules of its own make a server not empty; a merge keeps them
        assert other.put("/api/v2/os_rules", json={"rules": own_rules}).status_code == 200
        r = other.post("/api/v2/import", json=doc)
        assert r.status_code == 409 and "OS rules" in r.json()["message"]
        with_node = other.post("/api/v2/nodes", json={"name": "other.example.com"})
        assert with_node.status_code in (200, 201), with_node.text
        assert other.post("/api/v2/import", json=doc).status_code == 409
        r = other.post("/api/v2/import?merge=true", json=doc)
        assert r.status_code == 200, r.text
        assert r.json()["imported"]["nodes"] == 3 and "os_rules" not in r.json()["imported"]
        assert other.get("/api/v2/os_rules").json()["source"] == own_rules
        assert {n["name"] for n in other.list("/api/v2/nodes", {"tag": "here"})} >= {"n1.example.com", "n3.example.com"}
        names = {n["name"] for n in other.get("/api/v2/export").json()["nodes"]}
        assert names == {"other.example.com", "n1.example.com", "n2.example.com", "n3.example.com"}
        assert other.get("/api/v2/deployments/d2/export").json() == api.get("/api/v2/deployments/d2/export").json()
    finally:
        other.close()


@pytest.mark.parametrize("deployment", [None, "d1"])
def test_the_ansible_inventory(api, db, deployment):
    _state(db)
    params = {"deployment": deployment} if deployment else {}
    inv = api.get("/api/v2/inventory/ansible", params=params).json()
    assert inv["webhello"] == {"hosts": ["n3.example.com"]}
    # d1's test-client needs test-server on n2; d3's bind by tag made one on n3
    assert inv["test-server"] == {"hosts": ["n2.example.com"] + ([] if deployment else ["n3.example.com"])}
    assert inv["deployment_d1"]["hosts"] == ["n2.example.com", "n3.example.com"]
    if deployment:
        assert "n1.example.com" not in inv["_meta"]["hostvars"] and "deployment_d2" not in inv
    else:
        n1 = inv["_meta"]["hostvars"]["n1.example.com"]
        assert n1["ansible_host"] == "10.0.0.1" and n1["crowbar_attrs"]["crowbar"]["ssh"]["address"] == "10.0.0.1"
        assert inv["test-library"] == {"hosts": ["n1.example.com", "n2.example.com", "n3.example.com"]}  # d2; d1, d3
        assert inv["all"]["hosts"] == ["n1.example.com", "n2.example.com", "n3.example.com"]


@pytest.mark.parametrize("damage", ["drop-key", "bad-type", "bad-jig", "unknown-role", "bad-rules", "bad-tag",
                                    "not-a-doc"])
def test_a_damaged_server_document_is_a_422_and_writes_nothing(api, db, request, tmp_path, damage):
    _state(db)
    doc = api.get("/api/v2/export").json()
    if damage == "drop-key":
        del doc["nodes"][0]["hints"]
    elif damage == "bad-type":
        doc["deployments"][0]["noderoles"][0]["cohort"] = "three"
    elif damage == "bad-jig":
        doc["barclamps"][0]["roles"][0]["jig"] = "chef"
    elif damage == "unknown-role":
        doc["deployments"][-1]["noderoles"][0]["role"] = "no-such-role"
    elif damage == "bad-rules":
        doc["os_rules"]["source"] = RULES.replace("debian-12", "plan9")
    elif damage == "bad-tag":
        doc["deployments"][-1]["roles"][0]["tag"] = "Not A Tag"
    else:
        doc = {"format": "crowbar-server/1", "barclamps": "all of them"}
    other = _second_server(db, request, tmp_path)
    try:
        before = other.get("/api/v2/export").json()
        r = other.post("/api/v2/import", json=doc)
        assert r.status_code == 422, r.text
        assert r.json()["error"] and r.json()["message"].startswith(("server document:", "the document's"))
        assert other.get("/api/v2/export").json() == before
    finally:
        other.close()


cli = test_cli_lists.cli  # the `crowbar ...` in-process fixture


def test_the_cli_round_trip(cli, api, db, tmp_path):
    _state(db)
    doc = tmp_path / "d1.yaml"
    cli("deployments", "export", "d1", "--file", str(doc))
    exported = yaml.safe_load(doc.read_text())
    assert exported["format"] == "crowbar-deployment/1"
    assert yaml.safe_load(cli("deployments", "export", "d1")) == exported      # stdout, YAML by default
    assert json.loads(cli("deployments", "export", "d1", "-o", "json")) == exported
    api.delete("/api/v2/deployments/d2")
    api.delete("/api/v2/deployments/d1")
    out = cli("deployments", "import", str(doc), "--dry-run")
    assert "plan (dry run, nothing written)" in out and "- create deployment d1 under system" in out
    assert "imported" in cli("deployments", "import", str(doc))
    assert yaml.safe_load(cli("deployments", "export", "d1")) == exported
    inventory = json.loads(cli("inventory", "ansible", "--list"))
    assert inventory["webhello"] == {"hosts": ["n3.example.com"]}
    assert cli("inventory", "ansible", "--host", "n3.example.com").strip() == "{}"
    server = tmp_path / "server.json"
    cli("export", "-o", "json", "--file", str(server))
    refused = CliRunner().invoke(main.cli, ["import", str(server)])
    assert isinstance(refused.exception, CliError) and "not empty" in str(refused.exception)  # main() prints it
    assert '"imported": {}' in cli("import", str(server), "--merge", "-o", "json")
