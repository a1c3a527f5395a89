"""The annealer's progress as the API reports it: finished, working, or failed, with counts."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crowbar.db.models import Deployment, Event, Node, NodeRole
from crowbar.db.sql import keyset
from crowbar.engine.states import State
from crowbar.services import lookup


def status(session: Session, deployment: str | None = None) -> dict:
    q = select(NodeRole.state, func.count()).join(Deployment, Deployment.id == NodeRole.deployment_id) \
        .where(Deployment.state == "committed").group_by(NodeRole.state)
    if deployment:
        q = q.where(NodeRole.deployment_id == lookup.deployment(session, deployment).id)
    counts = {s.value: 0 for s in State}
    counts.update(dict(session.execute(q).all()))
    counts.pop(State.PROPOSED.value, None)
    # todo noderoles that cannot run (dead or reserved node) would otherwise look like slow progress
    waiting = session.scalar(select(func.count()).select_from(NodeRole).join(Node, Node.id == NodeRole.node_id)
                             .join(Deployment, Deployment.id == NodeRole.deployment_id)
                             .where(NodeRole.state == "todo", Deployment.state == "committed",
                                    (Node.alive.is_(False)) | (Node.available.is_(False))))
    if counts["error"]:
        result = "failed"
    elif counts["todo"] or counts["transition"] or counts["blocked"]:
        result = "working"
    else:
        result = "finished"
    return {"status": result, "counts": counts, "total": sum(counts.values()),
            "waiting_on_unavailable_nodes": waiting}


def events(session: Session, object_type: str | None = None, object_id: int | None = None,
           limit: int | None = 100, after: int | None = None) -> list[dict]:
    """Audit events, always oldest first (ascending id). With `after` (an event id): the first
    `limit` events after it, so that passing the last id seen as `after` reads the log forward page
    by page. Without `after`: the newest `limit` events (the tail of the log)."""
    q = select(Event)
    if object_type:
        q = q.where(Event.object_type == object_type)
    if object_id is not None:
        q = q.where(Event.object_id == object_id)
    if after is None:
        rows = list(session.scalars(q.order_by(Event.id.desc()).limit(limit)))[::-1]
    else:
        rows = session.scalars(keyset(q, Event.id, limit, after))
    return [{"id": e.id, "at": e.at.isoformat(), "actor": e.actor, "object_type": e.object_type,
             "object_id": e.object_id, "action": e.action, "from": e.from_state, "to": e.to_state,
             "message": e.message} for e in rows]
