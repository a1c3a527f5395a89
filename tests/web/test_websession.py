"""The web UI's session: sign-in with a user's API token, the HttpOnly SameSite cookie, CSRF on
every change made with it, roles as for tokens, sign-out, the pages served under /ui."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from crowbar.api.deps import SESSION_COOKIE


@pytest.fixture
def browser(api):
    """A client without the admin token, as a browser is (it keeps cookies)."""
    with TestClient(api.app, base_url="http://testserver") as client:
        yield client


def token_of(api, user: str, role: str) -> str:
    assert api.post("/api/v2/users", json={"name": user, "role": role}).status_code == 201
    r = api.post("/api/v2/tokens", json={"name": "t", "user": user})
    assert r.status_code == 201
    return r.json()["token"]


def test_sign_in_sets_an_httponly_samesite_cookie_and_csrf_guards_changes(api, browser):
    token = token_of(api, "olga", "operator")
    r = browser.post("/api/v2/session", json={"token": token})
    assert r.status_code == 201, r.text
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain HTTP in this test; HTTPS adds it
    out = r.json()
    assert out["user"] == "olga" and out["role"] == "operator" and len(out["csrf"]) == 64
    assert token not in r.text and browser.cookies[SESSION_COOKIE] not in r.text  # no secret in the body
    assert browser.get("/api/v2/nodes").status_code == 200  # the cookie authenticates reads
    me = browser.get("/api/v2/session").json()
    assert me["user"] == "olga" and me["csrf"] == out["csrf"]
    # a change without the CSRF token, or with a wrong one, is refused and changes nothing
    for headers in ({}, {"x-csrf-token": "0" * 64}, {"x-csrf-token": ""}):
        r = browser.post("/api/v2/nodes", json={"name": "n1.example.com"}, headers=headers)
        assert r.status_code == 403 and r.json()["field"] == "csrf", r.text
    assert api.get("/api/v2/nodes", params={"name": "n1"}).json()["items"] == []
    r = browser.post("/api/v2/nodes", json={"name": "n1.example.com"}, headers={"x-csrf-token": out["csrf"]})
    assert r.status_code == 201, r.text
    # who made it is recorded: the user, not "system" nor the session
    events = api.get("/api/v2/events", params={"object_type": "node", "object_id": r.json()["id"]}).json()["items"]
    assert [e["actor"] for e in events if e["action"] == "create"] == ["olga"]
    # an API token in a header needs no CSRF token (it is not sent by a browser on its own)
    r = api.post("/api/v2/nodes", json={"name": "n2.example.com"})
    assert r.status_code == 201
    # sign out: the session's token is gone, the cookie cleared
    r = browser.delete("/api/v2/session", headers={"x-csrf-token": out["csrf"]})
    assert r.status_code == 200 and r.json() == {"signed_out": True}
    assert browser.get("/api/v2/nodes").status_code == 401


def test_sign_out_needs_csrf_and_a_stolen_cookie_dies_with_the_session(api, browser):
    token = token_of(api, "otto", "operator")
    out = browser.post("/api/v2/session", json={"token": token}).json()
    secret = browser.cookies[SESSION_COOKIE]
    assert browser.delete("/api/v2/session").status_code == 403
    assert browser.delete("/api/v2/session", headers={"x-csrf-token": out["csrf"]}).status_code == 200
    with TestClient(api.app) as other:
        other.cookies.set(SESSION_COOKIE, secret)
        assert other.get("/api/v2/nodes").status_code == 401


def test_viewer_session_reads_everything_and_changes_nothing(api, browser):
    token = token_of(api, "vera", "viewer")
    out = browser.post("/api/v2/session", json={"token": token}).json()
    assert out["role"] == "viewer"
    assert browser.get("/api/v2/nodes").status_code == 200
    assert browser.get("/api/v2/deployments").status_code == 200
    h = {"x-csrf-token": out["csrf"]}
    r = browser.post("/api/v2/nodes", json={"name": "v1.example.com"}, headers=h)
    assert r.status_code == 403 and r.json()["field"] == "role"
    assert browser.post("/api/v2/deployments", json={"name": "d"}, headers=h).status_code == 403
    assert browser.delete("/api/v2/session", headers=h).status_code == 200  # a viewer may sign out


def test_sign_in_refuses_bad_tokens_and_form_posts(api, browser, db):
    for body in ({"token": "cb_wrong"}, {"token": ""}, {}):
        r = browser.post("/api/v2/session", json=body)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
    assert SESSION_COOKIE not in browser.cookies
    token = token_of(api, "fred", "operator")
    # a cross-site HTML form can post only form encodings: refused
    r = browser.post("/api/v2/session", content=f'{{"token": "{token}"}}',
                     headers={"content-type": "text/plain"})
    assert r.status_code in (400, 422) and SESSION_COOKIE not in browser.cookies, r.text
    # a node's token is not a user's
    from crowbar.db.models import ApiToken
    from crowbar.services import auth
    node_token = auth.new_token()
    with db.session() as s:
        s.add(ApiToken(name="node-x", kind="node", token_hash=auth.hash_token(node_token)))
    assert browser.post("/api/v2/session", json={"token": node_token}).status_code == 401


def test_sessions_are_the_users_tokens_and_revoking_one_ends_it(api, browser):
    token = token_of(api, "rita", "operator")
    browser.post("/api/v2/session", json={"token": token})
    tokens = api.get("/api/v2/tokens", params={"user": "rita"}).json()["items"]
    session = [t for t in tokens if t["name"].startswith("ui-session.")]
    assert len(session) == 1 and session[0]["expires_at"] is not None
    assert api.delete(f"/api/v2/tokens/{session[0]['id']}").status_code == 200
    assert browser.get("/api/v2/session").status_code == 401
    ev = api.get("/api/v2/events", params={"object_type": "token"}).json()["items"]
    assert any(e["action"] == "sign-in" and e["actor"] == "rita" for e in ev)
    assert not any(token in (e["message"] or "") for e in ev)


def test_ui_is_served_with_its_headers_and_root_redirects(api, browser):
    r = browser.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    r = browser.get("/ui/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "<script" in r.text and "http://" not in r.text and "https://" not in r.text  # every asset local
    assert browser.get("/ui/app.js").status_code == 200
    assert browser.get("/ui/../api/v2/nodes").status_code in (401, 404)  # no way out of the directory
