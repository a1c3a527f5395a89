"""Authentication on every route, the open health check, and the OpenAPI document."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from crowbar.db.models import ApiToken
from crowbar.services import auth

PLACEHOLDERS = {"key": "1", "name": "test-marker", "role": "test-server"}
# Open by design: health and the Prometheus metrics (counts, no names); discovery (can only create or re-find a node) and the agent routes, which
# take a node token instead (tests/provisioner/test_discovery_api.py); PXE boot files.
OPEN = {"/api/v2/health", "/metrics", "/api/v2/discovery", "/api/v2/agent/next", "/api/v2/agent/jobs/x1",
        "/api/v2/agent/progress/x1", "/api/v2/agent/booted",
        "/api/v2/session"}  # the UI's sign-in: a token in the body
OPEN_PREFIXES = ("/boot/", "/api/v2/agent/")  # the agent's routes take a node token


def documented_routes(client: TestClient) -> list[tuple[str, str]]:
    """(METHOD, concrete path) for every route the OpenAPI document lists, placeholders filled in."""
    spec = client.get("/api/v2/openapi.json").json()
    out = []
    for path, ops in spec["paths"].items():
        concrete = re.sub(r"\{(\w+)\}", lambda m: PLACEHOLDERS.get(m.group(1), "x1"), path)
        out += [(method.upper(), concrete) for method in ops if method in {"get", "post", "put", "patch", "delete"}]
    return out


@pytest.fixture
def anonymous(api):
    with TestClient(api.app) as client:
        yield client


def test_every_route_but_health_needs_a_valid_token(api, anonymous):
    routes = [r for r in documented_routes(anonymous) if r[1] not in OPEN and not r[1].startswith(OPEN_PREFIXES)]
    families = {path.split("/")[3] for _m, path in routes}
    assert families >= {"nodes", "barclamps", "roles", "deployments", "deployment_roles", "node_roles", "attribs",
                        "anneal", "events"}
    for headers in ({}, {"authorization": "Bearer cb_wrong"}, {"authorization": "Bearer "},
                    {"authorization": "Basic YWRtaW46YWRtaW4="}, {"x-auth-token": "cb_wrong"}):
        for method, path in routes:
            body = {} if method in {"POST", "PUT", "PATCH"} else None
            r = anonymous.request(method, path, headers=headers, json=body)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["error"] == "unauthorized" and "token" in r.json()["message"]


def test_valid_tokens_only_users_ones_and_stored_hashed(api, anonymous, admin_token, db):
    assert anonymous.get("/api/v2/nodes", headers={"authorization": f"Bearer {admin_token}"}).status_code == 200
    assert anonymous.get("/api/v2/nodes", headers={"x-auth-token": admin_token}).status_code == 200
    assert api.get("/api/v2/nodes").status_code == 200
    token = auth.new_token()
    with db.session() as s:
        s.add(ApiToken(name="node-1", kind="node", token_hash=auth.hash_token(token)))
    r = anonymous.get("/api/v2/nodes", headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 401 and "node" in r.json()["message"]
    with db.session() as s:
        hashes = [t.token_hash for t in s.query(ApiToken)]
    assert admin_token not in hashes and auth.hash_token(admin_token) in hashes


def test_health_and_openapi_are_open_and_openapi_lists_the_routes(anonymous):
    r = anonymous.get("/api/v2/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    r = anonymous.get("/api/v2/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    expected = {
        "/api/v2/nodes": {"get", "post"}, "/api/v2/nodes/{key}": {"get", "patch", "delete"},
        "/api/v2/barclamps": {"get", "post"}, "/api/v2/barclamps/{key}": {"get"},
        "/api/v2/roles": {"get"}, "/api/v2/roles/{key}": {"get"},
        "/api/v2/deployments": {"get", "post"}, "/api/v2/deployments/{key}": {"get", "delete"},
        "/api/v2/deployments/{key}/commit": {"post"}, "/api/v2/deployments/{key}/propose": {"post"},
        "/api/v2/deployments/{key}/bind": {"post"}, "/api/v2/deployment_roles": {"get"},
        "/api/v2/node_roles": {"get"}, "/api/v2/node_roles/{key}": {"get"},
        "/api/v2/node_roles/{key}/retry": {"post"}, "/api/v2/node_roles/{key}/parents": {"get"},
        "/api/v2/node_roles/{key}/children": {"get"},
        "/api/v2/attribs": {"get"}, "/api/v2/attribs/{name}": {"get", "put"},
        "/api/v2/anneal": {"get"}, "/api/v2/events": {"get"}, "/api/v2/health": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
    assert anonymous.get("/api/v2/docs").status_code == 200
