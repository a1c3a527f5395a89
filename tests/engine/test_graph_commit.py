"""Commit, and how state ripples along edges: error blocks descendants, active unblocks children, retry."""

from __future__ import annotations

import pytest
from enginekit import nr_of, runs_of
from sqlalchemy import select, update

from crowbar.db.models import DeploymentRole, Event, NodeRole
from crowbar.engine import graph
from crowbar.errors import IllegalTransition
from crowbar.services import deployments, noderoles, nodes

N1, N2, ADMIN = "n1.example.com", "n2.example.com", "admin.example.com"


def set_state(s, nr_id: int, state: str) -> None:
    """Put a noderole in a state by hand (to set up the situation a rule acts on)."""
    s.execute(update(NodeRole).where(NodeRole.id == nr_id).values(state=state))


def states(s, *pairs) -> list[str]:
    return [nr_of(s, n, r).state for n, r in pairs]


def test_commit_moves_proposed_to_todo_when_parents_are_active_else_blocked(db, annealer):
    with db.session() as s:
        nodes.create_node(s, ADMIN, admin=True)  # test-admin (bootstrap) lands in system on the admin node
        nodes.create_node(s, N1)
    annealer.run_until_idle()
    with db.session() as s:
        assert nr_of(s, ADMIN, "test-admin").state == "active"
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-client", N1)
        assert set(states(s, (N1, "test-server"), (N1, "test-library"), (N1, "test-client"))) == {"proposed"}
        deployments.commit(s, "d1", actor="alice")
    with db.session() as s:
        # test-server's parent (test-admin in system on the admin node) is active; test-library has no parents
        assert states(s, (N1, "test-server"), (N1, "test-library"), (N1, "test-client")) == ["todo", "todo", "blocked"]
        assert deployments.show_deployment(s, "d1")["state"] == "committed"
        evs = {e.object_id: e for e in s.scalars(select(Event).where(Event.action == "commit",
                                                                      Event.object_type == "noderole"))}
        for role, to in (("test-server", "todo"), ("test-library", "todo"), ("test-client", "blocked")):
            ev = evs[nr_of(s, N1, role).id]
            assert (ev.actor, ev.from_state, ev.to_state) == ("alice", "proposed", to)


def test_commit_copies_proposed_data_to_committed(db):
    with db.session() as s:
        nodes.create_node(s, N1)
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-library", N1)
        nr = nr_of(s, N1, "test-library")
        nr.proposed = {"test": {"from": "noderole"}}
        deployments.set_role_data(s, "d1", "test-library", {"test": {"from": "deployment"}})
    with db.session() as s:
        nr = nr_of(s, N1, "test-library")
        dr = s.scalar(select(DeploymentRole).where(DeploymentRole.role_id == nr.role_id))
        assert (nr.committed, dr.committed) == ({}, {})  # nothing is committed before the commit
        deployments.commit(s, "d1")
    with db.session() as s:
        nr = nr_of(s, N1, "test-library")
        dr = s.scalar(select(DeploymentRole).where(DeploymentRole.role_id == nr.role_id))
        assert nr.committed == {"test": {"from": "noderole"}}
        assert dr.committed == {"test": {"from": "deployment"}}


@pytest.fixture
def two_node_graph(db):
    """d1: test-fails on n1 and test-client-client on n2 (sharing n1's test-server), committed."""
    with db.session() as s:
        nodes.create_node(s, N1)
        nodes.create_node(s, N2)
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-client-client", N1)
        deployments.bind(s, "d1", "test-fails", N1)
        deployments.bind(s, "d1", "test-client-client", N2)
        deployments.commit(s, "d1")
    return db


