"""Many agents' long polls from several load-generator processes (crowbar.lab.pollers) against a
real server: 20 simulated machines are discovered, then hold `Prefer: wait=3` polls from two
processes while the operator allocates two of them; those two are answered their reboot at once,
the others' polls are each held for the server's hold and answered when it ends."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from crowbar.lab import pollers
from crowbar.lab.pollers import HoldOptions, discover, hold

pytestmark = pytest.mark.e2e

N = 20
WAIT = 6  # a 20-agent fleet is held for `wait` less up to a quarter: 4.5-6 s


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def test_held_polls_from_several_processes_end_with_their_hold_or_at_once_with_work(servers, backend):
    s = servers.new(database=servers.postgres_url() if backend == "postgresql" else None)
    token = (s.data_dir / "admin.token").read_text().strip()
    _, agents = discover(s.url, token, N, concurrency=16, timeout=120)
    assert len({name for _, name, _ in agents}) == N and all(t for _, _, t in agents)

    run = hold(s.url, token, agents, HoldOptions(processes=2, wait=WAIT, ramp=0.5, seconds=12.0, wake=2))
    report = run.report()
    assert report["errors"] == {} and report["unanswered"] == 0 and report["wake_calls_timed_out"] == 0
    assert len(run.generated) == 2 and all(g.polls for g in run.generated)  # both processes polled

    woken = run.answers()
    assert [w.status for w in run.wakes] == [200, 200]
    assert set(woken) == {w.index for w in run.wakes}
    for w in run.wakes:  # the reboot reached the agent at once, not at the end of its hold
        answer = woken[w.index]
        assert answer.action == "reboot" and answer.answered - w.called < WAIT / 2, (w, answer)
    # (a wake may land between two polls, and the next one reads it: most are held when woken)
    assert any(woken[w.index].sent < w.called and woken[w.index].held < 0.75 * WAIT for w in run.wakes)

    waits = [p for p in run.polls if p.action == "wait"]
    assert {p.action for p in run.polls} == {"wait", "reboot"}
    assert all(p.held is not None and 0.75 * WAIT <= p.held <= WAIT + 2 for p in waits), waits  # every one held
    per_agent = {i: sum(1 for p in waits if p.index == i) for i, _, _ in agents}
    assert all(count >= 2 for i, count in per_agent.items() if i not in woken), per_agent
    assert report["polls"] > 0 and report["not_held"] == 0


def test_an_operator_call_the_server_does_not_answer_is_counted_not_fatal():
    """A server too busy to answer a wake call within the timeout: the call is counted (status 0),
    and the run goes on (a benchmark on an overloaded server once stopped there)."""
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        wakes = pollers._wake(url, "t", [(0, "n0"), (1, "n1")], time.monotonic(), 0.2, timeout=0.3)
    assert [w.status for w in wakes] == [0, 0] and all(w.returned - w.called >= 0.3 for w in wakes)
    run = pollers.HoldRun(2, HoldOptions(), (0.0, 1.0), [], wakes)
    assert run.report()["wake_calls_timed_out"] == 2


@pytest.mark.postgresql
def test_agents_held_by_one_server_hear_of_work_committed_through_another(servers):
    """Two servers on one PostgreSQL: the agents are discovered by and long-poll server B, the
    operator allocates two of them through server A; B's held polls answer the reboot at once (A's
    NOTIFY, B's notices loop), not at the end of their hold."""
    url = servers.postgres_url()
    a = servers.new("a", database=url)
    b = servers.new("b", database=url)
    token = (a.data_dir / "admin.token").read_text().strip()  # one database: A's token is B's too
    _, agents = discover(b.url, token, N, concurrency=16, timeout=120)

    run = hold(b.url, token, agents, HoldOptions(processes=2, wait=WAIT, ramp=0.5, seconds=12.0, wake=2,
                                                 wake_url=a.url))
    report = run.report()
    assert report["errors"] == {} and report["unanswered"] == 0 and report["not_held"] == 0
    woken = run.answers()
    assert [w.status for w in run.wakes] == [200, 200] and set(woken) == {w.index for w in run.wakes}
    for w in run.wakes:
        assert woken[w.index].action == "reboot" and woken[w.index].answered - w.called < WAIT / 2, (w, woken)
    assert any(woken[w.index].sent < w.called and woken[w.index].held < 0.75 * WAIT for w in run.wakes)

    health = httpx.get(f"{b.url}/api/v2/health", headers={"authorization": f"Bearer {token}"}).json()
    assert health["checks"]["notices"]["ok"] and health["checks"]["notices"]["received_nodes"] >= 2
