"""Errors over HTTP: JSON with a message (and the field when one is wrong), 404 / 409 / 422."""

from __future__ import annotations

import pytest

V2 = "/api/v2"


def error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body.get("message"), str) and body["message"], body
    return body


@pytest.fixture
def world(api):
    """n1 with test-client bound in d1 (committed, not annealed); returns the test-client noderole id."""
    assert api.post(f"{V2}/nodes", json={"name": "n1.example.com"}).status_code == 201
    assert api.post(f"{V2}/deployments", json={"name": "d1"}).status_code == 201
    r = api.post(f"{V2}/deployments/d1/bind", json={"role": "test-client", "node": "n1.example.com"})
    assert r.status_code == 201, r.text
    assert api.post(f"{V2}/deployments/d1/commit").status_code == 200
    return r.json()["noderole"]["id"]


def test_unknown_objects_are_404_with_a_message(api, world):
    cases = [
        ("GET", "/nodes/ghost.example.com", None, "node", "ghost.example.com"),
        ("PATCH", "/nodes/ghost.example.com", {"alive": False}, "node", "ghost.example.com"),
        ("DELETE", "/nodes/424242", None, "node", "424242"),
        ("GET", "/roles/no-such-role", None, "role", "no-such-role"),
        ("GET", "/barclamps/no-such-barclamp", None, "barclamp", "no-such-barclamp"),
        ("GET", "/deployments/no-such-deployment", None, "deployment", "no-such-deployment"),
        ("POST", "/deployments/no-such-deployment/commit", None, "deployment", "no-such-deployment"),
        ("DELETE", "/deployments/no-such-deployment", None, "deployment", "no-such-deployment"),
        ("GET", "/deployment_roles?deployment=no-such-deployment", None, "deployment", "no-such-deployment"),
        ("GET", "/node_roles/999999", None, "noderole", "999999"),
        ("GET", "/node_roles/not-a-number", None, "noderole", "not-a-number"),
        ("POST", "/node_roles/999999/retry", None, "noderole", "999999"),
        ("GET", "/node_roles/999999/parents", None, "noderole", "999999"),
        ("GET", "/node_roles?node=ghost.example.com", None, "node", "ghost.example.com"),
        ("GET", "/attribs/no-such-attrib", None, "attrib", "no-such-attrib"),
        ("GET", "/attribs/test-marker?node=ghost.example.com", None, "node", "ghost.example.com"),
        ("POST", "/deployments/d1/bind", {"role": "no-such-role", "node": "n1.example.com"}, "role", "no-such-role"),
        ("POST", "/deployments/d1/bind", {"role": "test-client", "node": "ghost.example.com"}, "node",
         "ghost.example.com"),
        ("PUT", "/deployments/d1/roles/no-such-role", {"data": {}}, "role", "no-such-role"),
    ]
    for method, path, body, kind, key in cases:
        err = error(api.request(method, V2 + path, json=body), 404)
        assert err["error"] == "not_found" and err["field"] == kind, (method, path, err)
        assert kind in err["message"] and key in err["message"], (method, path, err)


def test_bad_bodies_are_422_naming_the_field(api, world):
    cases = [
        ("POST", "/nodes", {}, "name"),
        ("POST", "/nodes", {"name": "Bad_Name!"}, "name"),
        ("POST", "/nodes", {"name": "-starts-with-dash.example.com"}, "name"),
        ("POST", "/nodes", {"name": "ok.example.com", "admin": "perhaps"}, "admin"),
        ("POST", "/deployments", {}, "name"),
        ("POST", "/deployments", {"name": "has space"}, "name"),
        ("POST", "/deployments/d1/bind", {"role": "test-client"}, "node"),
        ("PUT", "/deployments/d1/roles/test-server", {"data": [1, 2]}, "data"),
        ("PUT", "/attribs/test-marker", {"value": "v"}, "node"),
        ("PATCH", "/nodes/n1.example.com", {"alive": "maybe"}, "alive"),
        ("GET", "/node_roles?state=finished", None, "state"),
        ("GET", "/node_roles?limit=0", None, "limit"),
        ("GET", "/deployment_roles", None, "deployment"),
        ("GET", "/events?limit=0", None, "limit"),
        ("POST", "/barclamps", {}, "path"),
    ]
    for method, path, body, field in cases:
        err = error(api.request(method, V2 + path, json=body), 422)
        assert err["field"] == field, (method, path, err)
        assert err["error"] == "invalid"
    # a body that is not JSON at all
    r = api.post(f"{V2}/nodes", content=b"{not json", headers={"content-type": "application/json"})
    error(r, 422)
    # nothing was created by any of these
    names = {n["name"] for n in api.list(f"{V2}/nodes")}
    assert names == {"n1.example.com"}


def test_binding_an_abstract_role_is_422(api):
    files = {"barclamp.yml": 'barclamp: {name: fx}\nroles:\n  - {name: fx-base, flags: [abstract]}\n'}
    assert api.post(f"{V2}/barclamps", json={"files": files}).status_code == 201
    api.post(f"{V2}/nodes", json={"name": "n1.example.com"})
    api.post(f"{V2}/deployments", json={"name": "d1"})
    err = error(api.post(f"{V2}/deployments/d1/bind", json={"role": "fx-base", "node": "n1.example.com"}), 422)
    assert "abstract" in err["message"] and err["field"] == "role"


def test_duplicates_and_illegal_transitions_are_409(api, world):
    err = error(api.post(f"{V2}/nodes", json={"name": "n1.example.com"}), 409)
    assert err["error"] == "conflict" and "n1.example.com" in err["message"]
    err = error(api.post(f"{V2}/nodes", json={"name": "N1.Example.COM"}), 409)  # names are case-insensitive
    err = error(api.post(f"{V2}/deployments", json={"name": "d1"}), 409)
    assert "d1" in err["message"]
    api.post(f"{V2}/deployments", json={"name": "d2"})
    err = error(api.post(f"{V2}/deployments/d2/bind", json={"role": "test-client", "node": "n1.example.com"}), 409)
    assert "d1" in err["message"]
    # test-client is blocked (its parents have not run): retrying it is an illegal transition
    before = api.get(f"{V2}/node_roles/{world}").json()
    assert before["state"] == "blocked"
    err = error(api.post(f"{V2}/node_roles/{world}/retry"), 409)
    assert err["error"] == "illegal_transition" and "blocked" in err["message"]
    assert api.get(f"{V2}/node_roles/{world}").json()["state"] == "blocked"
    err = error(api.post(f"{V2}/deployments/system/propose"), 409)
    assert "system" in err["message"]
