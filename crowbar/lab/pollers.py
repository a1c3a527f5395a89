"""Many agents' long polls at once, from several load-generator processes: what one simulator
process cannot drive (at 10,000 agents crowbar.lab.fleet stalled at ~6,000 held polls on its own
CPU, the server idle: docs/benchmarks.md).

Each agent speaks the discovery agent's step 2 (crowbar/agent/__init__.py) on an HTTP/1.1
keep-alive connection of its own: `GET /api/v2/agent/next` with `Authorization: Bearer <node
token>` and `Prefer: wait=N`. The server holds the poll as long as it chooses (`Preference-Applied:
wait=N`; `Server-Timing: hold;dur=MS, late;dur=MS` says how long it held it, and how much of that
past the end of the hold it chose) and answers `{"action": "wait", "seconds": 0}` when the hold
ends, or the node's work as soon as it is queued. A `wait` is asked again after its `seconds`;
work (reboot, run) ends the agent: a real one would reboot or run it, and the agents here measure
the polls only.

The agents are shared among `processes` processes (spawned), each an asyncio loop. The client is
asyncio's streams, not httpx: the request is one fixed GET and the answer a small JSON body with a
Content-Length, and httpx's CPU per request (timeouts, cancel scopes, pool bookkeeping) was what
stalled the one-process simulator. The operator (this process) queues work for a sample of the held
agents meanwhile, one `POST /nodes/{name}/allocate` each (its reboot action), and times how long
each agent takes to be answered. Times are time.monotonic(), CLOCK_MONOTONIC: one clock for every
process on the host, so the operator's calls and the load generators' answers compare.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import resource
import time
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import urlsplit

import httpx

from crowbar.lab.fleet import AGENT_RETRY, Fleet, FleetError, Options, ServerProcess, percentile, server_hold

PATH = "/api/v2/agent/next"
KEEPALIVE = 4.0  # seconds a connection may sit idle before it is opened anew (uvicorn closes it after 5)
LAG_EVERY = 0.1  # seconds between the timers that measure a load generator's own event loop lag


class Poll(NamedTuple):
    """One answered poll: the agent's index, when it was sent and answered, how long the server
    held it (seconds; None: not held) and how much of that past the end of the hold it chose, and
    the answer's action (`HTTP <status>` when not 200)."""
    index: int
    sent: float
    answered: float
    held: float | None
    late: float
    action: str

    @property
    def beyond(self) -> float:
        """How long the poll took beyond the hold the server chose."""
        return self.answered - self.sent - (self.held or 0.0) + self.late


@dataclass
class Plan:
    """One load generator's share: its agents (index, token) and how long they poll."""
    url: str
    agents: list[tuple[int, str]]
    wait: int  # the agents' Prefer: wait=
    ramp: float  # their first polls are spread over this many seconds
    until: float  # seconds after the start past which no poll is sent
    drain: float  # seconds a poll in flight at `until` is still waited for


