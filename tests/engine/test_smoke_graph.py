"""Binding the test barclamp's client-client role builds the whole required graph, in cohort order."""

from crowbar.engine.annealer import Annealer
from crowbar.services import anneal, deployments, nodes, noderoles


def test_bind_commit_anneal_three_nodes(db):
    with db.session() as s:
        for i in range(3):
            nodes.create_node(s, f"n{i}.example.com")
        deployments.create_deployment(s, "d1")
        for i in range(3):
            deployments.bind(s, "d1", "test-client-client", f"n{i}.example.com")
        deployments.commit(s, "d1")
    Annealer(db, workers=4).run_until_idle(60)
    with db.session() as s:
        rows = noderoles.list_noderoles(s, deployment="d1")
        assert {r["state"] for r in rows} == {"active"}
        # test-server and test-library exist once (on the first node); test-client is implicit: one per node
        assert sorted(r["role"] for r in rows).count("test-client") == 3
        assert sorted(r["role"] for r in rows).count("test-server") == 1
        assert anneal.status(s)["status"] == "finished"
