"""Several clients at once against one real server (people, scripts and agents do this).

The requests are released together by a barrier, straight over HTTP, so that they really overlap;
the result is then read back with the CLI.
"""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import pytest

pytestmark = pytest.mark.e2e


def together(server, calls: list[tuple[str, str, dict]]) -> list[httpx.Response]:
    """Send the calls (method, path, json) at the same moment, one connection each."""
    token = (server.data_dir / "admin.token").read_text().strip()
    barrier = threading.Barrier(len(calls))
    out: list[httpx.Response | None] = [None] * len(calls)

    def go(i: int) -> None:
        method, path, body = calls[i]
        with httpx.Client(base_url=f"{server.url}/api/v2", headers={"authorization": f"Bearer {token}"},
                          timeout=60) as http:
            http.get("/health")  # connected before the barrier
            barrier.wait()
            out[i] = http.request(method, path, json=body)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def test_concurrent_node_creation_and_binding(servers, backend):
    """Creating nodes, or binding roles into one deployment, at the same time must all succeed.

    On PostgreSQL they do not: binding checks whether the deployment role exists and inserts it when
    it does not (graph.Binder._ensure_deployment_role), so concurrent first binds of a role in a
    deployment (every `nodes create` binds crowbar-managed-node in system) collide on the unique key
    deployment_roles(deployment_id, role_id) and all but one answer 409 "conflicts with existing data".
    """
    s = servers.new(database=servers.postgres_url() if backend == "postgresql" else None)
    problems = []

    names = [f"c{i}.e2e.test" for i in range(8)]
    created = together(s, [("POST", "/nodes", {"name": n}) for n in names])
    problems += [f"POST /nodes {n}: {r.status_code} {r.text[:300]}" for n, r in zip(names, created)
                 if r.status_code != 201]
    for n in names:  # what failed above, one at a time, so that the binding below can be checked
        if s.cli("nodes", "show", n).returncode != 0:
            s.ok("nodes", "create", n)

    s.ok("deployments", "create", "d1")
    bound = together(s, [("POST", "/deployments/d1/bind", {"role": "test-client-client", "node": n})
                         for n in names])
    problems += [f"bind on {n}: {r.status_code} {r.text[:300]}" for n, r in zip(names, bound)
                 if r.status_code != 201]
    if not problems:
        rows = s.json("noderoles", "list", "--deployment", "d1")
        per_role = Counter(r["role"] for r in rows)
        expected = {"test-admin": 1, "test-server": 1, "test-library": 1, "test-client": len(names),
                    "test-client-client": len(names)}
        if per_role != expected:  # shared parents are reused, never duplicated
            problems.append(f"noderoles per role {dict(per_role)}, expected {expected}")
        s.ok("deployments", "commit", "d1")
        r = s.cli("anneal", "--wait", "--timeout", "60")
        if r.returncode != 0:
            problems.append(str(r))
    assert not problems, "\n".join(problems)
