"""Agent work across server processes on PostgreSQL: NOTIFY when a commit gives agents something
to take, LISTEN for what other processes committed.

An agent's long poll (crowbar.api.longpoll) is held by one server process and woken by the commits
of that process (`Database.on_agent_work`). Several servers on one PostgreSQL share the work: the
deploy call may come through one, the agent may be held by another, the annealer that queues the
agent's next job may run in a third. So on PostgreSQL every unit of work that gives nodes' agents
something to do (a job queued, an action set) also sends, in its own transaction,

    NOTIFY crowbar_agent_work, '<origin> <node id>,<node id>,...'

PostgreSQL delivers it to every listening connection when, and only if, that transaction commits,
in commit order. `origin` is the sending `Database`'s own random tag, so a process skips what it
sent itself (its own commits already told it, at once). A notification's payload is at most
PostgreSQL's 8,000 bytes: many nodes are sent as several notifications (`payloads`).

Each server holds one connection of its own (not the pool's) that LISTENs (`Listener`, driven by
the server's `crowbar.server.notices` loop) and hands the node ids to the same listeners its own
commits call. What is committed while that connection is lost (the database restarted) is not
replayed: those agents hear of it when their hold ends, as without the listener.

SQLite has one server by design (one writer, one file on one machine): nothing is sent there.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator

CHANNEL = "crowbar_agent_work"
PAYLOAD_MAX = 7900  # characters of one payload (PostgreSQL's limit is 8,000 bytes)
NOTIFY_SQL = "SELECT pg_notify(%(channel)s, %(payload)s)"


def new_origin() -> str:
    """A tag for one Database in one process: 12 hex characters, no space."""
    return secrets.token_hex(6)


def payloads(origin: str, node_ids: Iterable[int]) -> list[str]:
    """The payloads that carry these node ids (sorted, once each), none longer than PAYLOAD_MAX."""
    out: list[str] = []
    ids: list[str] = []
    size = len(origin) + 1
    for node_id in sorted(set(node_ids)):
        text = str(int(node_id))
        if ids and size + len(text) + 1 > PAYLOAD_MAX:
            out.append(f"{origin} {','.join(ids)}")
            ids, size = [], len(origin) + 1
        ids.append(text)
        size += len(text) + 1
    if ids:
        out.append(f"{origin} {','.join(ids)}")
    return out


def parse(payload: str) -> tuple[str, frozenset[int]] | None:
    """(origin, node ids) of a payload; None for one that is not ours to read (anyone who can
    connect to the database can NOTIFY on the channel: a malformed payload is ignored)."""
    origin, _, ids = payload.partition(" ")
    if not origin or not ids or len(payload) > PAYLOAD_MAX:
        return None
    try:
        nodes = frozenset(int(part) for part in ids.split(","))
    except ValueError:
        return None
    return (origin, nodes) if all(n > 0 for n in nodes) else None


def send(connection, origin: str, node_ids: Iterable[int]) -> None:
    """NOTIFY, in `connection`'s transaction (SQLAlchemy Connection), that these nodes' agents
    have work; delivered when that transaction commits."""
    for payload in payloads(origin, node_ids):
        connection.exec_driver_sql(NOTIFY_SQL, {"channel": CHANNEL, "payload": payload})


class Listener:
    """One PostgreSQL connection of its own that LISTENs on CHANNEL; `receive` waits for
    notifications. Not thread-safe: one thread drives it (the server's notices loop)."""

    def __init__(self, engine, origin: str):
        self.engine = engine
        self.origin = origin
        self._conn = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def connect(self) -> None:
        """Open the connection (autocommit, so that notifications arrive as they are sent) and LISTEN."""
        import psycopg

        self.close()
        args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
        conn = psycopg.connect(*args, **kwargs, autocommit=True)
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def receive(self, timeout: float) -> Iterator[frozenset[int]]:
        """Node ids other origins sent, as they arrive, for at most `timeout` seconds (returns
        earlier once a notification was read and no other is waiting). Raises the driver's error
        when the connection is lost (connect again)."""
        if not self.connected:
            self.connect()
        # the first one (waiting up to `timeout`), then whatever arrived meanwhile, without waiting again
        for notes in (self._conn.notifies(timeout=timeout, stop_after=1), self._conn.notifies(timeout=0)):
            for note in notes:
                got = parse(note.payload)
                if got is not None and got[0] != self.origin:
                    yield got[1]

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a lost connection
                pass
