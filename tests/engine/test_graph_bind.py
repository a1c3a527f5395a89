"""Binding roles to nodes: recursive parents, where parents are reused from, cohorts, edges, refusals."""

from __future__ import annotations

import pytest
from enginekit import nr_of
from sqlalchemy import func, select

from crowbar.db.models import Deployment, DeploymentRole, Event, Node, NodeRole, NodeRoleEdge, Role
from crowbar.errors import Conflict, InvalidInput, NotFound
from crowbar.services import deployments, nodes

CHAIN = {"test-client-client", "test-client", "test-server", "test-admin", "test-library"}


def count(s, model) -> int:
    return s.scalar(select(func.count()).select_from(model))


def parents_of(s, nr_id: int) -> set[int]:
    return set(s.scalars(select(NodeRoleEdge.parent_id).where(NodeRoleEdge.child_id == nr_id)))


def where(s, nr: NodeRole) -> tuple[str, str]:
    """(node name, deployment name) of a noderole."""
    return s.get(Node, nr.node_id).name, s.get(Deployment, nr.deployment_id).name


def test_binding_creates_required_parents_recursively(db):
    with db.session() as s:
        nodes.create_node(s, "n1.example.com")
        deployments.create_deployment(s, "d1")
        out = deployments.bind(s, "d1", "test-client-client", "n1.example.com")
    with db.session() as s:
        created = [s.get(NodeRole, i) for i in out["created"]]
        roles = {s.get(Role, nr.role_id).name for nr in created}
        assert roles == CHAIN
        assert len(created) == len(CHAIN)
        for nr in created:  # nothing existed: everything lands on the node, in the deployment, proposed
            assert where(s, nr) == ("n1.example.com", "d1")
            assert nr.state == "proposed"
        # one edge per requirement, from the parent noderole to the child noderole
        for nr in created:
            role = s.get(Role, nr.role_id)
            parent_roles = {s.get(Role, s.get(NodeRole, p).role_id).name for p in parents_of(s, nr.id)}
            assert parent_roles == set(role.requires), role.name
        n = "n1.example.com"
        assert parents_of(s, nr_of(s, n, "test-client").id) == {nr_of(s, n, "test-server").id,
                                                                nr_of(s, n, "test-library").id}
        assert parents_of(s, nr_of(s, n, "test-server").id) == {nr_of(s, n, "test-admin").id}
        assert parents_of(s, nr_of(s, n, "test-admin").id) == set()
        # every required role got a deployment role in d1
        drs = set(s.scalars(select(Role.name).join(DeploymentRole, DeploymentRole.role_id == Role.id)
                            .join(Deployment, Deployment.id == DeploymentRole.deployment_id)
                            .where(Deployment.name == "d1")))
        assert drs == CHAIN
        # the bind is in the audit trail, one event per created noderole
        binds = s.scalars(select(Event.object_id).where(Event.action == "bind")).all()
        assert set(out["created"]) <= set(binds)


def test_cohort_is_one_more_than_the_highest_parent(db):
    with db.session() as s:
        nodes.create_node(s, "n1.example.com")
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-client-client", "n1.example.com")
    with db.session() as s:
        rows = list(s.scalars(select(NodeRole)))
        by_id = {r.id: r for r in rows}
        for r in rows:
            ps = parents_of(s, r.id)
            expected = 1 + max(by_id[p].cohort for p in ps) if ps else 0
            assert r.cohort == expected, s.get(Role, r.role_id).name
        n = "n1.example.com"
        assert [nr_of(s, n, r).cohort for r in ("test-admin", "test-library", "test-server", "test-client",
                                                  "test-client-client")] == [0, 0, 1, 2, 3]


