"""The SQLite engine's connection pool keeps as many connections as the server's threads use at
once: a unit of work past the pool would open a connection (five PRAGMAs) and close it again,
which at fleet scale kept the API's threads busy while its event loop waited (docs/benchmarks.md,
"What stalls the event loop")."""

from __future__ import annotations

import threading

from sqlalchemy import event, text


def test_sqlite_units_of_work_at_once_reuse_the_pools_connections(sqlite_db):
    opened = []
    event.listen(sqlite_db.engine, "connect", lambda *_: opened.append(1))
    at_once = 20
    barrier = threading.Barrier(at_once)
    errors = []

    def unit():
        try:
            with sqlite_db.read_session() as s:
                s.execute(text("SELECT 1"))
                barrier.wait(timeout=30)  # all 20 hold a connection at the same time
        except Exception as exc:  # reported below; a thread's exception is otherwise lost
            errors.append(exc)

    for _ in range(3):
        threads = [threading.Thread(target=unit) for _ in range(at_once)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors
    # three rounds of 20 at once: 20 connections opened in the first round at most, none after
    assert 0 < len(opened) <= at_once
    assert sqlite_db.engine.pool.checkedout() == 0


def test_sqlite_units_of_work_one_after_another_reuse_the_last_returned_connection(sqlite_db):
    """After a burst, work one unit at a time keeps to one connection (the pool is last in, first
    out): each connection has its own page cache (up to 64 MiB), and rotating through all the
    pool's would warm all of them, the server's memory growing with the database."""
    barrier = threading.Barrier(5)

    def hold():
        with sqlite_db.read_session() as s:
            s.execute(text("SELECT 1"))
            barrier.wait(timeout=30)

    threads = [threading.Thread(target=hold) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    used = set()
    for _ in range(10):
        with sqlite_db.read_session() as s:
            used.add(id(s.connection().connection.dbapi_connection))
    assert len(used) == 1
