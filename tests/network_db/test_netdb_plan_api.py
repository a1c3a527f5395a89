"""A node's interface plan from its inventory and allocations, in every format, and the Neutron
configuration rendered for it."""

from __future__ import annotations

import configparser

import yaml

from netdb_helpers import TWO_NICS

API = "/api/v2"


def deploy(api, node, networks=("admin", "storage", "public", "nova_fixed")):
    for net in networks:
        body = {"node": node, "range": "router" if net == "nova_fixed" else None}
        r = api.post(f"{API}/networks/{net}/allocations", json={k: v for k, v in body.items() if v})
        assert r.status_code == 201, r.text


def test_plan_for_a_node_with_an_inventory(api, make_nodes):
    make_nodes("p1.example.com")
    deploy(api, "p1.example.com")
    r = api.get(f"{API}/nodes/p1.example.com/network_plan")
    assert r.status_code == 200, r.text
    plan = r.json()
    assert plan["node"] == "p1.example.com" and plan["conduit_map_pattern"] == "single/.*/.*"
    assert [(i["name"], i["kind"], i["addresses"]) for i in plan["interfaces"]] == [
        ("eth0", "physical", ["192.168.124.81/24"]),
        ("eth0.200", "vlan", ["192.168.125.10/24"]),
        ("eth0.300", "vlan", ["192.168.126.2/24"]),
        ("eth0.500", "vlan", ["192.168.123.1/24"]),
    ]
    assert plan["routes"] == [{"to": "default", "via": "192.168.126.1", "interface": "eth0.300",
                               "network": "public"}]

    networkd = api.get(f"{API}/nodes/p1.example.com/network_plan", params={"format": "networkd"}).json()
    assert networkd["format"] == "networkd"
    assert sorted(networkd["files"]) == [
        "/etc/systemd/network/10-eth0.network", "/etc/systemd/network/30-eth0.200.netdev",
        "/etc/systemd/network/30-eth0.200.network", "/etc/systemd/network/30-eth0.300.netdev",
        "/etc/systemd/network/30-eth0.300.network", "/etc/systemd/network/30-eth0.500.netdev",
        "/etc/systemd/network/30-eth0.500.network"]
    eth0 = networkd["files"]["/etc/systemd/network/10-eth0.network"]
    assert "MACAddress=52:54:00:00:00:01" in eth0 and "Address=192.168.124.81/24" in eth0
    assert "VLAN=eth0.200" in eth0
    assert "Gateway=192.168.126.1" in networkd["files"]["/etc/systemd/network/30-eth0.300.network"]

    netplan = api.get(f"{API}/nodes/p1.example.com/network_plan", params={"format": "netplan"}).json()
    doc = yaml.safe_load(netplan["files"]["/etc/netplan/50-crowbar.yaml"])
    assert doc["network"]["vlans"]["eth0.200"] == {"id": 200, "link": "eth0", "mtu": 1500,
                                                   "addresses": ["192.168.125.10/24"]}
    assert doc["network"]["ethernets"]["eth0"]["match"] == {"macaddress": "52:54:00:00:00:01"}

    ifupdown = api.get(f"{API}/nodes/p1.example.com/network_plan", params={"format": "ifupdown"}).json()
    text = ifupdown["files"]["/etc/network/interfaces"]
    assert "iface eth0.300 inet static\n    address 192.168.126.2/24\n    gateway 192.168.126.1\n" in text

    bad = api.get(f"{API}/nodes/p1.example.com/network_plan", params={"format": "xml"})
    assert bad.status_code == 422 and bad.json()["field"] == "format"


def test_team_mode_bonds_and_a_node_that_cannot_carry_it(api, make_nodes):
    make_nodes("t1.example.com")
    make_nodes("t2.example.com", nics=TWO_NICS[:1])
    deploy(api, "t1.example.com", ("admin", "storage"))
    deploy(api, "t2.example.com", ("admin",))
    template = api.get(f"{API}/networks/export").json()
    r = api.post(f"{API}/networks/import?preview=true", json={"template": {**template, "mode": "team"}})
    assert r.json()["nodes"] == ["t1.example.com", "t2.example.com"]  # every node's plan may change
    assert api.post(f"{API}/networks/import", json={"template": {**template, "mode": "team"}}).status_code == 200
    plan = api.get(f"{API}/nodes/t1.example.com/network_plan").json()
    assert [(i["name"], i["kind"], i["master"]) for i in plan["interfaces"]] == [
        ("eth0", "physical", "bond0"), ("eth1", "physical", "bond0"), ("bond0", "bond", None),
        ("bond0.200", "vlan", None)]
    r = api.get(f"{API}/nodes/t2.example.com/network_plan")
    assert r.status_code == 422
    assert r.json()["message"] == "intf0 needs 1g2; node has eth0 1g"