def test_parents_reused_from_same_node_then_deployment_then_ancestors(db):
    with db.session() as s:
        for i in range(1, 8):
            nodes.create_node(s, f"n{i}.example.com")
        # system has a test-server on n1; d1 has one on n2; parent deployment p has one on n5
        deployments.bind(s, "system", "test-server", "n1.example.com")
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-server", "n2.example.com")
        deployments.create_deployment(s, "p")
        deployments.bind(s, "p", "test-server", "n5.example.com")
        deployments.create_deployment(s, "c", parent="p")
        deployments.create_deployment(s, "d2")

        # same node first: test-client on n1 in d1 reuses system's test-server on n1, not d1's on n2
        deployments.bind(s, "d1", "test-client", "n1.example.com")
        # then the deployment: n3 in d1 reuses d1's test-server on n2, not system's on n1
        deployments.bind(s, "d1", "test-client", "n3.example.com")
        # then ancestors, system last: d2 has none, so system's on n1
        deployments.bind(s, "d2", "test-client", "n4.example.com")
        # a child deployment reuses the parent deployment's test-server (n5) before system's (n1)
        deployments.bind(s, "c", "test-client", "n6.example.com")
        deployments.bind(s, "c", "test-client", "n7.example.com")

    with db.session() as s:
        def server_parent(node):
            client = nr_of(s, node, "test-client")
            servers = [s.get(NodeRole, p) for p in parents_of(s, client.id)
                       if s.get(Role, s.get(NodeRole, p).role_id).name == "test-server"]
            assert len(servers) == 1
            return where(s, servers[0])

        assert server_parent("n1.example.com") == ("n1.example.com", "system")
        assert server_parent("n3.example.com") == ("n2.example.com", "d1")
        assert server_parent("n4.example.com") == ("n1.example.com", "system")
        assert server_parent("n6.example.com") == ("n5.example.com", "p")
        assert server_parent("n7.example.com") == ("n5.example.com", "p")
        # no new test-server was made anywhere: still exactly the three bound by hand
        servers = s.scalar(select(func.count()).select_from(NodeRole).join(Role, Role.id == NodeRole.role_id)
                           .where(Role.name == "test-server"))
        assert servers == 3
        # test-library did not exist: created in the binding deployment, on the node being bound, then reused
        lib_c = [where(s, nr) for nr in s.scalars(select(NodeRole).join(Role, Role.id == NodeRole.role_id)
                                                   .where(Role.name == "test-library"))]
        assert ("n6.example.com", "c") in lib_c and ("n7.example.com", "c") not in lib_c


def test_implicit_parents_are_always_on_the_same_node(db):
    with db.session() as s:
        for i in range(1, 4):
            nodes.create_node(s, f"n{i}.example.com")
        deployments.create_deployment(s, "p")
        deployments.create_deployment(s, "d1", parent="p")
        deployments.bind(s, "p", "test-client", "n3.example.com")  # an implicit one in the parent deployment
        deployments.bind(s, "d1", "test-client-client", "n1.example.com")
        deployments.bind(s, "d1", "test-client-client", "n2.example.com")
    with db.session() as s:
        for n in ("n1.example.com", "n2.example.com"):
            tcc = nr_of(s, n, "test-client-client")
            client = nr_of(s, n, "test-client")
            assert parents_of(s, tcc.id) == {client.id}
            assert where(s, client) == (n, "d1")
        # the non-implicit parents come from the parent deployment (on n3), shared by both nodes
        for n in ("n1.example.com", "n2.example.com"):
            assert {where(s, s.get(NodeRole, p)) for p in parents_of(s, nr_of(s, n, "test-client").id)} \
                == {("n3.example.com", "p")}


def test_implicit_parent_already_on_the_node_is_reused(db):
    with db.session() as s:
        nodes.create_node(s, "n1.example.com")
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "system", "test-client", "n1.example.com")
        out = deployments.bind(s, "d1", "test-client-client", "n1.example.com")
    with db.session() as s:
        assert len(out["created"]) == 1
        client = nr_of(s, "n1.example.com", "test-client")
        assert where(s, client) == ("n1.example.com", "system")
        assert parents_of(s, out["created"][0]) == {client.id}


FIXTURE = """
barclamp: {name: fx, version: "1"}
roles:
  - name: fx-base
    jig: noop
    flags: [abstract]
  - name: fx-uses-base
    jig: noop
    requires: [fx-base]
  - name: fx-a
    jig: noop
    conflicts: [fx-b]
  - name: fx-b
    jig: noop
  - name: fx-needs-b
    jig: noop
    requires: [fx-b]
"""


def test_abstract_roles_are_refused_and_nothing_is_written(db, import_yaml):
    import_yaml(FIXTURE)
    with db.session() as s:
        nodes.create_node(s, "n1.example.com")
        deployments.create_deployment(s, "d1")
    with db.session() as s:
        before = (count(s, NodeRole), count(s, NodeRoleEdge), count(s, DeploymentRole))
    for role in ("fx-base", "fx-uses-base"):  # directly, and as the parent of a concrete role
        with pytest.raises(InvalidInput, match="fx-base.*abstract") as exc:
            with db.session() as s:
                deployments.bind(s, "d1", role, "n1.example.com")
        assert exc.value.field == "role"
    with db.session() as s:
        assert (count(s, NodeRole), count(s, NodeRoleEdge), count(s, DeploymentRole)) == before


