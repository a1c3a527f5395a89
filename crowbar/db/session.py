"""Engines and sessions, with the per-database settings that make them safe to share.

SQLite: WAL, foreign keys on, and every transaction opened with BEGIN IMMEDIATE so that two
threads of one server never deadlock upgrading a read lock to a write lock.
PostgreSQL: plain READ COMMITTED; the annealer claims work with FOR UPDATE SKIP LOCKED.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from crowbar.db import notices
from crowbar.db.sql import is_postgresql

EXAMPLES = "sqlite:///PATH/crowbar.db or postgresql://USER@HOST/NAME"
READ_ONLY = "crowbar_read_only"  # execution option of a read session's connections
AGENT_LISTENERS = "agent_listeners"  # session.info: Database.on_agent_work's listeners
AGENT_NODES = "agent_nodes"  # session.info: the nodes whose agents this unit of work gave something to do
ANNOUNCE = "announce"  # session.info: on PostgreSQL, the Database's origin tag for NOTIFY (db/notices.py)


class UnusableDatabase(Exception):
    """A database URL that cannot be used (not a URL, an unknown engine, a driver that is not
    installed, a SQLite file in a directory that does not exist), or a database that cannot be
    opened or prepared. The message is one line for a person; the commands that open a database
    (`crowbar server`, `crowbar db upgrade`) print it instead of a traceback."""


def parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError):  # the text itself may hold a password: do not repeat it
        raise UnusableDatabase(f"the database URL is not a URL that can be used (expected {EXAMPLES})") from None


def shown(url: str | URL) -> str:
    """The URL for a message or a log line: its password hidden."""
    try:
        return (url if isinstance(url, URL) else make_url(url)).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "(an unparseable URL)"


def reason(exc: DBAPIError) -> str:
    """What the database driver said, on one line."""
    return " ".join(str(exc.orig or exc).split()) or type(exc.orig).__name__


def make_engine(url: str, **kwargs) -> Engine:
    """An engine for `url`, or UnusableDatabase with the reason. Creates no directory: a SQLite
    file's directory must exist (only `crowbar server` and `crowbar db upgrade` create a
    directory, the data directory they own)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_path(parsed)
        # The pool keeps as many connections as the server's threads use at once (the API's 40, the
        # agents' poll readers, the annealer's workers): a connection past the pool is opened (five
        # PRAGMAs) and closed for one unit of work, which at fleet scale was a third of the work of
        # the threads that stalled the event loop (docs/benchmarks.md, "What stalls the event loop").
        # Last in, first out: each connection has its own page cache (up to 64 MiB, below), and a
        # pool that rotates through all of its connections warms every one of them.
        kwargs = {"pool_size": 20, "max_overflow": 40, "pool_use_lifo": True} | kwargs
        engine = _create(parsed, url, connect_args={"timeout": 60, "check_same_thread": False}, **kwargs)
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return _create(parsed, url, pool_pre_ping=True, pool_size=10, max_overflow=20, **kwargs)


def _create(parsed: URL, url: str, **kwargs) -> Engine:
    try:
        return create_engine(url, **kwargs)
    except NoSuchModuleError:
        raise UnusableDatabase(f"database {shown(parsed)}: unknown database engine {parsed.drivername!r} "
                               f"(expected {EXAMPLES})") from None
    except ArgumentError as exc:
        raise UnusableDatabase(f"database {shown(parsed)}: {' '.join(str(exc).split())}") from None
    except ImportError as exc:
        raise UnusableDatabase(f"database {shown(parsed)}: the driver for {parsed.drivername} is not "
                               f"installed ({exc})") from None


def _check_sqlite_path(parsed: URL) -> None:
    if not parsed.database or parsed.database == ":memory:":
        raise UnusableDatabase(f"database {shown(parsed)}: an in-memory SQLite database is not shared between "
                               "connections and vanishes on exit: give a file, sqlite:///PATH/crowbar.db")
    if str(parsed.query.get("uri", "")).lower() in ("true", "1"):
        return  # a SQLite URI filename (file:...): SQLite itself reads it
    path = Path(parsed.database)
    try:
        if path.exists() and not path.is_file():
            what = "is a directory, not a database file" if path.is_dir() else "is not a regular file"
            raise UnusableDatabase(f"database {shown(parsed)}: {path} {what}")
        if not path.exists() and not path.parent.is_dir():
            what = "is not a directory" if path.parent.exists() else "does not exist"
            raise UnusableDatabase(f"database {shown(parsed)}: cannot create {path}: the directory "
                                   f"{path.parent} {what} (create it first)")
    except OSError as exc:  # a name too long, a directory that cannot be searched
        raise UnusableDatabase(f"database {shown(parsed)}: {exc.strerror or exc}") from None


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
        # A read session's transaction is deferred: it takes no write lock, so in WAL mode it reads
        # beside the one writer instead of queueing behind it (Database.read_session).
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