def test_conduit_map_by_role_and_bus_order_by_hardware(api, make_nodes, db):
    from crowbar.db.models import Node
    from sqlalchemy import select

    make_nodes("h1.example.com", bind_roles=True)  # gets the discovery role crowbar-managed-node
    with db.session() as s:
        node = s.scalar(select(Node).where(Node.name == "h1.example.com"))
        node.discovery = {"nics": TWO_NICS, "product_name": "PowerEdge R720"}
    deploy(api, "h1.example.com", ("admin",))
    template = api.get(f"{API}/networks/export").json()
    template["conduit_map"].insert(0, {"pattern": "single/.*/crowbar-managed-node",
                                       "conduits": {"intf0": ["?1g2"], "intf1": ["?1g1"], "intf2": ["?1g1"]}})
    assert api.post(f"{API}/networks/import", json={"template": template}).status_code == 200
    plan = api.get(f"{API}/nodes/h1.example.com/network_plan").json()
    assert plan["conduit_map_pattern"] == "single/.*/crowbar-managed-node"
    assert plan["attachments"]["admin"]["interface"] == "eth1"
    template["interface_map"] = [{"pattern": "PowerEdge R7.*", "bus_order": ["0000:01:00.1", "0000:01:00.0"]}]
    assert api.post(f"{API}/networks/import", json={"template": template}).status_code == 200
    plan = api.get(f"{API}/nodes/h1.example.com/network_plan").json()
    assert plan["attachments"]["admin"]["interface"] == "eth0"  # eth1 counts first on this model


def test_a_node_without_inventory(api, make_nodes):
    make_nodes("bare.example.com", nics=None)
    r = api.get(f"{API}/nodes/bare.example.com/network_plan")
    assert r.status_code == 409 and r.json()["field"] == "discovery.nics"
    assert r.json()["message"].startswith("node 'bare.example.com' has no NIC inventory yet")
    assert api.get(f"{API}/nodes/nobody/network_plan").status_code == 404


def ini(text: str) -> dict:
    parser = configparser.ConfigParser(interpolation=None, default_section="(none)")
    parser.read_string(text)
    return {name: dict(parser[name]) for name in parser.sections()}


def test_neutron_configuration_for_a_node(api, make_nodes):
    make_nodes("c1.example.com")
    deploy(api, "c1.example.com", ("admin",))  # no address on nova_fixed: the interface is enough
    r = api.get(f"{API}/nodes/c1.example.com/neutron")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["network_vlan_ranges"] == "physnet1:500:2500"
    assert out["physical_interface_mappings"] == {"physnet1": "eth0"}
    files = out["files"]
    assert ini(files["/etc/neutron/plugins/ml2/ml2_conf.ini"]) == {
        "ml2": {"type_drivers": "flat,vlan,vxlan", "tenant_network_types": "vlan",
                "mechanism_drivers": "linuxbridge"},
        "ml2_type_vlan": {"network_vlan_ranges": "physnet1:500:2500"},
        "ml2_type_vxlan": {"vni_ranges": "1001:2000"}}
    assert ini(files["/etc/neutron/plugins/ml2/linuxbridge_agent.ini"]) == {
        "linux_bridge": {"physical_interface_mappings": "physnet1:eth0"},
        "vxlan": {"enable_vxlan": "false"},
        "securitygroup": {"enable_security_group": "true", "firewall_driver": "iptables"}}
    assert ini(files["/etc/neutron/dhcp_agent.ini"])["DEFAULT"]["interface_driver"] == "linuxbridge"
    assert ini(files["/etc/neutron/l3_agent.ini"]) == {"DEFAULT": {"interface_driver": "linuxbridge"}}

    # dual mode: nova_fixed's conduit intf1 is the second NIC
    template = api.get(f"{API}/networks/export").json()
    api.post(f"{API}/networks/import", json={"template": {**template, "mode": "dual"}})
    assert api.get(f"{API}/nodes/c1.example.com/neutron").json()["physical_interface_mappings"] == {
        "physnet1": "eth1"}
    # VXLAN needs the node's os_sdn address as local_ip
    api.patch(f"{API}/neutron/settings", json={"tenant_network_types": ["vxlan", "vlan"]})
    r = api.get(f"{API}/nodes/c1.example.com/neutron")
    assert r.status_code == 422 and (r.json()["network"], r.json()["field"]) == ("os_sdn", "address")
    deploy(api, "c1.example.com", ("os_sdn",))
    agent = ini(api.get(f"{API}/nodes/c1.example.com/neutron").json()["files"][
        "/etc/neutron/plugins/ml2/linuxbridge_agent.ini"])
    assert agent["vxlan"] == {"enable_vxlan": "true", "local_ip": "192.168.130.10"}
