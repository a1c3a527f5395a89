"""Node interface plans: which NIC, bond, VLAN and bridge carries each of a node's networks, and
the files that configure them (systemd-networkd, netplan or ifupdown), or the plan as JSON.

Storage and orchestration only: the plan is crowbar.network.plan.plan_interfaces over what the
database holds, rendered by crowbar.network.render.

Node inventory: the plan reads the node's NICs from `node.discovery["nics"]`, a list of
{"name": "eth0", "mac": "52:54:00:12:34:56", "speed": 1000 (Mb/s, or "1g", "10g"...),
"driver": "e1000e", "bus": "0000:01:00.0"}, and the hardware model for the template's
interface_map from `node.discovery["product_name"]` (or `discovery["dmi"]["product_name"]`).
The conduit_map's role regex is matched against the names of the roles bound to the node; the
addresses are the node's allocations (crowbar.services.network.allocations).
`node_plans` costs a handful of queries whatever the number of nodes.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from crowbar.db.models import Node, NodeRole, Role
from crowbar.db.sql import chunks
from crowbar.errors import Conflict, InvalidInput
from crowbar.network.model import NetworkTemplate
from crowbar.network.plan import plan_interfaces
from crowbar.network.render import netplan_document, render_ifupdown, render_netplan, render_networkd
from crowbar.services import lookup
from crowbar.services.network.allocations import node_addresses
from crowbar.services.network.templates import current_template

PLAN_FORMATS = ("json", "networkd", "netplan", "ifupdown")


def inventory(node_name: str, discovery: Any) -> tuple[list, str | None]:
    discovery = discovery or {}
    nics = discovery.get("nics") if isinstance(discovery, Mapping) else None
    if not nics:
        raise Conflict(f"node {node_name!r} has no NIC inventory yet: discovery['nics'] is empty "
                       "(the node's agent reports it; a list of {name, mac, speed, driver, bus})",
                       field="discovery.nics")
    if not isinstance(nics, list):
        raise InvalidInput(f"node {node_name!r}: discovery['nics'] must be a list of NICs",
                           field="discovery.nics")
    product = discovery.get("product_name") or (discovery.get("dmi") or {}).get("product_name")
    return nics, product


def roles_of(session: Session, node_ids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {node_id: [] for node_id in node_ids}
    for part in chunks(node_ids):
        for node_id, role in session.execute(select(NodeRole.node_id, Role.name)
                                             .join(Role, Role.id == NodeRole.role_id)
                                             .where(NodeRole.node_id.in_(part))
                                             .order_by(NodeRole.id)):
            out[node_id].append(role)
    return out


def render_plan(plan, fmt: str) -> dict:
    if fmt == "json":
        return plan.to_dict()
    if fmt == "networkd":
        files = {f"/etc/systemd/network/{name}": text for name, text in render_networkd(plan).items()}
    elif fmt == "netplan":
        files = {"/etc/netplan/50-crowbar.yaml": render_netplan(plan)}
    elif fmt == "ifupdown":
        files = {"/etc/network/interfaces": render_ifupdown(plan)}
    else:
        raise InvalidInput(f"format {fmt!r} is not one of {', '.join(PLAN_FORMATS)}", field="format")
    return {"node": plan.node, "format": fmt, "files": files}


def node_plans(session: Session, node_keys: list, fmt: str = "json",
               template: NetworkTemplate | None = None) -> list[dict]:
    """Interface plans of many nodes, rendered as `fmt`: a handful of queries whatever the count."""
    if fmt not in PLAN_FORMATS:
        raise InvalidInput(f"format {fmt!r} is not one of {', '.join(PLAN_FORMATS)}", field="format")
    return [render_plan(plan, fmt) for plan in _plans(session, node_keys, template)]


def node_netplans(session: Session, node_keys: list) -> list[dict]:
    """The nodes' plans as netplan v2 documents (`{"network": ...}`, what the netplan format's file
    holds), for a caller that works on them: an OS install's cloud-init seed."""
    return [netplan_document(plan) for plan in _plans(session, node_keys)]


def _plans(session: Session, node_keys: list, template: NetworkTemplate | None = None) -> Iterator:
    """The nodes' interface plans, one at a time (their inputs read together first)."""
    template = template or current_template(session)
    nodes = lookup.node_refs(session, node_keys)
    ids = [node_id for node_id, _name in nodes]
    discovery: dict[int, Any] = {}
    for part in chunks(ids):
        discovery.update(session.execute(select(Node.id, Node.discovery).where(Node.id.in_(part))).all())
    addresses = node_addresses(session, ids)
    roles = roles_of(session, ids)
    for node_id, name in nodes:
        nics, product = inventory(name, discovery.get(node_id))
        yield plan_interfaces(name, nics, addresses[node_id], template, roles[node_id], product)


def node_plan(session: Session, node_key, fmt: str = "json") -> dict:
    return node_plans(session, [node_key], fmt)[0]
