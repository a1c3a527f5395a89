"""Users, roles and tokens: what each role may do, tokens' life (expiry, rotation, revocation),
the real actor in events, the admin token re-issued, and the earlier admin token migrated."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update

from crowbar.db import migrate
from crowbar.db.models import ApiToken, Event, utcnow
from crowbar.services import auth


def as_(api, token: str) -> TestClient:
    client = TestClient(api.app, headers={"authorization": f"Bearer {token}"})
    return client


def make_user(api, name: str, role: str) -> str:
    r = api.post("/api/v2/users", json={"name": name, "role": role})
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/api/v2/users/{r.json()['id']}"
    r = api.post("/api/v2/tokens", json={"name": "laptop", "user": name})
    assert r.status_code == 201, r.text
    assert r.json()["user"] == name and r.json()["token"].startswith("cb_")
    return r.json()["token"]


def test_roles_decide_what_a_token_may_do(api, db):
    viewer, operator = as_(api, make_user(api, "vera", "viewer")), as_(api, make_user(api, "olga", "operator"))
    # a viewer reads, and changes nothing: 403 with the one error body, before the body is read
    assert viewer.get("/api/v2/nodes").status_code == 200
    assert viewer.get("/api/v2/events").status_code == 200
    r = viewer.post("/api/v2/nodes", json={"name": "n1.example.com"})
    assert r.status_code == 403 and r.json()["error"] == "forbidden" and "viewer" in r.json()["message"]
    r = viewer.post("/api/v2/nodes", content=b"{not json")
    assert r.status_code == 403
    # an operator changes things, and the event names it
    r = operator.post("/api/v2/nodes", json={"name": "n1.example.com"})
    assert r.status_code == 201, r.text
    with db.session() as s:
        actors = s.scalars(select(Event.actor).where(Event.object_type == "node", Event.action == "create")).all()
    assert actors == ["olga"]
    # users are the admins' alone, reads included
    for client in (viewer, operator):
        assert client.get("/api/v2/users").status_code == 403
        assert client.post("/api/v2/users", json={"name": "eve", "role": "admin"}).status_code == 403
        assert client.patch("/api/v2/users/vera", json={"role": "admin"}).status_code == 403
    assert {u["name"]: u["role"] for u in api.list("/api/v2/users")} == {"admin": "admin", "vera": "viewer",
                                                                       "olga": "operator"}
    # promoted, the same token may do more at once
    assert api.patch("/api/v2/users/vera", json={"role": "operator"}).json()["role"] == "operator"
    assert viewer.post("/api/v2/nodes", json={"name": "n2.example.com"}).status_code == 201


def test_tokens_created_listed_rotated_revoked(api, db):
    token = make_user(api, "vera", "viewer")
    vera = as_(api, token)
    assert vera.get("/api/v2/whoami").json()["user"] == "vera"
    # a viewer manages its own tokens, and only those
    r = vera.post("/api/v2/tokens", json={"name": "ci", "expires_in": 3600})
    assert r.status_code == 201 and r.headers["location"] == f"/api/v2/tokens/{r.json()['id']}"
    ci = r.json()
    assert ci["expires_at"] is not None and not ci["expired"]
    mine = vera.get("/api/v2/tokens").json()["items"]
    assert {t["name"] for t in mine} == {"laptop", "ci"} and all("token" not in t for t in mine)
    assert vera.get("/api/v2/tokens", params={"user": "admin"}).status_code == 403
    assert vera.post("/api/v2/tokens", json={"name": "x", "user": "admin"}).status_code == 403
    admin_token_id = api.get("/api/v2/whoami").json()["token"]["id"]
    assert vera.delete(f"/api/v2/tokens/{admin_token_id}").status_code == 403
    assert vera.post(f"/api/v2/tokens/{admin_token_id}/rotate").status_code == 403
    # the admin sees everyone's
    assert {t["user"] for t in api.list("/api/v2/tokens")} == {"admin", "vera"}
    # duplicate names, bad names, bad expiries: 4xx with the one body
    assert vera.post("/api/v2/tokens", json={"name": "ci"}).status_code == 409
    for bad in ({"name": "../x"}, {"name": ""}, {"name": "ok", "expires_in": 5}, {"name": "ok", "expires_in": -1},
                {"name": "ok", "expires_in": 10**12}, {"name": "ok", "surprise": 1}):
        r = vera.post("/api/v2/tokens", json=bad)
        assert r.status_code == 422 and r.json()["error"] == "invalid", (bad, r.text)
    # rotation: a new secret, the old one refused at once
    r = vera.post(f"/api/v2/tokens/{ci['id']}/rotate", json={"expires_in": None})
    assert r.status_code == 200 and r.json()["token"] != ci["token"] and r.json()["expires_at"] is None
    assert as_(api, ci["token"]).get("/api/v2/nodes").status_code == 401
    assert as_(api, r.json()["token"]).get("/api/v2/nodes").status_code == 200
    # revocation
    assert vera.delete(f"/api/v2/tokens/{ci['id']}").status_code == 200
    assert as_(api, r.json()["token"]).get("/api/v2/nodes").status_code == 401
    assert vera.delete(f"/api/v2/tokens/{ci['id']}").status_code == 404
    # no secret in the audit trail
    with db.session() as s:
        messages = " ".join(e.message for e in s.scalars(select(Event)))
        actors = {e.action: e.actor for e in s.scalars(select(Event).where(Event.object_type == "token"))}
    assert "cb_" not in messages and token not in messages
    assert actors["rotate"] == "vera" and actors["revoke"] == "vera"


def test_an_expired_token_is_refused_and_says_so(api, db):
    token = make_user(api, "vera", "viewer")
    with db.session() as s:
        s.execute(update(ApiToken).where(ApiToken.token_hash == auth.hash_token(token))
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
    r = as_(api, token).get("/api/v2/nodes")
    assert r.status_code == 401 and "expired" in r.json()["message"]
    listed = {t["name"]: t for t in api.list("/api/v2/tokens", {"user": "vera"})}
    assert listed["laptop"]["expired"] is True


def test_the_last_admin_stays_and_users_are_checked(api):
    assert api.patch("/api/v2/users/admin", json={"role": "viewer"}).status_code == 409
    assert api.delete("/api/v2/users/admin").status_code == 409
    make_user(api, "root2", "admin")
    root2 = as_(api, api.post("/api/v2/tokens", json={"name": "t2", "user": "root2"}).json()["token"])
    assert root2.delete("/api/v2/users/root2").status_code == 409  # not oneself
    assert root2.delete("/api/v2/users/admin").status_code == 200  # another admin remains
    for bad in ({"name": "Bob", "role": "viewer"}, {"name": "123", "role": "viewer"}, {"name": "bob", "role": "root"},
                {"name": "a/b", "role": "viewer"}, {"name": "bob"}):
        r = root2.post("/api/v2/users", json=bad)
        assert r.status_code == 422 and r.json()["error"] == "invalid", (bad, r.text)
    assert root2.post("/api/v2/users", json={"name": "root2", "role": "viewer"}).status_code == 409
    assert root2.get("/api/v2/users/nobody").status_code == 404
    # deleting a user deletes its tokens
    token = make_user(api.__class__(api.app, headers=root2.headers), "gone", "operator")
    assert root2.delete("/api/v2/users/gone").status_code == 200
    assert as_(api, token).get("/api/v2/nodes").status_code == 401


def test_the_admin_token_is_reissued(db, tmp_path, admin_token):
    from fastapi.testclient import TestClient as Client

    from crowbar.api.app import create_app
    from crowbar.api.settings import AppSettings

    app = create_app(AppSettings(db=db))
    token_file = tmp_path / "again" / "admin.token"
    with db.session() as s:
        new = auth.reissue_admin_token(s, token_file)
    assert token_file.read_text().strip() == new and os.stat(token_file).st_mode & 0o777 == 0o600
    assert Client(app).get("/api/v2/nodes", headers={"authorization": f"Bearer {admin_token}"}).status_code == 401
    r = Client(app).get("/api/v2/whoami", headers={"authorization": f"Bearer {new}"})
    assert r.status_code == 200 and r.json()["user"] == "admin" and r.json()["role"] == "admin"


def test_an_earlier_admin_token_becomes_the_admin_users(db):
    """A database from before users (revision 0005) keeps its admin token: it is the user admin's."""
    from alembic import command

    with db.session() as s:
        s.execute(text("DELETE FROM api_tokens"))
        s.execute(text("DELETE FROM users"))
    command.downgrade(migrate.alembic_config(db.engine), "0005")
    token = auth.new_token()
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO api_tokens (name, kind, token_hash, created_at) "
                          "VALUES ('admin', 'admin', :h, :now)"), {"h": auth.hash_token(token), "now": utcnow()})
    migrate.upgrade(db.engine)
    with db.session() as s:
        who = auth.caller(s, token)
    assert who is not None and who.name == "admin" and who.role == "admin"


