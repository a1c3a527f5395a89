"""Two servers claim from one PostgreSQL at the same moment. A claim locks the runnable noderoles
it reads (FOR UPDATE SKIP LOCKED: another claim takes other rows), then holds their nodes and
moves them in one UPDATE that reads them again. A claim that read only some of a node's runnable
noderoles (its limit cut the rest off) leaves the others to another server, whose claim may commit
in between: the node is then busy, and this claim takes nothing there. A node runs one thing at
a time, a noderole runs once."""

from __future__ import annotations

import pytest
from enginekit import nr_of
from sqlalchemy import event, func, select

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
    # A reads two runnable noderoles a claim (its limit, one, times two): of the node's three (the
    # two above, and what the system deployment binds to every node), the last is left for B.
    annealers = [Annealer(pg, workers=1, backlog=1), Annealer(pg, workers=1)]
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


def _claim_meanwhile(db, claimer: Annealer, action) -> int:
    """`claimer`'s claim, with `action` run once it has read what is runnable and before it holds
    anything: how many it claimed. Checks that the action ran, and what no interleaving may break."""
    fired, stop = _meanwhile(db, action)
    try:
        claimed = claimer.claim_step()
    finally:
        stop()
    assert fired
    _once_and_one_at_a_time(db)
    return claimed


@pytest.mark.postgresql
def test_a_node_whose_other_noderole_another_server_ran_meanwhile_runs_each_once(racing):
    db, (a, b) = racing

    def b_runs_it():  # B claims the noderole A left, runs it and applies the result: active, the node idle
        assert b.claim_step() == 1
        assert b.apply(block=10) == 1

    assert _claim_meanwhile(db, a, b_runs_it) == 1  # the node is idle again: A claims what it read
    assert _states(db).count("active") == 1 and _runs(db) == 2


@pytest.mark.postgresql
def test_a_node_another_server_claimed_on_meanwhile_is_busy(racing):
    db, (a, b) = racing
    assert _claim_meanwhile(db, a, lambda: b.claim_step() == 1 or pytest.fail("B claimed nothing")) == 0
    assert _states(db).count("transition") == 1 and _runs(db) == 1


@pytest.mark.postgresql
def test_without_a_race_the_claim_takes_one_noderole_per_node(racing):
    db, (a, _b) = racing
    assert a.claim_step() == 1
    states = _states(db)
    assert states.count("transition") == 1 and set(states) == {"todo", "transition"}
    assert _runs(db) == 1
