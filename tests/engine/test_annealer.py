"""The annealer: what may run, in which order, one run per node, special roles, failures, recovery."""

from __future__ import annotations

import os
import socket
import subprocess
from datetime import timedelta

from enginekit import nr_of, runs_of
from sqlalchemy import func, select

from crowbar.db.models import Event, Node, NodeRole, NodeRoleEdge, Role, Run, Server, utcnow
from crowbar.services import anneal, deployments, noderoles, nodes

N1, N2, N3 = "n1.example.com", "n2.example.com", "n3.example.com"


def all_runs(s) -> list[tuple[Run, NodeRole, str, str]]:
    """Every run in id order, with its noderole, node name and role name."""
    return list(s.execute(
        select(Run, NodeRole, Node.name, Role.name).join(NodeRole, NodeRole.id == Run.node_role_id)
        .join(Node, Node.id == NodeRole.node_id).join(Role, Role.id == NodeRole.role_id).order_by(Run.id)
    ).all())


def overlaps(a: Run, b: Run) -> bool:
    return a.started_at < b.finished_at and b.started_at < a.finished_at


def test_on_one_node_runs_follow_cohort_then_id(db, annealer):
    with db.session() as s:
        nodes.create_node(s, N1)
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-client-client", N1)
        deployments.bind(s, "d1", "test-async", N1)
        deployments.commit(s, "d1")
    annealer.run_until_idle()
    with db.session() as s:
        runs = all_runs(s)
        assert {nr.state for _r, nr, _n, _role in runs} == {"active"}
        assert len(runs) == s.scalar(select(func.count()).select_from(NodeRole))  # each noderole ran exactly once
        # one node runs one thing at a time, so the order of its runs is exactly the annealer's choice:
        # whenever a run started, nothing runnable had a lower (cohort, id)
        order = [(nr.cohort, nr.id) for _r, nr, _n, _role in runs]
        assert order == sorted(order), [(role, nr.cohort, nr.id) for _r, nr, _n, role in runs]
        # and the order is not trivially sorted: test-library (cohort 0) was created after test-server
        # (cohort 1) yet ran before it
        by_role = {role: (r.id, nr.id) for r, nr, _n, role in runs}
        assert by_role["test-library"][1] > by_role["test-server"][1]
        assert by_role["test-library"][0] < by_role["test-server"][0]


def test_parents_run_before_children_across_nodes(db, annealer):
    with db.session() as s:
        for n in (N1, N2, N3):
            nodes.create_node(s, n)
        deployments.create_deployment(s, "d1")
        for n in (N1, N2, N3):
            deployments.bind(s, "d1", "test-client-client", n)
        deployments.commit(s, "d1")
    annealer.run_until_idle()
    with db.session() as s:
        run = {nr.id: r for r, nr, _n, _role in all_runs(s)}
        edges = s.execute(select(NodeRoleEdge.parent_id, NodeRoleEdge.child_id)).all()
        assert len(edges) >= 9
        for parent, child in edges:
            assert run[parent].id < run[child].id
            assert run[parent].finished_at <= run[child].started_at
        # the events say the same: each 'run' event of a parent precedes its children's
        ev = {e.object_id: e.id for e in s.scalars(select(Event).where(Event.action == "run"))}
        assert all(ev[p] < ev[c] for p, c in edges)
        assert anneal.status(s)["status"] == "finished"


def test_at_most_one_run_per_node_at_a_time(db, annealer):
    with db.session() as s:
        for n in (N1, N2):
            nodes.create_node(s, n)
        deployments.create_deployment(s, "d1")
        for n in (N1, N2):  # several roots per node: todo at once
            for role in ("test-library", "test-async", "test-server"):
                deployments.bind(s, "d1", role, n)
        for role in ("test-library", "test-admin", "test-server"):
            deployments.set_role_data(s, "d1", role, {"test": {"delay": 0.1}})
        deployments.commit(s, "d1")
    annealer.run_until_idle(workers=8)
    with db.session() as s:
        runs = all_runs(s)
        # every noderole ran once (n2's test-server reuses the test-admin on n1: 5 runs on n1, 4 on n2)
        assert len(runs) == s.scalar(select(func.count()).select_from(NodeRole)) == 9
        for node in (N1, N2):
            mine = [r for r, _nr, n, _role in runs if n == node]
            for i, a in enumerate(mine):
                for b in mine[i + 1:]:
                    assert not overlaps(a, b), f"runs {a.id} and {b.id} on {node} overlap"
        # the check can see overlap: the two nodes did run side by side
        n1 = [r for r, _nr, n, _role in runs if n == N1]
        n2 = [r for r, _nr, n, _role in runs if n == N2]
        assert any(overlaps(a, b) for a in n1 for b in n2)