def test_error_blocks_every_transitive_descendant_but_not_proposed_or_transition(two_node_graph):
    db = two_node_graph
    with db.session() as s:
        for node, role, state in ((N1, "test-admin", "active"), (N1, "test-library", "active"),
                                  (N1, "test-server", "error"),
                                  (N1, "test-client", "active"), (N1, "test-client-client", "todo"),
                                  (N1, "test-fails", "error"),
                                  (N2, "test-client", "transition"), (N2, "test-client-client", "proposed")):
            set_state(s, nr_of(s, node, role).id, state)
        graph.block_descendants(s, [nr_of(s, N1, "test-server").id], "annealer", "an ancestor failed")
    with db.session() as s:
        assert states(s, (N1, "test-client"), (N1, "test-client-client"), (N1, "test-fails")) == ["blocked"] * 3
        assert states(s, (N2, "test-client"), (N2, "test-client-client")) == ["transition", "proposed"]
        # the failed noderole itself and what is not below it are left alone
        assert states(s, (N1, "test-server"), (N1, "test-admin"), (N1, "test-library")) == ["error", "active", "active"]
        evs = list(s.scalars(select(Event).where(Event.action == "block")))
        assert {(e.object_id, e.from_state, e.to_state) for e in evs} == {
            (nr_of(s, N1, "test-client").id, "active", "blocked"),
            (nr_of(s, N1, "test-client-client").id, "todo", "blocked"),
            (nr_of(s, N1, "test-fails").id, "error", "blocked"),
        }
        assert all(e.message == "an ancestor failed" and e.actor == "annealer" for e in evs)


def test_a_failed_run_blocks_active_descendants(db, annealer):
    with db.session() as s:
        nodes.create_node(s, N1)
        nodes.create_node(s, N2)
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-client-client", N1)
        deployments.bind(s, "d1", "test-client-client", N2)
        deployments.commit(s, "d1")
    annealer.run_until_idle()
    with db.session() as s:
        assert {r["state"] for r in noderoles.list_noderoles(s, deployment="d1")} == {"active"}
        # make test-server run again, and fail, without the re-run rules blocking anything first
        server = nr_of(s, N1, "test-server")
        server.committed = {"test": {"fail": True}}
        set_state(s, server.id, "todo")
    annealer.run_until_idle()
    with db.session() as s:
        assert nr_of(s, N1, "test-server").state == "error"
        for n in (N1, N2):
            assert states(s, (n, "test-client"), (n, "test-client-client")) == ["blocked", "blocked"]
        assert states(s, (N1, "test-admin"), (N1, "test-library")) == ["active", "active"]


def test_active_unblocks_children_whose_parents_are_all_active(two_node_graph):
    db = two_node_graph
    with db.session() as s:
        server, library = nr_of(s, N1, "test-server"), nr_of(s, N1, "test-library")
        client1, client2 = nr_of(s, N1, "test-client"), nr_of(s, N2, "test-client")
        for nr in (client1, client2, nr_of(s, N1, "test-client-client")):
            assert nr.state == "blocked"
        set_state(s, server.id, "active")
        assert graph.unblock_children(s, [server.id], "annealer") == []  # test-library is not active yet
        assert states(s, (N1, "test-client"), (N2, "test-client")) == ["blocked", "blocked"]
        set_state(s, library.id, "active")
        set_state(s, client2.id, "proposed")  # only blocked children move
        assert sorted(graph.unblock_children(s, [library.id], "annealer")) == [client1.id]
    with db.session() as s:
        assert states(s, (N1, "test-client"), (N2, "test-client")) == ["todo", "proposed"]
        # grandchildren wait for their own parents
        assert states(s, (N1, "test-client-client"), (N1, "test-fails")) == ["blocked", "blocked"]
        ev = s.scalars(select(Event).where(Event.action == "unblock")).one()
        assert (ev.object_id, ev.from_state, ev.to_state) == (client1.id, "blocked", "todo")


def test_retry_from_error_goes_back_to_todo_and_runs_again(db, annealer):
    with db.session() as s:
        nodes.create_node(s, N1)
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-fails", N1)
        deployments.commit(s, "d1")
    annealer.run_until_idle()
    with db.session() as s:
        fails = nr_of(s, N1, "test-fails")
        assert (fails.state, fails.run_count) == ("error", 1)
        out = noderoles.retry(s, fails.id, actor="bob")
        assert out["state"] == "todo"
        ev = s.scalars(select(Event).where(Event.object_id == fails.id, Event.action == "requeue")).one()
        assert (ev.actor, ev.from_state, ev.to_state) == ("bob", "error", "todo")
    annealer.run_until_idle()
    with db.session() as s:
        fails = nr_of(s, N1, "test-fails")
        assert (fails.state, fails.run_count) == ("error", 2)
        assert [r.state for r in runs_of(s, fails.id)] == ["failed", "failed"]


