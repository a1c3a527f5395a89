"""Two servers apply the two parents of one child at the same time (PostgreSQL): the child is
unblocked by whichever checks it second. Without a lock on the child each transaction would see
the other's parent still in `transition` (not yet committed) and both would leave it blocked,
for good: nothing else looks at it again."""

from __future__ import annotations

import threading

import pytest
from enginekit import nr_of
from sqlalchemy import update

from crowbar.db.models import NodeRole
from crowbar.engine import graph
from crowbar.services import deployments, nodes

N1, N2, N3 = "p1.example.com", "p2.example.com", "c.example.com"


def _second_waits_for_first(db, first, second) -> None:
    """`first(session)` runs and stays uncommitted; `second(session)` then runs on a thread in its
    own transaction and must wait for the first's locks, and finish once the first commits. Both
    sessions are closed even when this fails (closing the first releases what the second waits on)."""
    a, b = db.sessionmaker(), db.sessionmaker()
    done, thread = threading.Event(), None

    def run_second() -> None:
        second(b)
        b.commit()
        done.set()

    try:
        first(a)
        thread = threading.Thread(target=run_second)
        thread.start()
        assert not done.wait(1.0)  # the second waits for the first's hold...
        a.commit()
        thread.join(10)
        assert done.is_set()  # ...and finishes once the first has committed
    finally:
        a.close()
        if thread is not None:
            thread.join(10)
        b.close()


@pytest.mark.postgresql
def test_a_child_of_two_parents_applied_at_once_by_two_servers_is_unblocked(pg):
    db = pg
    with db.session() as s:
        for name in (N1, N2, N3):
            nodes.create_node(s, name)
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-server", N1)
        deployments.bind(s, "d1", "test-library", N2)
        deployments.bind(s, "d1", "test-client", N3)  # its parents: test-server on N1, test-library on N2
        ids = {r: nr_of(s, n, r).id for n, r in ((N1, "test-server"), (N2, "test-library"), (N3, "test-client"))}
        s.execute(update(NodeRole).where(NodeRole.id.in_([ids["test-server"], ids["test-library"]]))
                  .values(state="transition"))
        s.execute(update(NodeRole).where(NodeRole.id == ids["test-client"]).values(state="blocked"))

    def apply_a(a) -> None:  # server A: its parent active (not committed yet), and it checks the child
        graph.set_states(a, {"active": [(ids["test-server"], "transition")]}, "a", "run")
        graph.unblock_children(a, [ids["test-server"]], "a")

    def apply_b(b) -> None:  # server B, meanwhile: the same for the other parent
        graph.set_states(b, {"active": [(ids["test-library"], "transition")]}, "b", "run")
        graph.unblock_children(b, [ids["test-library"]], "b")

    _second_waits_for_first(db, apply_a, apply_b)
    with db.session() as s:
        assert nr_of(s, N3, "test-client").state == "todo"


@pytest.mark.postgresql
def test_a_child_committed_while_its_parent_is_applied_is_unblocked(pg):
    """The API commits a new child while a server makes its parent active: whichever way they
    interleave, the child ends in todo (here the commit reads the parent while the apply has
    changed it but not committed, and the apply has already looked for the parent's children)."""
    db = pg
    with db.session() as s:
        for name in (N1, N3):
            nodes.create_node(s, name)
        deployments.create_deployment(s, "d1")
        deployments.bind(s, "d1", "test-server", N1)
        deployments.bind(s, "d1", "test-library", N1)
        deployments.commit(s, "d1")
        server, library = nr_of(s, N1, "test-server").id, nr_of(s, N1, "test-library").id
        s.execute(update(NodeRole).where(NodeRole.id == server).values(state="transition"))
        s.execute(update(NodeRole).where(NodeRole.id == library).values(state="active"))

    def apply_parent(a) -> None:
        graph.set_states(a, {"active": [(server, "transition")]}, "a", "run")
        graph.unblock_children(a, [server], "a")  # no child yet: the API's is not committed

    def commit_child(x) -> None:  # it reads the parent, which the apply holds
        deployments.bind(x, "d1", "test-client", N3)  # its parents: test-server, test-library on N1
        deployments.commit(x, "d1")

    _second_waits_for_first(db, apply_parent, commit_child)
    with db.session() as s:
        assert nr_of(s, N3, "test-client").state == "todo"
