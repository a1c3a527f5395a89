"""One rule for node references everywhere: all digits is an id, anything else a name; names that
could be read as ids or addresses are refused."""

from __future__ import annotations

import pytest

from crowbar.errors import InvalidInput
from crowbar.services import lookup


@pytest.mark.parametrize("name", ["1", "42", "10.0.0.5", "1.2", "-bad", "bad-", "under_score", "a" * 64 + ".example",
                                  "", "a..b"])
def test_names_that_are_not_host_names_or_look_like_ids_are_refused(name):
    with pytest.raises(InvalidInput):
        lookup.valid_node_name(name)


@pytest.mark.parametrize("name", ["node1", "1node", "42.example.com", "n-1.lab", "UPPER.Example"])
def test_host_names_are_accepted_lower_cased(name):
    assert lookup.valid_node_name(name) == name.lower()


def test_api_refuses_an_all_numeric_node_name(api):
    r = api.post("/api/v2/nodes", json={"name": "1"})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid" and "digits" in r.json()["message"]


def test_every_command_resolves_a_reference_the_same_way(api, db):
    """Node 'a' gets id N; node named like the id of another is impossible, so `show N`, allocating on
    N, and noderole filters all act on the same machine, by id; names act by name."""
    first = api.post("/api/v2/nodes", json={"name": "alpha.example.com"}).json()
    second = api.post("/api/v2/nodes", json={"name": "beta.example.com"}).json()
    for ref, expected in ((str(first["id"]), first), ("alpha.example.com", first), (str(second["id"]), second),
                          ("BETA.example.com", second)):
        shown = api.get(f"/api/v2/nodes/{ref}").json()
        assert shown["id"] == expected["id"], ref
        alloc = api.post("/api/v2/networks/admin/allocations", json={"node": ref})
        assert alloc.status_code in (200, 201), alloc.text
        assert alloc.json()["node"] == expected["name"], ref
        with db.session() as s:
            assert lookup.node_refs(s, [ref]) == [(expected["id"], expected["name"])]
    missing = api.get("/api/v2/nodes/999999")
    assert missing.status_code == 404 and "999999" in missing.json()["message"]


@pytest.mark.parametrize("ref", ["%C2%B2", "%D9%A3", "9" * 25, "0" * 19 + "1"])
def test_number_like_references_that_name_nothing_are_404_not_500(api, ref):
    for path in (f"/api/v2/nodes/{ref}", f"/api/v2/node_roles/{ref}", f"/api/v2/deployments/{ref}",
                 f"/api/v2/roles/{ref}"):
        r = api.get(path)
        assert r.status_code == 404, (path, r.status_code, r.text)
        assert r.json()["error"] == "not_found"