def test_retry_of_an_error_whose_parent_is_not_active_waits_blocked(two_node_graph):
    db = two_node_graph
    with db.session() as s:
        set_state(s, nr_of(s, N1, "test-client").id, "error")  # its parents are todo, not active
        assert noderoles.retry(s, nr_of(s, N1, "test-client").id)["state"] == "blocked"


def test_retry_is_refused_unless_error_or_active(db):
    with db.session() as s:
        nodes.create_node(s, N1)
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-library", N1)
        nr_id = nr_of(s, N1, "test-library").id
    for state in ("blocked", "todo", "proposed", "transition"):
        with db.session() as s:
            set_state(s, nr_id, state)
        with pytest.raises(IllegalTransition) as exc:
            with db.session() as s:
                noderoles.retry(s, nr_id)
        assert state in exc.value.message and exc.value.status == 409
        with db.session() as s:
            assert s.get(NodeRole, nr_id).state == state
            assert s.scalar(select(Event.id).where(Event.action == "requeue")) is None


def test_rerunning_an_active_noderole_requeues_it_and_blocks_descendants_until_active(db, annealer):
    with db.session() as s:
        nodes.create_node(s, N1)
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-client-client", N1)
        deployments.commit(s, "d1")
    annealer.run_until_idle()
    with db.session() as s:
        before = {r: nr_of(s, N1, r).run_count for r in ("test-server", "test-client", "test-client-client",
                                                         "test-admin", "test-library")}
        assert set(before.values()) == {1}
        assert noderoles.retry(s, nr_of(s, N1, "test-server").id)["state"] == "todo"
    with db.session() as s:
        assert states(s, (N1, "test-server"), (N1, "test-client"), (N1, "test-client-client")) \
            == ["todo", "blocked", "blocked"]
        assert states(s, (N1, "test-admin"), (N1, "test-library")) == ["active", "active"]
    annealer.run_until_idle()
    with db.session() as s:
        after = {r: nr_of(s, N1, r).run_count for r in before}
        assert {r: nr_of(s, N1, r).state for r in before} == dict.fromkeys(before, "active")
        # the re-run noderole and everything below it ran once more; its ancestors and siblings did not
        assert after == {"test-server": 2, "test-client": 2, "test-client-client": 2, "test-admin": 1,
                         "test-library": 1}
        server, client = runs_of(s, nr_of(s, N1, "test-server").id), runs_of(s, nr_of(s, N1, "test-client").id)
        assert server[1].finished_at <= client[1].started_at


def test_deployment_data_change_reruns_the_role_on_commit(db, annealer):
    with db.session() as s:
        nodes.create_node(s, N1)
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-client", N1)
        deployments.commit(s, "d1")
    annealer.run_until_idle()
    with db.session() as s:
        deployments.set_role_data(s, "d1", "test-server", {"test": {"marker": "changed"}})
        assert deployments.show_deployment(s, "d1")["state"] == "proposed"
        deployments.commit(s, "d1")
        assert states(s, (N1, "test-server"), (N1, "test-client"), (N1, "test-library")) \
            == ["todo", "blocked", "active"]
    annealer.run_until_idle()
    with db.session() as s:
        assert nr_of(s, N1, "test-server").wall["test"]["marker"] == "changed"
        assert nr_of(s, N1, "test-client").run_count == 2
        assert nr_of(s, N1, "test-library").run_count == 1


def test_bulk_state_moves_refuse_what_the_rules_forbid(db):
    with db.session() as s:
        nodes.create_node(s, N1)
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-library", N1)
        nr_id = nr_of(s, N1, "test-library").id
    for src, dst in (("proposed", "active"), ("proposed", "transition"), ("blocked", "error")):
        with db.session() as s:
            set_state(s, nr_id, src)
        with pytest.raises(IllegalTransition, match=f"from {src} to {dst}"):
            with db.session() as s:
                graph.set_states(s, {dst: [(nr_id, src)]}, "test", "force")
        with db.session() as s:
            assert s.get(NodeRole, nr_id).state == src
            assert s.scalar(select(Event.id).where(Event.action == "force")) is None
