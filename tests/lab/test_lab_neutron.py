"""OpenStack Neutron, live, on two installed lab nodes (issue 16; `make test-openstack`, not `make
test`: about half an hour under emulation, see docs/neutron.md for its last result).

Two VMs with two NICs each (eth0 on the admin bridge, eth1 on the lab's data bridge, which carries
VLAN-tagged frames between them) are installed by Crowbar with the `debian-12-openstack` image. The
network template is in dual mode, so nova_fixed's conduit (VLAN 500) is eth1. The `neutron`
barclamp's roles go through the annealer: the bus, the database, neutron-server and the DHCP and L3
agents with a Linux Bridge agent on the controller, a Linux Bridge agent on the compute node, each
configured by OpenStack's puppet-neutron with Hiera keys from Crowbar's model.

Then, through the real Neutron API: `crowbar neutron networks create` allocates VLAN 501 and creates
the tenant network in Neutron on that segment; a subnet with DHCP; a port bound to the compute node,
plugged the way Nova plugs a VM (`tap` + the port's first 11 characters) into a namespace standing
in for the VM. The Linux Bridge agent makes `brq<network 11>` and `eth1.501` on both nodes; the
namespace gets its address from the controller's dnsmasq over VLAN 501 and pings the DHCP port. A
second network (VLAN 502, the same subnet) gets its own address but cannot reach the first's DHCP
port. `crowbar neutron whois` names every such device from the live API."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from datetime import datetime

import pytest

from crowbar.openstack import barclamp_paths
from test_lab_deploy import _missing_deploy
from test_lab_e2e import cli_with_os, lab_down

OS = "debian-12-openstack"
DEPLOYMENT = "openstack"
CIDR = "10.50.0.0/24"  # both tenant networks: only their VLANs keep them apart

pytestmark = [pytest.mark.e2e, pytest.mark.openstack,
              pytest.mark.skipif(_missing_deploy() is not None, reason=str(_missing_deploy()))]


@pytest.fixture
def cli(tmp_path):
    cli = cli_with_os(tmp_path, OS, print)
    yield cli
    lab_down(cli)


def _on(cli, node: str, command: str, timeout: float = 300, ok: bool = True) -> str:
    return cli("nodes", "ssh", node, "--", command, timeout=timeout, ok=ok).stdout


def _api(namespace: str, url: str, method: str = "GET", body: dict | None = None) -> dict:
    """The Neutron API, from inside the lab's namespace (where the admin network is)."""
    argv = ["ip", "netns", "exec", namespace, "curl", "-sS", "-m", "120", "-X", method,
            "-H", "Content-Type: application/json", "-w", "\n%{http_code}", url]
    if body is not None:
        argv += ["-d", json.dumps(body)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    text, _, code = done.stdout.rpartition("\n")
    assert done.returncode == 0 and code.startswith("2"), f"{method} {url}: {code} {text} {done.stderr}"
    return json.loads(text) if text.strip() else {}


def _links(cli, node: str, netns: str = "") -> dict[str, str]:
    """Device name -> `ip -d -o link` line, on the node (or in one of its namespaces)."""
    prefix = f"ip netns exec {netns} " if netns else ""
    out = _on(cli, node, f"{prefix}ip -d -o link show")
    return {m.group(1): line for line in out.splitlines() if (m := re.match(r"\d+: ([^:@]+)[@:]", line))}


def _anneal(cli) -> None:
    done = cli("anneal", "--wait", "--timeout", "3000", "--deployment", DEPLOYMENT, timeout=3100, ok=False)
    if done.returncode != 0:
        logs = "".join(f"--- noderole {n['id']} ({n['role']} on {n['node']}) log ---\n"
                       + cli("noderoles", "log", str(n["id"]), ok=False).stdout[-6000:]
                       for n in cli.json("noderoles", "list", "--deployment", DEPLOYMENT) if n["state"] == "error")
        raise AssertionError(f"{cli.log[-1]}\n{logs}{cli.context()}")


def _plug(cli, node: str, port: dict, vm: str) -> str:
    """Plug a port as Nova plugs a VM with Linux Bridge: os-vif's linux_bridge plugin makes the
    network's bridge `brq<network 11>` if it is missing, libvirt adds the VM's device
    `tap<port 11>` to it. The agent leaves a compute port's tap to Nova ("owned by compute:nova and
    thus added elsewhere"): it adds `<iface>.<vlan>` to the bridge and reports the port up. The
    tap's other end, with the port's MAC, is in a namespace standing in for the VM, which asks for
    its address by DHCP. Answers the address."""
    tap, bridge = "tap" + port["id"][:11], "brq" + port["network_id"][:11]
    _on(cli, node, f"ip netns add {vm} && ip link add {tap} type veth peer name eth0 netns {vm} && "
                   f"ip -n {vm} link set eth0 address {port['mac_address']} && ip -n {vm} link set lo up && "
                   f"ip -n {vm} link set eth0 up && "
                   # os-vif's ensure_bridge: made unless there (the agent may make it first), no STP
                   f"{{ ip link add {bridge} type bridge forward_delay 0 stp_state 0 2>/dev/null || "
                   f"ip link show {bridge} >/dev/null; }} && ip link set {bridge} up && "
                   f"ip link set {tap} master {bridge} && ip link set {tap} up")
    # the agent polls for new devices every 2 s, then binds and wires it: retry DHCP until it answers
    out = _on(cli, node, f"for i in $(seq 12); do timeout 30 ip netns exec {vm} dhclient -1 -4 -v "
                         f"-pf /run/dhclient-{vm}.pid -lf /var/lib/dhcp/{vm}.leases eth0 2>&1 && break; "
                         f"sleep 5; done; ip -n {vm} -4 -o addr show eth0", timeout=600)
    found = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    assert found, f"the VM namespace {vm} on {node} got no address by DHCP:\n{out}\n{_wiring(cli)}"
    return found.group(1)


def _wiring(cli) -> str:
    """What the Linux Bridge agents made and said, on every node: for a failure's message."""
    said = []
    for vm in cli.json("lab", "status")["vms"]:
        said.append(f"--- {vm['node']} ---\n" + _on(
            cli, vm["node"], "ip -d -o link show | cut -c1-220; bridge link; ebtables -L 2>&1 | head -40; "
                             "tail -n 60 /var/log/neutron/neutron-linuxbridge-agent.log; "
                             "tail -n 30 /var/log/neutron/neutron-dhcp-agent.log", ok=False))
    return "\n".join(said)


def _record(cli, noderoles: list[dict], committed: float, annealed: float, agents_alive: float, reached: dict,
            pinged: float) -> None:
    """The timings benchmarks/neutron.py reports (and docs/neutron.md records): each role's runs
    from the commit, the first port's way to its address, the first tenant ping."""
    def stamp(text: str) -> float:
        return datetime.fromisoformat(text).timestamp()

    roles = []
    for nr in noderoles:
        for run in cli.json("noderoles", "log", str(nr["id"]), "--all"):
            roles.append({"role": nr["role"], "node": nr["node"], "state": run["state"],
                          "start": round(stamp(run["started_at"]) - committed, 1),
                          "seconds": round(stamp(run["finished_at"]) - stamp(run["started_at"]), 1)})
    timings = {"roles": sorted(roles, key=lambda r: r["start"]),
               "committed_to_annealed": round(annealed - committed, 1),
               "committed_to_agents_alive": round(agents_alive - committed, 1),
               "port_to_address": {name: round(end - start, 1) for name, (start, end) in reached.items()},
               "committed_to_first_tenant_ping": round(pinged - committed, 1)}
    print("\nneutron timings:", json.dumps(timings, indent=1))
    if os.environ.get("CROWBAR_NEUTRON_TIMINGS"):
        with open(os.environ["CROWBAR_NEUTRON_TIMINGS"], "w") as out:
            json.dump(timings, out, indent=1)


def test_neutron_deployed_by_crowbar_carries_a_tenant_network_on_vlan_501_between_two_nodes(cli, tmp_path):
    cli("lab", "up", "--nodes", "2", "--nics", "2", "--memory", "3072,1536", "--disk", "8", "--wait",
        "--timeout", "600", timeout=700)
    status = cli.json("lab", "status")
    namespace = status["namespace"]
    ctl, cmp = (vm["node"] for vm in status["vms"])

    # the template in dual mode: nova_fixed's conduit is the second NIC (the lab's data bridge)
    template = cli.json("network", "export")
    template["mode"] = "dual"
    (tmp_path / "template.json").write_text(json.dumps(template))
    cli("network", "import", str(tmp_path / "template.json"))
    nova_fixed = next(n for n in cli.json("network", "list") if n["name"] == "nova_fixed")
    assert nova_fixed["vlan"] == 500 and nova_fixed["use_vlan"], nova_fixed

    cli("nodes", "allocate", ctl, cmp)
    cli("nodes", "deploy", ctl, cmp, "--os", OS, "--wait", "--timeout", "2400", timeout=2500)

    for path in barclamp_paths():  # openstack-base, then neutron (which requires its roles)
        cli("barclamps", "import", str(path))
    cli("deployments", "create", DEPLOYMENT)
    cli("deployments", "bind", DEPLOYMENT, "neutron-server", ctl)  # + the bus and the database
    cli("deployments", "bind", DEPLOYMENT, "neutron-dhcp-agent", ctl)  # + a Linux Bridge agent
    cli("deployments", "bind", DEPLOYMENT, "neutron-l3-agent", ctl)
    cli("deployments", "bind", DEPLOYMENT, "neutron-linuxbridge-agent", cmp)
    committed = time.time()
    cli("deployments", "commit", DEPLOYMENT)
    _anneal(cli)
    annealed = time.time()
    noderoles = cli.json("noderoles", "list", "--deployment", DEPLOYMENT)
    placed = sorted((n["role"], n["node"]) for n in noderoles)
    assert placed == sorted([("openstack-rabbitmq", ctl), ("openstack-database", ctl), ("neutron-server", ctl),
                             ("neutron-linuxbridge-agent", ctl), ("neutron-dhcp-agent", ctl),
                             ("neutron-l3-agent", ctl), ("neutron-linuxbridge-agent", cmp)]), placed
    assert {n["state"] for n in noderoles} == {"active"}, noderoles

    # the configuration came from Crowbar's model: the VLAN range from nova_fixed's 500, the mapping
    # from the interface nova_fixed's conduit resolves to on each node
    assert re.search(r"^network_vlan_ranges\s*=\s*physnet1:500:2500$",
                     _on(cli, ctl, "cat /etc/neutron/plugins/ml2/ml2_conf.ini"), re.M)
    for node in (ctl, cmp):
        assert re.search(r"^physical_interface_mappings\s*=\s*physnet1:eth1$",
                         _on(cli, node, "cat /etc/neutron/plugins/ml2/linuxbridge_agent.ini"), re.M)
        # the role brought the mapped interface up (nothing else configures it) and chose the
        # ebtables the agent's ARP protection works with
        assert ",UP" in _on(cli, node, "ip -o link show eth1")
        assert _on(cli, node, "readlink -f /etc/alternatives/ebtables").strip() == "/usr/sbin/ebtables-legacy"

    (server,) = [n for n in noderoles if n["role"] == "neutron-server"]
    url = cli.json("noderoles", "show", str(server["id"]))["wall"]["openstack"]["neutron"]["url"]
    # every agent reports to the server (an agent's first report comes a while after its role
    # started it: the L3 agent's took minutes under emulation)
    hosts = {node: _on(cli, node, "hostname").strip() for node in (ctl, cmp)}
    expected = {("Linux bridge agent", hosts[ctl]), ("Linux bridge agent", hosts[cmp]),
                ("DHCP agent", hosts[ctl]), ("L3 agent", hosts[ctl])}
    deadline = time.monotonic() + 900
    while True:
        alive = {(a["agent_type"], a["host"]) for a in _api(namespace, f"{url}/v2.0/agents")["agents"] if a["alive"]}
        if expected <= alive:
            break
        assert time.monotonic() < deadline, f"agents alive after 15 min: {sorted(alive)}, expected {sorted(expected)}"
        time.sleep(10)
    agents_alive = time.time()

    # tenant networks: Crowbar allocates the segment (the seed's 501, 502) and creates them in Neutron
    nets = {}
    for name, pool in (("blue", ("10.50.0.10", "10.50.0.99")), ("red", ("10.50.0.100", "10.50.0.199"))):
        made = cli.json("neutron", "networks", "create", name, "--deployment", DEPLOYMENT)
        live = _api(namespace, f"{url}/v2.0/networks/{made['id']}")["network"]
        assert live["provider:network_type"] == "vlan" and live["provider:segmentation_id"] == made["segmentation_id"]
        _api(namespace, f"{url}/v2.0/subnets", "POST", {"subnet": {
            "network_id": live["id"], "cidr": CIDR, "ip_version": 4, "enable_dhcp": True, "gateway_ip": None,
            "allocation_pools": [{"start": pool[0], "end": pool[1]}]}})
        nets[name] = live
    assert [nets["blue"]["provider:segmentation_id"], nets["red"]["provider:segmentation_id"]] == [501, 502]

    # a port on each network bound to the compute node, plugged into a namespace there
    ports, addresses, reached = {}, {}, {}
    for name, vm in (("blue", "vm-blue"), ("red", "vm-red")):
        asked = time.time()
        ports[name] = _api(namespace, f"{url}/v2.0/ports", "POST", {"port": {
            "network_id": nets[name]["id"], "name": vm, "binding:host_id": hosts[cmp],
            "device_owner": "compute:nova", "device_id": f"crowbar-test-{vm}"}})["port"]
        addresses[name] = _plug(cli, cmp, ports[name], vm)
        assert addresses[name] == ports[name]["fixed_ips"][0]["ip_address"], (addresses, ports[name])
        reached[name] = (asked, time.time())  # the port created, then its address by DHCP over the VLAN
        deadline = time.monotonic() + 120  # the compute node's agent reported the port up
        while (status := _api(namespace, f"{url}/v2.0/ports/{ports[name]['id']}")["port"]["status"]) != "ACTIVE":
            assert time.monotonic() < deadline, f"port {vm} is {status} 2 min after its DHCP answer"
            time.sleep(5)

    dhcp = {name: _api(namespace, f"{url}/v2.0/ports?network_id={nets[name]['id']}&device_owner=network:dhcp")["ports"][0]
            for name in nets}
    dhcp_ip = {name: port["fixed_ips"][0]["ip_address"] for name, port in dhcp.items()}
    # each VM reaches its own network's DHCP port over the VLAN, never the other network's
    assert ", 0% packet loss" in _on(cli, cmp, f"ip netns exec vm-blue ping -c 3 -W 5 {dhcp_ip['blue']}")
    pinged = time.time()
    assert ", 0% packet loss" in _on(cli, cmp, f"ip netns exec vm-red ping -c 3 -W 5 {dhcp_ip['red']}")
    _record(cli, noderoles, committed, annealed, agents_alive, reached, pinged)
    crossed = _on(cli, cmp, f"ip netns exec vm-red ping -c 3 -W 3 {dhcp_ip['blue']}; echo rc=$?", ok=False)
    assert "100% packet loss" in crossed and "rc=1" in crossed, crossed

    # the devices the Linux Bridge agent made, on both nodes: brq<net 11>, eth1.<vlan> in it
    for node in (ctl, cmp):
        links = _links(cli, node)
        for name, vlan in (("blue", 501), ("red", 502)):
            bridge, sub = "brq" + nets[name]["id"][:11], f"eth1.{vlan}"
            assert bridge in links and sub in links, (node, sorted(links))
            assert f"vlan protocol 802.1Q id {vlan}" in links[sub] and f"master {bridge}" in links[sub], links[sub]
    # the DHCP agent's state directory names the ns- device in its namespace
    for name in nets:
        ns_device = "ns-" + dhcp[name]["id"][:11]
        assert _on(cli, ctl, f"cat /var/lib/neutron/dhcp/{nets[name]['id']}/interface").strip() == ns_device
        assert ns_device in _links(cli, ctl, f"qdhcp-{nets[name]['id']}")

    # whois: every Neutron device name on both nodes, from the live API
    found = {}
    for node in (ctl, cmp):
        names = [d for d in _links(cli, node) if d.startswith(("brq", "tap", "eth1.5"))]
        names += ["ns-" + dhcp[name]["id"][:11] for name in nets] if node == ctl else []
        for device in names:
            found[device] = cli.json("neutron", "whois", device, "--deployment", DEPLOYMENT)
    for name, vlan in (("blue", 501), ("red", 502)):
        for device in ("brq" + nets[name]["id"][:11], f"eth1.{vlan}"):
            assert found[device]["kind"] == "network" and found[device]["id"] == nets[name]["id"], found[device]
        for port in (ports[name], dhcp[name]):
            for device in ("tap" + port["id"][:11], "ns-" + port["id"][:11]):
                if device in found:
                    assert found[device]["kind"] == "port" and found[device]["id"] == port["id"], found[device]
                    assert found[device]["network"]["id"] == nets[name]["id"], found[device]
    assert {"tap" + ports["blue"]["id"][:11], "tap" + dhcp["blue"]["id"][:11], "ns-" + dhcp["blue"]["id"][:11]} <= set(found)
