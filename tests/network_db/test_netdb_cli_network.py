"""`crowbar network` and `crowbar neutron` against a real server, through the real CLI: output
formats, `-o json`, and one-line errors. Reuses the e2e server fixture (tests/e2e/conftest.py),
loaded read-only by path."""

from __future__ import annotations

import json

import pytest
import yaml
from sqlalchemy import select

from crowbar.db.models import Node
from crowbar.db.session import Database

from netdb_helpers import TWO_NICS

pytestmark = pytest.mark.e2e

from e2e_fixtures import e2e  # noqa: E402  (tests/e2e_fixtures.py)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module: these tests only add to what the others left."""
    factory = e2e.Servers(tmp_path_factory.mktemp("network-cli"))
    try:
        yield factory.new()
    finally:
        factory.close()


def set_inventory(server, name: str, nics) -> None:
    db = Database(f"sqlite:///{server.data_dir / 'crowbar.db'}")
    try:
        with db.session() as s:
            s.scalar(select(Node).where(Node.name == name)).discovery = {"nics": nics}
    finally:
        db.dispose()


def test_network_listing_show_and_export_import(server, tmp_path):
    rows = server.json("network", "list")
    assert [r["name"] for r in rows][:2] == ["admin", "bmc"] and all("id" in r for r in rows)
    table = server.ok("network", "list").stdout
    assert "192.168.124.0/24" in table and "host 192.168.124.81-192.168.124.160" in table
    assert server.json("network", "show", "admin")["router"] == "192.168.124.1"

    exported = server.ok("network", "export").stdout
    assert yaml.safe_load(exported)["networks"]["admin"]["netmask"] == "255.255.255.0"
    assert json.loads(server.ok("network", "export", "-o", "json").stdout) == yaml.safe_load(exported)
    path = tmp_path / "template.yaml"
    path.write_text(exported)
    out = server.ok("network", "import", path).stdout
    assert out.splitlines() == ["import template: applied", "  no changes"]

    bad = tmp_path / "bad.yaml"
    bad.write_text(exported.replace("vlan: 200", "vlan: 5000"))
    r = server.fails("network", "import", bad, code=1)
    assert r.stderr.startswith("error: network 'storage': field 'vlan': 5000 is outside 1..4094")
    assert "[HTTP 422]" in r.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("networks: [oops\n")
    assert "not valid YAML or JSON" in server.fails("network", "import", broken).stderr
    assert "no such file" in server.fails("network", "import", tmp_path / "missing.yaml").stderr


def test_allocate_allocations_release_and_their_errors(server):
    server.ok("nodes", "create", "cli1.example.com")
    server.ok("nodes", "create", "cli2.example.com")
    out = server.ok("network", "allocate", "admin", "cli1.example.com").stdout
    assert out.strip() == "cli1.example.com allocated 192.168.124.81 on admin (range host)"
    again = server.ok("network", "allocate", "admin", "cli1.example.com", "--address", "192.168.124.99").stdout
    assert again.splitlines() == [
        "cli1.example.com already has 192.168.124.81 on admin (range host)",
        "note: the node already has 192.168.124.81 on 'admin'; release it first to change it"]
    got = server.json("network", "allocate", "admin", "cli2.example.com", "--address", "192.168.124.99")
    assert got == {"network": "admin", "node": "cli2.example.com", "range": "host",
                   "address": "192.168.124.99", "created": True}
    rows = server.json("network", "allocations", "admin")
    assert [(r["node"], r["address"]) for r in rows] == [("cli1.example.com", "192.168.124.81"),
                                                         ("cli2.example.com", "192.168.124.99")]
    assert "cli2.example.com" in server.ok("network", "allocations", "admin").stdout

    assert server.fails("network", "allocate", "admin", "ghost.example.com", code=1).stderr.strip() == \
        "error: node 'ghost.example.com' does not exist [HTTP 404]"
    assert server.fails("network", "allocate", "admin", "cli1.example.com", "--address", "1.2.3").stderr.strip() == \
        "error: network 'admin': address '1.2.3' is not an IP address [HTTP 422]"
    assert server.fails("network", "allocate", "nova_fixed", "cli1.example.com").stderr.strip() == (
        "error: network 'nova_fixed': no range 'host' and no 'host' range to fall back to "
        "(ranges: router, dhcp) [HTTP 422]")
    assert server.fails("network", "allocate", "nope", "cli1.example.com").stderr.startswith(
        "error: network 'nope' does not exist")
    assert server.ok("network", "release", "admin", "cli2.example.com").stdout.strip() == \
        "released 192.168.124.99 of cli2.example.com on admin"
    assert server.fails("network", "release", "admin", "cli2.example.com").stderr.strip() == \
        "error: node 'cli2.example.com' has no address on network 'admin' [HTTP 404]"


