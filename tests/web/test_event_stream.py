"""GET /api/v2/events/stream, the event log as server-sent events (crowbar.api.stream): a user's
token or session is required, events are filtered like GET /events, a reconnecting client resumes
after Last-Event-ID, one reader per process serves every stream, a stream ends after its time,
and a real server shutting down ends its open streams instead of waiting for them."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event as sa_event

from crowbar.api import stream
from crowbar.api.app import create_app
from crowbar.api.settings import AppSettings
from crowbar.db.events import record

V2 = "/api/v2"


def messages(text: str) -> list[tuple[str, str | None, dict]]:
    """(event type, id, data) of each message of a finished stream."""
    out = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line.startswith(":"):
                key, _, value = line.partition(":")
                fields[key] = value.removeprefix(" ")
        if "event" in fields:
            out.append((fields["event"], fields.get("id"), json.loads(fields.get("data") or "{}")))
    return out


@pytest.fixture
def short(db, admin_token):
    """The app with streams that last one second."""
    with TestClient(create_app(AppSettings(db=db, event_stream_seconds=1.0)),
                    headers={"authorization": f"Bearer {admin_token}"}) as client:
        yield client


def test_the_stream_needs_a_user_and_refuses_a_bad_last_event_id(short):
    anonymous = TestClient(short.app)
    r = anonymous.get(f"{V2}/events/stream")
    assert r.status_code == 401 and r.json()["error"]
    r = short.get(f"{V2}/events/stream", headers={"Last-Event-ID": "1e3"})
    assert r.status_code == 422 and r.json()["field"] == "Last-Event-ID"
    r = short.get(f"{V2}/events/stream", params={"after": -1})
    assert r.status_code == 422
    r = short.get(f"{V2}/events/stream", params={"nonsense": 1})
    assert r.status_code == 400
    # a viewer may follow it
    assert short.post(f"{V2}/users", json={"name": "vic", "role": "viewer"}).status_code == 201
    token = short.post(f"{V2}/tokens", json={"name": "t", "user": "vic"}).json()["token"]
    r = anonymous.get(f"{V2}/events/stream", headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert messages(r.text)[-1][0] == "end"


def test_live_events_filtered_then_the_stream_ends(short):
    def later():
        time.sleep(0.3)
        short.post(f"{V2}/nodes", json={"name": "live1.example.com"})
        short.post(f"{V2}/deployments", json={"name": "live-d"})

    threading.Thread(target=later).start()
    started = time.monotonic()
    r = short.get(f"{V2}/events/stream", params={"object_type": "node"})
    took = time.monotonic() - started
    got = messages(r.text)
    assert 0.9 < took < 5, took  # it lasted its second, then ended
    assert got[-1][0] == "end"
    events = [data for kind, _, data in got if kind == "event"]
    assert [(e["object_type"], e["action"], e["message"]) for e in events] == [("node", "create", "live1.example.com")]
    ids = [int(i) for kind, i, _ in got if kind == "event"]
    assert ids == [events[0]["id"]]


def test_resume_after_last_event_id_and_after(short):
    for i in range(5):
        assert short.post(f"{V2}/nodes", json={"name": f"back{i}.example.com"}).status_code == 201
    creates = [e for e in short.get(f"{V2}/events", params={"object_type": "node", "action": "create"}).json()["items"]]
    assert len(creates) == 5
    third = creates[2]["id"]
    # a reconnecting EventSource sends Last-Event-ID: what came after it, and only that
    r = short.get(f"{V2}/events/stream", params={"object_type": "node", "action": "create"},
                  headers={"Last-Event-ID": str(third)})
    got = [(int(i), e) for kind, i, e in messages(r.text) if kind == "event"]
    assert [e["message"] for _, e in got] == ["back3.example.com", "back4.example.com"]
    assert all(i >= e["id"] for i, e in got) and got[-1][0] >= creates[-1]["id"]  # ids never go back
    # ?after= is the same for the first connection; the header wins when it is further on
    r = short.get(f"{V2}/events/stream", params={"after": third, "object_type": "node", "action": "create"},
                  headers={"Last-Event-ID": str(creates[3]["id"])})
    assert [e["message"] for kind, _, e in messages(r.text) if kind == "event"] == ["back4.example.com"]
    # without either: from now on only
    r = short.get(f"{V2}/events/stream", params={"object_type": "node"})
    assert [kind for kind, _, _ in messages(r.text)] == ["end"]


def test_a_client_too_far_behind_is_told_to_reload(short, db, monkeypatch):
    monkeypatch.setattr(stream, "BACKLOG", 3)
    with db.session() as s:
        record(s, [{"object_type": "node", "object_id": i, "action": "poke"} for i in range(10)])
    r = short.get(f"{V2}/events/stream", headers={"Last-Event-ID": "1"})
    kinds = [kind for kind, _, _ in messages(r.text)]
    assert kinds[0] == "reset" and "event" not in kinds


def test_one_reader_for_every_stream(db):
    """Twenty subscribers: the reader reads the log once per step for all of them, and each gets
    every event, in order."""
    hub = stream.EventHub(db, poll=0.05)
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        if "FROM events" in statement:
            statements.append(statement)

    async def main():
        subs = [(await hub.subscribe(lambda e: True))[0] for _ in range(20)]
        sa_event.listen(db.engine, "before_cursor_execute", count)
        try:
            with db.session() as s:
                record(s, [{"object_type": "node", "object_id": i, "action": "poke"} for i in range(7)])
            got = [[] for _ in subs]
            deadline = time.monotonic() + 10
            while any(len(g) < 7 for g in got) and time.monotonic() < deadline:
                for g, sub in zip(got, subs):
                    while not sub.queue.empty():
                        g.append(sub.queue.get_nowait())
                await asyncio.sleep(0.05)
            # no more steps once nobody listens; one may be in flight (its statement counted,
            # `reads` not yet): wait until the two agree and stay so (CI once saw 2 against 1)
            for sub in subs:
                hub.unsubscribe(sub)
            deadline, agreed = time.monotonic() + 10, 0
            while agreed < 5 and time.monotonic() < deadline:
                agreed = agreed + 1 if len(statements) == hub.reads else 0
                await asyncio.sleep(0.05)
            steps = hub.reads
        finally:
            sa_event.remove(db.engine, "before_cursor_execute", count)
            hub.close()
        return got, steps

    got, steps = asyncio.run(main())
    assert all([e["object_id"] for e in g] == list(range(7)) for g in got)
    assert len(statements) == steps  # one query a step, whatever the number of subscribers


def test_a_late_commit_below_the_highest_id_is_still_delivered(db):
    """PostgreSQL hands out ids at insert, not at commit: an event with a lower id may become
    visible after a higher one was read. The reader looks for the ids it skipped again (for
    HOLE_SECONDS), so the late one is still delivered."""
    from sqlalchemy import insert

    from crowbar.db.models import Event, utcnow

    hub = stream.EventHub(db, poll=0.05)

    def add(event_id: int, action: str) -> None:
        with db.session() as s:
            s.execute(insert(Event.__table__), [{"id": event_id, "object_type": "node", "object_id": 1, "action": action,
                                                 "actor": "t", "message": "", "at": utcnow()}])

    async def collect(sub, count):
        got, deadline = [], time.monotonic() + 5
        while len(got) < count and time.monotonic() < deadline:
            while not sub.queue.empty():
                got.append(sub.queue.get_nowait())
            await asyncio.sleep(0.05)
        return got

    async def main():
        sub, start = await hub.subscribe(lambda e: True)
        add(start + 90, "committed-first")   # the reader reads it: ids start+1..start+89 are holes
        first = await collect(sub, 1)
        add(start + 40, "committed-late")    # a lower id, visible later
        late = await collect(sub, 1)
        hub.close()
        return start, first, late

    start, first, late = asyncio.run(main())
    assert [e["action"] for e in first] == ["committed-first"]
    assert [(e["id"], e["action"]) for e in late] == [(start + 40, "committed-late")]


@pytest.mark.e2e
def test_a_real_server_streams_and_shutting_down_ends_open_streams(servers):
    server = servers.new()
    token = (server.data_dir / "admin.token").read_text().strip()
    headers = {"authorization": f"Bearer {token}"}
    lines: list[str] = []
    opened = threading.Event()

    def follow():
        with httpx.stream("GET", f"{server.url}{V2}/events/stream", params={"object_type": "node"},
                          headers=headers, timeout=httpx.Timeout(10, read=None)) as r:
            opened.set()
            for line in r.iter_lines():
                lines.append(line)

    readers = [threading.Thread(target=follow, daemon=True) for _ in range(3)]
    for t in readers:
        t.start()
    assert opened.wait(10)
    time.sleep(0.5)
    assert httpx.post(f"{server.url}{V2}/nodes", json={"name": "sse.example.com"}, headers=headers).status_code == 201
    deadline = time.monotonic() + 10
    while sum('"sse.example.com"' in line for line in lines) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sum('"sse.example.com"' in line for line in lines) == 3, lines
    started = time.monotonic()
    assert server.stop(timeout=20) is not None
    took = time.monotonic() - started
    for t in readers:
        t.join(5)
    assert took < 10, f"the server took {took:.1f} s to stop with 3 streams open"
    assert lines.count("event: end") == 3, lines
