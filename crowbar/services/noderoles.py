"""NodeRoles: list with filters, show, retry, parents/children, run logs."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crowbar.db.models import Deployment, Node, NodeRole, NodeRoleEdge, Role, Run
from crowbar.db.session import signal_work
from crowbar.db.sql import keyset
from crowbar.engine import graph, states
from crowbar.errors import IllegalTransition, NotFound
from crowbar.services import lookup


def noderole_dicts(session: Session, rows: list[NodeRole], full: bool = False) -> list[dict]:
    """Rows with their node, role and deployment names, fetched in three queries whatever the count."""
    if not rows:
        return []
    node_ids = {r.node_id for r in rows}
    role_ids = {r.role_id for r in rows}
    dep_ids = {r.deployment_id for r in rows}
    nodes = dict(session.execute(select(Node.id, Node.name).where(Node.id.in_(node_ids))).all()) if len(node_ids) < 5000 \
        else dict(session.execute(select(Node.id, Node.name)).all())
    roles = dict(session.execute(select(Role.id, Role.name).where(Role.id.in_(role_ids))).all())
    deps = dict(session.execute(select(Deployment.id, Deployment.name).where(Deployment.id.in_(dep_ids))).all())
    out = []
    for r in rows:
        item = {"id": r.id, "node": nodes[r.node_id], "role": roles[r.role_id], "deployment": deps[r.deployment_id],
                "state": r.state, "cohort": r.cohort, "run_count": r.run_count, "status": r.status,
                "updated_at": r.updated_at.isoformat() if r.updated_at else None}
        if full:
            item.update(proposed=r.proposed, committed=r.committed, wall=r.wall)
        out.append(item)
    return out


def list_noderoles(session: Session, deployment: str | None = None, node: str | None = None,
                   role: str | None = None, state: str | None = None, limit: int | None = None,
                   marker: int | None = None, parents: bool = False) -> list[dict]:
    """NodeRoles in id order: `limit` of them after id `marker` (all without), filtered by
    deployment, node, role (references) and state; with `parents`, each has the ids of the
    noderoles it requires (one more query per page)."""
    q = select(NodeRole)
    if deployment:
        q = q.where(NodeRole.deployment_id == lookup.deployment(session, deployment).id)
    if node:
        q = q.where(NodeRole.node_id == lookup.node(session, node).id)
    if role:
        q = q.where(NodeRole.role_id == lookup.role(session, role).id)
    if state:
        q = q.where(NodeRole.state == states.parse(state).value)
    out = noderole_dicts(session, list(session.scalars(keyset(q, NodeRole.id, limit, marker))))
    if parents and out:
        edges: dict[int, list[int]] = {item["id"]: [] for item in out}
        for child, parent in session.execute(select(NodeRoleEdge.child_id, NodeRoleEdge.parent_id)
                                             .where(NodeRoleEdge.child_id.in_(list(edges)))
                                             .order_by(NodeRoleEdge.parent_id)):
            edges[child].append(parent)
        for item in out:
            item["parents"] = edges[item["id"]]
    return out


def show_noderole(session: Session, key) -> dict:
    nr = lookup.noderole(session, key)
    out = noderole_dicts(session, [nr], full=True)[0]
    out["parents"] = list(session.scalars(select(NodeRoleEdge.parent_id).where(NodeRoleEdge.child_id == nr.id)))
    out["children"] = list(session.scalars(select(NodeRoleEdge.child_id).where(NodeRoleEdge.parent_id == nr.id)))
    return out


def related(session: Session, key, direction: str, limit: int | None = None,
            marker: int | None = None) -> list[dict]:
    """The noderole's parents or children in id order: `limit` of them after id `marker` (all
    without). A server role can have thousands of children."""
    nr = lookup.noderole(session, key)
    if direction == "parents":
        ids = select(NodeRoleEdge.parent_id).where(NodeRoleEdge.child_id == nr.id)
    else:
        ids = select(NodeRoleEdge.child_id).where(NodeRoleEdge.parent_id == nr.id)
    q = keyset(select(NodeRole).where(NodeRole.id.in_(ids)), NodeRole.id, limit, marker)
    return noderole_dicts(session, list(session.scalars(q)))


def retry(session: Session, key, actor: str = "system") -> dict:
    """error (or active, to run again) -> todo, or blocked while a parent is not active."""
    nr = lookup.noderole(session, key)
    if states.State(nr.state) not in states.RETRYABLE:
        raise IllegalTransition(f"noderole {nr.id} is {nr.state}: only error or active noderoles can be retried")
    graph.requeue(session, [nr.id], actor, "retry")
    signal_work(session, "anneal")
    session.refresh(nr)
    return noderole_dicts(session, [nr])[0]


def runs(session: Session, key, limit: int | None = None, marker: int | None = None) -> list[dict]:
    """The noderole's runs, oldest first: `limit` of them after run id `marker` (all without)."""
    nr = lookup.noderole(session, key)
    q = keyset(select(Run).where(Run.node_role_id == nr.id), Run.id, limit, marker)
    return [{"id": r.id, "noderole": nr.id, "state": r.state, "started_at": r.started_at.isoformat(),
             "finished_at": r.finished_at.isoformat() if r.finished_at else None, "log": r.log, "attrs": r.attrs}
            for r in session.scalars(q)]


LOG_CHUNK = 256 * 1024  # characters per answer of log(): a follower asks again for the rest


def log(session: Session, key, run: int | None = None, offset: int = 0) -> dict:
    """Part of a run's log for a follower (the web UI streams a running one): the text from
    character `offset` on (at most LOG_CHUNK), the log's length, and the run's state. `run` is a
    run of this noderole (default: its latest). Only the asked part is read from the database.
    A run that completes replaces its log with the jig's final one (which usually starts with what
    was streamed): a follower reads it again from 0 once the state is no longer running."""
    nr = lookup.noderole(session, key)
    q = select(Run.id, Run.state, Run.started_at, Run.finished_at, func.length(Run.log),
               func.substr(Run.log, offset + 1, LOG_CHUNK)).where(Run.node_role_id == nr.id)
    q = q.where(Run.id == run) if run is not None else q.order_by(Run.id.desc()).limit(1)
    row = session.execute(q).first()
    if row is None:
        if run is not None:
            raise NotFound(f"noderole {nr.id} has no run {run}", field="run")
        return {"noderole": nr.id, "run": None, "state": None, "offset": 0, "length": 0, "text": "",
                "started_at": None, "finished_at": None}
    run_id, state, started, finished, length, text_ = row
    return {"noderole": nr.id, "run": run_id, "state": state, "offset": offset, "length": length or 0,
            "text": text_ or "", "started_at": started.isoformat(), "finished_at": finished.isoformat() if finished else None}
