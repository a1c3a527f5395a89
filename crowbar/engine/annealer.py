"""The annealer: finds runnable noderoles, runs them through their jigs, and records the results.

One dispatcher thread per server does all database work in batches (on PostgreSQL the server
splits it in two, `claim_step` in one thread and `apply` in another, whose round trips overlap as
two servers' do; `step` does both in turn):
  claim    - one transaction takes up to `backlog` runnable noderoles (cohort, id order; at most one
             per node; nodes locked with FOR UPDATE SKIP LOCKED on PostgreSQL so several servers can
             share one database), moves them to transition, snapshots their attribute documents into
             run rows, and hands them to a pool of `workers` threads;
  dispatch - a jig whose class says `batch = True` (the ansible jig) gets every noderole of one
             role and deployment claimed in that transaction in one `run_batch` call (one tool run
             for N nodes); other jigs get one `run` per noderole. Either way every noderole keeps
             its own run row, result, log and wall, and a node still runs one thing at a time;
  output   - text a running jig passes to `ctx.output` is appended to its run's log each step, so
             `crowbar noderoles log ID` follows a run while it goes (the result's log replaces it);
  prepare  - an optional hook the server gives (`prepare`), called in the worker thread before the
             jig, outside any transaction: it may rewrite the run's document (a role's `source` is
             resolved to an exact commit there: services/sources.py) and returns (wall, note): what
             it knows for the wall, merged over the jig's on success, and a line put first in the
             run's log; when it raises, the run fails with its message;
  complete - results from workers (or from asynchronous jigs, any thread) are queued and applied
             together in one transaction: state, wall, log, events, then the ripple to children.
A heartbeat row per server lets any server recover the runs of one that died (transition -> todo).

This module is the protocol, driven by whoever calls `step()`: the server's annealer loop
(`crowbar.server.annealer`, which also wakes it through `notify`), or `run_until_idle` in tests.
Jobs for discovery agents are rows the agent channel writes here (`queue_job`); the API's
provisioning service hands them to the agents and records their results.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.orm import Session, defer

from crowbar.db.events import record, record_changes
from crowbar.db.sql import among, chunks, ids_where
from crowbar.db.models import AgentJob, Node, NodeRole, Role, Run, Server, utcnow
from crowbar.db.session import Database
from crowbar.documents import merge
from crowbar.engine import graph
from crowbar.engine.attribs import RunDocuments, node_attrs
from crowbar.engine.states import State
from crowbar.jigs.base import AgentChannel, NodeInfo, RunContext, RunResult, get_jig
from crowbar.procs import pid_alive
from crowbar.provisioner.lifecycle import DISCOVERY

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
DEAD_AFTER_SECONDS = 20.0

# The nodes that are busy (a noderole running, or failed) are few (at most the backlog, and the
# errors): NOT IN over them is one hashed subplan on PostgreSQL (an ephemeral index on SQLite),
# probed once per todo noderole. A NOT EXISTS let PostgreSQL's planner, which after a large
# commit believes almost nothing is in `transition`, compare every todo noderole with every busy
# one: 165 ms a claim at 3,000 nodes, against 9 ms (docs/benchmarks.md, "Less work per noderole").
RUNNABLE_SQL = """
SELECT nr.id, nr.node_id FROM node_roles nr
JOIN nodes n ON n.id = nr.node_id
JOIN deployments d ON d.id = nr.deployment_id
WHERE nr.state = 'todo' AND d.state = 'committed' AND n.alive AND n.available
  AND nr.node_id NOT IN (SELECT b.node_id FROM node_roles b WHERE b.state IN ('transition', 'error'))
