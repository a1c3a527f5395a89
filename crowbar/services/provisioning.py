"""Provisioning: discovery of booting machines, their agents, and the node lifecycle (a move that
needs the machine to boot again reboots it through its agent, or queues a power cycle).

Discovery is the only unauthenticated write in the API, and it can only create a node or re-find
one that is running the discovery image (its state boots `discovery`); it returns a fresh per-node
token (stored hashed, the previous one revoked) that authenticates everything the agent does later.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from crowbar.config import DEFAULT_DOMAIN
from crowbar.db.events import record
from crowbar.db.models import AgentJob, ApiToken, Node, NodeMac, utcnow
from crowbar.db.session import signal_work
from crowbar.errors import Conflict, InvalidInput, NotFound, Unauthorized
from crowbar.network.mac import normalize_mac as _normalize_mac
from crowbar.provisioner import lifecycle
from crowbar.services import auth, lookup, nodes, power

WAIT_SECONDS = 3


def normalize_mac(value) -> str:
    try:
        return _normalize_mac(value)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="mac") from None


def discovered_name(mac: str, domain: str) -> str:
    return f"d{mac.replace(':', '-')}.{domain}"


def _inventory_macs(inventory: dict) -> tuple[str, list[str]]:
    if not isinstance(inventory, dict):
        raise InvalidInput("the inventory must be a JSON object", field="inventory")
    nics = inventory.get("nics")
    if not isinstance(nics, list) or not nics:
        raise InvalidInput("the inventory needs a non-empty list of nics", field="nics")
    macs = []
    for i, nic in enumerate(nics):
        if not isinstance(nic, dict):
            raise InvalidInput(f"nics[{i}] must be an object", field="nics")
        try:
            macs.append(normalize_mac(nic.get("mac")))
        except InvalidInput:
            raise InvalidInput(f"nics[{i}].mac {nic.get('mac')!r} is not a MAC address", field="nics") from None
    boot = normalize_mac(inventory["boot_mac"]) if inventory.get("boot_mac") else macs[0]
    if boot not in macs:
        macs.insert(0, boot)
    return boot, macs


def _issue_node_token(session: Session, node: Node) -> str:
    session.execute(delete(ApiToken).where(ApiToken.node_id == node.id))
    token = auth.new_token()
    session.add(ApiToken(name=f"node-{node.id}-{secrets.token_hex(4)}", kind="node", node_id=node.id,
                         token_hash=auth.hash_token(token)))
    return token


def set_state(session: Session, node: Node, target: str, reason: str = "", actor: str = "system") -> None:
    """Move a node along its lifecycle (refused unless the table allows it), with its bootenv."""
    lifecycle.check(node.state, target)
    record(session, [{"object_type": "node", "object_id": node.id, "action": "lifecycle", "actor": actor,
                            "from_state": node.state, "to_state": target, "message": reason}])
    node.state, node.state_reason, node.state_changed_at = target, reason, utcnow()
    node.bootenv = lifecycle.bootenv_for(target, node.os or lifecycle.DEFAULT_OS)


def discover(session: Session, inventory: dict, domain: str = DEFAULT_DOMAIN) -> dict:
    """Create (or re-find, by any of its MACs) the node that posted this inventory."""
    boot, macs = _inventory_macs(inventory)
    inventory = dict(inventory, boot_mac=boot)
    dmi = inventory.get("dmi") if isinstance(inventory.get("dmi"), dict) else {}
    if dmi.get("product") and "product_name" not in inventory:
        inventory["product_name"] = dmi["product"]  # what conduit bus_order patterns match on
    node_id = session.scalar(select(NodeMac.node_id).where(NodeMac.mac.in_(macs)).limit(1))
    created = node_id is None
    if created:
        info = nodes.create_node(session, discovered_name(boot, domain), actor="discovery")
        node = session.get(Node, info["id"])
        node.state, node.state_changed_at, node.bootenv = lifecycle.DISCOVERED, utcnow(), lifecycle.DISCOVERY
        record(session, [{"object_type": "node", "object_id": node.id, "action": "lifecycle",
                                "actor": "discovery", "to_state": lifecycle.DISCOVERED,
                                "message": f"discovered by {boot}"}])
    else:
        node = session.get(Node, node_id)
        if lifecycle.bootenv_for(node.state) != lifecycle.DISCOVERY:
            raise Conflict(f"node {node.name!r} is {node.state}: it boots {node.bootenv}, not the discovery image; "
                           "reset it (`crowbar nodes reset`) to rediscover it")
        if node.state in (lifecycle.DISCOVERING, lifecycle.RESET):
            set_state(session, node, lifecycle.DISCOVERED, f"inventory posted by {boot}", "discovery")
    node.discovery, node.alive, node.agent_action = inventory, True, None
    if node.boot_mac != boot:
        node.boot_mac = boot
    session.execute(delete(NodeMac).where((NodeMac.node_id == node.id) | NodeMac.mac.in_(macs)))
    session.execute(NodeMac.__table__.insert(), [{"mac": m, "node_id": node.id} for m in dict.fromkeys(macs)])
    token = _issue_node_token(session, node)
    session.flush()
    signal_work(session, "anneal")
    return {"node": node.name, "token": token, "created": created, "id": node.id}


def node_for_token(session: Session, token: str | None) -> Node:
    row = auth.verify(session, token)
    if row is None or row.kind != "node" or row.node_id is None:
        raise Unauthorized("a valid node token is required")
    return session.get(Node, row.node_id)


def agent_next(session: Session, node: Node) -> dict:
    """What the node's agent should do now: a pending power action, the next job, or wait."""
    node.alive = True
    if node.agent_action:
        action, node.agent_action = node.agent_action, None
        record(session, [{"object_type": "node", "object_id": node.id, "action": f"agent-{action}",
                                "actor": "agent", "message": f"{action} sent to the agent"}])
        return {"action": action}
    job = session.scalar(select(AgentJob).where(AgentJob.node_id == node.id, AgentJob.state == "queued")
                         .order_by(AgentJob.id).limit(1))
    if job is not None:
        job.state, job.sent_at = "sent", utcnow()
        return {"action": "run", "job": str(job.id), "script": job.script, "timeout": job.timeout}
    return {"action": "wait", "seconds": WAIT_SECONDS}


