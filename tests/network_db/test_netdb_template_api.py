"""The network template through the API: the built-in default, import/export, validation errors,
and networks created, changed and deleted after nodes are deployed (with a preview)."""

from __future__ import annotations

import copy

import pytest
import yaml

from crowbar.db.session import Database
from crowbar.network.model import default_template, export_template, load_template
from crowbar.services import bootstrap, network

from netdb_helpers import TINY

API = "/api/v2"


def test_a_fresh_database_holds_the_default_template(api):
    assert api.get(f"{API}/networks/export").json() == export_template(default_template())
    rows = api.get(f"{API}/networks").json()
    assert [r["name"] for r in rows] == ["admin", "bmc", "bmc_vlan", "storage", "public",
                                         "nova_floating", "nova_fixed", "os_sdn"]
    admin = rows[0]
    assert admin["category"] == "admin" and admin["subnet"] == "192.168.124.0/24"
    assert admin["ranges"]["host"] == {"start": "192.168.124.81", "end": "192.168.124.160",
                                       "size": 80, "used": 0}
    assert {r["name"]: r["category"] for r in rows}["nova_fixed"] == "tenant"


def test_configuration_names_another_template(tmp_path, monkeypatch):
    data = export_template(default_template())
    data["networks"]["admin"]["ranges"]["host"] = {"start": "192.168.124.90", "end": "192.168.124.99"}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv(network.ENV_TEMPLATE, str(path))
    db = Database(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        bootstrap.prepare(db)
        bootstrap.prepare(db)  # a restart keeps what is stored
        with db.session() as s:
            assert network.export(s) == export_template(load_template(data))
    finally:
        db.dispose()


def test_a_bad_configured_template_stops_the_server_with_a_clear_message(tmp_path, monkeypatch):
    data = export_template(default_template())
    data["networks"]["storage"]["vlan"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv(network.ENV_TEMPLATE, str(path))
    db = Database(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        with pytest.raises(Exception) as caught:
            bootstrap.prepare(db)
        assert str(caught.value) == (f"{network.ENV_TEMPLATE}={path}: network 'storage': field 'vlan': "
                                     "0 is outside 1..4094")
    finally:
        db.dispose()


def test_import_export_round_trip(api):
    exported = api.get(f"{API}/networks/export").json()
    changed = copy.deepcopy(exported)
    changed["mode"] = "dual"
    changed["networks"]["storage"]["vlan"] = 201
    changed["networks"]["mgmt"] = {"conduit": "intf1", "vlan": 20, "use_vlan": True,
                                   "subnet": "10.20.0.0/24",
                                   "ranges": {"host": {"start": "10.20.0.10", "end": "10.20.0.99"}}}
    r = api.post(f"{API}/networks/import", json={"template": changed})
    assert r.status_code == 200, r.text
    assert r.json()["applied"] and r.json()["changes"]["added"] == ["mgmt"]
    again = api.get(f"{API}/networks/export").json()
    assert load_template(again) == load_template(changed)
    assert again["networks"]["mgmt"]["category"] == "general"
    # Exported text imports to the same template: no changes.
    r = api.post(f"{API}/networks/import", json={"template": yaml.safe_dump(again)})
    assert r.status_code == 200 and r.json()["changes"] == {"added": [], "removed": [], "changed": {},
                                                           "template": []}
    assert api.get(f"{API}/networks/export").json() == again


def test_import_is_all_or_nothing(api):
    before = api.get(f"{API}/networks/export").json()
    bad = copy.deepcopy(before)
    bad["networks"]["storage"]["vlan"] = 300  # storage 192.168.125/24 stays; fine on its own
    bad["networks"]["public"]["ranges"]["host"]["end"] = "192.168.126.255"  # broadcast
    del bad["networks"]["os_sdn"]
    r = api.post(f"{API}/networks/import", json={"template": bad})
    assert r.status_code == 422
    assert r.json()["network"] == "public" and r.json()["field"] == "ranges.host"
    assert api.get(f"{API}/networks/export").json() == before


@pytest.mark.parametrize("network_name, change, field, reason", [
    ("storage", {"vlan": 4095}, "vlan", "4095 is outside 1..4094"),
    ("storage", {"vlan": "ten"}, "vlan", "expected an integer, got 'ten'"),
    ("storage", {"ranges": {"host": {"start": "192.168.125.0", "end": "192.168.125.20"}}},
     "ranges.host", "192.168.125.0 is the network address of 192.168.125.0/24"),
    ("storage", {"ranges": {"host": {"start": "192.168.125.10", "end": "192.168.126.20"}}},
     "ranges.host", "192.168.126.20 is outside 192.168.125.0/24"),
    ("storage", {"ranges": {"host": {"start": "192.168.125.50", "end": "192.168.125.40"}}},
     "ranges.host", "starts after it ends (192.168.125.50-192.168.125.40)"),
    ("storage", {"ranges": {"dhcp": {"start": "192.168.125.200", "end": "192.168.125.250"}}},
     "ranges.dhcp", "192.168.125.200-192.168.125.250 overlaps range 'host' (192.168.125.10-192.168.125.239)"),
    ("storage", {"subnet": "192.168.126.0/24", "ranges": {"host": {"start": "192.168.126.200", "end": "192.168.126.210"}}},
     None, None),  # overlaps public on another VLAN: named on the later network (public)
    ("storage", {"team_mode": 7}, "team_mode", "7 is not a bonding mode (0..6)"),
    ("storage", {"mtu": 100}, "mtu", "100 is outside 576..9216"),
    ("storage", {"conduit": "intf9"}, "conduit", "'intf9' is not defined in any conduit_map entry"),
    ("storage", {"use_team": True}, "use_team",
     "conduit 'intf1' has 1 interface(s) in conduit_map entry 'single/.*/.*'; a team needs 2..8"),
    ("storage", {"colour": "blue"}, "colour", "unknown field"),
])
def test_validation_errors_are_422_json_naming_network_field_and_reason(api, network_name, change,
                                                                        field, reason):
    r = api.patch(f"{API}/networks/{network_name}", json=change)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid"
    if field is None:
        assert (body["network"], body["field"]) == ("public", "subnet")
        assert "overlaps network 'storage'" in body["reason"] and "different VLAN (300 vs 200)" in body["reason"]
        return
    assert (body["network"], body["field"], body["reason"]) == (network_name, field, reason)
    assert body["message"].startswith(f"network {network_name!r}: field {field!r}: {reason}")
    assert body["problems"][0] == {"network": network_name, "field": field, "reason": reason,
                                   "message": f"network {network_name!r}: field {field!r}: {reason}"}


def test_template_level_validation_errors(api):
    template = api.get(f"{API}/networks/export").json()
    cases = [
        ({"mode": "quad"}, None, "mode", "'quad' is not one of single, dual, team"),
        ({"teaming": {"mode": 9}}, None, "teaming.mode", "9 is not a bonding mode (0..6)"),
        ({"conduit_map": [{"pattern": "single/.*/.*", "conduits": {"intf0": ["1x1"], "intf1": ["1g1"],
                                                                    "intf2": ["1g1"]}}]},
         None, "conduit_map[0].conduits.intf0", "'1x1' is not an interface reference like 1g1, +10g2 or ?1g1"),
        ({"conduit_map": [{"pattern": "single/.*/.*", "conduits": {"intf0": ["1g1"] * 9, "intf1": ["1g1"],
                                                                    "intf2": ["1g1"]}}]},
         None, "conduit_map[0].conduits.intf0", "a team has at most 8 members, got 9"),
    ]
    for change, network_name, field, reason in cases:
        r = api.post(f"{API}/networks/import", json={"template": {**template, **change}})
        assert r.status_code == 422, (change, r.text)
        body = r.json()
        assert (body["network"], body["field"], body["reason"]) == (network_name, field, reason), body
        assert body["message"].startswith(f"template: field {field!r}: {reason}")
    r = api.post(f"{API}/networks/import", json={"template": "networks: [unclosed"})
    assert r.status_code == 422 and r.json()["field"] == "template"
    assert r.json()["message"].startswith("template: not valid YAML or JSON")
    r = api.post(f"{API}/networks/import", json={"nothing": 1})
    assert r.status_code == 422 and r.json()["field"] == "template"


def test_every_problem_is_listed(api):
    template = api.get(f"{API}/networks/export").json()
    template["networks"]["storage"]["vlan"] = 0
    template["networks"]["os_sdn"]["mtu"] = 20000
    body = api.post(f"{API}/networks/import", json={"template": template}).json()
    assert body["message"].count("network '") == 2  # every problem in the message, not "(and 1 more problem)"
    assert [(p["network"], p["field"]) for p in body["problems"]] == [("storage", "vlan"), ("os_sdn", "mtu")]


def test_create_show_and_delete_a_network(api):
    r = api.post(f"{API}/networks?preview=true", json={"name": "tiny", **TINY})
    assert r.status_code == 200 and not r.json()["applied"] and r.json()["changes"]["added"] == ["tiny"]
    assert api.get(f"{API}/networks/tiny").status_code == 404
    r = api.post(f"{API}/networks", json={"name": "tiny", **TINY})
    assert r.status_code == 201, r.text
    shown = api.get(f"{API}/networks/tiny").json()
    assert shown["subnet"] == "10.99.0.0/24" and shown["vlan"] == 99 and shown["category"] == "general"
    assert shown["ranges"]["host"]["size"] == 5
    assert api.post(f"{API}/networks", json={"name": "tiny", **TINY}).status_code == 409
    bad_name = api.post(f"{API}/networks", json={"name": "no spaces", **TINY})
    assert bad_name.status_code == 422 and bad_name.json()["field"] == "name"
    unnamed = api.post(f"{API}/networks", json=TINY)
    assert (unnamed.status_code, unnamed.json()["field"]) == (422, "name")
    assert unnamed.json()["message"] == "name: a network needs a name"
    missing = api.post(f"{API}/networks", json={"name": "x", "subnet": "10.1.0.0/24"})
    assert missing.status_code == 422 and (missing.json()["network"], missing.json()["field"]) == ("x", "conduit")
    r = api.delete(f"{API}/networks/tiny")
    assert r.status_code == 200 and r.json()["changes"]["removed"] == ["tiny"]
    assert api.get(f"{API}/networks/tiny").status_code == 404
    assert api.delete(f"{API}/networks/tiny").status_code == 404


def test_the_admin_network_may_be_on_a_vlan(api, make_nodes):
    make_nodes("a1.example.com")
    assert api.post(f"{API}/networks/admin/allocations", json={"node": "a1.example.com"}).status_code == 201
    r = api.patch(f"{API}/networks/admin", json={"use_vlan": True, "vlan": 100})
    assert r.status_code == 200, r.text
    assert r.json()["nodes"] == ["a1.example.com"] and r.json()["moves"] == []
    plan = api.get(f"{API}/nodes/a1.example.com/network_plan").json()
    assert plan["attachments"]["admin"]["interface"] == "eth0.100"
    assert [i["name"] for i in plan["interfaces"]] == ["eth0", "eth0.100"]
    # ...and on a VLAN of its own: bmc_vlan, which shares its subnet, must follow.
    r = api.patch(f"{API}/networks/admin", json={"vlan": 110})
    assert r.status_code == 422 and r.json()["network"] == "bmc_vlan"
    template = api.get(f"{API}/networks/export").json()
    template["networks"]["admin"]["vlan"] = template["networks"]["bmc_vlan"]["vlan"] = 110
    assert api.post(f"{API}/networks/import", json={"template": template}).status_code == 200
    plan = api.get(f"{API}/nodes/a1.example.com/network_plan").json()
    assert plan["attachments"]["admin"]["interface"] == "eth0.110"


def test_change_after_deploy_previews_affected_nodes_and_allocations(api, make_nodes):
    make_nodes("d1.example.com", "d2.example.com", "d3.example.com")
    for name in ("d1.example.com", "d2.example.com", "d3.example.com"):
        api.post(f"{API}/networks/storage/allocations", json={"node": name})
    api.post(f"{API}/networks/admin/allocations", json={"node": "d3.example.com"})
    before = api.list(f"{API}/networks/storage/allocations")
    assert [a["address"] for a in before] == ["192.168.125.10", "192.168.125.11", "192.168.125.12"]
    change = {"ranges": {"host": {"start": "192.168.125.11", "end": "192.168.125.239"}}}

    r = api.patch(f"{API}/networks/storage?preview=true", json=change)
    assert r.status_code == 200
    preview = r.json()
    assert preview["preview"] and not preview["applied"]
    assert preview["changes"]["changed"] == {"storage": [
        {"field": "ranges.host", "old": "192.168.125.10-192.168.125.239",
         "new": "192.168.125.11-192.168.125.239"}]}
    assert preview["nodes"] == ["d1.example.com", "d2.example.com", "d3.example.com"]
    assert preview["allocations"] == [{
        "network": "storage", "node": "d1.example.com", "range": "host", "address": "192.168.125.10",
        "reason": "192.168.125.10 is outside range 'host' (192.168.125.11-192.168.125.239)"}]
    assert [(m["node"], m["old_address"], m["new_address"]) for m in preview["moves"]] == [
        ("d1.example.com", "192.168.125.10", "192.168.125.13")]
    assert api.list(f"{API}/networks/storage/allocations") == before  # nothing applied

    refused = api.patch(f"{API}/networks/storage", json=change)
    assert refused.status_code == 409
    assert "storage/d1.example.com 192.168.125.10" in refused.json()["message"]
    assert "Nothing was changed" in refused.json()["message"]
    assert api.get(f"{API}/networks/storage").json()["ranges"]["host"]["start"] == "192.168.125.10"

    applied = api.patch(f"{API}/networks/storage?force=true", json=change).json()
    assert applied["applied"] and applied["moves"] == preview["moves"]
    after = {a["node"]: a["address"] for a in api.list(f"{API}/networks/storage/allocations")}
    assert after == {"d1.example.com": "192.168.125.13", "d2.example.com": "192.168.125.11",
                     "d3.example.com": "192.168.125.12"}

    # A change that leaves every address valid (the VLAN) lists the nodes and moves nothing.
    r = api.patch(f"{API}/networks/storage", json={"vlan": 210}).json()
    assert r["applied"] and r["allocations"] == [] and r["moves"] == []
    assert r["nodes"] == ["d1.example.com", "d2.example.com", "d3.example.com"]

    # Renumbering the subnet moves everyone, in address order.
    renumber = {"subnet": "10.125.0.0/16", "ranges": {"host": {"start": "10.125.0.10", "end": "10.125.0.20"}}}
    preview = api.patch(f"{API}/networks/storage?preview=true", json=renumber).json()
    assert [a["reason"] for a in preview["allocations"]][0] == "192.168.125.11 is outside 10.125.0.0/16"
    applied = api.patch(f"{API}/networks/storage?force=true", json=renumber).json()
    assert [(m["node"], m["new_address"]) for m in applied["moves"]] == [
        ("d2.example.com", "10.125.0.10"), ("d3.example.com", "10.125.0.11"), ("d1.example.com", "10.125.0.12")]

    # Deleting a network with allocations: previewed, refused, then forced (released).
    preview = api.delete(f"{API}/networks/storage?preview=true").json()
    assert [a["node"] for a in preview["released"]] == ["d2.example.com", "d3.example.com", "d1.example.com"]
    assert api.delete(f"{API}/networks/storage").status_code == 409
    assert api.delete(f"{API}/networks/storage?force=true").json()["applied"]
    assert "storage" not in [n["name"] for n in api.get(f"{API}/networks").json()]
    # d3's admin address was not touched.
    assert [a["node"] for a in api.list(f"{API}/networks/admin/allocations")] == ["d3.example.com"]


def test_a_change_that_cannot_reallocate_changes_nothing(api, make_nodes):
    make_nodes("e1.example.com", "e2.example.com")
    for name in ("e1.example.com", "e2.example.com"):
        api.post(f"{API}/networks/storage/allocations", json={"node": name})
    r = api.patch(f"{API}/networks/storage?force=true",
                  json={"ranges": {"host": {"start": "192.168.125.100", "end": "192.168.125.100"}}})
    assert r.status_code == 409 and "exhausted" in r.json()["message"]
    assert [a["address"] for a in api.list(f"{API}/networks/storage/allocations")] == [
        "192.168.125.10", "192.168.125.11"]


def test_patch_semantics(api):
    r = api.patch(f"{API}/networks/public", json={"router": None, "router_pref": None,
                                                  "ranges": {"dhcp": None}})
    assert r.status_code == 200, r.text
    public = api.get(f"{API}/networks/public").json()
    assert public["router"] is None and public["router_pref"] is None and list(public["ranges"]) == ["host"]
    assert api.patch(f"{API}/networks/public", json={"name": "pub"}).json()["field"] == "name"
    assert api.patch(f"{API}/networks/nope", json={"vlan": 3}).status_code == 404
