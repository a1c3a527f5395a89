"""The power worker's side of power requests (crowbar.services.power has the protocol and the
operator's side): claim queued requests, finish them with their outcome, fail those a dead server
left running. crowbar.server.power runs them, each in a short transaction of its own.

A request that is a step of something else tells its owner how it ended: bios-apply's outcome (and
its failure when abandoned) moves the node on through crowbar.services.bios, which queued it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.orm import Session

from crowbar.db.events import record
from crowbar.db.models import Node, PowerRequest, Server, utcnow
from crowbar.db.sql import is_postgresql
from crowbar.services import bios

CLAIMABLE_SQL = """
SELECT pr.id FROM power_requests pr
WHERE pr.state = 'queued' {busy}
  AND NOT EXISTS (SELECT 1 FROM power_requests b WHERE b.node_id = pr.node_id
                  AND (b.state = 'running' OR (b.state = 'queued' AND b.id < pr.id)))
ORDER BY pr.id
LIMIT :limit
"""


@dataclass(frozen=True)
class Claimed:
    """A request a worker took, with what its driver needs (read in the claiming transaction)."""

    id: int
    node_id: int
    node: str
    action: str
    actor: str
    driver: str
    settings: dict
    params: dict | None = None  # bios-apply: the wanted BIOS attributes


def claim(session: Session, server_id: int | None, limit: int, busy_nodes=()) -> list[Claimed]:
    """Take up to `limit` runnable requests (oldest first, one per node, none for a node with one
    running or in `busy_nodes`) and mark them running for `server_id`."""
    busy = sorted(set(busy_nodes))
    sql = CLAIMABLE_SQL.format(busy="AND pr.node_id NOT IN :busy" if busy else "").rstrip()
    if is_postgresql(session):
        sql += " FOR UPDATE OF pr SKIP LOCKED"
    statement = text(sql)
    params: dict = {"limit": limit}
    if busy:
        statement = statement.bindparams(bindparam("busy", expanding=True))
        params["busy"] = busy
    ids = list(session.scalars(statement, params))
    if not ids:
        return []
    now = utcnow()
    session.execute(update(PowerRequest).where(PowerRequest.id.in_(ids))
                    .values(state="running", server_id=server_id, started_at=now))
    rows = session.execute(select(PowerRequest, Node).join(Node, Node.id == PowerRequest.node_id)
                           .where(PowerRequest.id.in_(ids)).order_by(PowerRequest.id)).all()
    return [Claimed(id=req.id, node_id=node.id, node=node.name, action=req.action, actor=req.actor,
                    driver=node.power_driver, settings=dict(node.power or {}),
                    params=_params(req.action, node)) for req, node in rows]


def _params(action: str, node: Node) -> dict | None:
    if action == "bios-apply":
        return dict(((node.install or {}).get("bios") or {}).get("wanted") or {})
    return None


def finish(session: Session, claimed: Claimed, server_id: int | None, ok: bool, result: str) -> bool:
    """Record the outcome of a request this server ran, with its event; False (and nothing written)
    if it is no longer this server's running request (failed meanwhile as abandoned)."""
    state = "succeeded" if ok else "failed"
    owner = PowerRequest.server_id == server_id if server_id is not None else PowerRequest.server_id.is_(None)
    done = session.execute(update(PowerRequest)
                           .where(PowerRequest.id == claimed.id, PowerRequest.state == "running", owner)
                           .values(state=state, result=result, finished_at=utcnow()))
    if done.rowcount != 1:
        return False
    record(session, [{"object_type": "node", "object_id": claimed.node_id, "action": f"power-{claimed.action}",
                      "actor": claimed.actor, "message": result if ok else f"failed: {result}"}])
    if claimed.action == "bios-apply":
        bios.applied(session, claimed.node_id, claimed.id, ok, result)
    return True


def fail_abandoned(session: Session, reason: str = "server died", server_ids=None) -> int:
    """Fail the running requests of `server_ids`, or (by default) of every server recorded as
    stopped (a server found dead is marked so by the annealer's reaper); returns how many."""
    q = select(PowerRequest).where(PowerRequest.state == "running")
    if server_ids is None:
        q = q.where(PowerRequest.server_id.in_(select(Server.id).where(Server.stopped.is_(True))))
    else:
        q = q.where(PowerRequest.server_id.in_(list(server_ids)))
    abandoned = list(session.scalars(q.with_for_update(skip_locked=True) if is_postgresql(session) else q))
    now = utcnow()
    for req in abandoned:
        req.state, req.result, req.finished_at = "failed", reason, now
    record(session, [{"object_type": "node", "object_id": req.node_id, "action": f"power-{req.action}",
                      "actor": req.actor, "message": f"failed: {reason}"} for req in abandoned])
    for req in abandoned:
        if req.action == "bios-apply":  # its node would wait in hardware-installing until the watchdog
            bios.applied(session, req.node_id, req.id, False, reason)
    return len(abandoned)
