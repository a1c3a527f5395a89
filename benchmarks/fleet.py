"""Fleet benchmark: a real `crowbar server` (SQLite, and PostgreSQL with --postgres) driven by a
simulated fleet (crowbar.lab.fleet: asyncio machines speaking the discovery agent's protocol)
through discover, enroll (fake power), allocate, deploy to ready, and a deployment of noop roles
on every node annealed to active.

    python benchmarks/fleet.py --nodes 100 1000 [--postgres URL [--servers K]] [--concurrency 64]
                               [--install-delay 5] [--workers 8] [--long-poll 50] [--json FILE] [--markdown]

Each case gets a fresh server (and a fresh PostgreSQL database). Reported per phase: seconds,
nodes/s, requests, latency p50/p95/p99 by route, server CPU seconds and peak RSS (the server is our
child process), database size (SQLite: the file and its WAL; PostgreSQL: pg_database_size).
With --servers K (PostgreSQL), K servers share the database, machine i talks to server i mod K,
and the server CPU is theirs summed, the peak RSS the highest of theirs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _postgres import append_json, each_case
from sqlalchemy import create_engine, text

from crowbar.lab.fleet import DELIVERY, LocalServer, Options, ServerGroup, simulate


def pg_size(url: str):
    engine = create_engine(url, pool_size=1)

    def size() -> int:
        with engine.connect() as c:
            return int(c.execute(text("SELECT pg_database_size(current_database())")).scalar())

    return size, engine.dispose


def run_case(n: int, database: str | None, args) -> dict:
    count = args.servers if database else 1  # several servers share one PostgreSQL, never one SQLite file
    with tempfile.TemporaryDirectory(prefix="crowbar-fleet-bench-") as tmp:
        root = Path(tmp)
        servers = [LocalServer(root / f"s{i}" if count > 1 else root, database=database, workers=args.workers)
                   for i in range(count)]
        size, dispose = pg_size(database) if database else (servers[0].sqlite_size, lambda: None)
        options = Options(nodes=n, concurrency=args.concurrency, install_delay=args.install_delay,
                          state_dir=str(root / "power"), timeout=args.timeout,
                          allocate_on_deploy=args.allocate_on_deploy, idle_seconds=args.idle,
                          phases=tuple(args.phases.split(",")), long_poll=args.long_poll,
                          batch=args.batch, agent_urls=tuple(s.url for s in servers))
        try:
            for server in servers:
                server.start()
            group = servers[0].process() if count == 1 else ServerGroup([s.process() for s in servers])
            report = simulate(servers[0].url, servers[0].token, options, server=group, db_size=size,
                              say=lambda line: print(f"  {line}", file=sys.stderr, flush=True))
        finally:
            for server in servers:
                server.stop()
            dispose()
    report["backend"] = "postgresql" if database else "sqlite"
    report["servers"] = count
    report["workers"] = args.workers
    report["allocate_on_deploy"] = args.allocate_on_deploy
    report["long_poll"] = args.long_poll
    report["batch"] = args.batch
    return report


def markdown(reports: list[dict]) -> str:
    lines = ["| engine | nodes | phase | s | nodes/s | requests | hottest route p50/p95/p99 ms | agent poll p50/p99 ms | "
             "work delivery p50/p99 ms | server CPU s | peak RSS MB | DB MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        servers = f" x{r['servers']}" if r.get("servers", 1) > 1 else ""
        for p in r["phases"]:
            routes = {k: v for k, v in p["routes"].items() if k != DELIVERY}
            hot = max(routes.items(), key=lambda kv: kv[1]["count"]) if routes else None
            poll = routes.get("GET /agent/next")
            work = p["routes"].get(DELIVERY)
            lines.append(
                f"| {r['backend']}{servers} | {r['nodes']:,} | {p['phase']} | {p['seconds']} | {p['nodes_per_s']} | "
                f"{p['requests']:,} | " + (f"{hot[0]} {hot[1]['p50_ms']}/{hot[1]['p95_ms']}/{hot[1]['p99_ms']}" if hot else "")
                + " | " + (f"{poll['p50_ms']}/{poll['p99_ms']}" if poll else "-")
                + " | " + (f"{work['p50_ms']}/{work['p99_ms']}" if work else "-")
                + f" | {p.get('server_cpu_s', '-')} | {p.get('server_peak_rss_mb', '-')} | {p.get('db_mb', '-')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--postgres", help="SQLAlchemy URL of a PostgreSQL server to benchmark too")
    ap.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--install-delay", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--allocate-on-deploy", action="store_true", help="allocate in the deploy calls (one phase)")
    ap.add_argument("--phases", default="discover,enroll,allocate,deploy,anneal",
                    help="comma-separated; `idle` (after discover) lets every agent poll for --idle seconds")
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--long-poll", type=int, default=50,
                    help="the agents' Prefer: wait= seconds, as the real agent's (0: plain polls)")
    ap.add_argument("--batch", type=int, default=10_000,
                    help="nodes per bulk call of the operator (enroll, allocate, deploy); the CLI sends all at once")
    ap.add_argument("--servers", type=int, default=1,
                    help="server processes on the PostgreSQL database, the machines spread over them (the "
                         "operator's calls go to the first; SQLite always has one)")
    ap.add_argument("--json", type=Path, help="append results as JSON lines to this file")
    ap.add_argument("--markdown", action="store_true", help="print a table for docs/benchmarks.md at the end")
    args = ap.parse_args()
    if not 1 <= args.batch <= 10_000:
        ap.error(f"--batch {args.batch}: expected 1 to 10000 nodes a call")
    reports = each_case(args.nodes, args.postgres, args.no_sqlite, "crowbar_fleet", "machines",
                        lambda n, database: run_case(n, database, args))
    if args.json:
        append_json(args.json, reports, concurrency=args.concurrency)
    if args.markdown:
        print(markdown(reports))


if __name__ == "__main__":
    sys.exit(main())
