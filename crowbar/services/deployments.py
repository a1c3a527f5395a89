"""Deployments: a tree under `system`; binding roles to nodes in them; commit, propose, delete."""

from __future__ import annotations

import re

import jsonschema
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from crowbar.db.events import record
from crowbar.db.models import Attrib, Deployment, DeploymentRole, Node, NodeRole, NodeTag, Role
from crowbar.db.session import signal_work
from crowbar.db.sql import chunks, keyset
from crowbar.documents import MISSING, check_if_match, check_strict, dig
from crowbar.engine import graph
from crowbar.errors import Conflict, InvalidInput, NotFound
from crowbar.provisioner import rules
from crowbar.services import lookup
from crowbar.services.noderoles import noderole_dicts
from crowbar.services.nodes import system_deployment

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
STATES = ("proposed", "committed")
MAX_BIND_NODES = 10_000


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
    return [{"id": dr.id, "role": role, "tag": dr.tag, "proposed": dr.proposed, "committed": dr.committed}
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


def bind(session: Session, deployment_key, role_key, node_key=None, actor: str = "system", *,
         nodes: list | None = None, tag: str | None = None) -> dict:
    """Bind a role in a deployment (and, recursively, what it requires) to one node (`node_key`),
    to a list of them (`nodes`) or to every node tagged `tag`: all of them or none (one node that
    holds the role in another deployment, or a conflict on one node, and nothing is bound).

    A bind by tag is remembered on the deployment role (its `tag`, replacing an earlier one): a
    commit binds the nodes that gained the tag since, and an export names the tag, not the nodes.
    Binding into a committed deployment reopens it (back to proposed) so that the new noderoles are
    committed together; binding into `system` commits them at once, since system is never proposed.
    """
    asked = [name for name, value in (("node", node_key), ("nodes", nodes), ("tag", tag)) if value is not None]
    if len(asked) != 1:
        raise InvalidInput("name the nodes to bind: one of node, nodes (a list) or tag" +
                           (f", not {' and '.join(asked)}" if asked else ""),
                           field=asked[1] if asked else "node")
    if nodes is not None and len(nodes) > MAX_BIND_NODES:
        raise InvalidInput(f"at most {MAX_BIND_NODES} nodes in one bind (or bind them by tag)", field="nodes")
    d = lookup.deployment(session, deployment_key)
    role = lookup.role(session, role_key)
    if tag is not None:
        tag = valid_tag(tag)
        refs = tagged_nodes(session, tag)
        if not refs:
            raise NotFound(f"no node has tag {tag!r} (`crowbar nodes list --tag {tag}`)", field="tag")
    elif nodes is not None:
        if not nodes:
            raise InvalidInput("name at least one node to bind", field="nodes")
        refs = list(dict.fromkeys(lookup.node_refs(session, nodes)))  # a node named twice is bound once
    else:
        refs = lookup.node_refs(session, [node_key])
    created, reopened = _bind_refs(session, d, role, refs, actor)
    if tag is not None:
        _remember_tag(session, d, role, tag, len(refs), actor)
    rows = _noderoles_of(session, role, refs)
    out = {"created": created, "noderoles": noderole_dicts(session, rows), "reopened": reopened}
    if node_key is not None:
        out["noderole"] = out["noderoles"][0]
    if tag is not None:
        out["tag"] = tag
    return out


def valid_tag(tag) -> str:
    """A node tag as the OS rules and the `tags` attrib write them (lower case), or InvalidInput."""
    tag = str(tag).strip().lower()
    if not rules.NAME_RE.match(tag):
        raise InvalidInput(f"tag {tag[:70]!r} is not a tag: lower case letters, digits, '.', '_' or '-', "
                           "at most 63", field="tag")
    return tag


def tagged_nodes(session: Session, tag: str) -> list[lookup.NodeRef]:
    """The nodes tagged `tag` now (crowbar.services.os_rules keeps node_tags), by name."""
    return [lookup.NodeRef(i, n) for i, n in session.execute(
        select(Node.id, Node.name).join(NodeTag, NodeTag.node_id == Node.id).where(NodeTag.tag == tag)
        .order_by(Node.name))]


def _bind_refs(session: Session, d: Deployment, role: Role, refs: list[lookup.NodeRef], actor: str,
               why: str = "", reopen: bool = True) -> tuple[list[int], bool]:
    """Bind `role` to the nodes of `refs` that lack it (refused, before anything is written, when one
    holds it in another deployment); answers the ids of the noderoles created and whether `d` was
    reopened (`reopen`: a committed deployment goes back to proposed)."""
    held: dict[int, tuple[int, int]] = {}  # node id -> (noderole id, deployment id)
    for part in chunks([r.id for r in refs]):
        held.update({node_id: (nr_id, dep_id) for nr_id, node_id, dep_id in session.execute(
            select(NodeRole.id, NodeRole.node_id, NodeRole.deployment_id)
            .where(NodeRole.role_id == role.id, NodeRole.node_id.in_(part)))})
    elsewhere = [(r, *held[r.id]) for r in refs if r.id in held and held[r.id][1] != d.id]
    if elsewhere:
        names = dict(session.execute(select(Deployment.id, Deployment.name)
                                     .where(Deployment.id.in_({dep for _r, _nr, dep in elsewhere}))).all())
        listed = ", ".join(f"{r.name} in deployment {names[dep]!r} (noderole {nr})" for r, nr, dep in elsewhere[:5])
        more = f" and {len(elsewhere) - 5} more nodes" if len(elsewhere) > 5 else ""
        raise Conflict(f"role {role.name!r} is already bound to {listed}{more}{why}")
    todo = [r for r in refs if r.id not in held]
    if not todo:
        return [], False
    binder = graph.Binder(session, actor)
    binder.bind_many(d, role, todo)
    reopened = False
    if d.system:
        graph.commit_noderoles(session, d.id, actor)
    elif d.state == "committed" and reopen:
        d.state, reopened = "proposed", True
        record(session, [{"object_type": "deployment", "object_id": d.id, "action": "reopen", "actor": actor,
                          "from_state": "committed", "to_state": "proposed",
                          "message": f"bound {role.name} to {_few(r.name for r in todo)}; commit to run it"}])
    session.flush()
    signal_work(session, "anneal")
    return [c.id for c in binder.created], reopened


def _few(names, most: int = 5) -> str:
    names = list(names)
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _remember_tag(session: Session, d: Deployment, role: Role, tag: str, count: int, actor: str) -> None:
    dr = session.scalar(select(DeploymentRole).where(DeploymentRole.deployment_id == d.id,
                                                     DeploymentRole.role_id == role.id))
    if dr is None:  # the nodes held the role already, without one (a hand-made server document)
        dr = DeploymentRole(deployment_id=d.id, role_id=role.id, proposed={}, committed={})
        session.add(dr)
        session.flush()
    if dr.tag == tag:
        return
    was = f" (was {dr.tag})" if dr.tag else ""
    dr.tag = tag
    record(session, [{"object_type": "deployment_role", "object_id": dr.id, "action": "bind-tag", "actor": actor,
                      "message": f"{d.name}/{role.name} bound by tag {tag}{was}: {count} node(s) now; a commit "
                                 "binds the nodes that gain it"}])


def _noderoles_of(session: Session, role: Role, refs: list[lookup.NodeRef]) -> list[NodeRole]:
    """The noderoles of `role` on these nodes, in their order, as the database has them now."""
    by_node: dict[int, NodeRole] = {}
    for part in chunks([r.id for r in refs]):
        by_node.update({nr.node_id: nr for nr in session.scalars(
            select(NodeRole).where(NodeRole.role_id == role.id, NodeRole.node_id.in_(part))
            .execution_options(populate_existing=True))})
    return [by_node[r.id] for r in refs]


def bind_tagged(session: Session, d: Deployment, actor: str = "system") -> list[dict]:
    """Bind each role of `d` that was bound by tag to the nodes that carry the tag now and lack the
    role (a commit calls it); answers [{role, tag, nodes}] of what it bound. A node that gained the
    tag but holds the role in another deployment: Conflict, nothing bound."""
    done = []
    for dr, role in session.execute(select(DeploymentRole, Role).join(Role, Role.id == DeploymentRole.role_id)
                                    .where(DeploymentRole.deployment_id == d.id, DeploymentRole.tag.is_not(None))
                                    .order_by(Role.name)).all():
        has = select(NodeRole.node_id).where(NodeRole.role_id == role.id, NodeRole.deployment_id == d.id)
        new = [lookup.NodeRef(i, n) for i, n in session.execute(
            select(Node.id, Node.name).join(NodeTag, NodeTag.node_id == Node.id)
            .where(NodeTag.tag == dr.tag, Node.id.not_in(has)).order_by(Node.name))]
        if new:
            _bind_refs(session, d, role, new, actor, reopen=False,
                       why=f": they gained tag {dr.tag!r}, by which {role.name!r} is bound in {d.name!r}; "
                           "untag them or unbind the role there, then commit again")
            done.append({"role": role.name, "tag": dr.tag, "nodes": [r.name for r in new]})
    return done


def commit(session: Session, key, actor: str = "system") -> dict:
    """Commit the deployment: proposed data and noderoles become what runs. Roles bound by tag are
    first bound to the nodes that gained their tag since (`tag_binds` in the answer says which)."""
    d = lookup.deployment(session, key)
    tag_binds = bind_tagged(session, d, actor)
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
    if d.state != "committed" or tag_binds:
        by_tag = "".join(f"; {t['role']} bound to {_few(t['nodes'])} (tag {t['tag']})" for t in tag_binds)
        record(session, [{"object_type": "deployment", "object_id": d.id, "action": "commit", "actor": actor,
                                "from_state": d.state, "to_state": "committed",
                                "message": f"{count} noderoles committed{by_tag}"}])
        d.state = "committed"
    session.flush()
    signal_work(session, "anneal")
    return {**show_deployment(session, d.id), "tag_binds": tag_binds}


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
