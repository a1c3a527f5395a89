"""API flows: anneal progress codes, attribs, events, noderole views, deletes, barclamp import."""

from __future__ import annotations

V2 = "/api/v2"
N1, N2 = "n1.example.com", "n2.example.com"


def ok(r, status: int = 200):
    assert r.status_code == status, r.text
    return r.json()


def noderole(api, node: str, role: str) -> dict:
    (row,) = api.list(f"{V2}/node_roles", {"node": node, "role": role})
    return row


def test_anneal_status_is_200_202_or_409_with_counts(api):
    body = ok(api.get(f"{V2}/anneal"))
    assert body["status"] == "finished"
    assert set(body["counts"]) == {"todo", "transition", "active", "error", "blocked"}
    assert body["total"] == sum(body["counts"].values())

    ok(api.post(f"{V2}/nodes", json={"name": N1}), 201)
    ok(api.post(f"{V2}/deployments", json={"name": "d1"}), 201)
    ok(api.post(f"{V2}/deployments/d1/bind", json={"role": "test-client-client", "node": N1}), 201)
    r = api.get(f"{V2}/anneal", params={"deployment": "d1"})
    assert r.status_code == 200 and r.json()["total"] == 0  # proposed: nothing to do yet
    ok(api.post(f"{V2}/deployments/d1/commit"))
    r = api.get(f"{V2}/anneal", params={"deployment": "d1"})
    assert r.status_code == 202 and r.json()["status"] == "working"
    counts = r.json()["counts"]
    assert counts["todo"] == 2 and counts["blocked"] == 3 and r.json()["total"] == 5  # admin+library; the rest wait

    api.anneal()
    r = api.get(f"{V2}/anneal")
    assert r.status_code == 200 and r.json()["counts"]["active"] == r.json()["total"] == 6  # + crowbar-managed-node

    ok(api.post(f"{V2}/deployments/d1/bind", json={"role": "test-fails", "node": N1}), 201)
    ok(api.post(f"{V2}/deployments/d1/commit"))
    api.anneal()
    r = api.get(f"{V2}/anneal")
    assert r.status_code == 409 and r.json()["status"] == "failed"
    assert r.json()["counts"]["error"] == 1 and r.json()["counts"]["active"] == 6
    assert api.get(f"{V2}/anneal", params={"deployment": "system"}).status_code == 200


def test_noderole_views_and_retry_path(api):
    ok(api.post(f"{V2}/nodes", json={"name": N1}), 201)
    ok(api.post(f"{V2}/deployments", json={"name": "d1"}), 201)
    ok(api.post(f"{V2}/deployments/d1/bind", json={"role": "test-fails", "node": N1}), 201)
    ok(api.post(f"{V2}/deployments/d1/commit"))
    api.anneal()
    rows = api.list(f"{V2}/node_roles", {"deployment": "d1"})
    assert {(r["role"], r["state"]) for r in rows} == {
        ("test-admin", "active"), ("test-server", "active"), ("test-library", "active"),
        ("test-client", "active"), ("test-fails", "error")}
    for r in rows:
        assert {"id", "node", "role", "deployment", "state", "cohort"} <= set(r) and r["deployment"] == "d1"
    assert [r["role"] for r in api.list(f"{V2}/node_roles", {"state": "ERROR"})] == ["test-fails"]
    assert len(ok(api.get(f"{V2}/node_roles", params={"deployment": "d1", "limit": 2}))["items"]) == 2

    fails, client = noderole(api, N1, "test-fails"), noderole(api, N1, "test-client")
    shown = ok(api.get(f"{V2}/node_roles/{fails['id']}"))
    assert shown["parents"] == [client["id"]] and shown["children"] == []
    assert [p["role"] for p in api.list(f"{V2}/node_roles/{fails['id']}/parents")] == ["test-client"]
    assert {c["role"] for c in api.list(f"{V2}/node_roles/{client['id']}/children")} == {"test-fails"}
    (run,) = api.list(f"{V2}/node_roles/{fails['id']}/runs")
    assert run["state"] == "failed" and "failing on purpose" in run["log"]

    retried = ok(api.post(f"{V2}/node_roles/{fails['id']}/retry"))
    assert retried["state"] == "todo"
    events = api.list(f"{V2}/events", {"object_type": "noderole", "object_id": fails["id"]})
    last = events[-1]
    assert (last["actor"], last["action"], last["from"], last["to"]) == ("admin", "requeue", "error", "todo")
    assert [(e["action"], e["to"]) for e in events] == [
        ("bind", "proposed"), ("commit", "blocked"), ("unblock", "todo"), ("claim", "transition"), ("run", "error"),
        ("requeue", "todo")]
    assert (events[4]["from"], events[4]["actor"]) == ("transition", "annealer")
    api.anneal()
    assert len(api.list(f"{V2}/node_roles/{fails['id']}/runs")) == 2
    # re-running an active noderole through the API
    server = noderole(api, N1, "test-server")
    assert ok(api.post(f"{V2}/node_roles/{server['id']}/retry"))["state"] == "todo"
    assert noderole(api, N1, "test-client")["state"] == "blocked"


