"""Registering a machine by MAC before it boots: a node in `discovering`, which discovery finds by
its MAC when the machine PXE-boots (then `discovered`); the CLI's `nodes register`."""

from __future__ import annotations

from tests.provisioner.discoverykit import boot_nonce, discover, inventory


def test_register_then_the_machine_boots_and_is_found_by_mac(api):
    r = api.post("/api/v2/nodes/register", json={"macs": ["52:54:00:BB:00:01", "52-54-00-bb-00-02"],
                                                 "name": "rack1-u4.example.com"})
    assert r.status_code == 201, r.text
    node = r.json()
    assert r.headers["location"] == f"/api/v2/nodes/{node['id']}"
    assert (node["state"], node["alive"], node["boot_mac"], node["bootenv"]) == (
        "discovering", False, "52:54:00:bb:00:01", "discovery")
    events = api.get("/api/v2/events", params={"object_type": "node", "object_id": node["id"]}).json()["items"]
    assert any(e["to"] == "discovering" and "52:54:00:bb:00:02" in e["message"] for e in events)
    # the machine PXE-boots: its script carries a nonce; its agent posts the inventory: the same node
    nonce = boot_nonce(api, "52:54:00:bb:00:01")
    found = discover(api, inventory("52:54:00:bb:00:01", "52:54:00:bb:00:02"), nonce=nonce)
    assert found.status_code in (200, 201) and found.json()["id"] == node["id"] and not found.json()["created"]
    shown = api.get(f"/api/v2/nodes/{node['id']}").json()
    assert shown["state"] == "discovered" and shown["alive"] and shown["name"] == "rack1-u4.example.com"


def test_register_refusals(api):
    first = api.post("/api/v2/nodes/register", json={"macs": ["52:54:00:cc:00:01"]})
    assert first.status_code == 201 and first.json()["name"].startswith("d52-54-00-cc-00-01.")
    r = api.post("/api/v2/nodes/register", json={"macs": ["52:54:00:dd:00:01", "52:54:00:CC:00:01"]})
    assert r.status_code == 409 and r.json()["field"] == "macs" and first.json()["name"] in r.json()["message"]
    for macs in ([], ["not-a-mac"], ["52:54:00:dd:00:01\x00"]):
        r = api.post("/api/v2/nodes/register", json={"macs": macs})
        assert r.status_code == 422 and r.json()["error"] == "invalid", (macs, r.text)
    assert api.post("/api/v2/nodes/register", json={"macs": ["52:54:00:ee:00:01"], "name": "12"}).status_code == 422
    assert api.list("/api/v2/nodes", {"name": "d52-54-00-dd"}) == []  # nothing half made
