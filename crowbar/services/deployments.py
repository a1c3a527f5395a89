"""Deployments: a tree under `system`; binding roles to nodes in them; commit, propose, delete."""

from __future__ import annotations

import re

import jsonschema
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from crowbar.db.events import record
from crowbar.db.models import Attrib, Deployment, DeploymentRole, NodeRole, Role
from crowbar.db.session import signal_work
from crowbar.db.sql import keyset
from crowbar.documents import MISSING, check_if_match, check_strict, dig
from crowbar.engine import graph
from crowbar.errors import Conflict, InvalidInput, NotFound
from crowbar.services import lookup
from crowbar.services.noderoles import noderole_dicts
from crowbar.services.nodes import system_deployment

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
STATES = ("proposed", "committed")


def ensure_system(session: Session) -> Deployment:
    system = system_deployment(session)
    if system is None:
        system = Deployment(name="system", system=True, state="committed", description="The root deployment")
        session.add(system)
        session.flush()
        record(session, [{"object_type": "deployment", "object_id": system.id, "action": "create",
                                "to_state": "committed", "message": "system"}])
    return system


def counts_by_state(session: Session, deployment_ids: list[int] | None = None) -> dict[int, dict[str, int]]:
    q = select(NodeRole.deployment_id, NodeRole.state, func.count()).group_by(NodeRole.deployment_id, NodeRole.state)
    if deployment_ids is not None:
        q = q.where(NodeRole.deployment_id.in_(deployment_ids))
    out: dict[int, dict[str, int]] = {}
    for dep, state, n in session.execute(q):
        out.setdefault(dep, {})[state] = n
    return out


def status_of(state: str, counts: dict[str, int]) -> str:
    """A deployment's derived status: error, working, active, proposed or empty."""
    if counts.get("error"):
        return "error"
    if state == "proposed":
        return "proposed"
    if counts.get("todo") or counts.get("transition") or counts.get("blocked"):
        return "working"
    return "active" if counts else "empty"


def deployment_dict(d: Deployment, counts: dict[str, int], parent: str | None) -> dict:
    return {"id": d.id, "name": d.name, "parent": parent, "system": d.system, "state": d.state,
            "status": status_of(d.state, counts), "noderoles": sum(counts.values()), "counts": counts,
            "description": d.description}


def list_deployments(session: Session, *, state: str | None = None, name: str | None = None,
                     limit: int | None = None, marker: int | None = None) -> list[dict]:
    """Deployments in id order: `limit` of them after id `marker` (all without), in `state`
    (proposed or committed), whose name starts with `name`."""
    q = select(Deployment)
    if state:
        state = state.strip().lower()
        if state not in STATES:
            raise InvalidInput(f"unknown deployment state {state!r}: expected one of {', '.join(STATES)}",
                               field="state")
        q = q.where(Deployment.state == state)
    if name:
        q = q.where(Deployment.name.startswith(name, autoescape=True))
    rows = list(session.scalars(keyset(q, Deployment.id, limit, marker)))
    parent_ids = {d.parent_id for d in rows if d.parent_id is not None}
    names = dict(session.execute(select(Deployment.id, Deployment.name).where(Deployment.id.in_(parent_ids))).all()) \
        if parent_ids else {}
    counts = counts_by_state(session, [d.id for d in rows])
    return [deployment_dict(d, counts.get(d.id, {}), names.get(d.parent_id)) for d in rows]


def show_deployment(session: Session, key) -> dict:
    d = lookup.deployment(session, key)
    parent = session.get(Deployment, d.parent_id).name if d.parent_id else None
    out = deployment_dict(d, counts_by_state(session, [d.id]).get(d.id, {}), parent)
    out["roles"] = _roles(session, d)
    return out


def deployment_roles(session: Session, key) -> list[dict]:
    """The roles bound in a deployment, with their proposed and committed data, by id. One list,
    not pages: UNIQUE(deployment, role) bounds it by the role catalog."""
    return _roles(session, lookup.deployment(session, key))


def _roles(session: Session, d: Deployment) -> list[dict]:
    return [{"id": dr.id, "role": role, "proposed": dr.proposed, "committed": dr.committed}
            for dr, role in session.execute(select(DeploymentRole, Role.name).join(Role)
                                            .where(DeploymentRole.deployment_id == d.id).order_by(DeploymentRole.id))]