def test_events_record_who_what_from_and_to(api):
    ok(api.post(f"{V2}/nodes", json={"name": N1}), 201)
    node_id = noderole(api, N1, "crowbar-managed-node")["id"]
    ok(api.patch(f"{V2}/nodes/{N1}", json={"alive": False}))
    ok(api.post(f"{V2}/deployments", json={"name": "d1"}), 201)
    ok(api.post(f"{V2}/deployments/d1/commit"))
    node_events = api.list(f"{V2}/events", {"object_type": "node"})
    assert [(e["actor"], e["action"], e["from"], e["to"]) for e in node_events] == [
        ("admin", "create", None, "alive"), ("admin", "set-alive", "true", "false")]
    dep = [(e["actor"], e["action"], e["from"], e["to"])
           for e in api.list(f"{V2}/events", {"object_type": "deployment"}) if e["action"] != "create"
           or e["message"].startswith("d1")]
    assert dep == [("admin", "create", None, "proposed"), ("admin", "commit", "proposed", "committed")]
    nr_events = api.list(f"{V2}/events", {"object_type": "noderole", "object_id": node_id})
    assert [(e["action"], e["to"]) for e in nr_events] == [("bind", "proposed"), ("commit", "todo")]
    everything = api.list(f"{V2}/events", {"marker": 0, "limit": 5})  # the whole log, page by page
    assert [e["id"] for e in everything] == sorted({e["id"] for e in everything})
    assert ok(api.get(f"{V2}/events", params={"limit": 3}))["items"] == everything[-3:]  # the tail
    after = api.list(f"{V2}/events", {"after": everything[-2]["id"]})
    assert [e["id"] for e in after] == [everything[-1]["id"]]
    assert all(e["at"] for e in everything)


def test_attrib_set_validates_against_the_schema(api):
    ok(api.post(f"{V2}/nodes", json={"name": N1}), 201)
    for bad in (-1, "soon", {"s": 1}):
        r = api.put(f"{V2}/attribs/test-delay", json={"node": N1, "value": bad})
        assert r.status_code == 422, r.text
        assert "test-delay" in r.json()["message"] and r.json()["field"] == "value"
    assert ok(api.get(f"{V2}/nodes/{N1}"))["hints"] == {}  # nothing stored
    got = ok(api.put(f"{V2}/attribs/test-delay", json={"node": N1, "value": 0.5}))
    assert (got["value"], got["source"], got["node"]) == (0.5, "hint", N1)
    assert ok(api.put(f"{V2}/attribs/test-delay", json={"node": N1, "value": "0.25"}))["value"] == 0.25  # JSON text
    got = ok(api.get(f"{V2}/attribs/test-delay", params={"node": N1}))
    assert (got["value"], got["source"]) == (0.25, "hint")
    assert ok(api.get(f"{V2}/nodes/{N1}"))["hints"] == {"test": {"delay": 0.25}}
    assert ok(api.get(f"{V2}/attribs/test-delay"))["value"] == 0  # no node: the default
    assert {"test-delay", "test-marker"} <= {a["name"] for a in api.list(f"{V2}/attribs")}
    events = api.list(f"{V2}/events", {"object_type": "node"})
    assert [e["message"] for e in events if e["action"] == "set-attrib"] == ["test-delay = 0.5", "test-delay = 0.25"]


def test_node_delete_is_refused_while_other_nodes_depend_on_it(api):
    for n in (N1, N2):
        ok(api.post(f"{V2}/nodes", json={"name": n}), 201)
    ok(api.post(f"{V2}/deployments", json={"name": "d1"}), 201)
    ok(api.post(f"{V2}/deployments/d1/bind", json={"role": "test-client", "node": N1}), 201)
    ok(api.post(f"{V2}/deployments/d1/bind", json={"role": "test-client", "node": N2}), 201)  # uses n1's server
    ok(api.post(f"{V2}/deployments/d1/commit"))
    api.anneal()  # runs exist too: they go with their noderoles
    r = api.delete(f"{V2}/nodes/{N1}")
    assert r.status_code == 409 and N2 in r.json()["message"]
    assert ok(api.get(f"{V2}/nodes/{N1}"))["name"] == N1
    n2_rows = api.list(f"{V2}/node_roles", {"node": N2})
    gone = ok(api.delete(f"{V2}/nodes/{N2}"))
    assert gone["deleted"] is True and gone["noderoles_deleted"] == len(n2_rows) == 2
    assert api.get(f"{V2}/nodes/{N2}").status_code == 404
    assert all(r["node"] != N2 for r in api.list(f"{V2}/node_roles"))
    assert ok(api.delete(f"{V2}/nodes/{N1}"))["deleted"] is True  # nothing depends on it now
    assert api.list(f"{V2}/node_roles") == []
    assert api.get(f"{V2}/node_roles/{n2_rows[0]['id']}/runs").status_code == 404