def test_conflicting_roles_are_refused_on_one_node(db, import_yaml):
    import_yaml(FIXTURE)
    with db.session() as s:
        for i in range(1, 4):
            nodes.create_node(s, f"n{i}.example.com")
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "fx-b", "n1.example.com")
        deployments.bind(s, "d1", "fx-a", "n2.example.com")
        deployments.bind(s, "d1", "fx-a", "n3.example.com")  # fine: fx-b is on n1 only
    with pytest.raises(Conflict, match="fx-a.*fx-b") as exc:
        with db.session() as s:
            deployments.bind(s, "d1", "fx-a", "n1.example.com")  # fx-a declares the conflict
    assert "n1.example.com" in exc.value.message
    # the other way round: fx-b onto a node that has fx-a, directly, or as a required parent that has to be
    # created on that node (in d2, where no fx-b exists to reuse)
    with db.session() as s:
        deployments.create_deployment(s, "d2")
    for dep, role in (("d1", "fx-b"), ("d2", "fx-needs-b")):
        with pytest.raises(Conflict, match="fx-b.*fx-a"):
            with db.session() as s:
                deployments.bind(s, dep, role, "n2.example.com")
    with db.session() as s:  # in d1, fx-needs-b reuses the fx-b on n1: no clash on n2
        deployments.bind(s, "d1", "fx-needs-b", "n3.example.com")
    with db.session() as s:
        assert {s.get(Role, nr.role_id).name for nr in s.scalars(select(NodeRole).join(Node, Node.id == NodeRole.node_id)
                                                                  .where(Node.name == "n2.example.com"))} \
            == {"crowbar-managed-node", "fx-a"}
        assert nr_of(s, "n3.example.com", "fx-needs-b").deployment_id == nr_of(s, "n1.example.com", "fx-b").deployment_id


def test_binding_twice_is_idempotent_in_a_deployment_and_a_conflict_across(db):
    with db.session() as s:
        nodes.create_node(s, "n1.example.com")
        deployments.create_deployment(s, "d1")
        deployments.create_deployment(s, "d2")
        first = deployments.bind(s, "d1", "test-client", "n1.example.com")
    with db.session() as s:
        before = (count(s, NodeRole), count(s, NodeRoleEdge), count(s, Event))
        again = deployments.bind(s, "d1", "test-client", "n1.example.com")
        assert again["created"] == []
        assert again["noderole"]["id"] == first["noderole"]["id"]
        # a required parent that is already there is fine too
        assert deployments.bind(s, "d1", "test-server", "n1.example.com")["created"] == []
    with db.session() as s:
        assert (count(s, NodeRole), count(s, NodeRoleEdge), count(s, Event)) == before
    with pytest.raises(Conflict) as exc:
        with db.session() as s:
            deployments.bind(s, "d2", "test-client", "n1.example.com")
    assert "d1" in exc.value.message and "test-client" in exc.value.message


def test_binding_into_a_committed_deployment_reopens_it(db):
    with db.session() as s:
        nodes.create_node(s, "n1.example.com")
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-library", "n1.example.com")
        deployments.commit(s, "d1")
        assert deployments.show_deployment(s, "d1")["state"] == "committed"
        out = deployments.bind(s, "d1", "test-async", "n1.example.com")
        assert out["reopened"] is True
    with db.session() as s:
        assert deployments.show_deployment(s, "d1")["state"] == "proposed"
        assert nr_of(s, "n1.example.com", "test-library").state == "todo"   # committed ones keep their state
        assert nr_of(s, "n1.example.com", "test-async").state == "proposed"
        ev = s.scalars(select(Event).where(Event.object_type == "deployment", Event.action == "reopen")).one()
        assert (ev.from_state, ev.to_state) == ("committed", "proposed")
        deployments.commit(s, "d1")
    with db.session() as s:
        assert nr_of(s, "n1.example.com", "test-async").state == "todo"
        # an idempotent re-bind does not reopen
        assert deployments.bind(s, "d1", "test-async", "n1.example.com")["reopened"] is False
        assert deployments.show_deployment(s, "d1")["state"] == "committed"


def test_binding_into_system_commits_at_once(db):
    with db.session() as s:
        nodes.create_node(s, "n1.example.com")
        out = deployments.bind(s, "system", "test-client", "n1.example.com")
        assert out["reopened"] is False
    with db.session() as s:
        assert deployments.show_deployment(s, "system")["state"] == "committed"
        n = "n1.example.com"
        # no parents: todo at once; parents not active yet: blocked; nothing is left proposed
        assert nr_of(s, n, "test-admin").state == "todo"
        assert nr_of(s, n, "test-library").state == "todo"
        assert nr_of(s, n, "test-server").state == "blocked"
        assert nr_of(s, n, "test-client").state == "blocked"
        assert s.scalar(select(func.count()).select_from(NodeRole).where(NodeRole.state == "proposed")) == 0


def test_bind_unknown_names(db):
    with db.session() as s:
        nodes.create_node(s, "n1.example.com")
        deployments.create_deployment(s, "d1")
    for args, field in ((("nope", "test-client", "n1.example.com"), "deployment"),
                        (("d1", "nope", "n1.example.com"), "role"),
                        (("d1", "test-client", "nope.example.com"), "node")):
        with pytest.raises(NotFound) as exc:
            with db.session() as s:
                deployments.bind(s, *args)
        assert exc.value.field == field and "nope" in exc.value.message
