"""The CLI reads every page of a list (Client.list_all follows `next` until it is null) and prints
the same table and `-o json` array as when a list was one answer; --limit caps the rows."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from crowbar.cli import client as client_module, main
from crowbar.cli.client import Client
from crowbar.db.models import Run
from crowbar.services import nodes


@pytest.fixture
def cli(api, admin_token, monkeypatch):
    """`crowbar ...` in-process against the test app, with pages of 3 items."""
    http = TestClient(api.app, base_url="http://testserver/api/v2", headers={"authorization": f"Bearer {admin_token}"})
    fake = Client.__new__(Client)
    fake.endpoint, fake.token_source, fake.http = "http://testserver", None, http
    monkeypatch.setattr(main, "Client", lambda endpoint: fake)
    monkeypatch.setattr(client_module, "PAGE", 3)
    monkeypatch.setattr(main, "PAGE", 3)
    requests = []
    http.event_hooks["request"].append(lambda request: requests.append(str(request.url)))

    def run(*args: str):
        result = CliRunner().invoke(main.cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    run.requests = requests
    run.client = fake
    yield run
    http.close()


def test_listings_follow_next_and_print_every_row(cli, db):
    names = [f"n{i}.example.com" for i in range(8)]
    with db.session() as s:
        for name in names:
            nodes.create_node(s, name)
    rows = json.loads(cli("nodes", "list", "-o", "json"))
    assert [r["name"] for r in rows] == names
    assert len([u for u in cli.requests if "/nodes" in u]) == 3  # 3 + 3 + 2
    table = cli("nodes", "list")
    assert all(name in table for name in names)
    assert [r["name"] for r in json.loads(cli("nodes", "list", "--limit", "4", "-o", "json"))] == names[:4]
    assert [r["name"] for r in json.loads(cli("nodes", "list", "--name", "n7", "-o", "json"))] == ["n7.example.com"]
    # noderoles in the order they run, whatever the pages
    noderoles = json.loads(cli("noderoles", "list", "-o", "json"))
    assert len(noderoles) == len(cli.client.list_all("/node_roles")) > 3
    assert [(r["cohort"], r["id"]) for r in noderoles] == sorted((r["cohort"], r["id"]) for r in noderoles)


def test_events_limit_is_the_newest_events_across_pages(cli, db):
    with db.session() as s:
        for i in range(4):
            nodes.create_node(s, f"e{i}.example.com", bind_roles=False)
    log = cli.client.list_all("/events", marker=0)
    assert [e["id"] for e in log] == sorted(e["id"] for e in log) and len(log) > 4
    # up to one page: the API's tail; more: the log read forward, its end kept
    assert json.loads(cli("events", "--limit", "2", "-o", "json")) == log[-2:]
    assert json.loads(cli("events", "--limit", "5", "-o", "json")) == log[-5:]
    assert json.loads(cli("events", "--limit", "10000", "-o", "json")) == log


def test_noderole_relations_runs_and_tenant_networks_follow_next(cli, db, api):
    """`noderoles parents/children/log` and `neutron networks list` read every page (3 items each
    here) and print the same rows, in the API's order, as one answer did."""
    clients = [f"c{i}.example.com" for i in range(7)]
    with db.session() as s:
        for name in ["srv.example.com", *clients]:
            nodes.create_node(s, name, bind_roles=False)
    assert api.post("/api/v2/deployments", json={"name": "d1"}).status_code == 201
    for role, name in [("test-server", "srv.example.com")] + [("test-client", c) for c in clients]:
        assert api.post("/api/v2/deployments/d1/bind", json={"role": role, "node": name}).status_code == 201
    (server,) = api.list("/api/v2/node_roles", {"role": "test-server"})
    children = json.loads(cli("noderoles", "children", str(server["id"]), "-o", "json"))
    assert [c["node"] for c in children] == clients
    assert len([u for u in cli.requests if f"/node_roles/{server['id']}/children" in u]) == 3  # 3 + 3 + 1
    assert all(c in cli("noderoles", "children", str(server["id"])) for c in clients)
    parents = json.loads(cli("noderoles", "parents", str(children[0]["id"]), "-o", "json"))
    assert parents == api.list(f"/api/v2/node_roles/{children[0]['id']}/parents") and len(parents) == 2

    with db.session() as s:
        s.add_all(Run(node_role_id=server["id"], state="succeeded", log=f"log of run {i}\n") for i in range(7))
    runs = json.loads(cli("noderoles", "log", str(server["id"]), "--all", "-o", "json"))
    assert [r["log"] for r in runs] == [f"log of run {i}\n" for i in range(7)]
    assert json.loads(cli("noderoles", "log", str(server["id"]), "-o", "json")) == runs[-1:]
    assert cli("noderoles", "log", str(server["id"])).splitlines()[1:] == ["log of run 6"]

    for i in range(4):
        assert api.post("/api/v2/neutron/networks", json={"name": f"t{i}"}).status_code == 201
    assert api.post("/api/v2/neutron/networks", json={"name": "x", "network_type": "vxlan"}).status_code == 201
    tenants = json.loads(cli("neutron", "networks", "list", "-o", "json"))
    assert [n["segmentation_id"] for n in tenants] == [500, 501, 502, 503, 504, 1001]
    assert tenants == api.list("/api/v2/neutron/networks")
    assert len([u for u in cli.requests if u.split("?")[0].endswith("/neutron/networks")]) == 2
    assert all(n["name"] in cli("neutron", "networks", "list") for n in tenants)
