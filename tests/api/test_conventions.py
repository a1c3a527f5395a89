"""API conventions operators' scripts rely on: unknown query parameters refused, Location on 201,
the one error body for a 500, the health check naming what failed, metrics by route, and logs
that never hold a secret."""

from __future__ import annotations

import io
import json
import logging

from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from crowbar.api.app import create_app
from crowbar.api.settings import AppSettings
from crowbar.server import logs


def test_unknown_query_parameters_are_400(api):
    r = api.get("/api/v2/nodes", params={"stat": "error"})
    assert r.status_code == 400 and r.json()["error"] == "bad_request" and "'stat'" in r.json()["message"]
    assert r.json()["field"] == "query"
    assert api.get("/api/v2/nodes", params={"state": "ready", "limit": 5}).status_code == 200
    assert api.get("/api/v2/events", params={"after": 0, "limit": 3}).status_code == 200
    # a parameter given twice: one value each, so refused rather than the last one kept
    r = api.get("/api/v2/nodes?state=ready&state=error")
    assert r.status_code == 400 and r.json()["field"] == "query" and "'state' given more than once" in r.json()["message"]
    r = api.get("/api/v2/inventory/ansible?deployment=a&deployment=b")
    assert r.status_code == 400 and "'deployment' given more than once" in r.json()["message"]
    r = api.get("/api/v2/whoami", params={"x": "1"})
    assert r.status_code == 400 and "takes none" in r.json()["message"]
    # the next links the API makes are always accepted
    for i in range(3):
        api.post("/api/v2/nodes", json={"name": f"q{i}.example.com"})
    page = api.get("/api/v2/nodes", params={"limit": 1, "name": "q"}).json()
    assert api.get(page["next"]).status_code == 200


def test_location_on_201(api):
    r = api.post("/api/v2/nodes", json={"name": "loc.example.com"})
    assert r.status_code == 201 and r.headers["location"] == f"/api/v2/nodes/{r.json()['id']}"
    assert api.get(r.headers["location"]).json()["name"] == "loc.example.com"
    r = api.post("/api/v2/deployments", json={"name": "web"})
    assert r.headers["location"] == f"/api/v2/deployments/{r.json()['id']}"
    r = api.post("/api/v2/deployments/web/bind", json={"role": "test-client", "node": "loc.example.com"})
    assert r.status_code == 201 and api.get(r.headers["location"]).status_code == 200


def test_a_bug_is_a_500_with_the_one_error_body(db, admin_token, monkeypatch):
    from crowbar.services import nodes

    def broken(*_a, **_k):
        raise RuntimeError("secret internals cb_abcdefghijklmnop")

    monkeypatch.setattr(nodes, "list_nodes", broken)
    client = TestClient(create_app(AppSettings(db=db)), raise_server_exceptions=False,
                        headers={"authorization": f"Bearer {admin_token}"})
    r = client.get("/api/v2/nodes")
    assert r.status_code == 500 and r.json()["error"] == "internal" and "secret" not in r.text


def test_health_names_what_failed_and_metrics_count_routes(db, admin_token):
    checks = {"annealer": {"ok": True}, "dnsmasq": {"ok": False, "detail": "dnsmasq is not running"}}
    client = TestClient(create_app(AppSettings(db=db, checks=lambda: checks)))
    r = client.get("/api/v2/health")
    assert r.status_code == 503 and r.json()["failed"] == ["dnsmasq"] and r.json()["checks"]["database"]["ok"]
    checks["dnsmasq"] = {"ok": True}
    assert client.get("/api/v2/health").json() | {"version": None} == {
        "status": "ok", "failed": [], "version": None, "checks": {"database": {"ok": True}, **checks}}
    auth = {"authorization": f"Bearer {admin_token}"}
    client.get("/api/v2/nodes/1", headers=auth)
    client.get("/api/v2/nodes/2", headers=auth)
    client.get("/api/v2/nope")
    text = client.get("/metrics").text
    assert 'crowbar_http_requests_total{code="404",method="GET",route="/api/v2/nodes/{key}"} 2.0' in text
    assert 'route="unmatched"' in text
    assert 'crowbar_service_up{service="dnsmasq"} 1.0' in text and "crowbar_database_up 1.0" in text
    assert 'crowbar_annealer_run_duration_seconds_bucket{le="+Inf"}' in text


def _samples(text: str, name: str) -> dict[str, float]:
    """{labels or "": value} of one metric's samples in a Prometheus exposition."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            out[key[len(name):]] = float(value)
    return out


def test_the_event_loops_lag_is_measured_while_the_app_runs_and_a_stall_shows(db):
    import time

    app = create_app(AppSettings(db=db))
    lag = "crowbar_event_loop_lag_seconds"
    with TestClient(app) as client:
        time.sleep(0.6)  # two samples or more, the loop idle
        assert _samples(client.get("/metrics").text, lag + "_count")[""] >= 1
        client.portal.call(time.sleep, 0.7)  # the event loop's own thread blocked for 0.7 s
        time.sleep(0.6)
        after = _samples(client.get("/metrics").text, lag + "_bucket")
        # the sample due during the stall ran at least 0.45 s late
        assert after['{le="+Inf"}'] - after['{le="0.25"}'] >= 1
    count = _samples(client.get("/metrics").text, lag + "_count")[""]
    # stopped with the app, and started again with it (a new event loop)
    with TestClient(app) as client:
        time.sleep(0.6)
        assert _samples(client.get("/metrics").text, lag + "_count")[""] > count


def test_logs_never_hold_secrets_and_json_is_one_object_a_line():
    stream = io.StringIO()
    handler = logs.setup("debug", "json", stream=stream)
    try:
        log = logging.getLogger("crowbar.test")
        log.info("got %s", "Authorization: Bearer cb_AAAAAAAAAAAAAAAAAAAAAA and postgresql://u:pw1@h/db",
                 extra={"fields": {"path": "/x?token=cb_BBBBBBBBBBBBBBBB"}})
        try:
            raise ValueError("password=hunter2")
        except ValueError:
            log.exception("failed")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    text = stream.getvalue()
    assert "cb_AAAA" not in text and "cb_BBBB" not in text and "pw1" not in text and "hunter2" not in text
    assert lines[0]["logger"] == "crowbar.test" and lines[0]["level"] == "info" and "path" in lines[0]
    assert "traceback" in lines[1]



FRAGMENTS = ["cb_", "AAAAAAAAAA", "Bearer", "x-auth-token:", "X-AUTH-TOKEN", "https://", "u", ":", "pw1", "@",
             "host/db", "password", "PassWd", "TOKEN", "secret", "=", " ", "node 12 allocated", "/"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=12), st.booleans())
def test_redaction_skips_only_lines_that_can_hold_no_secret(parts, upper):
    """`redact` returns a line unchanged after one search when it names none of the secrets'
    markers: whatever the line, the answer is the one all four substitutions give."""
    text = "".join(parts)
    text = text.upper() if upper else text
    full = text
    for pattern, replacement in logs.SECRETS:
        full = pattern.sub(replacement, full)
    assert logs.redact(text) == full


def test_the_docs_page_and_its_assets_come_from_the_server(db):
    client = TestClient(create_app(AppSettings(db=db)))
    page = client.get("/api/v2/docs")
    assert page.status_code == 200 and "cdn" not in page.text.lower() and "http" not in page.text.replace(
        "/api/v2/openapi.json", "")
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        assert f"/api/v2/docs/assets/{asset}" in page.text
        r = client.get(f"/api/v2/docs/assets/{asset}")
        assert r.status_code == 200 and len(r.content) > 500, asset