@pytest.mark.parametrize("header", ["bearer", "x-auth-token"])
def test_both_ways_of_sending_a_token_carry_the_role(api, header):
    token = make_user(api, "vera", "viewer")
    headers = {"authorization": f"Bearer {token}"} if header == "bearer" else {"x-auth-token": token}
    client = TestClient(api.app)
    assert client.get("/api/v2/nodes", headers=headers).status_code == 200
    assert client.post("/api/v2/nodes", headers=headers, json={"name": "x.example.com"}).status_code == 403


def test_cli_users_and_tokens(api, admin_token, monkeypatch):
    import json

    from click.testing import CliRunner

    from crowbar.cli import main
    from crowbar.cli.client import Client

    def client_for(token):
        http = TestClient(api.app, base_url="http://testserver/api/v2", headers={"authorization": f"Bearer {token}"})
        fake = Client.__new__(Client)
        fake.endpoint, fake.token_source, fake.http, fake.sending = "http://testserver", None, http, None
        return fake

    current = {"token": admin_token}
    monkeypatch.setattr(main, "Client", lambda endpoint: client_for(current["token"]))

    def run(*args, code=0):
        result = CliRunner().invoke(main.cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    created = json.loads(run("users", "create", "vera", "--role", "viewer", "--token", "laptop", "--expires", "12h",
                             "-o", "json"))
    assert created["role"] == "viewer" and created["token"]["token"].startswith("cb_")
    assert "vera" in run("users", "list") and "viewer" in run("users", "list", "--role", "viewer")
    table = run("tokens", "create", "ci", "--user", "vera", "--expires", "never")
    secret = next(line.split(": ", 1)[1] for line in table.splitlines() if line.startswith("token: "))
    current["token"] = secret
    assert json.loads(run("whoami", "-o", "json"))["user"] == "vera"
    mine = json.loads(run("tokens", "list", "-o", "json"))
    assert {t["name"] for t in mine} == {"laptop", "ci"}
    ci = next(t for t in mine if t["name"] == "ci")
    refused = CliRunner().invoke(main.cli, ["users", "list"])
    assert "role viewer" in str(refused.exception) and "[HTTP 403]" in str(refused.exception)
    rotated = json.loads(run("tokens", "rotate", str(ci["id"]), "--expires", "30d", "-o", "json"))
    current["token"] = rotated["token"]
    assert json.loads(run("tokens", "revoke", str(ci["id"]), "--yes", "-o", "json"))["name"] == "ci"
    current["token"] = admin_token
    run("users", "set-role", "vera", "operator")
    assert json.loads(run("users", "show", "vera", "-o", "json"))["role"] == "operator"
    run("users", "delete", "vera", "--yes")
    assert "vera" not in run("users", "list")
    assert "not a duration" in run("tokens", "create", "x", "--expires", "soon", code=2)


def test_deletes_ask_on_a_terminal_and_yes_skips(monkeypatch):
    import click
    import pytest as _pytest

    from crowbar.cli import output

    class Tty:
        @staticmethod
        def isatty():
            return True

    monkeypatch.setattr("sys.stdin", Tty())
    asked = []
    monkeypatch.setattr(click, "confirm", lambda q, default: asked.append(q) or False)
    with _pytest.raises(click.Abort):
        output.confirm("delete node 'x'?", yes=False)
    output.confirm("delete node 'x'?", yes=True)  # --yes: no question
    assert asked == ["delete node 'x'?"]
