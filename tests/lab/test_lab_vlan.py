"""VLANs of the network model on real kernels: two lab VMs (qemu, TCG, running Debian's kernel in
the discovery image, where 8021q loads) get a `storage` address each, and the VLAN subinterface
their interface plans name (`crowbar network plan NODE -o json`: name, VLAN id, parent NIC,
address/prefix) is created on each VM by the lab barclamp's role lab-vlan, run through the VMs'
discovery agents. The walls show the kernel's own view (/proc/net/vlan) and that each VM's peer
answered a ping over the subinterface: the tagged frames crossed the lab's bridge, which does no
VLAN filtering.

Negative control: each VM also asks for its peer's storage address by ARP, with the same source
address, from a VLAN device on a VLAN id nobody else uses (one per VM, so the two controls can
never hear each other); nothing answers, while the same ARP request over the plan's VLAN is
answered. The control is not "the peer's storage address is unreachable untagged on the admin
NIC": Linux answers ARP for any of its addresses on any of its interfaces (arp_ignore=0), and on
these VMs the peer does answer an untagged request for its storage address (the wall's
untagged_arp_answered, printed but not asserted). Only the tag keeps the VLANs apart.

The lab, its CLI wrapper and the `cli` fixture (which always takes the lab down) are
test_lab_e2e's.
"""

from __future__ import annotations

import json
import time

import pytest

# tests/lab is on sys.path (pytest's default prepend import mode): the lab's CLI wrapper, its
# skip reasons, and the `cli` fixture whose teardown always runs `lab down`.
from test_lab_e2e import Cli, _missing, cli  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]

MEMORY_MB = 384
DEPLOYMENT = "vlan"
ROLE = "lab-vlan"


def _vlan_config(text: str) -> dict[str, tuple[int, str]]:
    """/proc/net/vlan/config's rows: device -> (VLAN id, parent)."""
    rows = {}
    for line in text.splitlines():
        parts = [part.strip() for part in line.split("|")]
        if len(parts) == 3 and parts[1].isdigit():
            rows[parts[0]] = (int(parts[1]), parts[2])
    return rows


def _storage_plan(run: Cli, node: str, mac: str) -> dict:
    """Allocate `node` a storage address; its VLAN subinterface as its interface plan says."""
    allocated = run.json("network", "allocate", "storage", node)
    plan = run.json("network", "plan", node)
    attachment = plan["attachments"]["storage"]
    assert attachment["address"].split("/")[0] == allocated["address"], plan
    interfaces = {i["name"]: i for i in plan["interfaces"]}
    vlan = interfaces[attachment["interface"]]
    assert vlan["kind"] == "vlan" and vlan["vlan"] and vlan["parent"] == attachment["conduit_interface"], plan
    parent = interfaces[vlan["parent"]]
    assert parent["kind"] == "physical" and parent["mac"] == mac, plan  # the VM's (only) NIC
    assert attachment["address"] in vlan["addresses"], plan
    return {"name": vlan["name"], "parent": vlan["parent"], "vlan": vlan["vlan"], "address": attachment["address"]}


def test_storage_vlan_from_the_plan_carries_traffic_between_two_vms(cli):  # noqa: F811 (the imported fixture)
    timings = {}
    started = time.monotonic()
    cli("lab", "up", "--nodes", "2", "--memory", str(MEMORY_MB), "--nics", "1", "--disk", "1",
        "--wait", "--timeout", "300")
    timings["lab up to both discovered"] = time.monotonic() - started

    started = time.monotonic()
    vms = {vm["name"]: vm for vm in cli.json("lab", "status")["vms"]}
    assert set(vms) == {"vm1", "vm2"}
    nodes = {n["name"]: n for n in cli.json("nodes", "list")}
    for vm in vms.values():
        assert vm["alive"] and vm["node"] in nodes, f"{vm['name']} has no node: {vm}{cli.context()}"
        assert nodes[vm["node"]]["state"] == "discovered"

    plans = {name: _storage_plan(cli, vm["node"], vm["macs"][0]) for name, vm in vms.items()}
    assert plans["vm1"]["address"] != plans["vm2"]["address"]
    # A VLAN id for each VM's negative control: neither the plan's nor the other VM's.
    used = {p["vlan"] for p in plans.values()}
    controls = dict(zip(sorted(vms), [v for v in range(4094, 1, -1) if v not in used]))
    peers = {"vm1": "vm2", "vm2": "vm1"}
    for name, vm in vms.items():
        value = {**plans[name], "peer": plans[peers[name]]["address"].split("/")[0],
                 "control_vlan": controls[name]}
        cli("attribs", "set", "lab-vlan", json.dumps(value), "--node", vm["node"])
        assert cli.json("attribs", "get", "lab-vlan", "--node", vm["node"])["value"] == value

    cli("deployments", "create", DEPLOYMENT)
    for vm in vms.values():
        cli("deployments", "bind", DEPLOYMENT, ROLE, vm["node"])
    cli("deployments", "commit", DEPLOYMENT)
    done = cli("anneal", "--wait", "--timeout", "180", ok=False)
    timings["allocate, plan, anneal lab-vlan on both"] = time.monotonic() - started
    noderoles = {nr["node"]: nr for nr in cli.json("noderoles", "list", "--deployment", DEPLOYMENT, "--role", ROLE)}
    assert set(noderoles) == {vm["node"] for vm in vms.values()}
    logs = "".join(cli("noderoles", "log", str(nr["id"]), ok=False).stdout for nr in noderoles.values())
    assert done.returncode == 0, f"{cli.log[-3]}\n{logs}{cli.context()}"

    summary = []
    for name, vm in vms.items():
        plan, peer = plans[name], plans[peers[name]]
        probe = cli.json("noderoles", "show", str(noderoles[vm["node"]]["id"]))["wall"]["lab"]["vlan_probe"]
        where = f"{name} ({vm['node']}): {json.dumps(probe, indent=1)}\n{logs}"
        # The device the plan names exists in the VM's kernel, with the plan's VLAN id and parent...
        assert _vlan_config(probe["vlan_config"]).get(plan["name"]) == (plan["vlan"], plan["parent"]), where
        assert f"VID: {plan['vlan']}" in probe["vlan_device"], where
        assert f"{plan['name']}@{plan['parent']}:" in probe["link"] and ",UP" in probe["link"], where
        # ...with the plan's address and prefix, and the peer answered over it.
        assert probe["ipv4"] == [plan["address"]], where
        assert probe["peer"] == peer["address"].split("/")[0], where
        assert probe["peer_answered"] is True, where
        assert probe["arp_answered"] is True, where
        # Negative control: the same ARP request on a VLAN the peer does not use goes unanswered.
        assert probe["control"]["vlan"] == controls[name] != plan["vlan"], where
        assert probe["control"]["answered"] is False, where
        summary.append(f"{name}: {plan['name']} (VLAN {plan['vlan']} on {plan['parent']}) {plan['address']}; "
                       f"{probe['peer']} answered after {probe['ping_attempts']} ping(s), "
                       f"{probe['ping_seconds']}s; no ARP answer on VLAN {controls[name]}; untagged ARP on "
                       f"{plan['parent']} answered: {probe['untagged_arp_answered']} (not asserted)")
    print("\n" + "\n".join(summary + [f"{what}: {seconds:.0f}s" for what, seconds in timings.items()]))
