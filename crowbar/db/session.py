"""Engines and sessions, with the per-database settings that make them safe to share.

SQLite: WAL, foreign keys on, and every transaction opened with BEGIN IMMEDIATE so that two
threads of one server never deadlock upgrading a read lock to a write lock.
PostgreSQL: plain READ COMMITTED; the annealer claims work with FOR UPDATE SKIP LOCKED.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from crowbar.db.sql import is_postgresql


def make_engine(url: str, **kwargs) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, **kwargs)
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, **kwargs)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" hook below issue BEGIN
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        # 64 MiB of page cache (allocated as used) instead of 2 MiB: at 10,000 nodes the hot part of
        # the database no longer fits the default and every claim re-reads pages.
        cur.execute("PRAGMA cache_size=-65536")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def signal_work(session: Session, kind: str = "anneal") -> None:
    """Tell whoever commits this unit of work that it made new work for a background loop
    ("anneal": noderoles may be runnable; "power": a power request is queued). The API's unit of
    work wakes those loops after a successful commit; nothing is woken if the work rolls back."""
    session.info.setdefault("work", set()).add(kind)


def pending_work(session: Session) -> set[str]:
    """The kinds of work this unit signalled (see `signal_work`)."""
    return set(session.info.get("work", ()))


class Database:
    """An engine plus a session factory; one per process and URL."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def postgresql(self) -> bool:
        return is_postgresql(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed when the block ends, rolled back (nothing half-written) on error."""
        session = self.sessionmaker()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