def signal_work(session: Session, kind: str = "anneal") -> None:
    """Tell whoever commits this unit of work that it made new work for a background loop
    ("anneal": noderoles may be runnable; "power": a power request is queued). The API's unit of
    work wakes those loops after a successful commit; nothing is woken if the work rolls back."""
    session.info.setdefault("work", set()).add(kind)


def pending_work(session: Session) -> set[str]:
    """The kinds of work this unit signalled (see `signal_work`)."""
    return set(session.info.get("work", ()))


def _agent_work(session: Session) -> set[int]:
    """After a flush: the nodes whose discovery agents now have something to take (a job queued,
    an action such as reboot set), noted for `Database.on_agent_work`'s listeners; returned."""
    from crowbar.db.models import AgentJob, Node

    ids = {obj.node_id for obj in session.new if isinstance(obj, AgentJob) and obj.state in (None, "queued")}
    for obj in session.dirty:
        if isinstance(obj, Node) and obj.agent_action and inspect(obj).attrs.agent_action.history.added:
            ids.add(obj.id)
        elif isinstance(obj, AgentJob) and obj.state == "queued" and inspect(obj).attrs.state.history.added:
            ids.add(obj.node_id)
    if ids:
        session.info.setdefault(AGENT_NODES, set()).update(ids)
    return ids


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _context) -> None:
    origin = session.info.get(ANNOUNCE)
    if origin is None and not session.info.get(AGENT_LISTENERS):  # nobody to tell (tools, tests): no cost
        return
    ids = _agent_work(session)
    if ids and origin is not None:  # other processes on this PostgreSQL hear of it when it commits
        notices.send(session.connection(), origin, ids)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    ids = session.info.pop(AGENT_NODES, None)
    if ids:
        _tell(session.info.get(AGENT_LISTENERS, ()), frozenset(ids))


def _tell(listeners, node_ids: frozenset[int]) -> None:
    """Call each agent-work listener; one that fails is logged (never fails the commit that
    already happened, nor keeps the others from hearing)."""
    for listener in list(listeners):
        try:
            listener(node_ids)
        except Exception:  # noqa: BLE001
            import logging

            logging.getLogger("crowbar.db").exception("an agent-work listener failed")


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(AGENT_NODES, None)


class Database:
    """An engine plus a session factory; one per process and URL."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self.agent_listeners: list[Callable[[frozenset[int]], None]] = []
        # On PostgreSQL, units of work that give agents work also NOTIFY the other processes on the
        # same database (db/notices.py); `origin` tells this Database's own notifications apart.
        self.origin = notices.new_origin()
        info = {AGENT_LISTENERS: self.agent_listeners} | ({ANNOUNCE: self.origin} if self.postgresql else {})
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False, info=info)
        # On PostgreSQL a read session runs in autocommit: each statement is its own transaction, which
        # under READ COMMITTED is what each statement of a transaction sees anyway, and the BEGIN and
        # ROLLBACK round trips of the hottest read (an agent's poll: one SELECT) are gone.
        read_options = {READ_ONLY: True} | ({"isolation_level": "AUTOCOMMIT"} if self.postgresql else {})
        self.read_sessionmaker = sessionmaker(self.engine.execution_options(**read_options), autoflush=False)

    def on_agent_work(self, listener: Callable[[frozenset[int]], None]) -> None:
        """Call `listener(node_ids)` after every commit, in any thread of this process, that gave
        those nodes' discovery agents something to take: a job queued, an action set (the agent's
        long poll answers at once: crowbar.api.longpoll). On PostgreSQL, other processes' commits
        reach the same listeners through `deliver_agent_work` (the server's notices loop)."""
        self.agent_listeners.append(listener)

    def deliver_agent_work(self, node_ids: frozenset[int]) -> None:
        """Tell this process's agent-work listeners of work another process committed."""
        _tell(self.agent_listeners, node_ids)

    def listener(self) -> notices.Listener:
        """A connection of its own that hears other processes' agent work (PostgreSQL only)."""
        if not self.postgresql:
            raise RuntimeError("only PostgreSQL carries agent work between processes")
        return notices.Listener(self.engine, self.origin)

    def check(self) -> None:
        """Open one connection: UnusableDatabase with the database's own reason if it cannot be
        opened (no server, refused, no such database, wrong password, not a database file)."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except DBAPIError as exc:
            raise UnusableDatabase(f"cannot open the database {shown(self.url)}: {reason(exc)}") from None

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

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A unit of work that only reads, for the hottest reads (an agent's poll): on SQLite its
        transaction takes no write lock; it is rolled back at the end. Changing an object in it is a
        programming error (RuntimeError): what must write opens `session()`."""
        session = self.read_sessionmaker()
        try:
            yield session
            if session.new or session.deleted or any(session.is_modified(o) for o in session.dirty):
                raise RuntimeError("a read session changed objects: write in Database.session() instead")
        finally:
            session.rollback()
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
