"""Allocation: discovered nodes taken into service, one or many in one transaction. Each reserves
its admin address (when the network template has an admin network) and reboots through its live
discovery agent to get it; a deploy with `allocate` (crowbar.services.install) allocates first in
its own transaction, and its agents take the install job without that reboot.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from crowbar.db.events import batched
from crowbar.db.session import signal_work
from crowbar.errors import InvalidInput
from crowbar.provisioner import lifecycle
from crowbar.services import lookup, network, nodes
from crowbar.services.nodes import agent_driven, set_state

MAX_BULK = lookup.MAX_BULK  # nodes named in one bulk call


def allocate(session: Session, key, actor: str = "system") -> dict:
    """Take a discovered node into service: reserve its admin address; it reboots to get it."""
    return allocate_many(session, [key], actor)[0]


def allocate_many(session: Session, keys: list, actor: str = "system", answer: bool = True) -> list[dict]:
    """Allocate several nodes in one transaction: all of them or none (the first refusal names
    its node). The network template is read once for all of them. `answer`: False for a caller
    that answers its own way (a deploy that allocates first): nothing is shown."""
    if not isinstance(keys, list) or not keys:
        raise InvalidInput("name at least one node to allocate", field="nodes")
    if len(keys) > MAX_BULK:
        raise InvalidInput(f"at most {MAX_BULK} nodes in one call (got {len(keys)})", field="nodes")
    admin = "admin" in network.current_template(session).networks
    chosen = lookup.nodes(session, keys, tags=True, lock=True)  # read together (named twice: 422); addresses below
    with batched(session):  # their events in one insert
        for node in chosen:
            set_state(session, node, lifecycle.ALLOCATED, "allocated by the operator", actor)
            if agent_driven(node):
                node.agent_action = "reboot"
        allocations = network.allocate_many(session, "admin", [node.id for node in chosen], actor=actor) \
            if admin else [{} for _ in chosen]
    session.flush()
    signal_work(session, "anneal")
    if not answer:
        return []
    return [nodes.node_dict(node, full=True) | {"admin_address": allocation.get("address")}
            for node, allocation in zip(chosen, allocations)]
