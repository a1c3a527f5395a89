"""db/events.record_changes: a data-modifying statement and one event per row it changed. On
PostgreSQL both are one statement (a CTE), so the rows never travel to Python as arrays; on SQLite,
and inside `batched` (whose order must hold), the rows come back and `record` writes them. Either
way: the same events, the same answer, the same log lines, and nothing when the transaction rolls
back."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from datetime import timedelta

import pytest
from sqlalchemy import select, text
from sqlkit import statements

from crowbar.db.events import batched, record, record_changes
from crowbar.db.models import Event, Node, utcnow
from crowbar.db.sql import ids_where
from crowbar.services import nodes

CHANGE = "UPDATE nodes SET state = :to WHERE name LIKE :like RETURNING id, state"
EVENT = {"object_type": "node", "action": "relabel", "from_state": "ready", "actor": "tester", "message": "why"}


def _nodes(db, prefix, count):
    with db.session() as s:
        return sorted(n.id for n in nodes.add_nodes(s, [{"name": f"{prefix}{i}.example.com"} for i in range(count)]))


def test_each_changed_row_gets_its_event_and_comes_back(db):
    ids = _nodes(db, "rc", 5)
    _nodes(db, "other", 2)  # not matched: no event
    seen, stop = statements(db)
    try:
        with db.session() as s:
            rows = record_changes(s, CHANGE, {"to": "allocated", "like": "rc%"}, EVENT)
    finally:
        stop()
    assert sorted(rows) == [(i, "allocated") for i in ids]
    writes = [t for t in seen if "INSERT INTO events" in t]
    assert len(writes) == 1
    assert ("UPDATE nodes" in writes[0]) == db.postgresql  # PostgreSQL: the change and its events in one
    with db.session() as s:
        got = s.execute(select(Event).where(Event.action == "relabel")).scalars().all()
    assert sorted(e.object_id for e in got) == ids
    assert {(e.object_type, e.from_state, e.to_state, e.actor, e.message) for e in got} == \
        {("node", "ready", "allocated", "tester", "why")}


def test_a_time_parameter_is_written_as_the_models_write_times(db):
    _nodes(db, "tm", 1)
    at = utcnow() - timedelta(days=1)
    with db.session() as s:
        record_changes(s, "UPDATE nodes SET state_changed_at = :at, state = 'allocated' WHERE name LIKE 'tm%' "
                          "RETURNING id, state", {"at": at}, EVENT)
    with db.session() as s:
        raw, written_by_orm = s.execute(text("SELECT state_changed_at, created_at FROM nodes WHERE name LIKE 'tm%'")).one()
        assert type(raw) is type(written_by_orm)
        if isinstance(raw, str):  # SQLite: the same text form (no zone suffix), so they sort and compare as times
            assert len(raw) == len(written_by_orm) and "+" not in raw, (raw, written_by_orm)
        node = s.scalar(select(Node).where(Node.name.like("tm%")))
        assert abs((node.state_changed_at - at).total_seconds()) < 1


def test_nothing_changed_records_nothing(db):
    with db.session() as s:
        assert record_changes(s, CHANGE, {"to": "allocated", "like": "nobody%"}, EVENT) == []
    with db.session() as s:
        assert s.scalars(select(Event.id).where(Event.action == "relabel")).all() == []


@pytest.mark.parametrize("level, logged", [(logging.INFO, 3), (logging.WARNING, 0)])
def test_the_log_gets_each_row_its_level_lets_through_after_the_commit(db, caplog, level, logged):
    ids = _nodes(db, "lg", 3)
    caplog.set_level(level, logger="crowbar.events")
    with db.session() as s:
        record_changes(s, CHANGE, {"to": "allocated", "like": "lg%"}, EVENT)
        assert not [r for r in caplog.records if "relabel" in r.getMessage()]  # not before the commit
    lines = [r.getMessage() for r in caplog.records if "relabel" in r.getMessage()]
    assert len(lines) == logged
    if logged:
        assert sorted(lines) == sorted(f"node {i} relabel by tester: ready -> allocated (why)" for i in ids)


def test_a_failure_is_logged_as_a_warning_even_when_the_rest_is_not(db, caplog):
    _nodes(db, "pb", 2)
    caplog.set_level(logging.WARNING, logger="crowbar.events")
    with db.session() as s:
        record_changes(s, CHANGE, {"to": "problem", "like": "pb%"}, EVENT)
    assert [r.levelno for r in caplog.records if "relabel" in r.getMessage()] == [logging.WARNING] * 2


def test_inside_batched_the_events_keep_the_order_they_were_recorded_in(db):
    ids = _nodes(db, "bt", 2)
    with db.session() as s, batched(s):
        record(s, [{"object_type": "node", "object_id": ids[0], "action": "first"}])
        record_changes(s, CHANGE, {"to": "allocated", "like": "bt%"}, EVENT)
        record(s, [{"object_type": "node", "object_id": ids[1], "action": "last"}])
    with db.session() as s:
        actions = s.scalars(select(Event.action).where(Event.action.in_(["first", "relabel", "last"]))
                            .order_by(Event.id)).all()
    assert actions == ["first", "relabel", "relabel", "last"]


def test_a_rolled_back_change_leaves_no_event_and_no_log_line(db, caplog):
    _nodes(db, "rb", 2)
    caplog.set_level(logging.DEBUG, logger="crowbar.events")
    with pytest.raises(RuntimeError), db.session() as s:
        record_changes(s, CHANGE, {"to": "allocated", "like": "rb%"}, EVENT)
        raise RuntimeError("changed my mind")
    with db.session() as s:
        assert s.scalars(select(Event.id).where(Event.action == "relabel")).all() == []
        assert set(s.scalars(select(Node.state).where(Node.name.like("rb%")))) == {"ready"}
    assert not [r for r in caplog.records if "relabel" in r.getMessage()]


@pytest.mark.parametrize("inside_batched", [False, True])
def test_a_list_of_ids_is_one_array_or_an_in_list_whatever_the_count(db, inside_batched):
    """db.sql.ids_where in a change: an array parameter on PostgreSQL, an expanded IN list on
    SQLite, in and out of `batched` (whose path on PostgreSQL is SQLite's), one statement text
    whatever the number of ids."""
    ids = _nodes(db, "ids", 6)
    seen, stop = statements(db)
    try:
        for part in (ids[:1], ids[1:6]):
            with db.session() as s, (batched(s) if inside_batched else nullcontext()):
                where, params = ids_where(part, db.postgresql)
                got = record_changes(s, f"UPDATE nodes SET state = :to WHERE {where} RETURNING id, state",
                                     params | {"to": "allocated"}, EVENT)
                assert sorted(got) == [(i, "allocated") for i in part]
    finally:
        stop()
    updates = {t for t in seen if t.lstrip().startswith(("UPDATE nodes", "WITH changed"))}
    assert len(updates) == (1 if db.postgresql else 2), updates  # SQLite: a placeholder per id
    with db.session() as s:
        assert sorted(s.scalars(select(Event.object_id).where(Event.action == "relabel"))) == ids