ORDER BY nr.cohort, nr.id
LIMIT :limit
"""

INSERT_RUNS = text(
    "INSERT INTO runs (node_role_id, server_id, state, attrs, log, started_at) "
    "SELECT u.node_role_id, :server, 'running', CAST(u.doc AS jsonb), '', :now "
    "FROM unnest(CAST(:noderoles AS integer[]), CAST(:docs AS text[])) AS u(node_role_id, doc) "
    "RETURNING node_role_id, id")


class Annealer:
    def __init__(self, db: Database, workers: int = 8, actor: str = "annealer", backlog: int | None = None,
                 workdir: Path | None = None, notify: Callable[[], None] | None = None,
                 prepare: Callable[[RunContext], tuple[dict, str] | None] | None = None):
        self.db = db
        self.prepare = prepare  # see the module's docstring
        self.workers = max(1, workers)
        self.backlog = backlog or max(32, self.workers * 32)
        self.actor = actor
        # Called (from any thread) when there is something for `step()` to do: a finished run, a
        # queued agent job. The server's loop sets it to its wake-up; alone, nothing is woken.
        self.notify = notify or (lambda: None)
        # each run's scratch directory is crowbar-run-<run id> below this: a private directory when
        # none is given, as run ids are only unique per database (two annealers on one machine,
        # each with its own database, would otherwise share and remove each other's directories)
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="crowbar-runs-"))
        if not workdir:  # a private directory is this annealer's alone: removed with it, or at exit
            weakref.finalize(self, shutil.rmtree, str(self.workdir), True)
        self.server_id: int | None = None
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="jig")
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._output: queue.SimpleQueue = queue.SimpleQueue()  # (run id, text) a running jig printed
        self._in_flight = 0  # claimed by this server and not yet applied
        self._flight_lock = threading.Lock()  # claims and applies may run in two threads (claim_step, apply)
        self._last_heartbeat = 0.0
        self._last_reap = 0.0
        self._agent_waiters: dict[int, Callable[[int, str], None]] = {}  # agent job id -> on_done
        self._waiters_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------
    def register(self) -> int:
        """Record this server, and recover the runs of servers that are gone."""
        with self.db.session() as s:
            server = Server(hostname=socket.gethostname(), pid=os.getpid())
            s.add(server)
            s.flush()
            self.server_id = server.id
        self.reap_dead_servers(startup=True)
        return self.server_id

    def close(self, drain: float = 10.0) -> None:
        """Once nothing calls `step()` any more: apply what finishes within `drain` seconds, then
        hand back what is left (its noderoles go back to todo) and record this server as stopped."""
        deadline = time.monotonic() + drain
        while self._in_flight and time.monotonic() < deadline:
            self._apply_completions(block=0.2)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.server_id is not None:
            self._recover({self.server_id: "server stopped before the run finished"})
            with self.db.session() as s:
                s.execute(update(Server).where(Server.id == self.server_id).values(stopped=True))

    def wake(self) -> None:
        self.notify()

    def step(self) -> bool:
        """One round: apply finished runs, claim new ones. True when something happened."""
        applied = self.apply()
        claimed = self.claim_step()
        return bool(applied or claimed)

    def apply(self, block: float = 0.0) -> int:
        """Apply the runs that finished (waiting up to `block` seconds for one): how many."""
        return self._apply_completions(block)

    def claim_step(self) -> int:
        """Everything of a round but applying finished runs: the heartbeat, the recovery of dead
        servers, agent jobs' results, running jigs' output, and a claim of new work: how many
        noderoles it claimed. The server runs it and `apply` in two threads, so that one's round
        trips to the database overlap the other's (as two servers' do: they touch different rows,
        the claim only `todo` noderoles, the apply its own `transition` ones and `blocked` children)."""
        now = time.monotonic()
        if now - self._last_heartbeat > HEARTBEAT_SECONDS and self.server_id is not None:
            self._heartbeat()
            self._last_heartbeat = now
        if now - self._last_reap > DEAD_AFTER_SECONDS / 2:
            self.reap_dead_servers()
            self._last_reap = now
        self._poll_agent_jobs()
        self._apply_output()
        in_flight = self._in_flight
        return self._claim(self.backlog - in_flight) if in_flight < self.backlog else 0

    def run_until_idle(self, timeout: float = 600.0) -> None:
        """Anneal in the calling thread until nothing is runnable or running (tests, benchmarks)."""
        if self.server_id is None:
            self.register()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.step() and self._in_flight == 0:
                return
            if self._in_flight and self._done.empty():
                self._apply_completions(block=0.05)
        raise TimeoutError(f"annealing did not finish within {timeout}s")

    # -- claiming --------------------------------------------------------------------------------
    def _claim(self, limit: int) -> int:
        contexts: list[RunContext] = []
        skipped: list[tuple[int, int, RunResult]] = []
        with self.db.session() as s:
            pg = self.db.postgresql
            # Several servers: each locks the runnable noderoles it reads, skipping those another
            # claim holds, so that their claims take different rows (without it both read the same
            # first rows and then skip each other's nodes: 1.6 times the claims, twice the rows).
            lock = " FOR UPDATE OF nr SKIP LOCKED" if pg else ""
            rows = s.execute(text(RUNNABLE_SQL.rstrip() + lock), {"limit": limit * 2}).all()
            picked: dict[int, int] = {}
            for nr_id, node_id in rows:
                if node_id not in picked and len(picked) < limit:
                    picked[node_id] = nr_id
            if pg and picked:
                # ...and holds their nodes, so that two never claim on one node at once.
                locked = set(s.scalars(text("SELECT id FROM nodes WHERE id = ANY(:ids) FOR UPDATE SKIP LOCKED"),
                                       {"ids": list(picked)}))
                picked = {n: i for n, i in picked.items() if n in locked}
            if not picked:
                return 0
            # The claim itself. On PostgreSQL it reads them again under those locks: no other
            # noderole of its node claimed (or failed) since the read above (another server's claim
            # of a row this one had not read, committed since), and still todo (which the row lock
            # already ensures). SQLite's transaction holds the one write lock from its start.
            where, params = ids_where(sorted(picked.values()), pg)
            recheck = ""
            if pg:
                nodes_where, node_ids = ids_where(sorted(picked), pg, "b.node_id", "nodes")
                recheck = (f" AND state = 'todo' AND node_id NOT IN (SELECT b.node_id FROM node_roles b "
                           f"WHERE {nodes_where} AND b.state IN ('transition', 'error'))")
                params |= node_ids
            claimed = record_changes(
                s, f"UPDATE node_roles SET state = 'transition', updated_at = :now WHERE {where}{recheck} RETURNING id, state",
                params | {"now": utcnow()},
                {"object_type": "noderole", "action": "claim", "from_state": State.TODO.value, "actor": self.actor,
                 "message": f"server {self.server_id}"})
            if not claimed:
                return 0
            claimed_ids = {i for i, _state in claimed}
            picked = {n: i for n, i in picked.items() if i in claimed_ids}
            ids = sorted(claimed_ids)
            # Whole rows but for the JSON columns a run does not read (what is proposed, power settings).
            noderoles = list(s.scalars(select(NodeRole).options(defer(NodeRole.proposed))
                                       .where(among(NodeRole.id, ids, pg)).order_by(NodeRole.cohort, NodeRole.id)))
            nodes = {n.id: n for n in s.scalars(select(Node).options(defer(Node.power))
                                                .where(among(Node.id, picked, pg)))}
            docs = RunDocuments(s)
            attrs = docs.build(noderoles, nodes)
            held: dict[tuple[int, int], list[str]] = {}  # (node, deployment) -> its roles there: inventory groups
            wants = {jig: _jig_says(jig, "wants_groups") for jig in {docs.roles[nr.role_id].jig for nr in noderoles}}
            grouped = sorted({nr.node_id for nr in noderoles if wants[docs.roles[nr.role_id].jig]})
            for part in chunks(grouped):
                for node_id, dep_id, role_name in s.execute(
                        select(NodeRole.node_id, NodeRole.deployment_id, Role.name).join(Role, Role.id == NodeRole.role_id)
                        .where(among(NodeRole.node_id, part, pg)).order_by(NodeRole.id)):
                    held.setdefault((node_id, dep_id), []).append(role_name)
            for run_id, nr in zip(self._insert_runs(s, noderoles, attrs), noderoles):
                role: Role = docs.roles[nr.role_id]
                node = nodes[nr.node_id]
                if role.has("destructive") and nr.run_count > 0:
                    skipped.append((run_id, nr.id, RunResult(ok=True, wall=nr.wall or {},
                                                             log="destructive role already ran once: skipped\n")))
                    continue
                contexts.append(RunContext(
                    run_id=run_id, noderole_id=nr.id, role=role.name, jig=role.jig, attrs=attrs[nr.id],
                    node=NodeInfo(id=node.id, name=node.name, admin=node.admin, attrs=node_attrs(node),
                                  host_keys=tuple((node.install or {}).get("host_keys") or ())),
                    scripts=list(role.scripts or []), workdir=self.workdir / f"crowbar-run-{run_id}",
                    agent=_AgentChannel(self, node.id, run_id) if node.bootenv == DISCOVERY else None,
                    deployment_id=nr.deployment_id, groups=held.get((node.id, nr.deployment_id), []),
                    wall=dict(nr.wall or {}),
                ))
        with self._flight_lock:
            self._in_flight += len(contexts) + len(skipped)
        for run_id, nr_id, result in skipped:
            self._done.put((run_id, nr_id, result))
        batches: dict[tuple, list[RunContext]] = {}
        for ctx in contexts:
            ctx.complete = self._completer(ctx)
            ctx.output = self._streamer(ctx)
            key = (ctx.jig, ctx.role, ctx.deployment_id) if _jig_says(ctx.jig, "batch") else (ctx.run_id,)
            batches.setdefault(key, []).append(ctx)
        for batch in batches.values():
            self._pool.submit(self._execute_batch if len(batch) > 1 else self._execute, *batch)
        return len(contexts) + len(skipped)

    def _insert_runs(self, s: Session, noderoles: list[NodeRole], attrs: dict[int, dict]) -> list[int]:
        """A running run for each noderole: their ids, in the noderoles' order."""
        now = utcnow()
        if self.db.postgresql:  # one statement of arrays, not a placeholder per value (db.sql.among)
            ids = dict(s.execute(INSERT_RUNS, {
                "noderoles": [nr.id for nr in noderoles], "docs": [json.dumps(attrs[nr.id]) for nr in noderoles],
                "server": self.server_id, "now": now}).all())
            return [ids[nr.id] for nr in noderoles]
        return list(s.scalars(
            insert(Run.__table__).returning(Run.id, sort_by_parameter_order=True),
            [{"node_role_id": nr.id, "server_id": self.server_id, "state": "running", "attrs": attrs[nr.id],
              "log": "", "started_at": now} for nr in noderoles]))

    def _streamer(self, ctx: RunContext):
        def output(text: str) -> None:
            if text:
                self._output.put((ctx.run_id, text))
                self.wake()

        return output

    def _prepared(self, ctxs: list[RunContext]) -> list[RunContext]:
        """The contexts `prepare` readied (their wall gets what it returned); the others fail now."""
        if self.prepare is None:
            return ctxs
        ready = []
        for ctx in ctxs:
            try:
                prepared = self.prepare(ctx)
            except Exception as exc:  # the hook's message is the run's reason
                ctx.complete(RunResult(ok=False, log=f"!! {exc}\n"))
                continue
            if prepared:
                ctx.complete = _with_wall(ctx.complete, *prepared)
                ctx.output(prepared[1])
            ready.append(ctx)
        return ready

    def _execute_batch(self, *ctxs: RunContext) -> None:
        """One run of a batching jig for several noderoles; each still completes on its own."""
        ctxs = tuple(self._prepared(list(ctxs)))
        if not ctxs:
            return
        try:
            results = get_jig(ctxs[0].jig).run_batch(list(ctxs))
            if results is not None and len(results) != len(ctxs):
                raise RuntimeError(f"returned {len(results)} results for {len(ctxs)} noderoles")
        except Exception as exc:
            log.exception("jig %s crashed on noderoles %s", ctxs[0].jig, [c.noderole_id for c in ctxs])
            results = [RunResult(ok=False, log=f"jig {ctxs[0].jig} crashed: {type(exc).__name__}: {exc}\n")] * len(ctxs)
        for ctx, result in zip(ctxs, results or []):
            ctx.complete(result)

    def _completer(self, ctx: RunContext):
        fired = threading.Lock()

        def complete(result: RunResult) -> None:
            if fired.acquire(blocking=False):  # a jig that reports twice is reported once
                shutil.rmtree(ctx.workdir, ignore_errors=True)
                self._done.put((ctx.run_id, ctx.noderole_id, result))
                self.wake()

        return complete

    def _execute(self, ctx: RunContext) -> None:
        if not self._prepared([ctx]):
            return
        try:
            result = get_jig(ctx.jig).run(ctx)
        except Exception as exc:  # a jig crash is a failed run, with the reason in its log
            log.exception("jig %s crashed on noderole %s", ctx.jig, ctx.noderole_id)
            result = RunResult(ok=False, log=f"jig {ctx.jig} crashed: {type(exc).__name__}: {exc}\n")
        if result is not None:
            ctx.complete(result)

    # -- completing ------------------------------------------------------------------------------
    def _apply_output(self) -> None:
        """Append what running jigs printed to their runs' logs (one statement for all of them)."""
        chunks_by_run: dict[int, list[str]] = {}
        try:
            while True:
                run_id, text_ = self._output.get_nowait()
                chunks_by_run.setdefault(run_id, []).append(text_)
        except queue.Empty:
            pass
        if not chunks_by_run:
            return
        table = Run.__table__
        with self.db.session() as s:
            s.execute(update(table).where(table.c.id == bindparam("k"), table.c.state == "running")
                      .values(log=table.c.log + bindparam("chunk")),
                      [{"k": k, "chunk": "".join(v)} for k, v in chunks_by_run.items()])

    def _apply_completions(self, block: float = 0.0) -> int:
        items = []
        try:
            if block:
                items.append(self._done.get(timeout=block))
            while len(items) < 5000:
                items.append(self._done.get_nowait())
        except queue.Empty:
            pass
        if not items:
            return 0
        with self._flight_lock:
            self._in_flight -= len(items)
        now = utcnow()
        with self.db.session() as s:
            pg = self.db.postgresql
            live = set(s.scalars(select(Run.id).where(among(Run.id, [i[0] for i in items], pg),
                                                      Run.state == "running")))
            items = [i for i in items if i[0] in live]
            if not items:
                return 0
            nr_table, run_table = NodeRole.__table__, Run.__table__
            good = [nr_id for _run, nr_id, r in items if r.ok]
            bad = [nr_id for _run, nr_id, r in items if not r.ok]
            # What all rows share is one set-based UPDATE; only what differs per row (a non-empty
            # wall, a failure's status, a log) goes row by row. A noop run costs no per-row statement.
            for ids, state in ((good, State.ACTIVE.value), (bad, State.ERROR.value)):
                for part in chunks(ids):
                    values = dict(state=state, run_count=nr_table.c.run_count + 1, updated_at=now)
                    if state == State.ACTIVE.value:
                        values.update(wall={}, status="")
                    s.execute(update(nr_table).where(among(nr_table.c.id, part, pg)).values(**values))
            walls = [{"k": nr_id, "wall": r.wall} for _run, nr_id, r in items if r.ok and r.wall]
            if walls:
                s.execute(update(nr_table).where(nr_table.c.id == bindparam("k")).values(wall=bindparam("wall")), walls)
            # A failed run keeps the wall of the last good one, so children that want it still see it.
            statuses = [{"k": nr_id, "status": (r.log.strip().splitlines() or ["failed"])[-1][:500]}
                        for _run, nr_id, r in items if not r.ok]
            if statuses:
                s.execute(update(nr_table).where(nr_table.c.id == bindparam("k")).values(status=bindparam("status")),
                          statuses)
            by_outcome: dict[tuple[str, str], list[int]] = {}
            for run_id, _nr, r in items:
                by_outcome.setdefault(("succeeded" if r.ok else "failed", r.log), []).append(run_id)
            same = [(k, ids) for k, ids in by_outcome.items() if len(ids) > 1]
            for (state, log_text), ids in same:
                for part in chunks(ids):
                    s.execute(update(run_table).where(among(run_table.c.id, part, pg))
                              .values(state=state, log=log_text, finished_at=now))
            single = [{"k": ids[0], "state": state, "log": text} for (state, text), ids in by_outcome.items()
                      if len(ids) == 1]
            if single:
                s.execute(update(run_table).where(run_table.c.id == bindparam("k")).values(
                    state=bindparam("state"), log=bindparam("log"), finished_at=now), single)
            record(s, [
                {"object_type": "noderole", "object_id": nr_id, "action": "run", "from_state": "transition",
                 "to_state": "active" if r.ok else "error", "actor": self.actor, "message": f"run {run_id}", "at": now}
                for run_id, nr_id, r in items
            ])
            if good:
                graph.unblock_children(s, good, self.actor)
            if bad:
                graph.block_descendants(s, bad, self.actor, "an ancestor failed")
        return len(items)

    # -- jobs for discovery agents ----------------------------------------------------------------
    def _poll_agent_jobs(self) -> None:
        """Hand finished agent jobs back to the jigs waiting for them."""
        with self._waiters_lock:
            waiting = list(self._agent_waiters)
        if not waiting:
            return
        with self.db.session() as s:
            done = s.execute(select(AgentJob.id, AgentJob.exit_code, AgentJob.output)
                             .where(among(AgentJob.id, waiting, self.db.postgresql), AgentJob.state == "done")).all()
        for job_id, exit_code, output in done:
            with self._waiters_lock:
                on_done = self._agent_waiters.pop(job_id, None)
            if on_done is not None:
                try:
                    on_done(exit_code if exit_code is not None else -1, output or "")
                except Exception:
                    log.exception("handling the result of agent job %s failed", job_id)

    # -- liveness --------------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        with self.db.session() as s:
            s.execute(update(Server).where(Server.id == self.server_id).values(heartbeat_at=utcnow()))

    def reap_dead_servers(self, startup: bool = False) -> None:
        """Recover runs owned by servers that stopped beating (or, on this host, whose process is gone)."""
        host = socket.gethostname()
        stale_before = utcnow() - timedelta(seconds=DEAD_AFTER_SECONDS)
        dead: dict[int, str] = {}
        with self.db.session() as s:
            for server in s.scalars(select(Server).where(Server.stopped.is_(False), Server.id != self.server_id)):
                beat = server.heartbeat_at if server.heartbeat_at.tzinfo else server.heartbeat_at.replace(tzinfo=stale_before.tzinfo)
                if server.hostname == host and not pid_alive(server.pid):
                    dead[server.id] = f"server {server.id} (pid {server.pid}) is gone"
                elif beat < stale_before:
                    dead[server.id] = f"server {server.id} on {server.hostname} stopped beating"
        if dead:
            self._recover(dead)

    def _recover(self, servers: dict[int, str]) -> None:
        with self.db.session() as s:
            runs = s.execute(select(Run.id, Run.node_role_id, Run.server_id)
                             .where(Run.state == "running", Run.server_id.in_(list(servers)))).all()
            now = utcnow()
            if runs:
                s.execute(update(Run), [{"id": r, "state": "lost", "finished_at": now,
                                         "log": f"run lost: {servers[sid]}\n"} for r, _nr, sid in runs])
                in_transition = set(s.scalars(select(NodeRole.id).where(
                    NodeRole.id.in_([nr for _r, nr, _s in runs]), NodeRole.state == "transition")))
                graph.set_states(s, {State.TODO.value: [(nr, "transition") for _r, nr, _s in runs if nr in in_transition]},
                                 self.actor, "recover", "run lost with a dead server; back to todo: "
                                 + "; ".join(sorted(set(servers.values()))))
                # Jobs the agents have not picked up yet belong to runs that will be redone.
                s.execute(update(AgentJob).where(AgentJob.run_id.in_([r for r, _nr, _s in runs]),
                                                 AgentJob.state == "queued").values(state="cancelled"))
            s.execute(update(Server).where(Server.id.in_([i for i in servers if i != self.server_id]))
                      .values(stopped=True))
        if runs:
            log.warning("recovered %d runs from %s", len(runs), "; ".join(servers.values()))


