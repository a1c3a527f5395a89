"""crowbar.db.notices: on PostgreSQL a unit of work that gives agents work NOTIFYs the other
processes on the database when (and only if) it commits; a listener hears the others' node ids,
never its own; payloads stay under PostgreSQL's limit however many nodes; nothing on SQLite."""

from __future__ import annotations

import pytest

from crowbar.db import notices
from crowbar.db.models import AgentJob, Node
from crowbar.db.session import ANNOUNCE, Database
from crowbar.services import nodes
from tests.conftest import make_database


def test_payloads_carry_every_id_once_and_stay_under_the_limit():
    ids = list(range(1, 20_001)) + [7, 7, 19_999]
    sent = notices.payloads("abc123", reversed(ids))
    assert len(sent) > 1 and all(len(p) <= notices.PAYLOAD_MAX for p in sent)
    parsed = [notices.parse(p) for p in sent]
    assert all(origin == "abc123" for origin, _ in parsed)
    got = [n for _, part in parsed for n in part]
    assert sorted(got) == list(range(1, 20_001))  # each once
    assert notices.payloads("abc123", []) == []
    assert notices.payloads("o", [3, 1]) == ["o 1,3"]


@pytest.mark.parametrize("payload", ["", "origin", "origin ", " 1,2", "o 1,x", "o 1,,2", "o 0", "o -3",
                                     "o 1 2", "o " + "1," * 5000 + "1"])
def test_a_payload_that_is_not_ours_is_ignored(payload):
    assert notices.parse(payload) is None


def test_sqlite_sends_nothing_and_has_no_listener(sqlite_db):
    assert ANNOUNCE not in sqlite_db.sessionmaker.kw["info"]
    with pytest.raises(RuntimeError, match="only PostgreSQL"):
        sqlite_db.listener()


@pytest.fixture
def two(request, tmp_path):
    """Two Databases on one PostgreSQL database, as two server processes would hold them."""
    first = make_database("postgresql", tmp_path, request)
    second = Database(first.url)
    yield first, second
    second.dispose()
    first.dispose()


def heard(listener, seconds: float = 2.0) -> set[int]:
    got: set[int] = set()
    for ids in listener.receive(seconds):
        got |= ids
    for ids in listener.receive(0.2):  # and whatever follows at once
        got |= ids
    return got


@pytest.mark.postgresql
def test_another_process_hears_the_nodes_given_work_when_the_unit_commits(two):
    a, b = two
    with a.session() as s:
        ids = sorted(n.id for n in nodes.add_nodes(s, [{"name": f"n{i}.example.com"} for i in range(4)]))
    theirs, mine = b.listener(), a.listener()
    theirs.connect()
    mine.connect()
    try:
        assert heard(theirs, 0.3) == set()  # creating nodes gives their agents nothing
        with a.session() as s:
            s.add(AgentJob(node_id=ids[0], kind="script", script="true", timeout=10))  # a job queued
            s.get(Node, ids[1]).agent_action = "reboot"  # an action set
            s.flush()
            s.get(Node, ids[2]).description = "not agent work"
        assert heard(theirs) == {ids[0], ids[1]}
        assert heard(mine, 0.3) == set()  # its own commits told it already: skipped
        with pytest.raises(RuntimeError):  # rolled back: nothing is heard
            with a.session() as s:
                s.get(Node, ids[3]).agent_action = "reboot"
                s.flush()
                raise RuntimeError("rolled back")
        assert heard(theirs, 0.5) == set()
    finally:
        theirs.close()
        mine.close()


@pytest.mark.postgresql
def test_many_nodes_work_arrives_whole_in_several_notifications(two):
    a, b = two
    with a.session() as s:
        ids = [n.id for n in nodes.add_nodes(s, [{"name": f"m{i:04d}.example.com"} for i in range(3000)])]
    listener = b.listener()
    listener.connect()
    try:
        with a.session() as s:
            for node in s.query(Node).filter(Node.id.in_(ids)):
                node.agent_action = "reboot"
        parts = []
        for part in listener.receive(2.0):
            parts.append(part)
        for part in listener.receive(0.3):
            parts.append(part)
        assert len(parts) >= 2 and set().union(*parts) == set(ids)
    finally:
        listener.close()