def create_deployment(session: Session, name: str, parent: str | None = None, description: str = "",
                      actor: str = "system") -> dict:
    if not name or not NAME.match(name):
        raise InvalidInput(f"deployment name {name!r} must start with a letter or digit and use only "
                           "letters, digits, '_', '.', '-'", field="name")
    if session.scalar(select(Deployment.id).where(Deployment.name == name)) is not None:
        raise Conflict(f"deployment {name!r} already exists", field="name")
    parent_row = lookup.deployment(session, parent) if parent else ensure_system(session)
    d = Deployment(name=name, parent_id=parent_row.id, description=description, state="proposed")
    session.add(d)
    session.flush()
    record(session, [{"object_type": "deployment", "object_id": d.id, "action": "create", "actor": actor,
                            "to_state": "proposed", "message": f"{name} under {parent_row.name}"}])
    return deployment_dict(d, {}, parent_row.name)


def bind(session: Session, deployment_key, role_key, node_key, actor: str = "system") -> dict:
    """Bind a role to a node in a deployment (and, recursively, what it requires).

    Binding into a committed deployment reopens it (back to proposed) so that the new noderoles are
    committed together; binding into `system` commits them at once, since system is never proposed.
    """
    d = lookup.deployment(session, deployment_key)
    role = lookup.role(session, role_key)
    node = lookup.node(session, node_key)
    existing = session.scalar(select(NodeRole).where(NodeRole.node_id == node.id, NodeRole.role_id == role.id))
    if existing is not None:
        if existing.deployment_id != d.id:
            other = session.get(Deployment, existing.deployment_id).name
            raise Conflict(f"role {role.name!r} is already bound to {node.name} in deployment {other!r} "
                           f"(noderole {existing.id})")
        return {"created": [], "noderole": noderole_dicts(session, [existing])[0], "reopened": False}
    binder = graph.Binder(session, actor)
    nr = binder.bind(d, role, node)
    reopened = False
    if d.system:
        graph.commit_noderoles(session, d.id, actor)
    elif d.state == "committed":
        d.state, reopened = "proposed", True
        record(session, [{"object_type": "deployment", "object_id": d.id, "action": "reopen", "actor": actor,
                                "from_state": "committed", "to_state": "proposed",
                                "message": f"bound {role.name} to {node.name}; commit to run it"}])
    session.flush()
    session.refresh(nr)
    signal_work(session, "anneal")
    return {"created": [c.id for c in binder.created], "noderole": noderole_dicts(session, [nr])[0],
            "reopened": reopened}


def commit(session: Session, key, actor: str = "system") -> dict:
    d = lookup.deployment(session, key)
    changed_roles = []
    for dr in session.scalars(select(DeploymentRole).where(DeploymentRole.deployment_id == d.id)):
        if dr.committed != dr.proposed:
            changed_roles.append(dr.role_id)
            dr.committed = dr.proposed
    count = graph.commit_noderoles(session, d.id, actor)
    if changed_roles:  # committed data changed: run the affected active noderoles again
        rerun = list(session.scalars(select(NodeRole.id).where(
            NodeRole.deployment_id == d.id, NodeRole.role_id.in_(changed_roles), NodeRole.state.in_(["active", "error"]))))
        graph.requeue(session, rerun, actor, "deployment data changed")
    if d.state != "committed":
        record(session, [{"object_type": "deployment", "object_id": d.id, "action": "commit", "actor": actor,
                                "from_state": d.state, "to_state": "committed",
                                "message": f"{count} noderoles committed"}])
        d.state = "committed"
    session.flush()
    signal_work(session, "anneal")
    return show_deployment(session, d.id)


def propose(session: Session, key, actor: str = "system") -> dict:
    d = lookup.deployment(session, key)
    if d.system:
        raise Conflict("the system deployment is always committed")
    if d.state != "proposed":
        record(session, [{"object_type": "deployment", "object_id": d.id, "action": "propose", "actor": actor,
                                "from_state": d.state, "to_state": "proposed"}])
        d.state = "proposed"
    return show_deployment(session, d.id)