def _with_wall(complete: Callable[[RunResult], None], extra: dict, note: str) -> Callable[[RunResult], None]:
    """`complete`, with `extra` merged over the wall of a successful result and `note` first in the log."""
    def completer(result: RunResult) -> None:
        wall = merge(merge({}, result.wall or {}), extra) if result.ok else result.wall
        complete(RunResult(ok=result.ok, wall=wall, log=note + (result.log or "")))

    return completer


def _jig_says(jig: str, flag: str) -> bool:
    """A class flag of the jig (`batch`, `wants_groups`); False for an unknown jig, which runs alone
    and fails with the registry's reason."""
    try:
        return bool(getattr(get_jig(jig), flag))
    except Exception:
        return False


def queue_job(session: Session, node_id: int, script: str, timeout: int, run_id: int | None,
              server_id: int | None) -> int:
    """Queue a script for the node's discovery agent (it asks for work with GET /agent/next)."""
    job = AgentJob(node_id=node_id, script=script, timeout=timeout, run_id=run_id, server_id=server_id,
                   state="queued", output="")
    session.add(job)
    session.flush()
    return job.id


class _AgentChannel(AgentChannel):
    """Queues a job for the node's agent; the annealer's poll delivers the result to `on_done`."""

    def __init__(self, annealer: Annealer, node_id: int, run_id: int):
        self.annealer, self.node_id, self.run_id = annealer, node_id, run_id

    def submit(self, script: str, timeout: int, on_done: Callable[[int, str], None]) -> None:
        with self.annealer.db.session() as s:
            job_id = queue_job(s, self.node_id, script, timeout, self.run_id, self.annealer.server_id)
        with self.annealer._waiters_lock:
            self.annealer._agent_waiters[job_id] = on_done
        self.annealer.wake()
