"""The notices loop (crowbar.server.notices, PostgreSQL): another process's commits that give
agents work reach this process's agent-work listeners; a lost listening connection shows in
/health, is opened again, and what is committed after that is heard again."""

from __future__ import annotations

import logging
import time

import pytest
from sqlalchemy import text

from crowbar.db.models import Node
from crowbar.db.session import Database
from crowbar.server.notices import Notices
from crowbar.services import nodes
from tests.conftest import make_database
from tests.server.test_loops import eventually

pytestmark = pytest.mark.postgresql


@pytest.fixture
def pair(request, tmp_path):
    here = make_database("postgresql", tmp_path, request)
    other = Database(here.url)  # another server process on the same database
    yield here, other
    other.dispose()


def reboot(db: Database, node_id: int) -> None:
    with db.session() as s:
        s.get(Node, node_id).agent_action = "reboot"


def test_another_servers_agent_work_reaches_this_ones_listeners(pair, caplog):
    here, other = pair
    with other.session() as s:
        one, two, three = (n.id for n in nodes.add_nodes(s, [{"name": f"{x}.example.com"} for x in "abc"]))
    heard: list[frozenset[int]] = []
    here.on_agent_work(heard.append)
    loop = Notices(here, interval=0.2)
    loop.start()
    try:
        reboot(other, one)
        eventually(lambda: heard == [frozenset({one})], "the other server's work")
        reboot(here, two)  # this process's own commit: its listeners are told once, directly
        eventually(lambda: frozenset({two}) in heard, "its own commit")
        time.sleep(0.5)
        assert heard == [frozenset({one}), frozenset({two})] and loop.received == 1
        assert loop.health() == {"ok": True, "received_nodes": 1}

        # the listening connection is lost (the database restarted it): shown, logged once, back
        with here.engine.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()"))
        caplog.set_level(logging.INFO, "crowbar.server.notices")
        eventually(lambda: "lost the connection" in caplog.text, "the loss logged")
        eventually(lambda: loop.health()["ok"] and "listening again" in caplog.text, "the connection back")
        assert caplog.text.count("lost the connection") == 1
        reboot(other, three)
        eventually(lambda: heard[-1] == frozenset({three}) and loop.received == 2, "work after the reconnect")
    finally:
        loop.stop()
    assert not loop.listener.connected