def test_deployment_delete_and_its_refusals(api):
    for n in (N1, N2):
        ok(api.post(f"{V2}/nodes", json={"name": n}), 201)
    ok(api.post(f"{V2}/deployments", json={"name": "base"}), 201)
    ok(api.post(f"{V2}/deployments", json={"name": "child", "parent": "base"}), 201)
    ok(api.post(f"{V2}/deployments", json={"name": "other"}), 201)
    ok(api.post(f"{V2}/deployments/base/bind", json={"role": "test-server", "node": N1}), 201)
    # on the same node, other's test-client reuses base's test-server: an edge across deployments
    ok(api.post(f"{V2}/deployments/other/bind", json={"role": "test-client", "node": N1}), 201)

    r = api.delete(f"{V2}/deployments/system")
    assert r.status_code == 409 and "system" in r.json()["message"]
    r = api.delete(f"{V2}/deployments/base")
    assert r.status_code == 409 and "child" in r.json()["message"]
    ok(api.delete(f"{V2}/deployments/child"))
    r = api.delete(f"{V2}/deployments/base")
    assert r.status_code == 409 and "other" in r.json()["message"]  # other's test-client needs base's server

    other_rows = api.list(f"{V2}/node_roles", {"deployment": "other"})
    gone = ok(api.delete(f"{V2}/deployments/other"))
    assert gone["deleted"] is True and gone["noderoles_deleted"] == len(other_rows) == 2
    assert api.get(f"{V2}/deployments/other").status_code == 404
    assert ok(api.delete(f"{V2}/deployments/base"))["noderoles_deleted"] == 2
    assert {d["name"] for d in api.list(f"{V2}/deployments")} == {"system"}
    assert {r["role"] for r in api.list(f"{V2}/node_roles")} == {"crowbar-managed-node"}
    deletes = [e for e in api.list(f"{V2}/events", {"object_type": "deployment"}) if e["action"] == "delete"]
    assert [(e["actor"], e["message"].split()[0]) for e in deletes] == [("admin", "child"), ("admin", "other"),
                                                                        ("admin", "base")]


def test_deployment_show_and_role_data(api):
    ok(api.post(f"{V2}/nodes", json={"name": N1}), 201)
    ok(api.post(f"{V2}/deployments", json={"name": "d1"}), 201)
    ok(api.post(f"{V2}/deployments/d1/bind", json={"role": "test-library", "node": N1}), 201)
    ok(api.post(f"{V2}/deployments/d1/commit"))
    put = ok(api.put(f"{V2}/deployments/d1/roles/test-library", json={"data": {"test": {"marker": "m"}}}))
    assert (put["proposed"], put["committed"]) == ({"test": {"marker": "m"}}, {})
    shown = ok(api.get(f"{V2}/deployments/d1"))
    assert shown["state"] == "proposed" and shown["parent"] == "system"  # changed data reopens the deployment
    ok(api.post(f"{V2}/deployments/d1/commit"))
    (dr,) = ok(api.get(f"{V2}/deployment_roles", params={"deployment": "d1"}))
    assert dr["role"] == "test-library" and dr["committed"] == {"test": {"marker": "m"}}
    api.anneal()
    shown = ok(api.get(f"{V2}/deployments/d1"))
    assert (shown["state"], shown["status"], shown["counts"]) == ("committed", "active", {"active": 1})
    assert ok(api.get(f"{V2}/node_roles/{noderole(api, N1, 'test-library')['id']}"))["wall"]["test"]["marker"] == "m"


def test_barclamp_import_over_the_api(api):
    files = {"barclamp.yml": 'barclamp: {name: fx, version: "3"}\nroles:\n  - {name: fx-a, requires: [test-server]}\n'}
    body = ok(api.post(f"{V2}/barclamps", json={"files": files}), 201)
    assert (body["name"], body["version"], body["roles"]) == ("fx", "3", ["fx-a"])
    assert ok(api.get(f"{V2}/roles/fx-a"))["requires"] == ["test-server"]
    assert "fx-a" in {r["name"] for r in api.list(f"{V2}/roles", {"barclamp": "fx"})}

    bad = {"barclamp.yml": 'barclamp: {name: fx2}\nroles:\n  - {name: fx2-a, jig: chef}\n'}
    r = api.post(f"{V2}/barclamps", json={"files": bad})
    assert r.status_code == 422
    assert "barclamp.yml" in r.json()["message"] and "fx2-a" in r.json()["message"] and "chef" in r.json()["message"]
    assert api.get(f"{V2}/barclamps/fx2").status_code == 404
    r = api.post(f"{V2}/barclamps", json={"files": {"../escape/barclamp.yml": "x"}})
    assert r.status_code == 422 and r.json()["field"] == "files"
