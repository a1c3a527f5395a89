"""Batching jigs: the annealer hands every claimed noderole of one role and deployment to one
`run_batch` call, never mixing roles or deployments; each noderole keeps its own result, log and
wall. And what a running jig prints reaches its run's log before the run ends."""

from __future__ import annotations

import threading
import time

import pytest
from enginekit import nr_of, runs_of

from crowbar import plugins
from crowbar.jigs.base import Jig, RunContext, RunResult
from crowbar.services import deployments, nodes

BARCLAMP = """\
barclamp: {name: batches, version: "1"}
roles:
  - {name: batched-a, jig: batched}
  - {name: batched-b, jig: batched}
"""
NODES = [f"n{i}.example.com" for i in range(1, 6)]


class Batched(Jig):
    name = "batched"
    batch = True
    wants_groups = True
    calls: list[list[tuple[str, str, int, tuple[str, ...]]]] = []

    def run(self, ctx: RunContext) -> RunResult:
        return self.run_batch([ctx])[0]

    def run_batch(self, ctxs: list[RunContext]) -> list[RunResult]:
        type(self).calls.append([(c.node.name, c.role, c.deployment_id, tuple(c.groups)) for c in ctxs])
        return [RunResult(ok=c.node.name != "n5.example.com", wall={"by": c.node.name},
                          log=f"{c.role} on {c.node.name} in a batch of {len(ctxs)}\n") for c in ctxs]


class Blind(Batched):
    """The same jig, but one that does not read `ctx.groups`."""
    name = "blind"
    wants_groups = False
    calls: list[list[tuple[str, str, int, tuple[str, ...]]]] = []


@pytest.fixture
def batched():
    Batched.calls = []
    with plugins.registered(plugins.JIGS, "batched", Batched):
        yield Batched


def test_groups_are_read_only_for_jigs_that_want_them(db, annealer, import_yaml, batched):
    Blind.calls = []
    with plugins.registered(plugins.JIGS, "blind", Blind):
        import_yaml(BARCLAMP + "  - {name: blind-a, jig: blind}\n")
        with db.session() as s:
            deployments.create_deployment(s, "d1")
            for name in NODES[:2]:
                nodes.create_node(s, name)
                deployments.bind(s, "d1", "batched-b", name)
                deployments.bind(s, "d1", "blind-a", name)
        annealer.run_until_idle()
        with db.session() as s:
            deployments.commit(s, "d1")
        annealer.run_until_idle()
    assert len(batched.calls) >= 1 and len(Blind.calls) >= 1
    assert {g for call in batched.calls for *_x, g in call} == {("batched-b", "blind-a")}
    assert {g for call in Blind.calls for *_x, g in call} == {()}


def test_one_call_per_role_and_deployment_each_noderole_its_own_result(db, annealer, import_yaml, batched):
    import_yaml(BARCLAMP)
    with db.session() as s:
        for name in NODES:
            nodes.create_node(s, name)
        deployments.create_deployment(s, "d1")
        deployments.create_deployment(s, "d2")
        for name in NODES[:3]:
            deployments.bind(s, "d1", "batched-a", name)
        for name in NODES[3:]:
            deployments.bind(s, "d2", "batched-a", name)   # the same role in another deployment
    annealer.run_until_idle()  # the nodes' own (system) roles first, so that all are runnable together
    with db.session() as s:
        deployments.commit(s, "d1")
        deployments.commit(s, "d2")
    annealer.run_until_idle()
    calls = sorted(batched.calls, key=len)
    assert [len(c) for c in calls] == [2, 3]
    for call in calls:
        assert len({(role, dep) for _n, role, dep, _g in call}) == 1   # never mixed
    assert {n for n, *_ in calls[1]} == set(NODES[:3]) and {n for n, *_ in calls[0]} == set(NODES[3:])
    assert all(groups == ("batched-a",) for *_x, groups in calls[0] + calls[1])
    with db.session() as s:
        for name in NODES:
            nr = nr_of(s, name, "batched-a")
            (run,) = runs_of(s, nr.id)
            size = 3 if name in NODES[:3] else 2
            assert run.log == f"batched-a on {name} in a batch of {size}\n"
            if name == "n5.example.com":
                assert (nr.state, run.state, nr.wall) == ("error", "failed", {})
            else:
                assert (nr.state, run.state, nr.wall) == ("active", "succeeded", {"by": name})


class Talking(Jig):
    """Prints a line, then waits until the test has seen it in the database."""

    name = "talking"
    seen = threading.Event()

    def run(self, ctx: RunContext) -> RunResult:
        ctx.output("halfway there\n")
        if not type(self).seen.wait(30):
            return RunResult(ok=False, log="the test never saw the line\n")
        return RunResult(ok=True, log="halfway there\nall done\n")


def test_output_reaches_the_run_log_while_the_run_goes(db, annealer, import_yaml):
    Talking.seen = threading.Event()
    with plugins.registered(plugins.JIGS, "talking", Talking):
        import_yaml('barclamp: {name: talk, version: "1"}\nroles:\n  - {name: talker, jig: talking}\n')
        with db.session() as s:
            nodes.create_node(s, "n1.example.com")
            deployments.create_deployment(s, "d1")
            deployments.bind(s, "d1", "talker", "n1.example.com")
            deployments.commit(s, "d1")
        a = annealer()
        a.register()
        deadline = time.monotonic() + 30
        while not Talking.seen.is_set() and time.monotonic() < deadline:
            a.step()
            with db.session() as s:
                runs = runs_of(s, nr_of(s, "n1.example.com", "talker").id)
                if runs and runs[0].state == "running" and runs[0].log == "halfway there\n":
                    Talking.seen.set()
            time.sleep(0.05)
        assert Talking.seen.is_set(), "the line never reached the run's log while it ran"
        a.run_until_idle(timeout=30)
    with db.session() as s:
        (run,) = runs_of(s, nr_of(s, "n1.example.com", "talker").id)
        assert (run.state, run.log) == ("succeeded", "halfway there\nall done\n")
