"""db/sql.among (IN on SQLite, = ANY(array) on PostgreSQL) and db/events' one-statement write of
many events on PostgreSQL: the same rows either way, and on PostgreSQL the same statement text
whatever the number of ids (so psycopg and PostgreSQL parse and plan it once)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlkit import statements

from crowbar.db.events import record
from crowbar.db.models import Event, Node, utcnow
from crowbar.db.sql import among
from crowbar.services import nodes


def test_among_selects_exactly_the_rows_named(db):
    with db.session() as s:
        ids = sorted(n.id for n in nodes.add_nodes(s, [{"name": f"among{i}.example.com"} for i in range(12)]))
    wanted = [ids[0], ids[5], ids[5], ids[11], 10**9]  # a duplicate, and an id no row has
    with db.session() as s:
        assert sorted(s.scalars(select(Node.id).where(among(Node.id, wanted, s)))) == [ids[0], ids[5], ids[11]]
        assert list(s.scalars(select(Node.id).where(among(Node.id, [], s)))) == []
        assert sorted(s.scalars(select(Node.id).where(among(Node.id, set(ids), s)))) == ids
        assert s.scalar(select(func.count()).select_from(Node).where(~among(Node.id, ids[:4], s))) == \
            s.scalar(select(func.count()).select_from(Node)) - 4


def test_among_is_one_statement_text_whatever_the_number_of_ids(db):
    with db.session() as s:
        ids = sorted(n.id for n in nodes.add_nodes(s, [{"name": f"text{i}.example.com"} for i in range(30)]))
    seen, stop = statements(db)
    try:
        with db.session() as s:
            for count in (1, 7, 30):
                assert len(s.scalars(select(Node.id).where(among(Node.id, ids[:count], s))).all()) == count
    finally:
        stop()
    texts = {t for t in seen if "FROM nodes" in t}
    assert len(texts) == (1 if db.postgresql else 3), texts  # SQLite: a placeholder per id


def test_many_events_are_written_whole_in_one_statement(db):
    at = utcnow() - timedelta(hours=1)
    rows = [{"object_type": "noderole", "object_id": i, "action": "bench", "from_state": None if i % 2 else "todo",
             "to_state": "active", "actor": "tester", "message": f"n{i} 'quoted', {{braces}}", "at": at}
            for i in range(1500)]
    rows.append({"object_type": "deployment", "object_id": None, "action": "bench"})  # defaults filled in
    seen, stop = statements(db)
    try:
        with db.session() as s:
            record(s, rows)
    finally:
        stop()
    inserts = [t for t in seen if "INSERT INTO events" in t]
    assert len(inserts) == 1  # SQLite: one executemany; PostgreSQL: one statement of arrays
    assert ("unnest" in inserts[0]) == db.postgresql
    with db.session() as s:
        got = s.execute(select(Event).where(Event.action == "bench").order_by(Event.id)).scalars().all()
        assert len(got) == 1501
        assert [e.object_id for e in got[:-1]] == list(range(1500))
        assert [e.from_state for e in got[:4]] == ["todo", None, "todo", None]
        assert got[3].message == "n3 'quoted', {braces}" and got[3].actor == "tester"
        assert abs((got[0].at - at).total_seconds()) < 1
        last = got[-1]
        assert (last.object_type, last.object_id, last.actor, last.message, last.to_state) == \
            ("deployment", None, "system", "", None)
        assert abs((last.at - utcnow()).total_seconds()) < 60


def test_values_every_row_shares_are_bound_once_and_written_to_each_row(db):
    """PostgreSQL binds a column whose rows all agree as one value (not an array of it): the rows
    still each get it, with NULLs, and also when no column differs at all (identical rows)."""
    at = utcnow() - timedelta(minutes=5)
    same = {"object_type": "noderole", "action": "shared", "from_state": None, "to_state": "todo",
            "actor": "tester", "message": "a {brace} and a 'quote'", "at": at}
    seen, stop = statements(db)
    try:
        with db.session() as s:
            record(s, [same | {"object_id": i} for i in range(40)])  # only the ids differ
            record(s, [same | {"object_id": 7, "action": "twin"} for _ in range(3)])  # nothing differs
    finally:
        stop()
    inserts = [t for t in seen if "INSERT INTO events" in t]
    assert len(inserts) == 2
    if db.postgresql:
        assert inserts[0].count("[])") == 1 and inserts[1].count("[])") == 1  # one array each: the ids
    with db.session() as s:
        got = s.execute(select(Event).where(Event.action == "shared").order_by(Event.id)).scalars().all()
        assert [e.object_id for e in got] == list(range(40))
        assert {(e.object_type, e.from_state, e.to_state, e.actor, e.message) for e in got} == \
            {("noderole", None, "todo", "tester", "a {brace} and a 'quote'")}
        assert all(abs((e.at - at).total_seconds()) < 1 for e in got)
        twins = s.execute(select(Event.object_id, Event.to_state).where(Event.action == "twin")).all()
        assert twins == [(7, "todo")] * 3
