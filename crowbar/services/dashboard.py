"""What the web UI's dashboard shows, in one answer: nodes per lifecycle state, noderoles per
state, deployments with their status, the annealer's progress, the latest failures, and the id of
the newest event (where a client that follows the event log starts)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crowbar.db.models import Event, Node, NodeRole, Run
from crowbar.services import anneal, deployments
from crowbar.services.noderoles import noderole_dicts

DEPLOYMENTS, FAILURES = 50, 10


def dashboard(session: Session) -> dict:
    nodes = dict(session.execute(select(Node.state, func.count()).group_by(Node.state)).all())
    noderoles = dict(session.execute(select(NodeRole.state, func.count()).group_by(NodeRole.state)).all())
    failed = list(session.scalars(select(NodeRole).where(NodeRole.state == "error")
                                  .order_by(NodeRole.updated_at.desc(), NodeRole.id.desc()).limit(FAILURES)))
    failures = noderole_dicts(session, failed)
    last_runs = dict(session.execute(select(Run.node_role_id, func.max(Run.id))
                                     .where(Run.node_role_id.in_([f["id"] for f in failures]))
                                     .group_by(Run.node_role_id)).all()) if failures else {}
    for f in failures:
        f["run"] = last_runs.get(f["id"])
    return {"nodes": {"total": sum(nodes.values()), "by_state": nodes},
            "noderoles": {"total": sum(noderoles.values()), "by_state": noderoles},
            "deployments": deployments.list_deployments(session, limit=DEPLOYMENTS),
            "anneal": anneal.status(session),
            "failures": failures, "failures_total": noderoles.get("error", 0),
            "last_event": session.scalar(select(func.max(Event.id))) or 0}
