"""The agent's long poll (crowbar.api.longpoll): with `Prefer: wait=N` an idle agent's poll is held
and answered as soon as work is queued for its node (by the API or by any other thread's commit),
or at the end of its hold with a wait of 0 seconds; while held it holds no database connection and
no worker thread; past the server's bound a poll is answered at once, as without the header. The
discovery agent itself long-polls."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlkit import statements

from crowbar.api import longpoll
from crowbar.api.app import create_app
from crowbar.api.settings import AppSettings
from crowbar.db.models import AgentJob, ApiToken, Node
from crowbar.services import provisioning
from discoverykit import INVENTORY, discover

V2 = "/api/v2"


def agent(token: str, wait: int | None = None) -> dict:
    headers = {"authorization": f"Bearer {token}"}
    if wait is not None:
        headers["prefer"] = f"wait={wait}"
    return headers


def inventory(i: int) -> dict:
    mac = f"52:54:00:bb:{i // 256:02x}:{i % 256:02x}"
    return dict(INVENTORY, boot_mac=mac, nics=[dict(INVENTORY["nics"][0], mac=mac)])


@pytest.fixture
def served(db, admin_token):
    """The app in one event loop for the whole test (requests from several threads share it)."""
    def make(**settings):
        client = TestClient(create_app(AppSettings(db=db, **settings)),
                            headers={"authorization": f"Bearer {admin_token}"})
        clients.append(client)
        return client.__enter__()

    clients: list[TestClient] = []
    yield make
    for client in clients:
        client.__exit__(None, None, None)


def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def held(api, token: str, wait: int):
    """Start a long poll in a thread: a future of (response, seconds it took)."""
    def poll():
        started = time.monotonic()
        r = api.get(f"{V2}/agent/next", headers=agent(token, wait))
        return r, time.monotonic() - started

    pool = ThreadPoolExecutor(1)
    future = pool.submit(poll)
    pool.shutdown(wait=False)
    return future


def test_the_prefer_header_is_read_as_rfc_7240_says():
    assert longpoll.requested_wait("wait=50") == 50
    assert longpoll.requested_wait("respond-async, wait=5") == 5
    assert longpoll.requested_wait("return=minimal; WAIT=7") == 7
    assert longpoll.requested_wait('wait="9"') == 9
    for nothing in (None, "", "wait=", "wait=-1", "wait=1.5", "wait=abc", "wait=²", "respond-async"):
        assert longpoll.requested_wait(nothing) == 0
    assert longpoll.requested_wait("wait=99999999999") == longpoll.PREFER_WAIT_MAX


def test_the_hold_follows_the_fleet_and_the_agents_wish():
    for _ in range(50):
        assert 0.75 * provisioning.HOLD_SECONDS <= provisioning.hold_seconds(50, 10) <= provisioning.HOLD_SECONDS
        assert 37.5 <= provisioning.hold_seconds(50, 10_000) <= 50  # the agent's wish caps the budget's 50 s
        assert 1.5 <= provisioning.hold_seconds(2, 10_000) <= 2
        assert provisioning.hold_seconds(3600, 10**7) <= provisioning.MAX_WAIT_SECONDS
    assert provisioning.hold_seconds(0, 10) == 0


def test_a_held_poll_is_answered_as_soon_as_work_is_queued(served, db):
    api = served()
    waiters = api.app.state.agent_waiters
    body = discover(api, INVENTORY).json()
    # an action set through the API (allocate tells the agent to reboot)
    poll = held(api, body["token"], 30)
    until(lambda: waiters.waiting == 1)
    assert api.post(f"{V2}/nodes/{body['node']}/allocate").status_code == 200
    r, took = poll.result(10)
    assert r.status_code == 200 and r.json() == {"action": "reboot"}
    assert took < 5 and r.headers["preference-applied"].startswith("wait=")
    assert waiters.waiting == 0 and waiters.woken == 1

    # a job queued by another thread's own transaction (as the annealer queues a script jig's)
    found = discover(api, inventory(1)).json()
    poll = held(api, found["token"], 30)
    until(lambda: waiters.waiting == 1)
    with db.session() as s:
        s.add(AgentJob(node_id=found["id"], kind="script", script="echo hi", timeout=10))
    r, took = poll.result(10)
    assert r.json()["action"] == "run" and r.json()["script"] == "echo hi" and took < 5
    with db.session() as s:
        assert s.get(AgentJob, int(r.json()["job"])).state == "sent"


def test_a_woken_poll_takes_its_work_without_reading_again(served, db, monkeypatch):
    """A held poll that a notification wakes goes straight to the agents' writes: its one read is
    the one it started with; a notification with nothing behind it (work another poll took)
    answers nothing and the poll is held on."""
    api = served()
    waiters = api.app.state.agent_waiters
    found = discover(api, inventory(500)).json()
    reads = []
    real = provisioning.agent_poll
    monkeypatch.setattr(provisioning, "agent_poll", lambda s, token: reads.append(token) or real(s, token))
    poll = held(api, found["token"], 30)
    until(lambda: waiters.waiting == 1)
    waiters.notify([found["id"]])  # nothing queued: the write answers a wait, the hold goes on
    until(lambda: waiters.woken == 1 and waiters.waiting == 1)
    with db.session() as s:
        s.add(AgentJob(node_id=found["id"], kind="script", script="echo woken", timeout=10))
    r, took = poll.result(10)
    assert r.json()["action"] == "run" and r.json()["script"] == "echo woken" and took < 5
    assert reads == [found["token"]]


def test_work_queued_for_another_node_does_not_answer_it(served, db):
    api = served()
    waiters = api.app.state.agent_waiters
    one, two = (discover(api, inventory(i)).json() for i in (1, 2))
    poll = held(api, one["token"], 2)
    until(lambda: waiters.waiting == 1)
    with db.session() as s:
        s.add(AgentJob(node_id=two["id"], kind="script", script="true", timeout=10))
    r, took = poll.result(10)
    assert r.json() == {"action": "wait", "seconds": 0} and took >= 1.4  # held to its end (1.5-2 s)
    assert api.get(f"{V2}/agent/next", headers=agent(two["token"], 30)).json()["action"] == "run"  # not held


def test_a_held_poll_ends_at_its_hold_with_a_wait_of_zero(served):
    api = served()
    token = discover(api, INVENTORY).json()["token"]
    r, took = held(api, token, 2).result(10)
    assert r.status_code == 200 and r.json() == {"action": "wait", "seconds": 0}
    assert 1.4 <= took < 5
    assert r.headers["preference-applied"] == "wait=2" or r.headers["preference-applied"] == "wait=1"
    timing = dict(metric.split(";dur=") for metric in r.headers["server-timing"].split(", "))
    assert 1400 <= float(timing["hold"]) <= took * 1000
    assert 0 <= float(timing["late"]) < 500  # answered at the end of the hold it chose
    # without the header the poll is answered at once, as it always was
    started = time.monotonic()
    plain = api.get(f"{V2}/agent/next", headers=agent(token))
    assert plain.json()["action"] == "wait" and plain.json()["seconds"] >= 1 and time.monotonic() - started < 1.5
    assert "preference-applied" not in plain.headers


def test_held_polls_hold_no_connection_and_no_thread(served, db):
    """More polls held than the threadpool has threads (40): none of them holds a thread or a
    database connection, so the rest of the API answers meanwhile."""
    api = served()
    waiters = api.app.state.agent_waiters
    tokens = [discover(api, inventory(i)).json()["token"] for i in range(48)]
    # held far longer than it takes to start them all on a slow, busy machine (CI once took over
    # 4 s to start 48: the first had ended before the last was held); the server ends them below
    polls = [held(api, t, 120) for t in tokens]
    until(lambda: waiters.waiting == len(tokens), timeout=60)
    assert db.engine.pool.checkedout() == 0
    started = time.monotonic()
    assert api.get(f"{V2}/nodes").status_code == 200
    assert time.monotonic() - started < 2
    # the server stops: every held poll is answered now, with the usual answer (poll again later)
    started = time.monotonic()
    waiters.close()
    results = [p.result(30)[0] for p in polls]
    assert time.monotonic() - started < 30 and waiters.waiting == 0
    assert all(r.json()["action"] == "wait" and r.json()["seconds"] >= 1 for r in results)


def test_past_the_bound_a_poll_is_answered_at_once(served):
    api = served(agent_waiters=1)
    waiters = api.app.state.agent_waiters
    one, two = (discover(api, inventory(i)).json() for i in (1, 2))
    # Held 6 s: long enough for the next poll to find it held on a loaded machine (with 3 s the
    # first of two polls of one node could end before the second was held, under the full suite)
    first = held(api, one["token"], 6)
    until(lambda: waiters.waiting == 1)
    started = time.monotonic()
    r = api.get(f"{V2}/agent/next", headers=agent(two["token"], 30))
    assert time.monotonic() - started < 1.5
    assert r.json()["action"] == "wait" and r.json()["seconds"] >= 1  # the usual answer: poll again later
    assert "preference-applied" not in r.headers
    assert first.result(10)[0].json() == {"action": "wait", "seconds": 0}
    # one node's token holds at most PER_NODE polls, whatever the limit
    many = served()
    node = discover(many, inventory(3)).json()
    polls = [held(many, node["token"], 6) for _ in range(longpoll.PER_NODE)]
    until(lambda: many.app.state.agent_waiters.waiting == longpoll.PER_NODE)
    r = many.get(f"{V2}/agent/next", headers=agent(node["token"], 30))
    assert r.json()["seconds"] >= 1 and "preference-applied" not in r.headers
    assert all(p.result(10)[0].json() == {"action": "wait", "seconds": 0} for p in polls)
    # no long poll at all
    off = served(agent_waiters=0)
    r = off.get(f"{V2}/agent/next", headers=agent(two["token"], 30))
    assert r.json()["seconds"] >= 1 and "preference-applied" not in r.headers


def test_a_poll_with_work_waiting_is_not_held_and_a_bad_token_is_refused_at_once(served, db):
    api = served()
    body = discover(api, INVENTORY).json()
    with db.session() as s:
        s.add(AgentJob(node_id=body["id"], kind="script", script="true", timeout=10))
    started = time.monotonic()
    assert api.get(f"{V2}/agent/next", headers=agent(body["token"], 30)).json()["action"] == "run"
    assert api.get(f"{V2}/agent/next", headers=agent("cb_not-a-token", 30)).status_code == 401
    assert time.monotonic() - started < 2
    with db.session() as s:  # a dead node is revived by its poll, not held first
        s.get(Node, body["id"]).alive = False
    assert api.get(f"{V2}/agent/next", headers=agent(body["token"], 1)).json()["action"] == "wait"
    with db.session() as s:
        assert s.get(Node, body["id"]).alive is True


def test_closing_answers_the_held_polls(served):
    api = served()
    waiters = api.app.state.agent_waiters
    token = discover(api, INVENTORY).json()["token"]
    poll = held(api, token, 30)
    until(lambda: waiters.waiting == 1)
    threading.Thread(target=waiters.close).start()
    r, took = poll.result(10)
    assert took < 5 and r.json()["action"] == "wait"


@contextlib.contextmanager
def following_agent(db, admin_token, tmp_path, before=None):
    """A real server on loopback, a discovered node, and agent.sh's `follow` for its token in
    busybox sh (`before(node)` runs between the two): yields (admin client, node, waiters, the
    agent's process); the agent is killed and the server stopped at the end."""
    import socket

    import httpx

    from discoverykit import Served
    from test_agent_discovery import BUSYBOX, SCRIPT, agent_env

    if not BUSYBOX.is_file():
        pytest.skip("busybox-static is not installed")
    sock = socket.create_server(("127.0.0.1", 0))
    url = "http://127.0.0.1:%d" % sock.getsockname()[1]
    served = Served(AppSettings(db=db), [sock])
    proc = None
    try:
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {admin_token}"}) as http:
            node = discover(http, INVENTORY).json()
            if before is not None:
                before(node)
            env = agent_env(tmp_path)
            (tmp_path / "cmdline").write_text(f"crowbar.url={url}\n")
            proc = subprocess.Popen([str(BUSYBOX), "sh", "-c", SCRIPT, "agent-test", "follow", node["token"]],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            yield http, node, served.server.config.app.state.agent_waiters, proc
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        served.close()


def test_the_discovery_agent_long_polls(db, admin_token, tmp_path):
    """agent.sh's follow sends `Prefer: wait`: it waits on the server, and an allocate reaches it
    at once (its `sleep` is a no-op here, so without the long poll it would poll in a loop)."""
    with following_agent(db, admin_token, tmp_path) as (http, node, waiters, proc):
        until(lambda: waiters.waiting == 1)
        time.sleep(0.5)
        assert waiters.waiting == 1  # still the one held poll, not a loop of polls
        assert http.post(f"{V2}/nodes/{node['node']}/allocate").status_code == 200
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 42 and "rebooting" in out and "RESTART-MACHINE" in out, out


def test_a_poll_straight_back_from_a_quiet_hold_skips_its_read_and_the_next_one_reads(served, db):
    api = served()
    waiters = api.app.state.agent_waiters
    token = discover(api, INVENTORY).json()["token"]
    assert held(api, token, 2).result(10)[0].json() == {"action": "wait", "seconds": 0}
    seen, stop = statements(db)
    try:
        r, took = held(api, token, 2).result(10)  # back at once: no read, held all the same
        assert r.json() == {"action": "wait", "seconds": 0} and took >= 1.4
        assert seen == [] and waiters.skipped == 1
        r, _ = held(api, token, 2).result(10)  # the one after reads again
        assert r.json() == {"action": "wait", "seconds": 0} and len(seen) >= 1 and waiters.skipped == 1
    finally:
        stop()
    # a plain poll (no long poll) always reads
    assert api.get(f"{V2}/agent/next", headers=agent(token)).json()["action"] == "wait"
    assert waiters.skipped == 1


def test_work_queued_after_a_quiet_hold_answers_the_next_poll_at_once(served, db):
    api = served()
    found = discover(api, INVENTORY).json()
    assert held(api, found["token"], 2).result(10)[0].json() == {"action": "wait", "seconds": 0}
    with db.session() as s:  # between the hold's end and the agent's next poll (this process: notified)
        s.add(AgentJob(node_id=found["id"], kind="script", script="echo hi", timeout=10))
    r, took = held(api, found["token"], 30).result(10)
    assert r.json()["action"] == "run" and r.json()["script"] == "echo hi" and took < 5
    assert api.app.state.agent_waiters.skipped == 1  # it skipped its first read, woke and read then


def test_what_no_notification_tells_is_seen_one_hold_later_and_a_dead_token_is_refused_then(served, db):
    """A commit no notification tells of (SQL on the engine, past the ORM's hook; on PostgreSQL
    another server's, while this one's listening connection is lost) reaches an agent that skipped
    its read when its next poll reads: within two holds."""
    api = served()
    found = discover(api, INVENTORY).json()
    assert held(api, found["token"], 2).result(10)[0].json() == {"action": "wait", "seconds": 0}
    with db.engine.begin() as conn:
        conn.execute(AgentJob.__table__.insert().values(node_id=found["id"], kind="script", script="true",
                                                        timeout=10, state="queued"))
    r, took = held(api, found["token"], 2).result(10)
    assert r.json() == {"action": "wait", "seconds": 0} and took >= 1.4  # skipped its read: not seen yet
    assert api.get(f"{V2}/agent/next", headers=agent(found["token"], 2)).json()["action"] == "run"
    # a token revoked behind the server's back: refused at the latest by the poll after the skipped one
    other = discover(api, inventory(1)).json()
    assert held(api, other["token"], 2).result(10)[0].json() == {"action": "wait", "seconds": 0}
    with db.engine.begin() as conn:
        conn.execute(ApiToken.__table__.delete().where(ApiToken.node_id == other["id"]))
    assert held(api, other["token"], 2).result(10)[0].json() == {"action": "wait", "seconds": 0}
    assert api.get(f"{V2}/agent/next", headers=agent(other["token"], 2)).status_code == 401


def test_a_quiet_hold_is_remembered_once_briefly_and_not_past_the_tokens_expiry(monkeypatch):
    waiters = longpoll.AgentWaiters()
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    waiters.remember_quiet("d1", 7, 100.0, future)
    assert waiters.take_quiet("d1") == (7, 100.0) and waiters.take_quiet("d1") is None  # once
    assert waiters.take_quiet(None) is None and waiters.take_quiet("unknown") is None
    waiters.remember_quiet("d2", 8, 100.0, datetime.now(timezone.utc) - timedelta(seconds=1))
    assert waiters.take_quiet("d2") is None  # the token has expired since its read
    monkeypatch.setattr(longpoll, "QUIET_GRACE", 0.0)
    waiters.remember_quiet("d3", 9, 100.0, None)
    time.sleep(0.01)
    assert waiters.take_quiet("d3") is None  # not straight back: it reads
    monkeypatch.setattr(longpoll, "QUIET_GRACE", 10.0)
    waiters.remember_quiet("d4", 9, 100.0, None)
    waiters.close()
    assert waiters.take_quiet("d4") is None  # the server is stopping
    assert waiters.skipped == 1


def test_polls_read_the_database_at_most_readers_at_once(served, monkeypatch):
    """A burst of polls: their reads run in at most READERS worker threads at once (the rest wait
    in the event loop, holding no thread), and every poll is answered."""
    from crowbar.api import provisioning as routes

    api = served()
    tokens = [discover(api, inventory(i)).json()["token"] for i in range(3 * longpoll.READERS)]
    lock, running, most = threading.Lock(), [0], [0]
    read = routes._read

    def counted(*args):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.2)  # long enough for the whole burst to arrive while the first reads run
            return read(*args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(routes, "_read", counted)
    with ThreadPoolExecutor(len(tokens)) as pool:
        answers = list(pool.map(lambda t: api.get(f"{V2}/agent/next", headers=agent(t)), tokens))
    assert [r.status_code for r in answers] == [200] * len(tokens)
    assert all(r.json()["action"] == "wait" for r in answers)
    assert most[0] == longpoll.READERS


def test_agents_writes_run_at_most_writers_at_once():
    """`AgentWaiters.write`: a burst of writes runs in at most WRITERS worker threads at once, the
    rest waiting in the event loop; each gets its own answer."""
    waiters = longpoll.AgentWaiters()
    lock, running, most = threading.Lock(), [0], [0]

    def work(i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return i

    async def burst():
        return await asyncio.gather(*(waiters.write(work, i) for i in range(3 * longpoll.WRITERS)))

    assert asyncio.run(burst()) == list(range(3 * longpoll.WRITERS))
    assert most[0] == longpoll.WRITERS


def test_agents_requests_that_write_go_among_the_writers_together(served, monkeypatch):
    """A burst of agents' writing requests (discovery posts, job results): their units of work run
    among the bounded writers, the ones that arrive together share units (groupcommit), and every
    one is answered as it would be alone."""
    from crowbar.api import deps
    from crowbar.api import provisioning as routes

    api = served()
    tokens = [discover(api, inventory(i)).json()["token"] for i in range(2 * longpoll.WRITERS)]
    lock, running, most, units = threading.Lock(), [0], [0], [0]
    unit = deps.unit

    @contextlib.contextmanager
    def counted(*args, **kw):
        with lock:
            running[0] += 1
            units[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.2)  # long enough for the whole burst to arrive while the first units run
            with unit(*args, **kw) as s:
                yield s
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(routes.deps, "unit", counted)
    fresh = [inventory(100 + i) for i in range(2 * longpoll.WRITERS)]
    calls = ([lambda b=b: api.post(f"{V2}/discovery", json=b) for b in fresh]
             + [lambda t=t: api.post(f"{V2}/agent/jobs/999999", json={"exit_code": 0}, headers=agent(t)) for t in tokens]
             + [lambda: api.post(f"{V2}/agent/jobs/999999", json={"exit_code": 0}, headers=agent("cb_not_a_token"))])
    with ThreadPoolExecutor(len(calls)) as pool:
        answers = list(pool.map(lambda call: call(), calls))
    assert [r.status_code for r in answers] == [201] * len(fresh) + [404] * len(tokens) + [401]
    assert 2 <= units[0] < len(calls)
    assert most[0] <= longpoll.WRITERS


def test_job_results_written_together_keep_each_its_own_answer(served, db, monkeypatch):
    """Job results that arrive together share a unit of work: each is answered as alone, a refused
    one (another node's job) undoes nothing of the others, and every good one is stored."""
    from crowbar.services import provisioning as service

    api = served()
    found = [discover(api, inventory(200 + i)).json() for i in range(6)]
    with db.session() as s:
        jobs = []
        for f in found:
            job = AgentJob(node_id=f["id"], kind="script", script="true", timeout=10)
            s.add(job)
            s.flush()
            jobs.append(job.id)
    result = service.job_result
    first = threading.Event()

    def slow_first(*args, **kw):  # the first result holds its unit while the others arrive
        if not first.is_set():
            first.set()
            time.sleep(0.3)
        return result(*args, **kw)

    monkeypatch.setattr(service, "job_result", slow_first)
    calls = [(f["token"], job) for f, job in zip(found, jobs)] + [(found[0]["token"], jobs[1])]  # not its job
    with ThreadPoolExecutor(len(calls)) as pool:
        answers = list(pool.map(lambda c: api.post(f"{V2}/agent/jobs/{c[1]}", json={"exit_code": 0, "output": "ok"},
                                                   headers=agent(c[0])), calls))
    assert [r.status_code for r in answers] == [200] * len(jobs) + [404]
    assert [r.json()["state"] for r in answers[:-1]] == ["done"] * len(jobs)
    assert api.app.state.agent_writes.largest > 1
    with db.session() as s:
        assert [s.get(AgentJob, j).state for j in jobs] == ["done"] * len(jobs)
        assert [s.get(AgentJob, j).output for j in jobs] == ["ok"] * len(jobs)


def test_remembered_notifications_are_pruned_now_and_then_not_at_every_notify(monkeypatch):
    """More young notifications than the pruning threshold (10,000 nodes given work within
    REMEMBER seconds): a notify prunes, and the next ones do not, until the map has doubled."""
    waiters = longpoll.AgentWaiters()
    waiters.notify(range(5000))  # past 4 x 1024: pruned once, all of it young
    kept = waiters._notified
    assert len(kept) == 5000
    for node_id in range(5000, 5100):
        waiters.notify([node_id])
    assert waiters._notified is kept and len(kept) == 5100  # not rebuilt at every notify
    clock = time.monotonic() + longpoll.REMEMBER + 1
    monkeypatch.setattr(longpoll.time, "monotonic", lambda: clock)
    waiters.notify(range(20_000, 25_000))  # past twice the kept: pruned, the old ones gone
    assert set(waiters._notified) == set(range(20_000, 25_000))


def test_writes_together_whose_unit_fails_are_written_each_alone(served, db):
    """`write_together`: when the shared unit of work fails as a whole (here a work that raises
    what no savepoint answers), each item is written again alone: the good ones are stored once,
    the bad one gets its own error, and an unknown token its 401."""
    from crowbar.api import provisioning as routes
    from crowbar.errors import Unauthorized

    api = served()
    found = [discover(api, inventory(300 + i)).json() for i in range(3)]

    def describe(text):
        def work(s, node):
            node.description = f"{node.description}{text}"
            return node.name
        return work

    def broken(s, node):
        raise RuntimeError("not a refusal: the whole unit fails")

    items = [(found[0]["token"], describe("a")), (found[1]["token"], broken), ("cb_unknown", describe("x")),
             (found[2]["token"], describe("c"))]
    answers = routes.write_together(api.app.state.settings, items)
    assert answers[0] == found[0]["node"] and answers[3] == found[2]["node"]
    assert isinstance(answers[1], RuntimeError) and isinstance(answers[2], Unauthorized)
    with db.session() as s:
        assert [s.get(Node, f["id"]).description for f in found] == ["a", "", "c"]  # each once


def test_writes_together_write_their_events_in_one_insert_and_a_refused_one_leaves_none(served, db):
    """`provisioning.agents_write`: the events of every agent's write in the unit go out in one
    INSERT at its end; a write that is refused (its error is its answer) leaves neither its
    changes nor its events, and the others keep both."""
    from crowbar.api import provisioning as routes
    from crowbar.db.events import record
    from crowbar.db.models import Event
    from crowbar.errors import Conflict
    from sqlalchemy import select

    api = served()
    found = [discover(api, inventory(400 + i)).json() for i in range(3)]

    def noted(text, refuse=False):
        def work(s, node):
            node.description = text
            record(s, [{"object_type": "node", "object_id": node.id, "action": "test-note", "message": text}])
            if refuse:
                raise Conflict(f"{text} refused")
            return text
        return work

    items = [(found[0]["token"], noted("first")), (found[1]["token"], noted("second", refuse=True)),
             (found[2]["token"], noted("third"))]
    seen, stop = statements(db)
    try:
        answers = routes.write_together(api.app.state.settings, items)
    finally:
        stop()
    assert answers[0] == "first" and answers[2] == "third" and isinstance(answers[1], Conflict)
    assert sum(1 for sql in seen if sql.lstrip().upper().startswith("INSERT INTO EVENTS")) == 1
    with db.session() as s:
        assert [s.get(Node, f["id"]).description for f in found] == ["first", "", "third"]
        notes = s.execute(select(Event.object_id, Event.message).where(Event.action == "test-note")).all()
    assert sorted(notes) == sorted([(found[0]["id"], "first"), (found[2]["id"], "third")])


def test_a_job_result_answers_the_next_instruction_when_asked(served, db):
    """`Prefer: next-action` on a job result: the answer is what the next poll would get (the
    next job, taken; a pending action; or a wait of 0 seconds), also for a result posted again;
    without it the answer is the result's state, as it always was."""
    api = served()
    found = discover(api, inventory(600)).json()
    with db.session() as s:
        s.add_all([AgentJob(node_id=found["id"], kind="script", script=f"echo {n}", timeout=10) for n in (1, 2)])
    first = api.get(f"{V2}/agent/next", headers=agent(found["token"])).json()
    assert first["action"] == "run" and first["script"] == "echo 1"
    prefer = dict(agent(found["token"]), prefer="next-action")
    r = api.post(f"{V2}/agent/jobs/{first['job']}", json={"exit_code": 0, "output": "1\n"}, headers=prefer)
    assert r.status_code == 200 and r.headers["preference-applied"] == "next-action"
    second = r.json()
    assert second["action"] == "run" and second["script"] == "echo 2"
    with db.session() as s:
        assert s.get(AgentJob, int(second["job"])).state == "sent"
    done = {"exit_code": 0, "output": "2\n"}
    assert api.post(f"{V2}/agent/jobs/{second['job']}", json=done, headers=prefer).json() == {"action": "wait",
                                                                                             "seconds": 0}
    with db.session() as s:
        s.get(Node, found["id"]).agent_action = "reboot"
    again = api.post(f"{V2}/agent/jobs/{second['job']}", json=done, headers=prefer)
    assert again.json() == {"action": "reboot"}
    plain = api.post(f"{V2}/agent/jobs/{second['job']}", json=done, headers=agent(found["token"]))
    assert plain.json() == {"job": int(second["job"]), "state": "done"} and "preference-applied" not in plain.headers
    with db.session() as s:
        assert s.get(Node, found["id"]).agent_action is None
        assert [j.output for j in s.query(AgentJob).filter_by(node_id=found["id"]).order_by(AgentJob.id)] == ["1\n", "2\n"]


def test_the_discovery_agent_follows_a_job_results_answer_without_a_poll(db, admin_token, tmp_path, monkeypatch):
    """agent.sh posts its job results with `Prefer: next-action`: the second job, given in the
    first one's answer, runs without a poll between them; a wait of 0 in the second's answer
    sends it back to polling, where an allocate reaches it."""
    reads = []
    real = provisioning.agent_poll
    monkeypatch.setattr(provisioning, "agent_poll", lambda s, token: reads.append(token) or real(s, token))

    def two_jobs(node):
        with db.session() as s:
            s.add_all([AgentJob(node_id=node["id"], kind="script", script=f"echo job {n}", timeout=10)
                       for n in (1, 2)])

    with following_agent(db, admin_token, tmp_path, before=two_jobs) as (http, node, waiters, proc):
        until(lambda: waiters.waiting == 1)  # both jobs done, polling again
        assert http.post(f"{V2}/nodes/{node['node']}/allocate").status_code == 200
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 42 and "RESTART-MACHINE" in out, out
    assert len(reads) == 2, (reads, out)  # the first poll and the one after the second job: none between
    with db.session() as s:
        jobs = s.query(AgentJob).filter_by(node_id=node["id"]).order_by(AgentJob.id).all()
        assert [(j.state, j.exit_code, j.output) for j in jobs] == [("done", 0, "job 1\n"), ("done", 0, "job 2\n")]
