"""The server's side of the `bmc-config` role (Crowbar 1's ipmi barclamp), which configures a
node's BMC from the discovery image: its script (barclamps/builtin/crowbar/scripts/bmc-config)
runs on the node through the agent and asks these, with the node's token, while the role runs:

  address      - the node's address on a network of the `bmc` conduit (IPAM: `network.allocate`,
                 so it is listed in the network's allocations), with netmask, gateway and VLAN;
  credentials  - the user and password the script generated on the node and set on the BMC:
                 the node's power driver becomes `ipmi` with that address, port 623 and those
                 credentials, and a `status` request is queued to prove them;
  request      - how that request went (the script waits for it: a failed status fails the role).

The password goes from the node to here once, over the agent's channel, and is stored only as
the `ipmi` driver's secret setting (write-only: never answered, logged or put in a wall). A node
may ask only while its `bmc-config` noderole runs (state transition): a token alone, such as the
one an installed system keeps for its call home, cannot change its power settings.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from crowbar.db.models import Node, NodeRole, PowerRequest, Role
from crowbar.errors import Conflict, InvalidInput, NotFound
from crowbar.network.model import BMC_CONDUIT, Network
from crowbar.services import lookup, network, power

ROLE = "bmc-config"
IPMI_PORT = 623
ACTOR = "agent"


def _while_role_runs(session: Session, node: Node) -> None:
    running = session.scalar(select(NodeRole.id).join(Role, Role.id == NodeRole.role_id).where(
        NodeRole.node_id == node.id, Role.name == ROLE, NodeRole.state == "transition").limit(1))
    if running is None:
        raise Conflict(f"node {node.name} is not running the {ROLE} role: its BMC settings are not "
                       "taken from it now", field="node")


def _bmc_network(session: Session, name: str) -> Network:
    template = network.current_template(session)
    net = template.networks.get(name)
    if net is None:
        raise NotFound(f"network {name!r} is not in the network template", field="network")
    if net.conduit != BMC_CONDUIT:
        raise InvalidInput(f"network {name!r} is on conduit {net.conduit!r}, not {BMC_CONDUIT!r}: "
                           "BMC addresses come from BMC networks only", field="network")
    return net


def address(session: Session, node: Node, network_name: str) -> dict:
    """The node's BMC address on `network_name` (allocated on first ask) and what goes with it."""
    _while_role_runs(session, node)
    net = _bmc_network(session, network_name)
    allocated = network.allocate(session, network_name, node.id, actor=ACTOR)
    return {"network": network_name, "address": allocated["address"], "netmask": str(net.subnet.netmask),
            "gateway": str(net.router) if net.router is not None else None,
            "vlan": net.vlan if net.use_vlan else None}


def credentials(session: Session, node: Node, network_name: str, username: str, password: str) -> dict:
    """Power the node through its BMC from now on, and queue a status call that proves it."""
    _while_role_runs(session, node)
    _bmc_network(session, network_name)
    addr = network.node_addresses(session, [node.id])[node.id].get(network_name)
    if addr is None:
        raise Conflict(f"node {node.name} has no address on network {network_name!r} yet: ask for one "
                       "first (POST /api/v2/agent/bmc/address)", field="network")
    power.set_power(session, node.id, "ipmi", {"address": addr, "port": IPMI_PORT, "username": username,
                                               "password": password}, actor=ACTOR)
    proof = power.queue(session, node, "status", actor=ACTOR)
    return {"driver": "ipmi", "address": addr, "port": IPMI_PORT, "username": username,
            "request": proof["id"], "state": proof["state"]}


def request(session: Session, node: Node, request_id: str) -> dict:
    """One of the node's own power requests: its state and result."""
    number = lookup.as_id(request_id)
    req = session.get(PowerRequest, number) if number is not None else None
    if req is None or req.node_id != node.id:
        raise NotFound(f"power request {request_id!r} does not exist for node {node.name}",
                       field="power_request")
    return {"id": req.id, "action": req.action, "state": req.state, "result": req.result}
