"""Power settings for many nodes in one call (`PUT /api/v2/nodes/power`, the CLI's
`crowbar nodes set-power --file`: tests/e2e/test_power_enroll_cli.py): all of them or none, the first refusal naming its item and node, secrets never shown
back. On both engines."""

from __future__ import annotations

from crowbar.db.models import Event, Node

PASSWORD = "s3cret-bmc-pw"


def items(count: int) -> list[dict]:
    return [{"node": f"n{i}.example.com", "driver": "ipmi",
             "settings": {"address": f"10.0.9.{i}", "username": "crowbar", "password": PASSWORD}}
            for i in range(count)]


def make_nodes(api, count: int) -> None:
    r = api.post("/api/v2/nodes/batch", json={"nodes": [{"name": f"n{i}.example.com"} for i in range(count)]})
    assert r.status_code == 201, r.text


def drivers(db) -> dict[str, str | None]:
    with db.session() as s:
        return {n.name: n.power_driver for n in s.query(Node).filter(Node.name.like("n%.example.com"))}


def test_many_nodes_get_their_drivers_in_one_call_and_secrets_are_not_shown(api, db):
    make_nodes(api, 3)
    body = items(3)
    body[2] = {"node": "n2.example.com", "driver": "manual", "settings": {}}
    r = api.put("/api/v2/nodes/power", json={"items": body})
    assert r.status_code == 200, r.text
    answer = r.json()["items"]
    assert [(a["node"], a["driver"]) for a in answer] == [("n0.example.com", "ipmi"), ("n1.example.com", "ipmi"),
                                                          ("n2.example.com", "manual")]
    assert answer[0]["settings"] == {"address": "10.0.9.0", "username": "crowbar", "password": "(set)"}
    assert PASSWORD not in r.text
    shown = api.get("/api/v2/nodes/n1.example.com/power").json()
    assert shown["driver"] == "ipmi" and shown["settings"]["address"] == "10.0.9.1"
    assert drivers(db) == {"n0.example.com": "ipmi", "n1.example.com": "ipmi", "n2.example.com": "manual"}
    with db.session() as s:
        events = s.query(Event).filter(Event.action == "set-power").all()
        assert sorted(e.message for e in events) == ["ipmi", "ipmi", "manual"]


def test_one_bad_item_refuses_the_call_names_it_and_writes_nothing(api, db):
    make_nodes(api, 3)
    before = drivers(db)
    assert set(before.values()) == {"manual"}  # a new node's default
    body = items(3)
    del body[1]["settings"]["address"]
    r = api.put("/api/v2/nodes/power", json={"items": body})
    assert r.status_code == 422, r.text
    error = r.json()
    assert error["error"] == "invalid" and error["field"] == "items[1].settings.address"
    assert "items[1]" in error["message"] and "n1.example.com" in error["message"] and "address" in error["message"]
    assert PASSWORD not in r.text
    assert drivers(db) == before  # not even the good first item

    body = items(2)
    body[1]["driver"] = "no-such-driver"
    r = api.put("/api/v2/nodes/power", json={"items": body})
    assert r.status_code == 422 and "items[1]" in r.json()["message"]
    assert "no-such-driver" in r.json()["message"]

    body = items(2)
    body[1]["node"] = "nope.example.com"
    r = api.put("/api/v2/nodes/power", json={"items": body})
    assert r.status_code == 404 and "nope.example.com" in r.json()["message"]

    body = items(2)
    body[1]["node"] = "n0.example.com"
    r = api.put("/api/v2/nodes/power", json={"items": body})
    assert r.status_code == 422 and "named twice" in r.json()["message"]
    assert drivers(db) == before


def test_hostile_bodies_get_the_one_error_shape(api):
    for body in ({"items": []}, {"items": "all"}, {"items": [{"node": "x"}]}, {"items": [{"driver": "ipmi"}]},
                 {"items": [{"node": "x", "driver": "ipmi", "settings": "none"}]}, {"nope": 1}):
        r = api.put("/api/v2/nodes/power", json=body)
        assert r.status_code == 422, (body, r.text)
        assert {"error", "message"} <= set(r.json()) and r.json()["message"], r.text
    r = api.put("/api/v2/nodes/power", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and {"error", "message"} <= set(r.json())
