"""Each node's power state as its power requests tell it (crowbar.services.power): the latest
succeeded `on`, `off`, `cycle`, `soft-off` or `status` decides (`status` says what the driver saw:
on, off or unknown; the others what was done), a queued or running request is `pending`, and a
latest request that failed is said so. Nothing is stored: the requests are the record.

Read for many nodes at once (a page of the nodes list) in one query per 500 node ids, whatever
their number: each node's latest request, its latest deciding one (max id per node, over the
node_id index) and its requests not done yet."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crowbar.db.models import PowerRequest
from crowbar.db.sql import chunks

DECIDING = ("on", "off", "cycle", "soft-off", "status")
AFTER = {"on": "on", "off": "off", "cycle": "on", "soft-off": "off"}


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def states(session: Session, node_ids: Iterable[int]) -> dict[int, dict]:
    """node id -> {"state": on|off|unknown, "since", "by": the action that says so, "pending": the
    action queued or running (or None), "failed": the latest request's failure (or None)}."""
    ids = sorted(set(node_ids))
    out = {i: {"state": "unknown", "since": None, "by": None, "pending": None, "failed": None} for i in ids}
    for part in chunks(ids):
        latest_ok = (select(func.max(PowerRequest.id)).where(PowerRequest.node_id.in_(part),
                                                             PowerRequest.state == "succeeded",
                                                             PowerRequest.action.in_(DECIDING))
                     .group_by(PowerRequest.node_id))
        latest_any = select(func.max(PowerRequest.id)).where(PowerRequest.node_id.in_(part)).group_by(PowerRequest.node_id)
        rows = session.execute(select(PowerRequest.node_id, PowerRequest.id, PowerRequest.action, PowerRequest.state,
                                      PowerRequest.result, PowerRequest.finished_at)
                               .where(PowerRequest.id.in_(latest_ok) | PowerRequest.id.in_(latest_any)
                                      | (PowerRequest.node_id.in_(part) & PowerRequest.state.in_(("queued", "running"))))
                               .order_by(PowerRequest.id)).all()
        # in id order, so the last row of a node is its latest request (it is among the rows, and no
        # other row is newer), and its last succeeded deciding row is its latest such request
        latest_ok_rows, latest_rows = {}, {}
        for row in rows:
            latest_rows[row.node_id] = row
            if row.state == "succeeded" and row.action in DECIDING:
                latest_ok_rows[row.node_id] = row
            if row.state in ("queued", "running"):
                out[row.node_id]["pending"] = row.action  # the latest one not done yet
        for node_id, row in latest_ok_rows.items():
            said = (row.result or "").strip().split()[0].lower() if row.action == "status" and row.result else ""
            out[node_id].update(state=AFTER.get(row.action, said if said in ("on", "off") else "unknown"),
                                since=_iso(row.finished_at), by=row.action)
        for node_id, row in latest_rows.items():
            if row.state == "failed":
                out[node_id]["failed"] = {"action": row.action, "result": row.result, "at": _iso(row.finished_at)}
    return out


def states_of(session: Session, nodes: list[dict]) -> list[dict]:
    """Each node dict (with its `id`) given its `power` state, in place; answers `nodes`."""
    found = states(session, [n["id"] for n in nodes])
    for n in nodes:
        n["power"] = found[n["id"]]
    return nodes