def test_plan_in_every_format(server):
    server.ok("nodes", "create", "plan1.example.com")
    for net in ("admin", "storage", "public"):
        server.ok("network", "allocate", net, "plan1.example.com")
    r = server.fails("network", "plan", "plan1.example.com", code=1)
    assert r.stderr.startswith("error: node 'plan1.example.com' has no NIC inventory yet")
    set_inventory(server, "plan1.example.com", TWO_NICS)

    plan = server.json("network", "plan", "plan1.example.com")
    assert [i["name"] for i in plan["interfaces"]] == ["eth0", "eth0.200", "eth0.300"]
    table = server.ok("network", "plan", "plan1.example.com").stdout
    assert "eth0.300" in table and "route default via 192.168.126.1 dev eth0.300 (public)" in table
    networkd = server.ok("network", "plan", "plan1.example.com", "-o", "networkd").stdout
    assert networkd.startswith("# /etc/systemd/network/10-eth0.network\n[Match]\nMACAddress=52:54:00:00:00:01")
    assert "# /etc/systemd/network/30-eth0.200.netdev\n[NetDev]\nName=eth0.200\nKind=vlan" in networkd
    netplan = server.ok("network", "plan", "plan1.example.com", "-o", "netplan").stdout
    assert yaml.safe_load(netplan)["network"]["vlans"]["eth0.300"]["routes"] == [
        {"to": "default", "via": "192.168.126.1"}]
    ifupdown = server.ok("network", "plan", "plan1.example.com", "-o", "ifupdown").stdout
    assert ifupdown.startswith("# /etc/network/interfaces\n# Generated by Crowbar for plan1.example.com")
    assert "error: " in server.fails("network", "plan", "plan1.example.com", "-o", "xml", code=2).stderr
    assert server.fails("network", "plan", "ghost.example.com").stderr.strip() == \
        "error: node 'ghost.example.com' does not exist [HTTP 404]"


def test_create_update_delete_with_preview(server):
    out = server.ok("network", "create", "mgmt", "--subnet", "10.20.0.0/24", "--conduit", "intf1",
                    "--vlan", "20", "--use-vlan", "--range", "host=10.20.0.10-10.20.0.11").stdout
    assert out.splitlines()[0] == "create mgmt: applied"
    server.ok("nodes", "create", "m1.example.com")
    server.ok("network", "allocate", "mgmt", "m1.example.com")
    preview = server.ok("network", "update", "mgmt", "--range", "host=10.20.0.11-10.20.0.12", "--preview").stdout
    assert preview.splitlines() == [
        "update mgmt: preview, nothing changed",
        "  ~ mgmt.ranges.host: 10.20.0.10-10.20.0.11 -> 10.20.0.11-10.20.0.12",
        "nodes whose interfaces change: m1.example.com",
        "allocations that would move:",
        "  mgmt m1.example.com: 10.20.0.10 -> 10.20.0.11 (10.20.0.10 is outside range 'host' "
        "(10.20.0.11-10.20.0.12))",
        "apply with --force to move or release them"]
    refused = server.fails("network", "update", "mgmt", "--range", "host=10.20.0.11-10.20.0.12", code=1)
    assert "Nothing was changed" in refused.stderr and "[HTTP 409]" in refused.stderr
    moved = server.json("network", "update", "mgmt", "--range", "host=10.20.0.11-10.20.0.12", "--force")
    assert moved["applied"] and moved["moves"][0]["new_address"] == "10.20.0.11"
    assert server.fails("network", "update", "mgmt", "--vlan", "0").stderr.strip() == \
        "error: network 'mgmt': field 'vlan': 0 is outside 1..4094 [HTTP 422]"
    assert "--range" in server.fails("network", "update", "mgmt", "--range", "host").stderr
    assert "released" not in server.ok("network", "delete", "mgmt", "--preview").stdout.split("\n")[0]
    assert "would be released" in server.ok("network", "delete", "mgmt", "--preview").stdout
    server.fails("network", "delete", "mgmt", code=1)
    assert server.ok("network", "delete", "mgmt", "--force").stdout.startswith("delete mgmt: applied")


def test_neutron_commands(server, tmp_path):
    server.ok("nodes", "create", "net1.example.com")
    set_inventory(server, "net1.example.com", TWO_NICS)
    blue = server.json("neutron", "networks", "create", "blue")
    assert blue["segmentation_id"] == 501
    assert server.json("neutron", "networks", "create", "red")["segmentation_id"] == 502
    assert server.json("neutron", "networks", "create", "prov", "--vlan", "3000")["segmentation_id"] == 3000
    in_use = server.fails("neutron", "networks", "create", "again", "--vlan", "3000", code=1)
    assert in_use.stderr.strip() == ("error: Unable to create the network. The VLAN 3000 on physical "
                                     "network physnet1 is in use. [HTTP 409]")
    rows = server.json("neutron", "networks", "list")
    assert [(r["name"], r["segmentation_id"]) for r in rows] == [
        ("nova_fixed", 500), ("blue", 501), ("red", 502), ("prov", 3000)]
    assert server.ok("neutron", "whois", "eth1.501").stdout.strip() == \
        f"eth1.501: network blue ({blue['id']}), vlan 501"
    assert server.json("neutron", "whois", "brq" + blue["id"][:11])["id"] == blue["id"]
    ports = tmp_path / "ports.json"
    port_id = "3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"
    ports.write_text(json.dumps([{"ID": port_id, "Name": "vm", "Network ID": blue["id"]}]))
    assert server.json("neutron", "whois", "tap3f2a9c1e-5b", "--ports", ports)["network"]["name"] == "blue"
    assert "matches no tenant network" in server.fails("neutron", "whois", "vxlan-7").stderr
    config = server.ok("neutron", "config", "net1.example.com").stdout
    assert "# /etc/neutron/plugins/ml2/ml2_conf.ini" in config
    assert "network_vlan_ranges = physnet1:500:2500" in config
    assert "physical_interface_mappings = physnet1:eth0" in config
    only = server.ok("neutron", "config", "net1.example.com", "--file", "l3").stdout
    assert only.splitlines()[0] == "# /etc/neutron/l3_agent.ini"
    assert server.json("neutron", "settings")["tenant_vlan_count"] == 2000
    assert server.ok("neutron", "networks", "delete", "red").stdout
    assert server.json("neutron", "networks", "create", "green")["segmentation_id"] == 502