@dataclass
class Generated:
    """What one load generator saw."""
    polls: list[Poll] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    unanswered: int = 0  # polls still in flight when the drain ended
    cpu_s: float = 0.0
    lag: list[float] = field(default_factory=list)

    def error(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send the GET and read its answer: status, headers (lower-case names), body."""
    writer.write(request)
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in head[1:] if line))
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(head[0].split()[1]), headers, body


def _action(status: int, body: bytes) -> tuple[str, float]:
    """The answer's action and, for a wait, its seconds."""
    if status != 200:
        return f"HTTP {status}", AGENT_RETRY
    answer = json.loads(body)
    return str(answer.get("action")), float(answer.get("seconds") or 0)


async def _agent(index: int, token: str, plan: Plan, t0: float, delay: float, out: Generated) -> None:
    """One agent: its first poll after `delay`, then polls until `until`, or until it is given work."""
    url = urlsplit(plan.url)
    request = (f"GET {PATH} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {token}\r\n"
               f"Prefer: wait={plan.wait}\r\n\r\n").encode()
    await asyncio.sleep(delay)
    writer, last = None, 0.0
    try:
        while time.monotonic() < t0 + plan.until:
            sent = time.monotonic()
            try:
                if writer is None or sent - last > KEEPALIVE:  # none yet, or the server may have closed it
                    if writer is not None:
                        writer.close()
                    reader, writer = await asyncio.open_connection(url.hostname, url.port)
                status, headers, body = await _ask(reader, writer, request)
            except asyncio.CancelledError:
                out.unanswered += 1  # in flight when the drain ended
                raise
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                out.error(type(exc).__name__)
                if writer is not None:
                    writer.close()
                writer = None
                await asyncio.sleep(AGENT_RETRY)
                continue
            last = time.monotonic()
            held, late = server_hold(headers.get("server-timing", "")) or (None, 0.0)
            action, seconds = _action(status, body)
            out.polls.append(Poll(index, sent, last, held, late, action))
            if status != 200:
                out.error(action)
            elif action != "wait":
                return
            await asyncio.sleep(seconds)
    finally:
        if writer is not None:
            writer.close()


async def _watch_lag(out: Generated, until: float) -> None:
    """How late this process's event loop runs a timer: the load generator's own share of every
    latency it measures."""
    while time.monotonic() < until:
        due = time.perf_counter() + LAG_EVERY
        await asyncio.sleep(LAG_EVERY)
        out.lag.append(max(0.0, time.perf_counter() - due))


async def _generate(plan: Plan, t0: float) -> Generated:
    out = Generated()
    spread = plan.ramp / max(1, len(plan.agents))
    agents = [asyncio.create_task(_agent(i, token, plan, t0, k * spread, out))
              for k, (i, token) in enumerate(plan.agents)]
    lag = asyncio.create_task(_watch_lag(out, t0 + plan.until))
    await asyncio.wait(agents, timeout=max(0.0, t0 + plan.until + plan.drain - time.monotonic()))
    for task in (*agents, lag):
        task.cancel()
    await asyncio.gather(*agents, lag, return_exceptions=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.cpu_s = usage.ru_utime + usage.ru_stime
    return out


def _generator(plan: Plan, barrier, results) -> None:
    """A load generator process: starts with the others (the barrier), reports what it saw."""
    barrier.wait(timeout=120)
    results.put(asyncio.run(_generate(plan, time.monotonic())))


@dataclass
class HoldOptions:
    """How many agents' polls are held from how many processes, for how long; how many are woken."""
    processes: int = 4
    wait: int = 50  # Prefer: wait= (the real agent's)
    ramp: float = 20.0  # seconds over which the agents send their first polls
    seconds: float = 120.0  # the measured window, after the ramp
    wake: int = 50  # agents given work (a reboot, by allocating their node) in the window's first half
    drain: float | None = None  # seconds polls in flight at the end are waited for (None: wait + 15)
    wake_url: str | None = None  # the operator's calls go to this server (another on the same PostgreSQL)


@dataclass
class Wake:
    """The operator's call that gave an agent work: when it was made and answered (monotonic)."""
    index: int
    name: str
    called: float
    returned: float
    status: int


@dataclass
class HoldRun:
    """The polls of every load generator, the operator's wake calls, and the server's cost over the
    measured window (from the end of the ramp for `seconds`)."""
    agents: int
    options: HoldOptions
    window: tuple[float, float]
    generated: list[Generated]
    wakes: list[Wake]
    server_cpu_s: float | None = None
    server_peak_rss_mb: float | None = None

    @property
    def polls(self) -> list[Poll]:
        return [p for g in self.generated for p in g.polls]

    def answers(self) -> dict[int, Poll]:
        """Each woken agent's answer that was not a wait, by its index."""
        return {p.index: p for p in self.polls if p.action != "wait" and not p.action.startswith("HTTP")}

    def report(self) -> dict:
        start, end = self.window
        polls = [p for p in self.polls if start <= p.answered <= end and p.action == "wait"]
        beyond = [p.beyond for p in polls]
        answers = self.answers()
        woke = [answers[w.index].answered - w.called for w in self.wakes if w.index in answers]
        lag = [x for g in self.generated for x in g.lag]
        errors: dict[str, int] = {}
        for g in self.generated:
            for key, count in g.errors.items():
                errors[key] = errors.get(key, 0) + count
        return {"agents": self.agents, "processes": self.options.processes, "wait": self.options.wait,
                "window_s": round(end - start, 1), "polls": len(polls),
                "polls_per_s": round(len(polls) / (end - start), 1),
                "not_held": sum(1 for p in polls if p.held is None),
                "held_s_min_max": [round(min((p.held for p in polls if p.held), default=0), 1),
                                   round(max((p.held for p in polls if p.held), default=0), 1)],
                "beyond_hold_ms": _ms(beyond), "server_late_ms": _ms([p.late for p in polls]),
                "wake_ms": _ms(woke), "woken": len(woke), "wake_calls": len(self.wakes),
                "wake_call_ms": _ms([w.returned - w.called for w in self.wakes]),
                "wake_calls_timed_out": sum(1 for w in self.wakes if w.status == 0),
                "unanswered": sum(g.unanswered for g in self.generated), "errors": errors,
                "server_cpu_s_per_min": round(self.server_cpu_s * 60 / (end - start), 1)
                if self.server_cpu_s is not None else None,
                "server_peak_rss_mb": self.server_peak_rss_mb,
                "generators_cpu_s": round(sum(g.cpu_s for g in self.generated), 1),
                "generator_lag_p99_ms": round(percentile(lag, 99) * 1000, 1)}


def _ms(values: list[float]) -> dict:
    return {"count": len(values), **{f"p{p}": round(percentile(values, p) * 1000, 1) for p in (50, 95, 99)},
            "max": round(max(values, default=0.0) * 1000, 1)}


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def _wake(url: str, token: str, sample: list[tuple[int, str]], start: float, seconds: float,
          timeout: float = 60.0) -> list[Wake]:
    """Give each sampled agent work, one call each, spread over the first half of the window:
    allocating a node in the discovery image sets its reboot action (the call commits it)."""
    wakes = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout) as http:
        for k, (index, name) in enumerate(sample):
            _sleep_until(start + seconds / 2 * k / len(sample))
            called = time.monotonic()
            try:
                status = http.post(f"/api/v2/nodes/{name}/allocate").status_code
            except httpx.TimeoutException:  # counted (status 0): a server too busy to answer is a result
                status = 0
            wakes.append(Wake(index, name, called, time.monotonic(), status))
    return wakes


def discover(url: str, token: str, nodes: int, *, concurrency: int = 64, timeout: float = 1800.0,
             say=lambda _: None, server: ServerProcess | None = None) -> tuple[dict, list[tuple[int, str, str]]]:
    """`nodes` simulated machines discovered (crowbar.lab.fleet's discover phase, with plain polls,
    which one process drives at 10,000): its report, and each machine's (index, node name, token)."""
    fleet = Fleet(url, token, Options(nodes=nodes, concurrency=concurrency, timeout=timeout, phases=("discover",),
                                      long_poll=0, enroll_power=False), say=say, server=server)
    report = asyncio.run(fleet.run())
    if report["failures"]:
        raise FleetError(f"discover: {report['failures'][0]}")
    return report, [(m.index, m.name, m.token) for m in fleet.machines]


def hold(url: str, token: str, agents: list[tuple[int, str, str]], options: HoldOptions,
         server: ServerProcess | None = None) -> HoldRun:
    """Poll as `agents` (index, node name, node token) from `options.processes` processes for the
    ramp and `seconds`, waking a sample of them meanwhile (`token`: the operator's)."""
    o = options
    processes = min(o.processes, len(agents))
    drain = o.wait + 15.0 if o.drain is None else o.drain
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes + 1), ctx.Queue()
    shares = [[(i, t) for i, _, t in agents[p::processes]] for p in range(processes)]
    procs = [ctx.Process(target=_generator, daemon=True, args=(
        Plan(url, share, o.wait, o.ramp, o.ramp + o.seconds, drain), barrier, results)) for share in shares]
    step = max(1, len(agents) // max(1, o.wake))
    sample = [(i, name) for i, name, _ in agents[step // 2::step][:o.wake]]
    try:
        for proc in procs:
            proc.start()
        barrier.wait(timeout=120)
        t0 = time.monotonic()
        window = (t0 + o.ramp, t0 + o.ramp + o.seconds)
        _sleep_until(window[0])
        cpu0 = server.cpu_seconds() if server else None
        if server:
            server.reset_peak()
        wakes = _wake(o.wake_url or url, token, sample, window[0] + 1.0, o.seconds) if sample else []
        _sleep_until(window[1])
        run = HoldRun(len(agents), o, window, [], wakes)
        if server:
            run.server_cpu_s, run.server_peak_rss_mb = server.cpu_seconds() - cpu0, server.peak_rss_mb()
        run.generated = [results.get(timeout=drain + 120) for _ in procs]
        for proc in procs:
            proc.join(30)
        return run
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
