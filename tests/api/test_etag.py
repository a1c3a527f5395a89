"""ETag and If-Match on node changes and deployment role data: two operators cannot overwrite each
other silently; a stale write is a 412 with the one error body and the current ETag."""

from __future__ import annotations


def _node(api, name="etag.example.com"):
    assert api.post("/api/v2/nodes", json={"name": name}).status_code == 201
    return name


def test_node_patch_with_a_stale_etag_is_412(api):
    name = _node(api)
    first = api.get(f"/api/v2/nodes/{name}")
    tag = first.headers["etag"]
    assert tag.startswith('"') and api.get(f"/api/v2/nodes/{name}").headers["etag"] == tag  # stable
    # operator A changes it with the ETag it read: accepted, and a new ETag comes back
    a = api.patch(f"/api/v2/nodes/{name}", json={"description": "rack 4"}, headers={"If-Match": tag})
    assert a.status_code == 200 and a.headers["etag"] != tag
    assert api.get(f"/api/v2/nodes/{name}").headers["etag"] == a.headers["etag"]
    # operator B read before A wrote: refused, nothing written
    b = api.patch(f"/api/v2/nodes/{name}", json={"description": "rack 9"}, headers={"If-Match": tag})
    assert b.status_code == 412
    body = b.json()
    assert body["error"] == "precondition_failed" and body["field"] == "If-Match"
    assert "changed by someone else" in body["message"] and f"node {name!r}" in body["message"]
    assert b.headers["etag"] == a.headers["etag"]
    assert api.get(f"/api/v2/nodes/{name}").json()["description"] == "rack 4"
    # no If-Match, `*`, one of a list, or the tag without quotes: accepted; a weak tag never matches
    current = a.headers["etag"]
    assert api.patch(f"/api/v2/nodes/{name}", json={"alive": True}, headers={"If-Match": "*"}).status_code == 200
    assert api.patch(f"/api/v2/nodes/{name}", json={"alive": True},
                     headers={"If-Match": f'"x", {current}'}).status_code == 200
    assert api.patch(f"/api/v2/nodes/{name}", json={"alive": True},
                     headers={"If-Match": current.strip('"')}).status_code == 200
    assert api.patch(f"/api/v2/nodes/{name}", json={"alive": True},
                     headers={"If-Match": f"W/{current}"}).status_code == 412
    assert api.patch(f"/api/v2/nodes/{name}", json={"available": False}).status_code == 200


def test_node_delete_honours_if_match(api):
    name = _node(api, "gone.example.com")
    tag = api.get(f"/api/v2/nodes/{name}").headers["etag"]
    api.patch(f"/api/v2/nodes/{name}", json={"description": "changed meanwhile"})
    r = api.delete(f"/api/v2/nodes/{name}", headers={"If-Match": tag})
    assert r.status_code == 412 and api.get(f"/api/v2/nodes/{name}").status_code == 200
    tag = api.get(f"/api/v2/nodes/{name}").headers["etag"]
    assert api.delete(f"/api/v2/nodes/{name}", headers={"If-Match": tag}).status_code == 200


def test_role_data_etag_and_stale_write(api):
    node = _node(api, "rd.example.com")
    assert api.post("/api/v2/deployments", json={"name": "web"}).status_code == 201
    assert api.post("/api/v2/deployments/web/bind", json={"role": "test-client", "node": node}).status_code == 201
    r = api.get("/api/v2/deployments/web/roles/test-client")
    assert r.status_code == 200 and r.json()["proposed"] == {} and r.json()["role"] == "test-client"
    tag = r.headers["etag"]
    a = api.put("/api/v2/deployments/web/roles/test-client", json={"data": {"port": 80}}, headers={"If-Match": tag})
    assert a.status_code == 200 and a.json()["proposed"] == {"port": 80}
    assert api.get("/api/v2/deployments/web/roles/test-client").headers["etag"] == a.headers["etag"] != tag
    b = api.put("/api/v2/deployments/web/roles/test-client", json={"data": {"port": 8080}}, headers={"If-Match": tag})
    assert b.status_code == 412 and b.json()["error"] == "precondition_failed"
    assert "role 'test-client' in deployment 'web'" in b.json()["message"]
    assert api.get("/api/v2/deployments/web/roles/test-client").json()["proposed"] == {"port": 80}
    # committing changes what the document shows (committed data): an old ETag is stale after it
    api.post("/api/v2/deployments/web/commit")
    r = api.put("/api/v2/deployments/web/roles/test-client", json={"data": {}}, headers={"If-Match": a.headers["etag"]})
    assert r.status_code == 412
    # a role that is not bound there: 404 with the one body
    r = api.get("/api/v2/deployments/web/roles/test-fails")
    assert r.status_code == 404 and r.json()["field"] == "role"
