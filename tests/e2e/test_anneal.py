"""The annealer end to end: the real server, driven only by the CLI.

1. three nodes, test-client-client on each, commit, `anneal --wait` -> all active, in cohort order
   (on SQLite, and on PostgreSQL when CROWBAR_TEST_POSTGRES_URL is set);
2. test-fails: error, descendants blocked, exit 1; retry of an always-failing role; retry of a role
   whose failure an attrib controls, which then succeeds and unblocks its children;
3. a server killed with SIGKILL mid-anneal and restarted on the same data dir finishes the job.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Server  # tests/e2e/conftest.py

pytestmark = pytest.mark.e2e

NODES = ["n1.e2e.test", "n2.e2e.test", "n3.e2e.test"]


def anneal(s: Server, *args, expect: int, timeout: float = 60) -> str:
    r = s.cli("anneal", "--wait", "--timeout", timeout, *args)
    assert r.returncode == expect, str(r)
    assert "Traceback" not in r.stdout + r.stderr, str(r)
    return r.stdout


def by_id(rows: list[dict]) -> dict[int, dict]:
    return {r["id"]: r for r in rows}


def build_three_node_deployment(s: Server, deployment: str = "d1") -> list[dict]:
    """Create the nodes and the deployment, bind test-client-client on each node, commit."""
    for name in NODES:
        node = s.json("nodes", "create", name)
        assert node["name"] == name and node["alive"] and node["available"]
    assert s.json("deployments", "create", deployment)["state"] == "proposed"
    bound = []
    for name in NODES:
        out = s.json("deployments", "bind", deployment, "test-client-client", name)
        nr = out["noderole"]
        assert (nr["role"], nr["node"], nr["deployment"], nr["state"]) == \
            ("test-client-client", name, deployment, "proposed")
        bound.append(nr)
    committed = s.json("deployments", "commit", deployment)
    assert committed["state"] == "committed"
    return bound


def assert_ran_in_cohort_order(s: Server, rows: list[dict]) -> int:
    """Every parent's run finished before its child's was even claimed; returns the number of edges."""
    with ThreadPoolExecutor(6) as pool:
        parents = dict(zip([r["id"] for r in rows],
                           pool.map(lambda r: s.json("noderoles", "parents", r["id"]), rows)))
    events = s.json("events", "--type", "noderole", "--limit", 10000)
    ids = [e["id"] for e in events]
    assert ids == sorted(ids), "events are not in order"
    first_run: dict[int, dict] = {}
    first_claim: dict[int, int] = {}
    for e in events:
        if e["action"] == "run":
            first_run.setdefault(e["object_id"], e)
        elif e["action"] == "claim":
            first_claim.setdefault(e["object_id"], e["id"])
    edges = 0
    for r in rows:
        assert r["id"] in first_run, f"noderole {r['id']} ({r['role']} on {r['node']}) has no run event"
        assert first_run[r["id"]]["to"] == "active", first_run[r["id"]]
        for p in parents[r["id"]]:
            edges += 1
            assert p["cohort"] < r["cohort"], (p, r)
            assert first_run[p["id"]]["id"] < first_claim[r["id"]] < first_run[r["id"]]["id"], \
                f"{p['role']} on {p['node']} (parent) did not finish before {r['role']} on {r['node']} started"
    return edges


def check_three_node_anneal(s: Server) -> None:
    bound = build_three_node_deployment(s)
    out = anneal(s, expect=0)
    assert "finished" in out
    rows = s.json("noderoles", "list")
    assert rows and all(r["state"] == "active" for r in rows), [(r["id"], r["role"], r["state"]) for r in rows]
    assert all(r["run_count"] == 1 for r in rows)
    rows_by_id = by_id(rows)
    for nr in bound:
        assert rows_by_id[nr["id"]]["state"] == "active"
    roles_on = {(r["role"], r["node"]) for r in rows}
    for name in NODES:
        assert {("test-client-client", name), ("test-client", name)} <= roles_on  # test-client is implicit
    assert {("test-admin", NODES[0]), ("test-server", NODES[0]), ("test-library", NODES[0])} <= roles_on
    # test-client-client -> test-client (3), test-client -> test-server, test-library (6),
    # test-server -> test-admin (1): at least 10 edges checked.
    assert assert_ran_in_cohort_order(s, rows) >= 10
    status = s.json("anneal")
    assert status["status"] == "finished" and status["counts"]["active"] == len(rows)


# -- 1 and 4 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def test_three_nodes_anneal_in_cohort_order(servers, backend):
    database = servers.postgres_url() if backend == "postgresql" else None
    s = servers.new(database=database)
    if database:
        assert "postgresql" in s.log_text()
    check_three_node_anneal(s)


# -- 2 ---------------------------------------------------------------------------------------------
def test_failure_blocks_descendants_and_retry_paths(servers, e2e_barclamp):
    s = servers.new()
    build_three_node_deployment(s)
    anneal(s, expect=0)
    imported = s.json("barclamps", "import", e2e_barclamp())
    assert imported["name"] == "e2e"

    # test-fails on n3, and a role below it, in a deployment of their own
    s.ok("deployments", "create", "broken")
    fails = s.json("deployments", "bind", "broken", "test-fails", NODES[2])["noderole"]
    after = s.json("deployments", "bind", "broken", "e2e-after-fails", NODES[2])["noderole"]
    s.ok("deployments", "commit", "broken")
    assert "failed" in anneal(s, expect=1)
    rows = s.json("noderoles", "list")
    nr = by_id(rows)[fails["id"]]
    assert (nr["state"], nr["run_count"]) == ("error", 1), nr
    assert "failing on purpose" in nr["status"]
    assert by_id(rows)[after["id"]]["state"] == "blocked"
    assert all(r["state"] == "active" for r in rows if r["deployment"] == "d1")
    assert "test-fails: failing on purpose" in s.ok("noderoles", "log", fails["id"]).stdout
    assert after["id"] in [r["id"] for r in s.json("noderoles", "children", fails["id"])]

    # retry of an always-failing role: the retry itself works, the role fails again
    retried = s.json("noderoles", "retry", fails["id"])
    assert retried["id"] == fails["id"] and retried["state"] in ("todo", "transition"), retried
    assert "failed" in anneal(s, expect=1)
    rows = by_id(s.json("noderoles", "list", "--deployment", "broken"))
    assert (rows[fails["id"]]["state"], rows[fails["id"]]["run_count"]) == ("error", 2), rows[fails["id"]]
    assert rows[after["id"]]["state"] == "blocked"
    runs = s.json("noderoles", "log", fails["id"], "--all")
    assert [r["state"] for r in runs] == ["failed", "failed"]
    assert all("failing on purpose" in r["log"] for r in runs)
    trail = [(e["action"], e["from"], e["to"]) for e in s.json("events", "--type", "noderole", "--id", fails["id"])]
    i = trail.index(("requeue", "error", "todo"))
    assert trail[i + 1:] == [("claim", "todo", "transition"), ("run", "transition", "error")], trail

    # a role that fails while an attrib says so, on n1 (an error stops all work on its node)
    assert s.json("attribs", "set", "e2e-fail", "true", "--node", NODES[0])["value"] is True
    s.ok("deployments", "create", "flaky")
    flaky = s.json("deployments", "bind", "flaky", "e2e-flaky", NODES[0])["noderole"]
    below = s.json("deployments", "bind", "flaky", "e2e-after-flaky", NODES[0])["noderole"]
    s.ok("deployments", "commit", "flaky")
    assert "failed" in anneal(s, "--deployment", "flaky", expect=1)
    rows = by_id(s.json("noderoles", "list", "--deployment", "flaky"))
    assert (rows[flaky["id"]]["state"], rows[below["id"]]["state"]) == ("error", "blocked"), rows
    assert "e2e-flaky: failing on purpose" in s.ok("noderoles", "log", flaky["id"]).stdout
    got = s.json("attribs", "get", "e2e-fail", "--node", NODES[0])
    assert (got["value"], got["source"]) == (True, "hint"), got

    set_false = s.json("attribs", "set", "e2e-fail", "false", "--node", NODES[0])
    assert set_false["value"] is False
    assert s.json("noderoles", "retry", flaky["id"])["state"] in ("todo", "transition")
    assert "finished" in anneal(s, "--deployment", "flaky", expect=0)
    rows = by_id(s.json("noderoles", "list", "--deployment", "flaky"))
    assert (rows[flaky["id"]]["state"], rows[flaky["id"]]["run_count"]) == ("active", 2), rows
    assert rows[below["id"]]["state"] == "active"
    assert s.json("noderoles", "log", flaky["id"], "--all")[-1]["state"] == "succeeded"

    # the whole system is still failed because of test-fails; without it, everything is active
    anneal(s, expect=1)
    s.ok("deployments", "delete", "broken")
    assert "finished" in anneal(s, expect=0)
    rows = s.json("noderoles", "list")
    assert rows and all(r["state"] == "active" for r in rows), [(r["role"], r["state"]) for r in rows]


# -- 3 ---------------------------------------------------------------------------------------------
def test_server_killed_mid_anneal_finishes_after_restart(servers, e2e_barclamp):
    s = servers.new(workers=8)
    s.ok("barclamps", "import", e2e_barclamp(delay=1.5))
    names = [f"slow{i}.e2e.test" for i in range(4)]
    for name in names:  # one at a time: see test_concurrency.py
        s.ok("nodes", "create", name)
    s.ok("deployments", "create", "slow")
    for name in names:
        s.ok("deployments", "bind", "slow", "e2e-slow-child", name)
    s.ok("deployments", "commit", "slow")

    deadline = time.monotonic() + 20
    running: list[dict] = []
    while not running and time.monotonic() < deadline:
        running = s.json("noderoles", "list", "--deployment", "slow", "--state", "transition")
    assert running, "nothing went into transition"
    old_pid = s.pid
    s.kill()
    assert s.proc.returncode == -9

    s.start(same_port=True)  # same data dir, same port, same database
    assert s.pid != old_pid
    assert "finished" in anneal(s, expect=0)
    rows = s.json("noderoles", "list", "--deployment", "slow")
    assert len(rows) == 2 * len(names)
    assert all(r["state"] == "active" for r in rows), [(r["id"], r["role"], r["state"]) for r in rows]

    recovered = [e for e in s.json("events", "--type", "noderole", "--limit", 10000) if e["action"] == "recover"]
    assert recovered, "no recover event after the restart"
    for e in recovered:
        assert (e["from"], e["to"]) == ("transition", "todo"), e
        assert "run lost with a dead server" in e["message"] and f"pid {old_pid}" in e["message"], e
    # the lost run is kept, with a log saying why, and the noderole ran again
    runs = s.json("noderoles", "log", recovered[0]["object_id"], "--all")
    assert [r["state"] for r in runs] == ["lost", "succeeded"], runs
    assert f"pid {old_pid}" in runs[0]["log"]
