"""Attribs: named values at slash paths, read from (and set on) nodes, validated by their schema."""

from __future__ import annotations

import json

import jsonschema
from sqlalchemy import select
from sqlalchemy.orm import Session

from crowbar.db.events import record
from crowbar.db.models import Attrib, DeploymentRole, NodeRole, Role
from crowbar.db.session import signal_work
from crowbar.db.sql import chunks, keyset
from crowbar.documents import MISSING, check_strict, dig, loads_strict, put
from crowbar.engine import attribs as ea
from crowbar.engine import graph
from crowbar.errors import InvalidInput, NotFound
from crowbar.services import lookup, os_rules


def _attrib(session: Session, name: str) -> Attrib:
    a = session.scalar(select(Attrib).where(Attrib.name == name))
    if a is None:
        raise NotFound(f"attrib {name!r} does not exist", field="attrib")
    return a


def list_attribs(session: Session, *, name: str | None = None, limit: int | None = None,
                 marker: int | None = None) -> list[dict]:
    """Attribs in id order: `limit` of them after id `marker` (all without), whose name starts with
    `name`."""
    q = select(Attrib)
    if name:
        q = q.where(Attrib.name.startswith(name, autoescape=True))
    roles = dict(session.execute(select(Role.id, Role.name)).all())
    return [{"id": a.id, "name": a.name, "map": a.map, "role": roles.get(a.role_id), "default": a.default}
            for a in session.scalars(keyset(q, Attrib.id, limit, marker))]


def get(session: Session, name: str, node: str | None = None) -> dict:
    """The value of an attrib: its default, or as a node shows it (the SHOWN view of
    crowbar/engine/attribs.py: hints > discovery > its noderole that owns the attrib > the value a
    noderole on the node that wants it receives from its parents)."""
    a = _attrib(session, name)
    out = {"name": a.name, "map": a.map, "schema": a.schema, "default": a.default}
    if node is None:
        return out | {"value": a.default, "source": "default"}
    n = lookup.node(session, node)
    out["node"] = n.name
    docs = {ea.HINT: n.hints, ea.DISCOVERY: n.discovery}
    owner = wanting = None
    if a.role_id is not None:
        owner = session.scalar(select(NodeRole).where(NodeRole.node_id == n.id, NodeRole.role_id == a.role_id))
        if owner is not None:
            dr = session.scalar(select(DeploymentRole.committed).where(
                DeploymentRole.deployment_id == owner.deployment_id, DeploymentRole.role_id == owner.role_id))
            docs |= ea.offered_layers(a, owner, session.get(Role, owner.role_id), dr, n.hints)
        else:
            # No owner here: a noderole on this node that wants the attrib sees its nearest ancestor's value.
            wanting_roles = [r.id for r in session.scalars(select(Role)) if a.name in (r.wants_attribs or [])]
            if wanting_roles:
                wanting = session.scalar(select(NodeRole).where(NodeRole.node_id == n.id,
                                                                NodeRole.role_id.in_(wanting_roles))
                                         .order_by(NodeRole.id).limit(1))
            if wanting is not None:
                value = ea.RunDocuments(session).wanted_from_ancestors([wanting]).get(wanting.id, {}).get(a.name)
                if value is not None:
                    docs[ea.PARENT] = put({}, a.map, value)
    layer, value = ea.pick(ea.SHOWN, docs, a.map)
    if layer in (ea.HINT, ea.DISCOVERY):
        return out | {"value": value, "source": layer}
    if owner is not None:  # whatever layer of its own the value came from, the owner shows it
        return out | {"value": a.default if value is MISSING else value,
                      "source": ea.WALL if layer == ea.WALL else ea.NODEROLE, "noderole": owner.id}
    if layer == ea.PARENT:
        return out | {"value": value, "source": ea.PARENT, "noderole": wanting.id}
    return out | {"value": a.default, "source": ea.DEFAULT}


def values(session: Session, name: str, nodes: list) -> dict[int, object]:
    """The value of attrib `name` on each of `nodes` (Node rows) as `get` shows it, in a few
    queries whatever their number: only a node with a noderole whose role owns or wants the attrib
    is looked at one by one; the others show their hints, their discovery, or the default."""
    a = _attrib(session, name)
    roles = {r.id for r in session.scalars(select(Role)) if a.name in (r.wants_attribs or [])}
    if a.role_id is not None:
        roles.add(a.role_id)
    bound: set[int] = set()
    if roles:
        for part in chunks([n.id for n in nodes]):
            bound.update(session.scalars(select(NodeRole.node_id).where(NodeRole.node_id.in_(part),
                                                                        NodeRole.role_id.in_(roles))))
    out: dict[int, object] = {}
    for n in nodes:
        if n.id in bound:
            out[n.id] = get(session, name, n.id)["value"]
            continue
        layer, value = ea.pick(ea.SHOWN, {ea.HINT: n.hints, ea.DISCOVERY: n.discovery}, a.map)
        out[n.id] = value if layer in (ea.HINT, ea.DISCOVERY) else a.default
    return out


def parse_value(raw):
    """CLI values arrive as text: strict JSON when it parses as such (numbers, true, objects), else
    a plain string ("NaN" stays the string "NaN")."""
    if not isinstance(raw, str):
        return raw
    try:
        return loads_strict(raw, field="value")
    except InvalidInput:
        return raw


def set_on_node(session: Session, name: str, value, node: str, actor: str = "system") -> dict:
    """Set a node hint; noderoles on that node which own or want the attrib run again."""
    a = _attrib(session, name)
    n = lookup.node(session, node)
    value = check_strict(parse_value(value), field="value", what=f"attrib {a.name!r}")  # before it is stored
    try:
        jsonschema.validate(value, a.schema or {})
    except jsonschema.ValidationError as exc:
        raise InvalidInput(f"attrib {a.name!r}: {json.dumps(value)} is not valid: {exc.message}",
                           field="value") from None
    hints = json.loads(json.dumps(n.hints or {}))
    old = dig(hints, a.map)
    n.hints = put(hints, a.map, value)
    record(session, [{"object_type": "node", "object_id": n.id, "action": "set-attrib", "actor": actor,
                            "message": f"{a.name} = {json.dumps(value)}"}])
    if old is not MISSING and old == value:
        return get(session, name, n.name)
    os_rules.refresh_tags(session, [n])  # conditions read the hints (and the `tags` attrib)
    roles = [r.id for r in session.scalars(select(Role))
             if r.id == a.role_id or a.name in (r.wants_attribs or [])]
    affected = list(session.scalars(select(NodeRole.id).where(
        NodeRole.node_id == n.id, NodeRole.role_id.in_(roles), NodeRole.state.in_(["active"]))))
    graph.requeue(session, affected, actor, f"attrib {a.name} changed on {n.name}")
    signal_work(session, "anneal")
    return get(session, name, n.name)
