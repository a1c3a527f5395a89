"""A failed noderole in one deployment stalls the other deployments' noderoles on its node (the
annealer runs nothing more on a node with an error): the anneal status says what each waiting
noderole waits on, and a deployment that waits on an error is failed, not working for ever."""

from __future__ import annotations


def _noderole(api, deployment, role):
    rows = api.list("/api/v2/node_roles", {"deployment": deployment, "role": role})
    assert len(rows) == 1, rows
    return rows[0]


def test_a_failed_noderole_in_one_deployment_is_named_by_the_others_that_wait_on_it(api):
    for name in ("n1.example.com", "n2.example.com"):
        assert api.post("/api/v2/nodes", json={"name": name}).status_code == 201
    api.post("/api/v2/deployments", json={"name": "db"})
    api.post("/api/v2/deployments/db/bind", json={"role": "test-fails", "node": "n1.example.com"})
    api.post("/api/v2/deployments/db/commit")
    api.anneal()
    failed = _noderole(api, "db", "test-fails")
    assert failed["state"] == "error", failed
    api.post("/api/v2/deployments", json={"name": "web"})
    api.post("/api/v2/deployments/web/bind", json={"role": "test-async", "node": "n1.example.com"})
    api.post("/api/v2/deployments/web/bind", json={"role": "test-async", "node": "n2.example.com"})
    api.post("/api/v2/deployments/web/commit")
    api.anneal()
    stalled = [r for r in api.list("/api/v2/node_roles", {"deployment": "web"}) if r["node"] == "n1.example.com"][0]
    assert stalled["state"] == "todo"  # the rule: nothing more runs on a node with an error

    r = api.get("/api/v2/anneal", params={"deployment": "web"})
    body = r.json()
    assert r.status_code == 409 and body["status"] == "failed" and body["counts"]["error"] == 0
    assert body["waiting_on_errors"] == 1
    (wait,) = body["waiting"]
    assert wait["noderole"] == stalled["id"] and wait["waits_on"] == failed["id"] and wait["on_error"]
    assert wait["reason"] == (f"waits on noderole {failed['id']} (deployment db, role test-fails) on node "
                              "n1.example.com: error")
    # the whole picture lists it too; removing the failed deployment lets web finish
    assert any(w["noderole"] == stalled["id"] for w in api.get("/api/v2/anneal").json()["waiting"])
    assert api.delete("/api/v2/deployments/db").status_code == 200
    api.anneal()
    r = api.get("/api/v2/anneal", params={"deployment": "web"})
    assert r.status_code == 200 and r.json()["waiting"] == [], r.json()


def test_noderoles_on_a_dead_node_and_what_hangs_below_them(api):
    api.post("/api/v2/nodes", json={"name": "dead.example.com", "alive": False})
    api.post("/api/v2/deployments", json={"name": "app"})
    api.post("/api/v2/deployments/app/bind", json={"role": "test-client-client", "node": "dead.example.com"})
    api.post("/api/v2/deployments/app/commit")
    api.anneal()
    body = api.get("/api/v2/anneal", params={"deployment": "app"}).json()
    assert body["status"] == "working" and body["waiting_on_errors"] == 0
    rows = {r["id"]: r for r in api.list("/api/v2/node_roles", {"deployment": "app"})}
    waits = {w["noderole"]: w for w in body["waiting"]}
    assert set(waits) == set(rows)  # every one of them waits, and says on what
    todo = [i for i, r in rows.items() if r["state"] == "todo"]
    assert todo and all(r["state"] == "blocked" for i, r in rows.items() if i not in todo)
    for i in todo:
        assert waits[i]["reason"].startswith("waits: node dead.example.com is dead") and waits[i]["waits_on"] is None
    for i in set(rows) - set(todo):
        assert waits[i]["waits_on"] in todo and not waits[i]["on_error"]
        assert waits[i]["reason"].endswith("on node dead.example.com: todo, whose node is dead")
