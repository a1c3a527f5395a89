"""API additions the web UI reads (docs/ui.md): how full each network range is in GET /networks,
the nodes list's disk filter and column, each node's power state."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from crowbar.db.models import Node, PowerRequest, utcnow

V2 = "/api/v2"


def test_networks_list_counts_allocations_per_range(api):
    for i in range(3):
        assert api.post(f"{V2}/nodes", json={"name": f"r{i}.example.com"}).status_code == 201
    assert api.post(f"{V2}/networks/public/allocations", json={"node": "r0.example.com"}).status_code == 201
    for i in (0, 1, 2):
        r = api.post(f"{V2}/networks/admin/allocations", json={"node": f"r{i}.example.com"})
        assert r.status_code in (200, 201), r.text
    r = api.post(f"{V2}/networks/bmc/allocations", json={"node": "r2.example.com"})
    assert r.status_code == 201, r.text
    listed = {n["name"]: n for n in api.get(f"{V2}/networks").json()}
    assert listed["admin"]["allocations"] == 3 and listed["admin"]["ranges"]["host"]["used"] == 3
    assert listed["admin"]["ranges"]["dhcp"]["used"] == 0 and listed["admin"]["ranges"]["admin"]["used"] == 0
    assert listed["public"]["allocations"] == 1 and sum(r["used"] for r in listed["public"]["ranges"].values()) == 1
    assert listed["storage"]["allocations"] == 0
    assert all(r["used"] == 0 for r in listed["storage"]["ranges"].values())
    # the list and each network's page agree
    for name in ("admin", "public", "bmc"):
        shown = api.get(f"{V2}/networks/{name}").json()
        assert {k: v["used"] for k, v in shown["ranges"].items()} == {k: v["used"] for k, v in listed[name]["ranges"].items()}