def test_dead_or_reserved_nodes_do_not_run(db, annealer):
    with db.session() as s:
        nodes.create_node(s, N1)
        nodes.create_node(s, N2, alive=False)
        nodes.create_node(s, N3, available=False)
        deployments.create_deployment(s, "d1")
        for n in (N1, N2, N3):
            deployments.bind(s, "d1", "test-library", n)
        deployments.commit(s, "d1")
    annealer.run_until_idle()
    with db.session() as s:
        assert nr_of(s, N1, "test-library").state == "active"
        for n in (N2, N3):
            for role in ("test-library", "crowbar-managed-node"):
                nr = nr_of(s, n, role)
                assert nr.state == "todo" and runs_of(s, nr.id) == []
        status = anneal.status(s)
        assert status["status"] == "working" and status["waiting_on_unavailable_nodes"] == 4
        nodes.update_node(s, N2, alive=True)
        nodes.update_node(s, N3, available=True)
    annealer.run_until_idle()
    with db.session() as s:
        assert {nr_of(s, n, "test-library").state for n in (N2, N3)} == {"active"}
        assert anneal.status(s)["status"] == "finished"


def test_a_proposed_deployment_does_not_run(db, annealer):
    with db.session() as s:
        nodes.create_node(s, N1)
    annealer.run_until_idle()  # the node's own discovery role in system
    with db.session() as s:
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-library", N1)
        deployments.bind(s, "d1", "test-async", N1)
    annealer.run_until_idle()
    with db.session() as s:
        nr = nr_of(s, N1, "test-library")
        assert nr.state == "proposed" and runs_of(s, nr.id) == []
        deployments.commit(s, "d1")
        deployments.propose(s, "d1")  # committed noderoles of a deployment put back to proposed wait too
    annealer.run_until_idle()
    with db.session() as s:
        assert [nr_of(s, N1, r).state for r in ("test-library", "test-async")] == ["todo", "todo"]
        assert s.scalar(select(func.count()).select_from(Run)) == 1  # crowbar-managed-node only
        deployments.commit(s, "d1")
    annealer.run_until_idle()
    with db.session() as s:
        assert [nr_of(s, N1, r).state for r in ("test-library", "test-async")] == ["active", "active"]


DESTRUCTIVE = """
barclamp: {name: fx, version: "1"}
roles:
  - name: fx-wipe
    jig: test
    flags: [destructive]
  - name: fx-after
    jig: test
    requires: [fx-wipe]
"""


def test_destructive_roles_run_once(db, annealer, import_yaml):
    import_yaml(DESTRUCTIVE)
    with db.session() as s:
        nodes.create_node(s, N1)
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "fx-after", N1)
        deployments.commit(s, "d1")
    annealer.run_until_idle()
    with db.session() as s:
        wipe = nr_of(s, N1, "fx-wipe")
        first_wall = wipe.wall
        assert wipe.state == "active" and first_wall["test"]["role"] == "fx-wipe"
        noderoles.retry(s, wipe.id)
    annealer.run_until_idle()
    with db.session() as s:
        wipe = nr_of(s, N1, "fx-wipe")
        first, second = runs_of(s, wipe.id)
        assert "ok after" in first.log                      # the jig ran the first time
        assert "skipped" in second.log and "ok after" not in second.log  # and not the second
        assert second.state == "succeeded" and wipe.state == "active"
        assert wipe.wall == first_wall                      # what it reported the first time is kept
        # its child still ran again, after it
        after = runs_of(s, nr_of(s, N1, "fx-after").id)
        assert len(after) == 2 and after[1].started_at >= second.finished_at


