"""Import and export through the API, on both engines: a deployment round trip with its plan, a
refused document that writes nothing, the whole server into an empty database (identical export),
refused into a non-empty one unless merge, and the Ansible inventory."""

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
from crowbar.services import attribs, auth, catalog, deployments, network, nodes

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "barclamps" / "webhello"


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


def _second_server(db, request, tmp_path) -> TestClient:
    """A client on another, empty database of the same engine (made like the `db` fixture's)."""
    conftest = request.config.pluginmanager.get_plugin(str(Path(__file__).resolve().parents[1] / "conftest.py"))
    kind = "postgresql" if db.postgresql else "sqlite"
    (tmp_path / "second").mkdir()
    other = conftest.make_database(kind, tmp_path / "second", request)
    request.addfinalizer(other.dispose)
    with other.session() as s:
        token = auth.ensure_admin_token(s, tmp_path / "second" / "admin.token")
    return TestClient(create_app(AppSettings(db=other, wake=lambda _kind: None)),
                      headers={"authorization": f"Bearer {token}"})


def test_the_whole_server_into_an_empty_database_exports_the_same(api, db, request, tmp_path):
    _state(db)
    api.anneal()  # walls, run counts, states beyond todo
    doc = api.get("/api/v2/export").json()
    assert doc["format"] == "crowbar-server/1"
    assert {b["name"] for b in doc["barclamps"]} >= {"crowbar", "test", "webhello"}
    webhello = next(b for b in doc["barclamps"] if b["name"] == "webhello")
    assert any(f["name"] == "roles/webhello/tasks/main.yml" for f in webhello["roles"][0]["scripts"])
    assert len(doc["allocations"]) == 3

    other = _second_server(db, request, tmp_path)
    try:
        r = other.post("/api/v2/import", json=doc)
        assert r.status_code == 200, r.text
        assert r.json()["imported"]["nodes"] == 3
        assert other.get("/api/v2/export").json() == doc     # identical state
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
    try:
        with_node = other.post("/api/v2/nodes", json={"name": "other.example.com"})
        assert with_node.status_code in (200, 201), with_node.text
        assert other.post("/api/v2/import", json=doc).status_code == 409
        r = other.post("/api/v2/import?merge=true", json=doc)
        assert r.status_code == 200, r.text
        assert r.json()["imported"]["nodes"] == 3
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
    assert inv["test-server"] == {"hosts": ["n2.example.com"]}
    assert inv["deployment_d1"]["hosts"] == ["n2.example.com", "n3.example.com"]
    if deployment:
        assert "n1.example.com" not in inv["_meta"]["hostvars"] and "deployment_d2" not in inv
    else:
        n1 = inv["_meta"]["hostvars"]["n1.example.com"]
        assert n1["ansible_host"] == "10.0.0.1" and n1["crowbar_attrs"]["crowbar"]["ssh"]["address"] == "10.0.0.1"
        assert inv["test-library"] == {"hosts": ["n1.example.com", "n2.example.com"]}  # d2; d1 (test-client needs it)
        assert inv["all"]["hosts"] == ["n1.example.com", "n2.example.com", "n3.example.com"]


@pytest.mark.parametrize("damage", ["drop-key", "bad-type", "bad-jig", "unknown-role", "not-a-doc"])
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