def job_result(session: Session, node: Node, job_id: str, exit_code, output) -> dict:
    number = lookup.as_id(job_id)  # ASCII digits within an id's range: "²" and 25 digits name no job
    if number is None:
        raise NotFound(f"job {job_id!r} does not exist", field="job")
    job = session.get(AgentJob, number)
    if job is None or job.node_id != node.id:
        raise NotFound(f"job {job_id!r} does not exist for node {node.name}", field="job")
    if job.state == "done":
        return {"job": job.id, "state": job.state}
    if not isinstance(exit_code, int):
        raise InvalidInput("exit_code must be an integer", field="exit_code")
    job.state, job.exit_code, job.output, job.finished_at = "done", exit_code, str(output or ""), utcnow()
    signal_work(session, "anneal")  # the annealer completes the run that waits for this job
    return {"job": job.id, "state": job.state}


# -- operator actions -----------------------------------------------------------------------------
def _agent_driven(node: Node) -> bool:
    return node.bootenv == lifecycle.DISCOVERY and node.alive


def allocate(session: Session, key, actor: str = "system") -> dict:
    """Take a discovered node into service: reserve its admin address; it reboots to get it."""
    from crowbar.services import network

    node = lookup.node(session, key)
    set_state(session, node, lifecycle.ALLOCATED, "allocated by the operator", actor)
    allocation = None
    if "admin" in network.current_template(session).networks:
        allocation = network.allocate(session, "admin", node.id, actor=actor)
    if _agent_driven(node):
        node.agent_action = "reboot"
    session.flush()
    signal_work(session, "anneal")
    return nodes.node_dict(node, full=True) | {"admin_address": allocation and allocation.get("address")}


def transition(session: Session, key, target: str, actor: str = "system") -> dict:
    """reset / reinstall / problem...: move the node and make it boot what its new state says."""
    node = lookup.node(session, key)
    # Who reboots it depends on what it runs now, before the move: a live discovery agent
    # reboots on request; anything else (an installed OS, a dead agent) is power-cycled.
    agent_reboots = _agent_driven(node)
    set_state(session, node, lifecycle.parse(target), f"{target} requested", actor)
    if agent_reboots:
        node.agent_action = "reboot"
    else:  # the power worker cycles it; if that fails, the request and its event say why
        power.queue(session, node, "cycle", actor)
    signal_work(session, "anneal")
    return nodes.node_dict(node, full=True)


def expire_stuck(session: Session, now: datetime | None = None) -> list[str]:
    """Nodes sitting too long in a state that waits on the machine go to problem, with the reason."""
    now = now or datetime.now(timezone.utc)
    moved = []
    for node in session.scalars(select(Node).where(Node.state.in_(list(lifecycle.TIMEOUTS)))):
        entered = node.state_changed_at
        if entered is None:
            continue
        if entered.tzinfo is None:
            entered = entered.replace(tzinfo=timezone.utc)
        reason = lifecycle.timed_out(node.state, entered, now)
        if reason:
            set_state(session, node, lifecycle.PROBLEM, reason, "timeout")
            moved.append(node.name)
    return moved

