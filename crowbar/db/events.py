"""The audit trail's one writer: every state change, in every layer, is recorded through `record`.

Each event is also a line of the server's log (`crowbar.events`): a failure (a run that failed, a
node in `problem`, a failed power request, a lost run) at WARNING, a noderole's other steps at
DEBUG (there are many), every other change (nodes' lifecycle, power, deployments, users, tokens,
networks) at INFO. The lines are written when the transaction that recorded the events commits:
a change that rolled back is not in the log either.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache

from sqlalchemy import TextClause, bindparam, event, insert, text
from sqlalchemy.orm import Session

from crowbar.db.models import Event, UTCDateTime, utcnow
from crowbar.db.sql import is_postgresql

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


BATCH = "events_batch"  # session.info key: the events `batched` collects


def record(session: Session, rows: list[dict]) -> None:
    """Append audit events in one executemany, and log them.

    Each row names `object_type`, `object_id` and `action`; `actor` (default "system"), `message`,
    `from_state`, `to_state` and `at` (default now) are optional. Inside `batched(session)` the
    rows are kept and written with the others at its end.
    """
    if rows:
        now = utcnow()
        for row in rows:
            row.setdefault("at", now)
            row.setdefault("actor", "system")
            row.setdefault("message", "")
            row.setdefault("from_state", None)
            row.setdefault("to_state", None)
        batch = session.info.get(BATCH)
        if batch is not None:
            batch.extend(rows)
            return
        _write(session, rows)


COLUMNS = ("at", "actor", "object_type", "object_id", "action", "from_state", "to_state", "message")
TYPES = dict(zip(COLUMNS, ("timestamptz", "text", "text", "integer", "text", "text", "text", "text")))


@lru_cache(maxsize=64)
def _unnest(varying: tuple[str, ...]) -> TextClause:
    """PostgreSQL: every row in one statement. A column whose rows differ is one array parameter
    (unnest), one they all share is a single value: psycopg turns each element of an array into
    text in Python (about 10 us for a string), and most columns of a batch are the same for all
    of its rows (a commit of 60,000 noderoles differs only in their ids and new states: 2 arrays
    of 60,000, not 8). An executemany is a statement per row there (psycopg pipelines them, but
    each is still parsed, bound and run); the annealer records three events per noderole it runs."""
    fields = ", ".join(f"u.{c}" if c in varying else f"CAST(:{c} AS {TYPES[c]})" for c in COLUMNS)
    arrays = ", ".join(f"CAST(:{c} AS {TYPES[c]}[])" for c in varying)
    return text(f"INSERT INTO events ({', '.join(COLUMNS)}) SELECT {fields} "
                f"FROM unnest({arrays}) AS u({', '.join(varying)})")


def _write(session: Session, rows: list[dict]) -> None:
    if not rows:
        return
    if len(rows) > 1 and is_postgresql(session):
        params, varying = {}, []
        for c in COLUMNS:
            first = rows[0].get(c)
            if all(row.get(c) == first for row in rows):
                params[c] = first
            else:
                params[c] = [row.get(c) for row in rows]
                varying.append(c)
        if not varying:  # unnest needs one array: the ids, the same for every row
            varying.append("object_id")
            params["object_id"] = [params["object_id"]] * len(rows)
        session.execute(_unnest(tuple(varying)), params)
    else:
        session.execute(insert(Event.__table__), rows)  # Core executemany: no ORM bookkeeping
    session.info.setdefault("events_to_log", []).extend(rows)


def record_changes(session: Session, change: str, params: dict, event: dict) -> list[tuple[int, str]]:
    """Run `change`, a data-modifying statement that returns `id, state` of each row it changed
    (`UPDATE ... RETURNING id, state`), and record one event per row: `event`'s fields (as for
    `record`: object_type, action, from_state, actor, message, at), with the row's id as
    object_id and its state as to_state. Answers the rows.

    On PostgreSQL (outside `batched`, whose order must hold) the events are written by that same
    statement (`WITH changed AS (<change>) INSERT INTO events ... SELECT ... FROM changed`): the
    rows do not go to Python and back as arrays. A deployment's commit of 60,000 noderoles spent
    0.4 s of its 1.7 s there."""
    ev = {"actor": "system", "message": "", "from_state": None, "at": utcnow()} | event
    pg = is_postgresql(session)
    if not pg or session.info.get(BATCH) is not None:
        rows = [(i, state) for i, state in session.execute(_typed(change, params, pg), params)]
        record(session, [ev | {"object_id": i, "to_state": state} for i, state in rows])
        return rows
    fields = ", ".join({"object_id": "changed.id", "to_state": "changed.state"}.get(c, f"CAST(:ev_{c} AS {TYPES[c]})")
                       for c in COLUMNS)
    params = params | {f"ev_{c}": ev.get(c) for c in COLUMNS}
    rows = [(i, state) for i, state in session.execute(_typed(
        f"WITH changed AS ({change}) INSERT INTO events ({', '.join(COLUMNS)}) SELECT {fields} FROM changed "
        "RETURNING object_id, to_state", params, True), params)]
    # The log gets the rows its level lets through (a noderole's are DEBUG, but for failures):
    # built only for those, the way `_log` would have skipped the others.
    enabled = {state for state in {s for _, s in rows} if log.isEnabledFor(level_of(ev | {"to_state": state}))}
    if enabled:
        session.info.setdefault("events_to_log", []).extend(
            ev | {"object_id": i, "to_state": state} for i, state in rows if state in enabled)
    return rows


def _typed(sql: str, params: dict, pg: bool) -> TextClause:
    """`sql` with its parameters typed: times written the way the models write them (UTCDateTime:
    on SQLite without a zone suffix, which a plain parameter would add), and on SQLite a list an
    IN list (`db.sql.ids_where`; on PostgreSQL it is an array)."""
    return text(sql).bindparams(*(
        bindparam(k, type_=UTCDateTime()) if isinstance(v, datetime) else bindparam(k, expanding=True)
        for k, v in params.items() if isinstance(v, datetime) or (not pg and isinstance(v, list))))


@contextmanager
def batched(session: Session) -> Iterator[None]:
    """Every event recorded inside is written in one statement when the block ends (in the order
    recorded, each with the time it was recorded), instead of one statement per `record`: for a
    hot path that records from several layers (discovery: the node, its noderoles' bind and
    commit, its lifecycle). Nothing inside may read the events it recorded. A block that raises
    writes nothing (its transaction rolls back). Nested blocks write with the outermost."""
    if session.info.get(BATCH) is not None:
        yield
        return
    session.info[BATCH] = []
    try:
        yield
    except BaseException:
        session.info.pop(BATCH, None)
        raise
    _write(session, session.info.pop(BATCH))


@contextmanager
def savepoint(session: Session) -> Iterator[None]:
    """`session.begin_nested()`: a block that may be undone alone. Inside `batched`, the events it
    recorded are dropped with it when it raises (they are not written yet: a savepoint's rollback
    would not take them back)."""
    rows = session.info.get(BATCH)
    mark = len(rows) if rows is not None else 0
    try:
        with session.begin_nested():
            yield
    except BaseException:
        if rows is not None:
            del rows[mark:]
        raise


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    _log(session.info.pop("events_to_log", []))


@event.listens_for(Session, "after_rollback")
def _rolled_back(session: Session) -> None:
    session.info.pop("events_to_log", None)
