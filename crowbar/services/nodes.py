"""Nodes: create, list, show, update, delete."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Text, cast, func, or_, select, text, tuple_
from sqlalchemy.orm import Session, load_only, selectinload

from crowbar.db.events import record
from crowbar.db.models import Deployment, Node, NodeRole, NodeTag, Role, utcnow
from crowbar.db.session import signal_work
from crowbar.db.sql import chunks, json_array_sum, json_number
from crowbar.documents import check_if_match
from crowbar.engine import graph
from crowbar.errors import Conflict, InvalidInput
from crowbar.provisioner import lifecycle
from crowbar.services import lookup, power_state


def set_state(session: Session, node: Node, target: str, reason: str = "", actor: str = "system") -> None:
    """Move a node along its lifecycle (refused unless the table allows it), with its bootenv."""
    lifecycle.check(node.state, target)
    record(session, [{"object_type": "node", "object_id": node.id, "action": "lifecycle", "actor": actor,
                      "from_state": node.state, "to_state": target, "message": reason}])
    node.state, node.state_reason, node.state_changed_at = target, reason, utcnow()
    node.bootenv = lifecycle.bootenv_for(target, node.os or lifecycle.DEFAULT_OS)


def install_step(session: Session, node: Node, target: str, reason: str, actor: str) -> None:
    """set_state during an install, release or BIOS step, and the time the node entered each step in
    node.install["steps"] (the last 30; crowbar.services.install clears them when a deploy starts)."""
    set_state(session, node, target, reason, actor)
    steps = list((node.install or {}).get("steps", []))
    steps.append({"state": target, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    node.install = {**(node.install or {}), "steps": steps[-30:]}


def agent_driven(node: Node) -> bool:
    """Whether the node runs a live discovery agent (which reboots it on request)."""
    return node.bootenv == lifecycle.DISCOVERY and node.alive


def node_dict(node: Node, full: bool = False, tags: list[str] | None = None) -> dict:
    """The node as the API shows it; `full` adds its details and tags (`tags`: read by a caller
    showing many, `tags_of`, instead of each node's own query)."""
    out = {"id": node.id, "name": node.name, "state": node.state, "admin": node.admin, "alive": node.alive,
           "available": node.available, "bootenv": node.bootenv}
    if full:
        out.update(state_reason=node.state_reason, boot_mac=node.boot_mac, os=node.os,
                   power_driver=node.power_driver, description=node.description, discovery=node.discovery,
                   hints=node.hints, install=node.install or {}, created_at=node.created_at.isoformat(),
                   tags=tags if tags is not None else [t.tag for t in node.tag_rows])
    return out


def tags_of(session: Session, ids: list[int]) -> dict[int, list[str]]:
    """The tags of many nodes, by node id, in one query per chunk (each list in order)."""
    out: dict[int, list[str]] = {i: [] for i in ids}
    for part in chunks(ids):
        for node_id, tag in session.execute(select(NodeTag.node_id, NodeTag.tag)
                                            .where(NodeTag.node_id.in_(part)).order_by(NodeTag.tag)):
            out[node_id].append(tag)
    return out


def system_deployment(session: Session) -> Deployment:
    return session.scalar(select(Deployment).where(Deployment.system.is_(True)))


def create_node(session: Session, name: str, admin: bool = False, alive: bool = True, available: bool = True,
                description: str = "", actor: str = "system", bind_roles: bool = True,
                binder: graph.Binder | None = None) -> dict:
    """Create a node; like Crowbar 2, bind the discovery roles (and bootstrap roles on the admin node)."""
    node = add_node(session, name, admin=admin, alive=alive, available=available, description=description,
                    actor=actor, bind_roles=bind_roles, binder=binder)
    return node_dict(node, full=True)


def add_node(session: Session, name: str, *, admin: bool = False, alive: bool = True, available: bool = True,
             description: str = "", actor: str = "system", bind_roles: bool = True,
             binder: graph.Binder | None = None, **columns) -> Node:
    """create_node's work, answering the Node. `columns` are other columns set in the same INSERT
    (discovery sets the state, bootenv, inventory and boot MAC at once)."""
    name = lookup.valid_node_name(name)
    if session.scalar(select(Node.id).where(Node.name == name)) is not None:
        raise Conflict(f"node {name!r} already exists", field="name")
    return add_nodes(session, [dict(columns, name=name, admin=admin, alive=alive, available=available,
                                    description=description)],
                     actor=actor, bind_roles=bind_roles, binder=binder)[0]


def add_nodes(session: Session, rows: list[dict], *, actor: str = "system", bind_roles: bool = True,
              binder: graph.Binder | None = None) -> list[Node]:
    """New nodes, in one flush: each row is a node's columns (`name`, valid and free: the caller
    checked; any other column, set in the same INSERT). Their create events are recorded, and the
    roles flagged `discovery` (and `bootstrap`, for an admin node) are bound to them in the system
    deployment and committed, once for all of them."""
    made = [Node(**{"admin": False, "alive": True, "available": True, "description": "", "bootenv": "local",
                    "discovery": {}, "hints": {}, **row}) for row in rows]
    session.add_all(made)
    session.flush()
    record(session, [{"object_type": "node", "object_id": n.id, "action": "create", "actor": actor,
                      "to_state": "alive" if n.alive else "dead", "message": n.name} for n in made])
    if bind_roles and made:
        flags = ["discovery"] + (["bootstrap"] if any(n.admin for n in made) else [])
        # Only the roles that may carry those flags are read (their flags, as text, name one); the
        # check that they do is role.has.
        maybe = or_(*(cast(Role.flags, Text).like(f'%"{flag}"%') for flag in flags))
        roles = [r for r in session.scalars(select(Role).where(maybe).order_by(Role.id))
                 if any(r.has(f) for f in flags)]
        system = session.scalar(select(Deployment).where(Deployment.system.is_(True)).with_for_update())
        binder = binder or graph.Binder(session, actor)
        binder.holds_lock(system)
        binder.fresh_nodes.update(n.id for n in made)
        before = len(binder.created)
        for role in roles:
            targets = [n for n in made if role.has("discovery") or (n.admin and role.has("bootstrap"))]
            if targets:
                binder.bind_many(system, role, targets)
        graph.commit_noderoles(session, system.id, actor, made=binder.created[before:])
    signal_work(session, "anneal")
    return made


MAX_BATCH = lookup.MAX_BULK  # nodes created in one call


def create_nodes(session: Session, items: list[dict], actor: str = "system") -> list[dict]:
    """Create many nodes in one transaction, all or none: each item is create_node's arguments
    (`name`, and `admin`, `alive`, `available`, `description`). Names are checked at once (a
    name given twice or taken: 409 naming it); the discovery roles are bound to all of them with
    one binder, a statement per chunk, and committed once."""
    if not isinstance(items, list) or not items:
        raise InvalidInput("give at least one node", field="nodes")
    if len(items) > MAX_BATCH:
        raise InvalidInput(f"at most {MAX_BATCH} nodes in one call (got {len(items)})", field="nodes")
    names = [lookup.valid_node_name(item.get("name")) for item in items]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise Conflict(f"node {name!r} is named twice", field="name")
        seen.add(name)
    for part in chunks(names):
        taken = session.scalar(select(Node.name).where(Node.name.in_(part)).limit(1))
        if taken is not None:
            raise Conflict(f"node {taken!r} already exists", field="name")
    made = add_nodes(session, [{"name": name, "admin": bool(item.get("admin", False)),
                                "alive": bool(item.get("alive", True)), "available": bool(item.get("available", True)),
                                "description": str(item.get("description") or "")}
                               for item, name in zip(items, names)], actor=actor)
    return [node_dict(n, full=True) for n in made]


# Inventory values the node list shows, filters and sorts by, read from the discovery inventory in
# SQL (JSON paths; -1: not discovered yet), so a page loads only its rows' values.
MEMORY = func.coalesce(json_number(Node.discovery, "memory", "total_bytes"), -1)
CPUS = func.coalesce(json_number(Node.discovery, "cpu", "count"), -1)
DISK = func.coalesce(json_array_sum(Node.discovery, "disks", "size_bytes"), -1)  # all its disks together
SORTS = {"id": Node.id, "name": Node.name, "state": Node.state, "memory": MEMORY, "cpus": CPUS, "disk": DISK}


def list_nodes(session: Session, *, state: str | None = None, name: str | None = None,
               deployment: str | None = None, memory_min: int | None = None, cpus_min: int | None = None,
               disk_min: int | None = None, tag: str | None = None, sort: str = "id", limit: int | None = None,
               marker: int | None = None) -> list[dict]:
    """Nodes in `sort` order (id, name, state, memory, cpus, disk; `-` before it: descending; then by id):
    `limit` of them after the node with id `marker` (all without), in lifecycle `state`, whose name
    starts with `name`, with a noderole in `deployment`, at least `memory_min` MiB of memory and
    `cpus_min` CPUs, `disk_min` GiB of disks (all together), tagged `tag` (crowbar.services.os_rules). The marker is the last node of the previous page: the page starts after its
    place in the order (keyset paging: as fast on page 100 as on page 1)."""
    descending, key = sort.startswith("-"), sort.lstrip("-")
    if key not in SORTS:
        raise InvalidInput(f"cannot sort nodes by {key!r}: expected one of {', '.join(SORTS)} (- before it: "
                           "descending)", field="sort")
    column = SORTS[key]
    # Only the columns a list shows: not the discovery inventory and hints (kilobytes per node).
    q = select(Node, MEMORY, CPUS, DISK).options(load_only(Node.id, Node.name, Node.state, Node.admin, Node.alive,
                                                     Node.available, Node.bootenv, Node.os),
                                             selectinload(Node.tag_rows))
    if state:
        q = q.where(Node.state == lifecycle.parse(state))
    if name:
        q = q.where(Node.name.startswith(name.strip().lower(), autoescape=True))
    if deployment:
        d = lookup.deployment(session, deployment)
        q = q.where(Node.id.in_(select(NodeRole.node_id).where(NodeRole.deployment_id == d.id)))
    if tag:
        q = q.where(Node.id.in_(select(NodeTag.node_id).where(NodeTag.tag == tag.strip().lower())))
    if memory_min is not None:
        q = q.where(MEMORY >= memory_min * 2**20)
    if cpus_min is not None:
        q = q.where(CPUS >= cpus_min)
    if disk_min is not None:
        q = q.where(DISK >= disk_min * 2**30)
    if marker is not None:
        after: tuple = (marker,)
        columns: tuple = (Node.id,)
        if key != "id":
            found = session.execute(select(column).where(Node.id == marker)).first()
            if found is None:
                raise InvalidInput(f"node {marker} (where the previous page ended) no longer exists: start from "
                                   "the first page", field="marker")
            after, columns = (found[0], marker), (column, Node.id)
        q = q.where(tuple_(*columns) < tuple_(*after) if descending else tuple_(*columns) > tuple_(*after))
    q = q.order_by(*((column.desc(), Node.id.desc()) if descending else (column, Node.id)))
    if limit is not None:
        q = q.limit(limit)
    out = []
    for node, memory, cpus, disk in session.execute(q):
        out.append({**node_dict(node), "os": node.os, "memory_bytes": None if memory < 0 else int(memory),
                    "cpus": None if cpus < 0 else int(cpus), "disk_bytes": None if disk < 0 else int(disk),
                    "tags": [t.tag for t in node.tag_rows]})
    power_state.states_of(session, out)
    return out


def show_node(session: Session, key) -> dict:
    return node_dict(lookup.node(session, key), full=True)


def node_for_change(session: Session, key, if_match: str | None) -> Node:
    """The node `key` names, about to change: with `if_match` (an If-Match header), its row is
    locked and read again (PostgreSQL; SQLite's transactions already hold the only write lock)
    and PreconditionFailed (412) says so when what `show_node` shows has changed since then."""
    node = lookup.node(session, key)
    if if_match is not None:
        session.refresh(node, with_for_update=True)
        check_if_match(if_match, node_dict(node, full=True), f"node {node.name!r}")
    return node


def update_node(session: Session, key, *, alive: bool | None = None, available: bool | None = None,
                description: str | None = None, actor: str = "system", if_match: str | None = None) -> dict:
    node = node_for_change(session, key, if_match)
    events = []
    for attr, value in (("alive", alive), ("available", available)):
        if value is not None and getattr(node, attr) != value:
            events.append({"object_type": "node", "object_id": node.id, "action": f"set-{attr}", "actor": actor,
                           "from_state": str(getattr(node, attr)).lower(), "to_state": str(value).lower()})
            setattr(node, attr, value)
    if description is not None:
        node.description = description
    record(session, events)
    signal_work(session, "anneal")  # alive or available again: its waiting noderoles may run
    return node_dict(node, full=True)


def delete_node(session: Session, key, actor: str = "system", if_match: str | None = None) -> dict:
    """Remove a node and its noderoles; refused while it runs or while other nodes depend on it."""
    node = node_for_change(session, key, if_match)
    ids = list(session.scalars(select(NodeRole.id).where(NodeRole.node_id == node.id)))
    running = session.scalar(select(func.count()).select_from(NodeRole)
                             .where(NodeRole.node_id == node.id, NodeRole.state == "transition"))
    if running:
        raise Conflict(f"node {node.name!r} has {running} noderoles running; wait for them to finish")
    if ids:
        dependents = session.execute(text(
            "SELECT c.id, n.name FROM node_role_edges e JOIN node_roles c ON c.id = e.child_id "
            "JOIN nodes n ON n.id = c.node_id WHERE e.parent_id IN ({}) AND c.node_id <> :node LIMIT 5"
            .format(",".join(str(i) for i in ids))), {"node": node.id}).all()
        if dependents:
            where = ", ".join(f"noderole {i} on {n}" for i, n in dependents)
            raise Conflict(f"node {node.name!r} cannot be deleted: other nodes depend on its noderoles ({where})")
        graph.delete_noderoles(session, ids)
    record(session, [{"object_type": "node", "object_id": node.id, "action": "delete", "actor": actor,
                            "message": f"{node.name} and {len(ids)} noderoles"}])
    session.delete(node)
    return {"id": node.id, "name": node.name, "deleted": True, "noderoles_deleted": len(ids)}
