"""Changing what the OpenStack roles derive their values from re-runs them: nova_fixed's VLAN
re-queues the active neutron-server noderoles (network_vlan_ranges), its conduit (or the template's
conduit map, mode) the Linux Bridge agents (physical_interface_mappings); the agents below a
re-queued server re-run after it, by the engine's rules. The network change's preview lists them and
changes nothing; applying re-queues them with an event each. The roles say so in barclamp.yml
(`reruns-on-networks`); the network service knows no role by name."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from crowbar.barclamps import loader
from crowbar.db.models import Event, Node, NodeRole, Role
from crowbar.db.session import pending_work
from crowbar.errors import BarclampError
from crowbar.services import deployments, network, nodes

from openstack_helpers import CONTROLLER, deploy_neutron_server

COMPUTE = "cmp.example.com"
V2 = "/api/v2"


def openstack_deployed(db) -> dict[tuple[str, str], int]:
    """neutron-server and the DHCP agent (with its Linux Bridge agent) on the controller, a Linux
    Bridge agent on the compute node, every noderole active. (node, role) -> noderole id."""
    deploy_neutron_server(db, "openstack", CONTROLLER, "http://192.168.124.81:9696")
    with db.session() as s:
        nodes.create_node(s, COMPUTE, bind_roles=False)
        deployments.bind(s, "openstack", "neutron-dhcp-agent", CONTROLLER)
        deployments.bind(s, "openstack", "neutron-linuxbridge-agent", COMPUTE)
        deployments.commit(s, "openstack")
    with db.session() as s:
        out = {}
        for nr, node, role in s.execute(select(NodeRole, Node.name, Role.name)
                                        .join(Node, Node.id == NodeRole.node_id).join(Role, Role.id == NodeRole.role_id)):
            nr.state = "active"
            out[(node, role)] = nr.id
        return out


def states(db) -> dict[tuple[str, str], str]:
    with db.session() as s:
        return {(n, r): st for n, r, st in s.execute(
            select(Node.name, Role.name, NodeRole.state).join(NodeRole, NodeRole.node_id == Node.id)
            .join(Role, Role.id == NodeRole.role_id))}


SERVER, AGENT, DHCP = "neutron-server", "neutron-linuxbridge-agent", "neutron-dhcp-agent"


# -- barclamp.yml ------------------------------------------------------------------------------
def test_reruns_on_networks_in_barclamp_yml(tmp_path):
    def read(value) -> loader.RoleDef:
        (tmp_path / "barclamp.yml").write_text(json.dumps({
            "barclamp": {"name": "b"}, "roles": [{"name": "r", "reruns-on-networks": value}]}))
        return loader.read(tmp_path).roles[0]

    assert read(["nova_fixed", "admin"]).reruns_on_networks == {"nova_fixed": [], "admin": []}
    assert read({"nova_fixed": ["vlan", "conduit"]}).reruns_on_networks == {"nova_fixed": ["vlan", "conduit"]}
    for bad, said in ((["nova_fixed", 5], "5 is not a network name"),
                      ({"nova_fixed": ["colour"]}, "expected a list of its fields (subnet, conduit"),
                      ({"nova_fixed": "vlan"}, "got 'vlan'"), ("nova_fixed", "expected a list of network names")):
        with pytest.raises(BarclampError, match="reruns-on-networks: ") as caught:
            read(bad)
        assert said in caught.value.message


# -- the service -------------------------------------------------------------------------------
def test_a_vlan_change_previews_then_requeues_the_server_and_the_agents_rerun_below_it(db):
    ids = openstack_deployed(db)
    before = states(db)
    with db.session() as s:
        preview = network.update_network(s, "nova_fixed", {"vlan": 600}, preview=True)
    assert [(r["id"], r["role"], r["node"], r["deployment"], r["because"]) for r in preview["reruns"]] == [
        (ids[(CONTROLLER, SERVER)], SERVER, CONTROLLER, "openstack", ["nova_fixed.vlan: 500 -> 600"])]
    assert {(r["node"], r["role"]) for r in preview["reruns_after"]} == {
        (CONTROLLER, AGENT), (COMPUTE, AGENT), (CONTROLLER, DHCP)}
    assert states(db) == before  # a preview changes nothing
    with db.session() as s:
        network.update_network(s, "nova_fixed", {"vlan": 600}, actor="alice")
        assert "anneal" in pending_work(s)
    after = states(db)
    assert after[(CONTROLLER, SERVER)] == "todo"  # its parents (bus, database) are active
    assert {after[k] for k in ((CONTROLLER, AGENT), (COMPUTE, AGENT), (CONTROLLER, DHCP))} == {"blocked"}
    assert after[(CONTROLLER, "openstack-rabbitmq")] == "active"
    with db.session() as s:
        requeued = s.execute(select(Event.object_id, Event.actor, Event.from_state, Event.to_state, Event.message)
                             .where(Event.object_type == "noderole", Event.action == "requeue")).all()
    assert requeued == [(ids[(CONTROLLER, SERVER)], "alice", "active", "todo",
                         "network update nova_fixed: nova_fixed.vlan: 500 -> 600")]


def test_a_conduit_change_requeues_the_agents_and_other_changes_nothing(db):
    ids = openstack_deployed(db)
    with db.session() as s:  # fields no role derives from
        out = network.update_network(s, "nova_fixed", {"mtu": 9000, "router_pref": 30})
    assert out["applied"] and out["reruns"] == [] and out["reruns_after"] == []
    assert set(states(db).values()) == {"active"}
    with db.session() as s:
        out = network.update_network(s, "nova_fixed", {"conduit": "intf0"})
    assert {(r["node"], r["role"]) for r in out["reruns"]} == {(CONTROLLER, AGENT), (COMPUTE, AGENT)}
    assert out["reruns"][0]["because"] == ["nova_fixed.conduit: intf1 -> intf0"]
    assert {(r["node"], r["role"]) for r in out["reruns_after"]} == {(CONTROLLER, DHCP)}
    after = states(db)
    assert after[(CONTROLLER, SERVER)] == "active" and after[(COMPUTE, AGENT)] == "todo"
    assert after[(CONTROLLER, DHCP)] == "blocked"
    # a noderole that is not active (here: todo) is not listed again; the template's mode is a
    # conduit change for every network (the conduit map is chosen by it)
    with db.session() as s:
        out = network.import_template(s, {**network.export(s), "mode": "dual"}, preview=True)
    assert out["reruns"] == [] and out["reruns_after"] == []
    with db.session() as s:
        s.get(NodeRole, ids[(COMPUTE, AGENT)]).state = "active"
    with db.session() as s:
        out = network.import_template(s, {**network.export(s), "mode": "dual"}, preview=True)
    assert [(r["node"], r["because"]) for r in out["reruns"]] == [(COMPUTE, ["template mode: single -> dual"])]


# -- API and CLI ---------------------------------------------------------------------------------
def test_api_preview_lists_and_apply_requeues(api, db):
    ids = openstack_deployed(db)
    r = api.patch(f"{V2}/networks/nova_fixed", params={"preview": "true"}, json={"vlan": 700})
    assert r.status_code == 200, r.text
    body = r.json()
    assert not body["applied"] and [x["id"] for x in body["reruns"]] == [ids[(CONTROLLER, SERVER)]]
    assert api.get(f"{V2}/node_roles/{ids[(CONTROLLER, SERVER)]}").json()["state"] == "active"
    assert "anneal" not in api.woken
    r = api.patch(f"{V2}/networks/nova_fixed", json={"vlan": 700})
    assert r.status_code == 200 and r.json()["applied"]
    assert api.get(f"{V2}/node_roles/{ids[(CONTROLLER, SERVER)]}").json()["state"] == "todo"
    assert api.get(f"{V2}/node_roles/{ids[(COMPUTE, AGENT)]}").json()["state"] == "blocked"
    assert "anneal" in api.woken
    role = api.get(f"{V2}/roles/{AGENT}").json()
    assert role["reruns_on_networks"] == {"nova_fixed": ["conduit"]}


def test_cli_preview_shows_the_noderoles_to_rerun(cli, db):
    ids = openstack_deployed(db)
    code, out, _ = cli("network", "update", "nova_fixed", "--vlan", "600", "--preview")
    assert code == 0, out
    server = ids[(CONTROLLER, SERVER)]
    assert out.splitlines() == [
        "update nova_fixed: preview, nothing changed",
        "  ~ nova_fixed.vlan: 500 -> 600",
        "noderoles that would re-run (their values come from what changed):",
        f"  {server} {SERVER} on {CONTROLLER} in openstack (nova_fixed.vlan: 500 -> 600)",
        "then, below them (3): " + ", ".join(f"{ids[k]} {k[1]} on {k[0]}" for k in sorted(
            [(CONTROLLER, AGENT), (CONTROLLER, DHCP), (COMPUTE, AGENT)], key=lambda k: ids[k])),
    ]
    code, out, _ = cli("network", "update", "nova_fixed", "--vlan", "600", "-o", "json")
    result = json.loads(out)
    assert code == 0 and result["applied"] and [r["id"] for r in result["reruns"]] == [server]
    assert states(db)[(CONTROLLER, SERVER)] == "todo"
