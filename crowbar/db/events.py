"""The audit trail's one writer: every state change, in every layer, is recorded through `record`."""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.orm import Session

from crowbar.db.models import Event, utcnow


def record(session: Session, rows: list[dict]) -> None:
    """Append audit events in one executemany.

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
