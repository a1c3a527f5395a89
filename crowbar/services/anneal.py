"""The annealer's progress as the API reports it: finished, working, or failed, with counts, and
what each waiting noderole waits on.

The annealer runs a todo noderole only when no other noderole on its node, in any deployment, is
running or in error (crowbar.engine.annealer: RUNNABLE_SQL), and only on a node that is alive and
available; a blocked noderole waits for its parents. So a failed noderole in one deployment stalls
the other deployments' noderoles on its node, and what hangs below them: `waits` names, for each
noderole that waits on something that will not change by itself (an error, a dead or reserved
node), what that is: "waits on noderole 12 (deployment db, role mysql) on node n1: error". The
status of a deployment whose noderoles wait on an error is "failed", as if the error were its own:
it cannot finish until an operator retries (or removes) the failed noderole.
"""

from __future__ import annotations

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.orm import Session

from crowbar.db.models import Deployment, Event, Node, NodeRole, Role
from crowbar.db.sql import chunks, keyset
from crowbar.engine.states import State
from crowbar.services import lookup


WAITS_SHOWN = 100  # the most waiting noderoles a status lists (all are counted)


def status(session: Session, deployment: str | None = None) -> dict:
    q = select(NodeRole.state, func.count()).join(Deployment, Deployment.id == NodeRole.deployment_id) \
        .where(Deployment.state == "committed").group_by(NodeRole.state)
    scope = lookup.deployment(session, deployment).id if deployment else None
    if scope is not None:
        q = q.where(NodeRole.deployment_id == scope)
    counts = {s.value: 0 for s in State}
    counts.update(dict(session.execute(q).all()))
    counts.pop(State.PROPOSED.value, None)
    # todo noderoles that cannot run (dead or reserved node) would otherwise look like slow progress
    waiting = session.scalar(select(func.count()).select_from(NodeRole).join(Node, Node.id == NodeRole.node_id)
                             .join(Deployment, Deployment.id == NodeRole.deployment_id)
                             .where(NodeRole.state == "todo", Deployment.state == "committed",
                                    (Node.alive.is_(False)) | (Node.available.is_(False)),
                                    *([NodeRole.deployment_id == scope] if scope is not None else [])))
    stalled = waits(session, scope)
    on_error = sum(1 for w in stalled if w["on_error"])
    if counts["error"] or on_error:
        result = "failed"
    elif counts["todo"] or counts["transition"] or counts["blocked"]:
        result = "working"
    else:
        result = "finished"
    return {"status": result, "counts": counts, "total": sum(counts.values()),
            "waiting_on_unavailable_nodes": waiting, "waiting_on_errors": on_error,
            "waiting": stalled[:WAITS_SHOWN]}


def _ids_stmt(sql: str):
    return text(sql).bindparams(bindparam("ids", expanding=True))


_BELOW = _ids_stmt(
    "WITH RECURSIVE d(id, root) AS ("
    " SELECT child_id, parent_id FROM node_role_edges WHERE parent_id IN :ids"
    " UNION SELECT e.child_id, d.root FROM node_role_edges e JOIN d ON e.parent_id = d.id"
    ") SELECT d.id, MIN(d.root) FROM d JOIN node_roles c ON c.id = d.id"
    " JOIN deployments dd ON dd.id = c.deployment_id"
    " WHERE c.state = 'blocked' AND dd.state = 'committed' GROUP BY d.id")


