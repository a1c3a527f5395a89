"""Several servers on one PostgreSQL: the anneal of N nodes x 6 roles (benchmarks/anneal.py's
graph, noop jig) by 1, 2, 4... real `crowbar server` processes sharing the database.

    python benchmarks/servers.py --postgres URL [--nodes 10000] [--servers 1 2 4] [--workers 8]
                                 [--repeat 1] [--code LABEL=TREE ...] [--json FILE] [--markdown]

Each case gets a fresh database, a copy of one made once per size (so every round starts from the
same rows and statistics): the nodes are created and bound in this process (not timed), then the
servers start (each on its own port and data directory), the deployment is committed
through the first one, and the anneal is timed from that call until every noderole is active.
Every server claims work with FOR UPDATE SKIP LOCKED (crowbar/engine/annealer.py), so they share
the anneal without any of them handing it out. Reported per case: the anneal's seconds and
noderoles per second, the speed-up over one server, each server's CPU seconds and share of the
runs, PostgreSQL's CPU seconds (its backends: the children of the cluster's postmaster, found
through --pg-data, or every `postgres` process of this machine), how busy the machine's cores
were (/proc/stat: the limit is there when they are all busy), the database's commits per second,
and how many of its backends waited for a lock (pg_stat_activity, sampled every 0.2 s).

`--code LABEL=TREE` (given twice or more) compares source trees (a `git worktree` each): every
case runs once per tree, its servers on that tree (PYTHONPATH), the trees' order reversed every
other round, so that the machine's drift falls on all of them alike. The database is set up by
this script's own tree: the trees must share its schema (no migration between them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from _postgres import append_json, fresh_postgres
from anneal import setup
from sqlalchemy import func, select, text

from crowbar.db.models import NodeRole, Run
from crowbar.db.session import Database
from crowbar.engine.states import State
from crowbar.lab.fleet import LocalServer, ServerProcess
from crowbar.services import bootstrap

TICKS = os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) seconds of every core since boot (/proc/stat's first line)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / TICKS, sum(fields) / TICKS


def postgres_pids(pg_data: Path | None) -> list[int]:
    """The cluster's postmaster and its children (PostgreSQL's own processes and backends)."""
    pids = []
    postmaster = int(Path(pg_data, "postmaster.pid").read_text().split()[0]) if pg_data else None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if postmaster is None and comm.startswith("postgres") or int(entry.name) == postmaster or ppid == postmaster:
            pids.append(int(entry.name))
    return pids


NOT_ACTIVE = [state.value for state in State if state is not State.ACTIVE]
LOCK_WAITS = ("SELECT wait_event, left(regexp_replace(query, '\\s+', ' ', 'g'), 70) FROM pg_stat_activity "
              "WHERE datname = current_database() AND wait_event_type = 'Lock'")


def _commits(db: Database) -> int:
    """Transactions committed in this database so far (pg_stat_database; its counters lag by up
    to PostgreSQL's stats interval, small against an anneal of many seconds)."""
    with db.read_session() as s:
        return int(s.scalar(text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")))


def cpu_of(pids: list[int]) -> float:
    return sum(ServerProcess(pid).cpu_seconds() for pid in pids)


def prepared(url: str, n: int) -> float:
    """The database `url` with the bench deployment on n nodes, proposed: its seconds."""
    db = Database(url)
    bootstrap.prepare(db)
    t = time.perf_counter()
    setup(db, n, commit=False)
    setup_s = time.perf_counter() - t
    with db.session() as s:
        s.execute(text("ANALYZE"))
    db.dispose()
    return setup_s


def run_case(url: str, n: int, count: int, workers: int, pg_data: Path | None, setup_s: float,
             tree: str | None = None) -> dict:
    db = Database(url)
    env = {"PYTHONPATH": tree} if tree else None  # the servers' code (--code), else this one's
    with tempfile.TemporaryDirectory(prefix="crowbar-servers-bench-") as tmp:
        servers = [LocalServer(Path(tmp) / f"s{i}", database=url, workers=workers, env=env) for i in range(count)]
        try:
            for server in servers:
                server.start()
            procs = [server.process() for server in servers]
            token = servers[0].token
            with db.session() as s:
                total = s.scalar(select(func.count()).select_from(NodeRole))
            pg = postgres_pids(pg_data)
            cpu0, pg0, (busy0, all0) = [p.cpu_seconds() for p in procs], cpu_of(pg), machine_cpu()
            commits0 = _commits(db)
            t0 = time.perf_counter()
            r = httpx.post(f"{servers[0].url}/api/v2/deployments/bench/commit",
                           headers={"authorization": f"Bearer {token}"}, timeout=600)
            r.raise_for_status()
            waiting = []  # backends waiting for a lock, sampled every 0.2 s
            waited_in: Counter[str] = Counter()  # the lock and statement each waited in, by samples
            while True:
                with db.read_session() as s:
                    # Done when no noderole is left in another state: the first one found answers,
                    # through the state index (a count of the active ones read 60,000 index
                    # entries five times a second, PostgreSQL CPU the servers would have had).
                    left = s.scalar(select(NodeRole.id).where(NodeRole.state.in_(NOT_ACTIVE)).limit(1))
                    waiters = s.execute(text(LOCK_WAITS)).all()
                    waiting.append(len(waiters))
                    waited_in.update(f"{event}: {query}" for event, query in waiters)
                if left is None:
                    break
                time.sleep(0.2)
            anneal_s = time.perf_counter() - t0
            commits = _commits(db) - commits0
            cpu1, pg1, (busy1, all1) = [p.cpu_seconds() for p in procs], cpu_of(pg), machine_cpu()
            rss = [p.peak_rss_mb() for p in procs]
        finally:
            for server in servers:
                server.stop()
    with db.read_session() as s:
        runs = dict(s.execute(select(Run.server_id, func.count()).group_by(Run.server_id)).all())
    db.dispose()
    return {"nodes": n, "noderoles": total, "servers": count, "workers": workers, "setup_s": round(setup_s, 1),
            "anneal_s": round(anneal_s, 2), "noderoles_per_s": round(total / anneal_s),
            "server_cpu_s": [round(b - a, 1) for a, b in zip(cpu0, cpu1)],
            "postgres_cpu_s": round(pg1 - pg0, 1),
            "machine_busy_pct": round(100 * (busy1 - busy0) / max(1e-9, all1 - all0), 1),
            "commits_per_s": round(commits / anneal_s), "lock_waiters_max": max(waiting),
            "lock_waiters_mean": round(sum(waiting) / len(waiting), 2), "lock_waits": dict(waited_in.most_common(5)),
            "runs_per_server": sorted(runs.values(), reverse=True), "server_peak_rss_mb": rss,
            "cores": os.cpu_count()}


def markdown(rows: list[dict]) -> str:
    ones: dict[tuple, list[float]] = {}
    for r in rows:
        if r["servers"] == 1:
            ones.setdefault((r.get("code"), r["nodes"]), []).append(r["anneal_s"])
    one = {k: sum(v) / len(v) for k, v in ones.items()}  # the mean of the runs of one server
    lines = ["| code | servers | nodes | noderoles | anneal s | noderoles/s | vs 1 server (mean) | servers' CPU s | "
             "PostgreSQL CPU s | cores busy | commits/s | lock waiters max / mean | runs per server |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = one.get((r.get("code"), r["nodes"]))
        speedup = f"{base / r['anneal_s']:.2f}x" if base else "-"
        lines.append(f"| {r.get('code') or '-'} | {r['servers']} | {r['nodes']:,} | {r['noderoles']:,} | {r['anneal_s']} | "
                     f"{r['noderoles_per_s']:,} | {speedup} | "
                     f"{' + '.join(str(c) for c in r['server_cpu_s'])} | {r['postgres_cpu_s']} | "
                     f"{r['machine_busy_pct']}% of {r['cores']} | {r.get('commits_per_s', '-')} | "
                     f"{r.get('lock_waiters_max', '-')} / {r.get('lock_waiters_mean', '-')} | "
                     f"{' / '.join(str(x) for x in r['runs_per_server'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postgres", required=True, help="SQLAlchemy URL of the PostgreSQL server")
    ap.add_argument("--pg-data", type=Path, help="the cluster's data directory (its postmaster.pid), "
                                                  "to count its CPU alone")
    ap.add_argument("--nodes", type=int, nargs="+", default=[10000])
    ap.add_argument("--servers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--workers", type=int, default=8, help="each server's annealer workers")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of every case, alternating")
    ap.add_argument("--code", action="append", metavar="LABEL=TREE",
                    help="run every case with its servers on this source tree, and on each other one named (see above)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    codes = [tuple(c.split("=", 1)) for c in args.code or []] or [(None, None)]
    if any(len(c) != 2 or not Path(c[1], "crowbar").is_dir() for c in codes if c[0] is not None):
        sys.exit("--code wants LABEL=TREE, TREE a source tree with crowbar/ in it")
    rows, templates, setup_s, drops = [], {}, {}, []  # per size: the template's URL, its setup seconds
    try:
        for n in args.nodes:
            print(f"{n} nodes: setting up the template database", file=sys.stderr, flush=True)
            templates[n], drop = fresh_postgres(args.postgres, "crowbar_servers_template")
            drops.append(drop)
            setup_s[n] = prepared(templates[n], n)
        for round_ in range(args.repeat):
            for n in args.nodes:
                for label, tree in codes if round_ % 2 == 0 else codes[::-1]:
                    for count in args.servers:
                        url, drop = fresh_postgres(args.postgres, "crowbar_servers", template=templates[n])
                        try:
                            print(f"{n} nodes, {count} server(s){f', code {label}' if label else ''}:",
                                  file=sys.stderr, flush=True)
                            rows.append(run_case(url, n, count, args.workers, args.pg_data, setup_s[n], tree)
                                        | ({"code": label} if label else {}))
                        finally:
                            drop()
                        print(json.dumps(rows[-1]), flush=True)
    finally:
        for drop in drops:
            drop()
    if args.json:
        append_json(args.json, rows)
    if args.markdown:
        print(markdown(rows))


if __name__ == "__main__":
    sys.exit(main())
