"""The server's loops share one shape: a named thread, an interval, wake(), stop(); a failing step
is logged and the loop carries on. And each loop does its job: the annealer loop anneals when woken,
the watchdog moves stuck nodes, the DHCP reconciler hands the wanted reservations to the provisioner."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from crowbar.db.models import Node, NodeRole, Run, Server
from crowbar.engine.annealer import Annealer
from crowbar.server.annealer import AnnealerLoop
from crowbar.server.loop import Loop
from crowbar.server.reconciler import Reconciler
from crowbar.server.watchdog import Watchdog
from crowbar.services import deployments, network, nodes


def eventually(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.01)


class Counting(Loop):
    name = "counting"
    interval = 60.0  # only wake() makes it go round again

    def __init__(self, fail_on: set[int] = frozenset()):
        super().__init__()
        self.rounds, self.fail_on, self.closed = 0, fail_on, False
        self.threads: set[str] = set()

    def step(self) -> bool:
        self.rounds += 1
        self.threads.add(threading.current_thread().name)
        if self.rounds in self.fail_on:
            raise RuntimeError(f"round {self.rounds} broke")
        return False

    def close(self) -> None:
        self.closed = True


def test_a_loop_runs_in_its_named_thread_wakes_on_demand_and_stops(caplog):
    loop = Counting(fail_on={2})
    loop.start()
    try:
        eventually(lambda: loop.rounds == 1, "the first round", 5)
        time.sleep(0.1)
        assert loop.rounds == 1  # idle: waits for its interval (a minute) or a wake-up
        with caplog.at_level(logging.ERROR):
            loop.wake()
            eventually(lambda: loop.rounds == 2, "the woken round", 5)
        assert "counting step failed" in caplog.text and "round 2 broke" in caplog.text
        loop.wake()
        eventually(lambda: loop.rounds == 3, "a round after the failure", 5)
    finally:
        loop.stop(timeout=5)
    assert loop.threads == {"counting"} and loop.closed and not loop._thread.is_alive()


def test_a_busy_step_is_followed_at_once():
    class Busy(Counting):
        def step(self) -> bool:
            super().step()
            return self.rounds < 5

    loop = Busy()
    loop.start()
    try:
        eventually(lambda: loop.rounds == 5, "five rounds without a wake-up", 5)
    finally:
        loop.stop(timeout=5)


def test_the_annealer_loop_anneals_when_woken_and_stops_the_server_cleanly(db):
    with db.session() as s:
        nodes.create_node(s, "n1.example.com")
        deployment_id = deployments.create_deployment(s, "d")["id"]
        deployments.bind(s, "d", "test-client-client", "n1.example.com")
    annealer = Annealer(db, workers=2)
    loop = AnnealerLoop(annealer, interval=60.0)
    loop.start()
    try:
        with db.session() as s:
            deployments.commit(s, "d")
        loop.wake()  # what the API does after the commit

        def all_active() -> bool:
            with db.session() as s:
                return {nr.state for nr in s.query(NodeRole).filter_by(deployment_id=deployment_id)} == {"active"}

        eventually(all_active, "the deployment to anneal", 30)
    finally:
        loop.stop(timeout=10)
    with db.session() as s:
        assert s.get(Server, annealer.server_id).stopped is True


@pytest.mark.parametrize("pipelined", [True, False])
def test_the_annealer_loop_claims_in_its_thread_and_applies_in_the_appliers(db, monkeypatch, pipelined):
    """Pipelined (the server's way), claims run in the loop's thread and applies in the Applier's,
    so their round trips overlap; a graph of several cohorts still anneals in order, and the
    runs that finish while it stops are applied, not lost. Unpipelined, one thread does both."""
    with db.session() as s:
        for i in range(3):
            nodes.create_node(s, f"p{i}.example.com")
            deployments.create_deployment(s, f"p{i}")
            deployments.bind(s, f"p{i}", "test-client-client", f"p{i}.example.com")
    threads: dict[str, set[str]] = {"claim": set(), "apply": set()}
    claim, apply = Annealer._claim, Annealer._apply_completions

    def claiming(self, limit):
        threads["claim"].add(threading.current_thread().name)
        return claim(self, limit)

    def applying(self, block=0.0):
        got = apply(self, block)
        if got:
            threads["apply"].add(threading.current_thread().name)
        return got

    monkeypatch.setattr(Annealer, "_claim", claiming)
    monkeypatch.setattr(Annealer, "_apply_completions", applying)
    annealer = Annealer(db, workers=2)
    loop = AnnealerLoop(annealer, interval=60.0, pipelined=pipelined)
    loop.start()
    try:
        assert loop.health() == {"ok": True}
        with db.session() as s:
            for i in range(3):
                deployments.commit(s, f"p{i}")
        loop.wake()

        def all_active() -> bool:
            with db.session() as s:
                return {nr.state for nr in s.query(NodeRole)} == {"active"}

        eventually(all_active, "the deployments to anneal", 30)
    finally:
        loop.stop(timeout=10)
    assert threads["claim"] == {"annealer"}
    assert threads["apply"] == ({"annealer-apply"} if pipelined else {"annealer"})
    with db.session() as s:
        assert s.query(Run).filter(Run.state != "succeeded").count() == 0
        assert s.get(Server, annealer.server_id).stopped is True


def test_the_watchdog_moves_stuck_nodes(db):
    with db.session() as s:
        node = s.get(Node, nodes.create_node(s, "stuck.example.com")["id"])
        node.state, node.state_changed_at = "discovering", datetime.now(timezone.utc) - timedelta(days=1)
    watchdog = Watchdog(db, interval=60.0)
    watchdog.start()
    try:
        def moved() -> bool:
            with db.session() as s:
                return s.query(Node).filter_by(name="stuck.example.com").one().state == "problem"

        eventually(moved, "the watchdog's first round", 10)
    finally:
        watchdog.stop(timeout=5)


class FakeProvisioner:
    """The provisioner's interface as the reconciler uses it, without dnsmasq."""

    def __init__(self):
        self.started_with = None
        self.applied: list[dict] = []
        self.stopped = False

    def start(self, pool, reservations):
        self.started_with = (pool, reservations)

    def record_pid(self):
        pass

    def apply(self, wanted):
        self.applied.append(wanted)
        return 0

    def stop(self):
        self.stopped = True


def test_the_reconciler_hands_the_admin_pool_and_the_reservations_to_the_provisioner(db):
    with db.session() as s:
        info = nodes.create_node(s, "n1.example.com")
        s.get(Node, info["id"]).boot_mac = "52:54:00:00:00:01"
        nodes.create_node(s, "n2.example.com")  # no boot MAC: no reservation
        address = network.allocate(s, "admin", info["id"])["address"]
    fake = FakeProvisioner()
    reconciler = Reconciler(db, fake, interval=60.0)
    reconciler.start()
    try:
        pool, reservations = fake.started_with
        with db.session() as s:
            admin = network.current_template(s).networks["admin"]
        assert (pool.subnet, pool.range_start, pool.range_end) == (
            str(admin.subnet), str(admin.ranges["dhcp"].start), str(admin.ranges["dhcp"].end))
        assert reservations == {"52:54:00:00:00:01": (address, "n1.example.com")}
        eventually(lambda: fake.applied, "the first reconcile", 5)
        assert fake.applied[0] == reservations
    finally:
        reconciler.stop(timeout=5)
    assert fake.stopped