def test_async_jig_completes_later(db, annealer):
    with db.session() as s:
        nodes.create_node(s, N1)
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-async", N1)
        deployments.set_role_data(s, "d1", "test-async", {"test": {"delay": 0.3}})
        deployments.commit(s, "d1")
    annealer.run_until_idle()
    with db.session() as s:
        nr = nr_of(s, N1, "test-async")
        (run,) = runs_of(s, nr.id)
        assert nr.state == "active" and run.state == "succeeded"
        assert "asynchronously" in run.log
        assert nr.wall["test"]["ran_on"] == N1
        assert (run.finished_at - run.started_at) >= timedelta(seconds=0.3)


def test_a_jig_exception_is_an_error_with_the_reason_in_the_log(db, annealer):
    with db.session() as s:
        nodes.create_node(s, N1)
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-library", N1)
        # the test jig does float(test/delay): a string there makes it raise ValueError
        deployments.set_role_data(s, "d1", "test-library", {"test": {"delay": "not-a-number"}})
        deployments.commit(s, "d1")
    annealer.run_until_idle()
    with db.session() as s:
        nr = nr_of(s, N1, "test-library")
        (run,) = runs_of(s, nr.id)
        assert nr.state == "error" and run.state == "failed"
        assert "ValueError" in run.log and "not-a-number" in run.log
        assert "not-a-number" in nr.status
        assert run.finished_at is not None
        assert anneal.status(s)["status"] == "failed"


def test_an_error_stops_further_work_on_its_node(db, annealer):
    with db.session() as s:
        nodes.create_node(s, N1)
        nodes.create_node(s, N2)
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-fails", N1)
        deployments.commit(s, "d1")
    annealer.run_until_idle()
    with db.session() as s:
        assert nr_of(s, N1, "test-fails").state == "error"
        deployments.create_deployment(s, "d2")
        deployments.bind(s, "d2", "test-async", N1)
        deployments.bind(s, "d2", "test-async", N2)
        deployments.commit(s, "d2")
    annealer.run_until_idle()
    with db.session() as s:
        assert nr_of(s, N2, "test-async").state == "active"
        held = nr_of(s, N1, "test-async")
        assert held.state == "todo" and runs_of(s, held.id) == []


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_runs_of_a_dead_server_are_recovered_on_start(db, annealer):
    with db.session() as s:
        nodes.create_node(s, N1)
        nodes.create_node(s, N2)
        nodes.create_node(s, N3)
        deployments.create_deployment(s, "d1")
        for n in (N1, N2, N3):
            deployments.bind(s, "d1", "test-library", n)
        deployments.commit(s, "d1")
        now = utcnow()
        gone = Server(hostname=socket.gethostname(), pid=dead_pid(), started_at=now, heartbeat_at=now)
        silent = Server(hostname="elsewhere.invalid", pid=1, started_at=now - timedelta(minutes=5),
                        heartbeat_at=now - timedelta(minutes=5))
        alive = Server(hostname=socket.gethostname(), pid=os.getpid(), started_at=now, heartbeat_at=now)
        s.add_all([gone, silent, alive])
        s.flush()
        lost = {}
        for node, server in ((N1, gone), (N2, silent), (N3, alive)):
            nr = nr_of(s, node, "test-library")
            nr.state = "transition"
            run = Run(node_role_id=nr.id, server_id=server.id, state="running", attrs={}, log="", started_at=now)
            s.add(run)
            s.flush()
            lost[node] = (nr.id, run.id, server.id)
    annealer().register()
    with db.session() as s:
        for node in (N1, N2):
            nr_id, run_id, server_id = lost[node]
            assert s.get(NodeRole, nr_id).state == "todo"
            run = s.get(Run, run_id)
            assert run.state == "lost" and f"server {server_id}" in run.log and run.finished_at is not None
            ev = s.scalars(select(Event).where(Event.object_id == nr_id, Event.action == "recover")).one()
            assert (ev.from_state, ev.to_state) == ("transition", "todo")
            assert "dead server" in ev.message and f"server {server_id}" in ev.message
            assert s.get(Server, server_id).stopped is True
        # a server that is alive and beating keeps its run
        nr_id, run_id, server_id = lost[N3]
        assert s.get(NodeRole, nr_id).state == "transition" and s.get(Run, run_id).state == "running"
        assert s.get(Server, server_id).stopped is False
    annealer.run_until_idle()
    with db.session() as s:
        for node in (N1, N2):
            nr = nr_of(s, node, "test-library")
            assert nr.state == "active" and [r.state for r in runs_of(s, nr.id)] == ["lost", "succeeded"]