def waits(session: Session, deployment_id: int | None = None) -> list[dict]:
    """The committed noderoles (of one deployment, or all) that wait on something that will not
    change by itself, in id order, each with what it waits on and why, in one sentence:

    - a todo noderole on a node where another noderole (of any deployment) is in error;
    - a todo noderole on a node that is dead or reserved;
    - a blocked noderole below one of those, or below a noderole in error (the nearest such
      ancestor: the one with the lowest id).

    A few set-based queries whatever the number of noderoles (a recursive CTE from the stuck ones
    down, as crowbar.engine.graph.descendants)."""
    on_node_error = dict(session.execute(text(
        "SELECT nr.id, MIN(b.id) FROM node_roles nr JOIN deployments d ON d.id = nr.deployment_id "
        "JOIN node_roles b ON b.node_id = nr.node_id AND b.state = 'error' AND b.id <> nr.id "
        "WHERE nr.state = 'todo' AND d.state = 'committed' GROUP BY nr.id")).all())
    on_node_down = {i: (alive, available) for i, alive, available in session.execute(
        select(NodeRole.id, Node.alive, Node.available).join(Node, Node.id == NodeRole.node_id)
        .join(Deployment, Deployment.id == NodeRole.deployment_id)
        .where(NodeRole.state == "todo", Deployment.state == "committed",
               (Node.alive.is_(False)) | (Node.available.is_(False)))).all()}
    errors = list(session.scalars(select(NodeRole.id).where(NodeRole.state == "error")))
    below: dict[int, int] = {}  # blocked noderole -> the stuck ancestor it waits on
    for roots in ([*errors, *on_node_error], list(on_node_down)):  # an error first, when both
        found: dict[int, int] = {}
        for part in chunks(sorted(set(roots))):
            for nr_id, root in session.execute(_BELOW, {"ids": part}):
                found[nr_id] = min(root, found.get(nr_id, root))
        for nr_id, root in found.items():
            below.setdefault(nr_id, root)
    waiting = sorted({*on_node_error, *on_node_down, *below})
    info = _names(session, [*waiting, *on_node_error.values(), *below.values()])
    out = []
    for nr_id in waiting:
        me = info.get(nr_id)
        if me is None or (deployment_id is not None and me["deployment_id"] != deployment_id):
            continue
        if nr_id in on_node_error:
            out.append(_wait(me, info[on_node_error[nr_id]], True))
        elif nr_id in on_node_down:
            alive, available = on_node_down[nr_id]
            why = "dead" if not alive else "reserved"
            out.append(_wait(me, None, False, f"node {me['node']} is {why} (mark it alive/available: "
                                              f"crowbar nodes update {me['node']} --alive --available)"))
        else:
            root = info[below[nr_id]]
            cause = "" if root["id"] not in on_node_error else \
                f", which waits on noderole {on_node_error[root['id']]} on the same node: error"
            if root["id"] in on_node_down:
                alive, _available = on_node_down[root["id"]]
                cause = f", whose node is {'dead' if not alive else 'reserved'}"
            out.append(_wait(me, root, root["state"] == "error" or root["id"] in on_node_error, cause=cause))
    return out


def _names(session: Session, ids: list[int]) -> dict[int, dict]:
    """id -> the noderole's state and its deployment's, role's and node's names."""
    out: dict[int, dict] = {}
    for part in chunks(sorted(set(ids))):
        for nr_id, state, dep_id, dep, role, node in session.execute(
                select(NodeRole.id, NodeRole.state, Deployment.id, Deployment.name, Role.name, Node.name)
                .join(Deployment, Deployment.id == NodeRole.deployment_id).join(Role, Role.id == NodeRole.role_id)
                .join(Node, Node.id == NodeRole.node_id).where(NodeRole.id.in_(part))):
            out[nr_id] = {"id": nr_id, "state": state, "deployment_id": dep_id, "deployment": dep, "role": role,
                          "node": node}
    return out


def _wait(me: dict, on: dict | None, on_error: bool, why: str = "", cause: str = "") -> dict:
    if on is not None:
        why = (f"waits on noderole {on['id']} (deployment {on['deployment']}, role {on['role']}) on node "
               f"{on['node']}: {on['state']}{cause}")
    else:
        why = f"waits: {why}"
    return {"noderole": me["id"], "deployment": me["deployment"], "role": me["role"], "node": me["node"],
            "state": me["state"], "waits_on": None if on is None else on["id"], "on_error": on_error,
            "reason": why}


def events(session: Session, object_type: str | None = None, object_id: int | None = None,
           limit: int | None = 100, after: int | None = None, action: str | None = None,
           actor: str | None = None) -> list[dict]:
    """Audit events, always oldest first (ascending id). With `after` (an event id): the first
    `limit` events after it, so that passing the last id seen as `after` reads the log forward page
    by page. Without `after`: the newest `limit` events (the tail of the log)."""
    q = select(Event)
    if object_type:
        q = q.where(Event.object_type == object_type)
    if object_id is not None:
        q = q.where(Event.object_id == object_id)
    if action:
        q = q.where(Event.action == action)
    if actor:
        q = q.where(Event.actor == actor)
    if after is None:
        rows = list(session.scalars(q.order_by(Event.id.desc()).limit(limit)))[::-1]
    else:
        rows = session.scalars(keyset(q, Event.id, limit, after))
    return [event_dict(e) for e in rows]


def event_dict(e: Event) -> dict:
    return {"id": e.id, "at": e.at.isoformat(), "actor": e.actor, "object_type": e.object_type,
            "object_id": e.object_id, "action": e.action, "from": e.from_state, "to": e.to_state,
            "message": e.message}
