"""Two servers claim from one PostgreSQL at the same moment. A claim reads what is runnable
without locking it, then holds the nodes it picked (FOR UPDATE SKIP LOCKED) and moves the
noderoles in one UPDATE that reads them again: a noderole another server claimed in between is no
longer todo, and a node on which another noderole was claimed (or failed) in between is busy.
Either way this claim takes nothing there: a node runs one thing at a time, a noderole runs once."""

from __future__ import annotations

import pytest
from enginekit import nr_of
from sqlalchemy import event, func, select, update

from crowbar.db.models import Node, NodeRole, Run
from crowbar.engine.annealer import Annealer
from crowbar.services import catalog, deployments, nodes

NODE = "race.example.com"
BARCLAMP = """
barclamp: {name: race, description: two roles that may run at once but for their node, version: "1.0"}
roles:
  - {name: race-one, jig: noop}
  - {name: race-two, jig: noop}
"""


@pytest.fixture
def racing(pg, tmp_path):
    (tmp_path / "race").mkdir()
    (tmp_path / "race" / "barclamp.yml").write_text(BARCLAMP)
    with pg.session() as s:
        catalog.import_barclamp(s, tmp_path / "race")
        nodes.create_node(s, NODE)
        deployments.create_deployment(s, "race")
        for role in ("race-one", "race-two"):
            deployments.bind(s, "race", role, NODE)
        deployments.commit(s, "race")
        assert {nr_of(s, NODE, r).state for r in ("race-one", "race-two")} == {"todo"}
    annealers = [Annealer(pg, workers=1), Annealer(pg, workers=1)]
    for a in annealers:
        a.register()
    yield pg, annealers
    for a in annealers:
        a._pool.shutdown(wait=True)


def _meanwhile(db, action):
    """Run `action` once, when this process next locks nodes for a claim: after that claim has read
    what is runnable, before it holds anything."""
    fired = []

    def before(conn, cursor, statement, parameters, context, executemany):
        if not fired and "FROM nodes WHERE id = ANY" in statement and "SKIP LOCKED" in statement:
            fired.append(statement)
            action()

    event.listen(db.engine, "before_cursor_execute", before)
    return fired, lambda: event.remove(db.engine, "before_cursor_execute", before)


def _states(db) -> list[str]:
    """The states of every noderole on the node (the two above, and what the system deployment
    binds to every node), sorted."""
    with db.session() as s:
        return sorted(s.scalars(select(NodeRole.state).join(Node, Node.id == NodeRole.node_id).where(Node.name == NODE)))


def _runs(db) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Run))


def _once_and_one_at_a_time(db) -> None:
    """What no interleaving may break: no noderole ran twice, the node runs one thing at a time."""
    with db.session() as s:
        most = s.scalar(select(func.count()).select_from(Run).group_by(Run.node_role_id).order_by(func.count().desc()).limit(1))
    assert (most or 0) <= 1
    assert _states(db).count("transition") <= 1


@pytest.mark.postgresql
def test_a_noderole_another_server_ran_meanwhile_is_not_run_again(racing):
    db, (a, b) = racing

    def b_runs_it():  # B claims the same noderole, runs it and applies the result: active, its node idle
        assert b.claim_step() == 1
        assert b.apply(block=10) == 1

    fired, stop = _meanwhile(db, b_runs_it)
    try:
        a.claim_step()  # it had read that noderole as runnable: it may claim another one of the node
    finally:
        stop()
    assert fired
    _once_and_one_at_a_time(db)
    assert _states(db).count("active") == 1


@pytest.mark.postgresql
def test_a_noderole_another_server_claimed_meanwhile_is_not_claimed_again(racing):
    db, (a, b) = racing
    fired, stop = _meanwhile(db, b.claim_step)  # B claims first, and commits
    try:
        assert a.claim_step() == 0  # the node is busy with B's claim
    finally:
        stop()
    assert fired
    _once_and_one_at_a_time(db)
    assert _states(db).count("transition") == 1 and _runs(db) == 1


@pytest.mark.postgresql
def test_a_node_whose_other_noderole_was_claimed_meanwhile_is_busy(racing):
    db, (a, _b) = racing

    def other_server_claims_race_two():
        with db.session() as s:
            s.execute(update(NodeRole).where(NodeRole.id == nr_of(s, NODE, "race-two").id).values(state="transition"))

    fired, stop = _meanwhile(db, other_server_claims_race_two)
    try:
        assert a.claim_step() == 0  # it had read a noderole of the node as runnable, the node then idle
    finally:
        stop()
    assert fired
    _once_and_one_at_a_time(db)
    assert set(_states(db)) == {"todo", "transition"} and _runs(db) == 0  # only the other server's claim


@pytest.mark.postgresql
def test_without_a_race_the_claim_takes_one_noderole_per_node(racing):
    db, (a, _b) = racing
    assert a.claim_step() == 1
    states = _states(db)
    assert states.count("transition") == 1 and set(states) == {"todo", "transition"}
    assert _runs(db) == 1
