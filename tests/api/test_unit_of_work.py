"""The API's unit of work (crowbar.api.deps.unit_of_work): one commit per request, before the
client gets its answer; a failed commit is the usual error body and writes nothing; background
loops are woken for the work a service signalled, after the commit and never after a rollback."""

from __future__ import annotations

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

from crowbar.api.app import create_app
from crowbar.api.deps import UnitOfWork
from crowbar.api.settings import AppSettings
from crowbar.db.models import Event, Node
from crowbar.db.session import signal_work
from crowbar.errors import Conflict

V2 = "/api/v2"


def node_names(db) -> set[str]:
    with db.session() as s:
        return set(s.scalars(select(Node.name)))


@pytest.fixture
def failing_commit(db):
    """Make the commit of every unit of work that signalled work fail with `how(session)`."""
    installed = []

    def install(how):
        def before_commit(session):
            if session.info.get("work"):
                how(session)

        event.listen(db.sessionmaker, "before_commit", before_commit)
        installed.append(before_commit)

    yield install
    for listener in installed:
        event.remove(db.sessionmaker, "before_commit", listener)


def duplicate_node(session):
    """A row that breaks the unique node name: the commit's flush fails in the database itself."""
    session.add(Node(name="n1.example.com", admin=False, alive=True, available=True, description="",
                     bootenv="local", discovery={}, hints={}))


def lost_database(session):
    raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))


@pytest.mark.parametrize("how, status, kind", [(duplicate_node, 409, "conflict"),
                                               (lost_database, 503, "unavailable")])
def test_a_failed_commit_is_the_error_body_and_writes_nothing(api, db, failing_commit, how, status, kind):
    assert api.post(f"{V2}/nodes", json={"name": "n1.example.com"}).status_code == 201
    api.woken.clear()
    with db.session() as s:
        events_before = s.scalar(select(func.count()).select_from(Event))
    failing_commit(how)

    r = api.post(f"{V2}/nodes", json={"name": "n2.example.com"})
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == kind and body["message"], body
    assert node_names(db) == {"n1.example.com"}  # neither n2 nor the duplicate
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Event)) == events_before
    assert api.woken == []  # rolled back: nothing to wake for


def test_work_is_woken_after_the_commit_and_only_then(db, admin_token):
    seen: list[tuple[str, set[str]]] = []

    def wake(kind: str) -> None:  # what another connection sees when the loop is woken
        seen.append((kind, node_names(db)))

    client = TestClient(create_app(AppSettings(db=db, wake=wake)), headers={"authorization": f"Bearer {admin_token}"})
    assert client.post(f"{V2}/nodes", json={"name": "n1.example.com"}).status_code == 201
    assert seen == [("anneal", {"n1.example.com"})]  # once, and the node was already committed
    seen.clear()
    for r in (client.get(f"{V2}/nodes"), client.get(f"{V2}/nodes/n1.example.com"),
              client.post(f"{V2}/deployments", json={"name": "d1"}),  # no new work for the annealer
              client.patch(f"{V2}/nodes/ghost.example.com", json={"alive": True}),  # 404
              client.post(f"{V2}/nodes", json={"name": "n1.example.com"})):  # 409
        assert r.status_code in (200, 201, 404, 409), r.text
    assert seen == []
    for method, path, body in [("PATCH", "/nodes/n1.example.com", {"alive": False}),
                               ("POST", "/deployments/d1/bind", {"role": "test-client", "node": "n1.example.com"}),
                               ("POST", "/deployments/d1/commit", None)]:
        assert client.request(method, V2 + path, json=body).status_code in (200, 201)
        assert [kind for kind, _ in seen] == ["anneal"], (path, seen)
        seen.clear()


def test_the_unit_of_work_wakes_exactly_the_kinds_signalled(db, admin_token):
    """A route that signals `kinds` (and then fails when told to), on the real dependency."""
    router = APIRouter()

    @router.post("/signal")
    def signal(s: UnitOfWork, kinds: str, fail: bool = False):
        for kind in kinds.split(","):
            signal_work(s, kind)
        if fail:
            raise Conflict("refused after signalling")
        return {"ok": True}

    woken: list[str] = []
    app = create_app(AppSettings(db=db, wake=woken.append))
    app.include_router(router)
    client = TestClient(app)
    assert client.post("/signal", params={"kinds": "power"}).status_code == 200
    assert woken == ["power"]
    assert client.post("/signal", params={"kinds": "power,anneal,power"}).status_code == 200
    assert woken == ["power", "anneal", "power"]  # each kind once per unit of work
    r = client.post("/signal", params={"kinds": "anneal", "fail": True})
    assert (r.status_code, r.json()["error"]) == (409, "conflict")
    assert woken == ["power", "anneal", "power"]  # rolled back: not woken
