"""The audit trail's one writer: every state change, in every layer, is recorded through `record`.

Each event is also a line of the server's log (`crowbar.events`): a failure (a run that failed, a
node in `problem`, a failed power request, a lost run) at WARNING, a noderole's other steps at
DEBUG (there are many), every other change (nodes' lifecycle, power, deployments, users, tokens,
networks) at INFO. The lines are written when the transaction that recorded the events commits:
a change that rolled back is not in the log either.
"""

from __future__ import annotations

import logging

from sqlalchemy import event, insert
from sqlalchemy.orm import Session

from crowbar.db.models import Event, utcnow

log = logging.getLogger("crowbar.events")
FAILED = frozenset({"error", "failed", "problem", "lost"})


def level_of(row: dict) -> int:
    if row.get("to_state") in FAILED or str(row.get("action", "")).endswith(("fail", "failed")):
        return logging.WARNING
    return logging.DEBUG if row.get("object_type") == "noderole" else logging.INFO


def _log(rows: list[dict]) -> None:
    for row in rows:
        level = level_of(row)
        if not log.isEnabledFor(level):
            continue
        change = f": {row['from_state'] or '-'} -> {row['to_state'] or '-'}" \
            if row["from_state"] is not None or row["to_state"] is not None else ""
        what = f"{row.get('object_type')} {row.get('object_id') if row.get('object_id') is not None else ''}".strip()
        log.log(level, "%s %s by %s%s%s", what, row.get("action"), row["actor"], change,
                f" ({row['message']})" if row["message"] else "",
                extra={"fields": {"object_type": row.get("object_type"), "object_id": row.get("object_id"),
                                  "action": row.get("action"), "actor": row["actor"], "from": row["from_state"],
                                  "to": row["to_state"]}})


def record(session: Session, rows: list[dict]) -> None:
    """Append audit events in one executemany, and log them.

    Each row names `object_type`, `object_id` and `action`; `actor` (default "system"), `message`,
    `from_state`, `to_state` and `at` (default now) are optional.
    """
    if rows:
        now = utcnow()
        for row in rows:
            row.setdefault("at", now)
            row.setdefault("actor", "system")
            row.setdefault("message", "")
            row.setdefault("from_state", None)
            row.setdefault("to_state", None)
        session.execute(insert(Event.__table__), rows)  # Core executemany: no ORM bookkeeping
        session.info.setdefault("events_to_log", []).extend(rows)


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    _log(session.info.pop("events_to_log", []))


@event.listens_for(Session, "after_rollback")
def _rolled_back(session: Session) -> None:
    session.info.pop("events_to_log", None)
