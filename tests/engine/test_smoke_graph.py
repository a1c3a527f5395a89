"""Binding the test barclamp's client-client role builds the whole required graph, in cohort order."""

import shutil
import tempfile
from pathlib import Path

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


def test_an_annealer_s_private_run_directory_goes_with_it(db):
    """Without a workdir an annealer makes its own under /tmp; it is removed when the annealer is
    gone (the test suite once left ~1,400 empty ones a run)."""
    import gc

    annealer = Annealer(db, workers=1)
    private = annealer.workdir
    assert private.is_dir() and private.name.startswith("crowbar-runs-")
    (private / "crowbar-run-1").mkdir()  # what a run leaves when it is killed mid-way
    annealer.close(drain=0)
    del annealer
    gc.collect()
    assert not private.exists()
    given = Path(tempfile.mkdtemp(prefix="given-"))  # a given workdir is the caller's: left alone
    try:
        annealer = Annealer(db, workers=1, workdir=given)
        annealer.close(drain=0)
        del annealer
        gc.collect()
        assert given.is_dir()
    finally:
        shutil.rmtree(given, ignore_errors=True)