def delete_deployment(session: Session, key, actor: str = "system") -> dict:
    d = lookup.deployment(session, key)
    if d.system:
        raise Conflict("the system deployment cannot be deleted")
    children = list(session.scalars(select(Deployment.name).where(Deployment.parent_id == d.id)))
    if children:
        raise Conflict(f"deployment {d.name!r} has child deployments: {', '.join(children)}; delete them first")
    ids = list(session.scalars(select(NodeRole.id).where(NodeRole.deployment_id == d.id)))
    if ids:
        running = session.scalar(select(func.count()).select_from(NodeRole)
                                 .where(NodeRole.deployment_id == d.id, NodeRole.state == "transition"))
        if running:
            raise Conflict(f"deployment {d.name!r} has {running} noderoles running; wait for them to finish")
        outside = session.execute(text(
            "SELECT c.id, dd.name FROM node_role_edges e JOIN node_roles c ON c.id = e.child_id "
            "JOIN deployments dd ON dd.id = c.deployment_id WHERE c.deployment_id <> :d AND e.parent_id IN "
            "(SELECT id FROM node_roles WHERE deployment_id = :d) LIMIT 5"), {"d": d.id}).all()
        if outside:
            where = ", ".join(f"noderole {i} in {n}" for i, n in outside)
            raise Conflict(f"deployment {d.name!r} cannot be deleted: other deployments depend on it ({where})")
        graph.delete_noderoles(session, ids)
    session.execute(delete(DeploymentRole).where(DeploymentRole.deployment_id == d.id))
    record(session, [{"object_type": "deployment", "object_id": d.id, "action": "delete", "actor": actor,
                            "from_state": d.state, "message": f"{d.name} and {len(ids)} noderoles"}])
    session.delete(d)
    return {"id": d.id, "name": d.name, "deleted": True, "noderoles_deleted": len(ids)}


def _deployment_role(session: Session, deployment_key, role_key, lock: bool = False) \
        -> tuple[Deployment, Role, DeploymentRole]:
    d = lookup.deployment(session, deployment_key)
    role = lookup.role(session, role_key)
    q = select(DeploymentRole).where(DeploymentRole.deployment_id == d.id, DeploymentRole.role_id == role.id)
    dr = session.scalar(q.with_for_update() if lock else q)
    if dr is None:
        raise NotFound(f"role {role.name!r} is not bound in deployment {d.name!r}", field="role")
    return d, role, dr


def _role_data_dict(d: Deployment, role: Role, dr: DeploymentRole) -> dict:
    return {"id": dr.id, "deployment": d.name, "role": role.name, "proposed": dr.proposed, "committed": dr.committed}


def role_data(session: Session, deployment_key, role_key) -> dict:
    """A deployment role's proposed data (what the next commit hands its noderoles) and committed
    data (what runs get now)."""
    return _role_data_dict(*_deployment_role(session, deployment_key, role_key))


def set_role_data(session: Session, deployment_key, role_key, data: dict, actor: str = "system",
                  if_match: str | None = None) -> dict:
    """Set a deployment role's proposed data (committed on the next commit). With `if_match` (an
    If-Match header): only if `role_data` still shows what the caller read (412 otherwise)."""
    if not isinstance(data, dict):
        raise InvalidInput("deployment role data must be a JSON object", field="data")
    check_strict(data, field="data", what="deployment role data")  # no NaN, lone surrogates: refused, not stored
    d, role, dr = _deployment_role(session, deployment_key, role_key, lock=if_match is not None)
    if if_match is not None:
        check_if_match(if_match, _role_data_dict(d, role, dr), f"the data of role {role.name!r} in deployment "
                                                                f"{d.name!r}")
    for attrib in session.scalars(select(Attrib).where(Attrib.role_id == role.id).order_by(Attrib.id)):
        value = dig(data, attrib.map)  # each attrib's value, where present, must match its schema
        if value is not MISSING:
            try:
                jsonschema.validate(value, attrib.schema or {})
            except jsonschema.ValidationError as exc:
                raise InvalidInput(f"attrib {attrib.name!r} ({attrib.map}): {exc.message}",
                                   field=f"data.{attrib.map.replace('/', '.')}") from None
    dr.proposed = data
    if d.state == "committed" and not d.system:
        session.execute(update(Deployment).where(Deployment.id == d.id).values(state="proposed"))
    record(session, [{"object_type": "deployment_role", "object_id": dr.id, "action": "set-data",
                            "actor": actor, "message": f"{d.name}/{role.name}"}])
    return _role_data_dict(d, role, dr)
