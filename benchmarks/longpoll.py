"""Long-poll benchmark: N idle agents holding `Prefer: wait=50` polls on a real `crowbar server`
(SQLite, and PostgreSQL with --postgres), driven from several load-generator processes
(crowbar.lab.pollers), with work queued for a sample of them meanwhile.

    python benchmarks/longpoll.py --agents 1000 10000 [--processes 4] [--wait 50] [--ramp 20]
                                  [--seconds 120] [--wake 50] [--postgres URL] [--no-sqlite]
                                  [--workers 8] [--json FILE] [--markdown]

Each case gets a fresh server: N machines are discovered first (crowbar.lab.fleet's discover
phase, plain polls), then every agent long-polls with its node token, its first polls spread over
--ramp seconds. Over the next --seconds: the latency of each poll beyond the hold the server chose
(its answer time less `Server-Timing`'s hold, plus its late: how much of the hold was past the
chosen end), p50/p95/p99, and how late the server was, polls per second, the server's CPU
seconds per minute and peak RSS; and for --wake agents, one `POST /nodes/{name}/allocate` each
(a reboot action for its agent), the time from that call to the agent's poll answering.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from _postgres import append_json, each_case

from crowbar.lab.fleet import LocalServer
from crowbar.lab.pollers import HoldOptions, discover, hold


def run_case(n: int, database: str | None, args) -> dict:
    say = lambda line: print(f"  {line}", file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="crowbar-longpoll-bench-") as tmp:
        server = LocalServer(Path(tmp), database=database, workers=args.workers).start()
        try:
            found, agents = discover(server.url, server.token, n, timeout=args.timeout, say=say,
                                     server=server.process())
            say(f"holding {n} agents' polls from {args.processes} processes")
            run = hold(server.url, server.token, agents, HoldOptions(
                processes=args.processes, wait=args.wait, ramp=args.ramp, seconds=args.seconds, wake=args.wake),
                server=server.process())
        finally:
            server.stop()
    return {"backend": "postgresql" if database else "sqlite", "load_average": [round(x, 2) for x in os.getloadavg()],
            "discover_s": found["phases"][0]["seconds"], **run.report()}


def markdown(reports: list[dict]) -> str:
    lines = ["| engine | agents | load avg (1 min) | polls | polls/s | beyond the hold p50 / p95 / p99 ms | "
             "server late p99 ms | wake p50 / p99 / max ms (woken) | server CPU s/min | peak RSS MB | "
             "generators' lag p99 ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in reports:
        b, w = r["beyond_hold_ms"], r["wake_ms"]
        lines.append(f"| {r['backend']} | {r['agents']:,} | {r['load_average'][0]} | {r['polls']:,} | "
                     f"{r['polls_per_s']} | {b['p50']} / {b['p95']} / {b['p99']} | {r['server_late_ms']['p99']} | "
                     f"{w['p50']} / {w['p99']} / {w['max']} ({r['woken']}/{r['wake_calls']}) | "
                     f"{r['server_cpu_s_per_min']} | {r['server_peak_rss_mb']} | {r['generator_lag_p99_ms']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, nargs="+", default=[1000])
    ap.add_argument("--processes", type=int, default=4, help="load-generator processes")
    ap.add_argument("--wait", type=int, default=50, help="the agents' Prefer: wait= (the real agent's 50)")
    ap.add_argument("--ramp", type=float, default=20.0, help="seconds over which the agents' first polls go")
    ap.add_argument("--seconds", type=float, default=120.0, help="the measured window, after the ramp")
    ap.add_argument("--wake", type=int, default=50, help="agents given work (a reboot) during the window")
    ap.add_argument("--postgres", help="SQLAlchemy URL of a PostgreSQL server to benchmark too")
    ap.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds the discovery may take")
    ap.add_argument("--json", type=Path, help="append results as JSON lines to this file")
    ap.add_argument("--markdown", action="store_true", help="print a table for docs/benchmarks.md at the end")
    args = ap.parse_args()
    reports = each_case(args.agents, args.postgres, args.no_sqlite, "crowbar_longpoll", "agents",
                        lambda n, database: run_case(n, database, args))
    if args.json:
        append_json(args.json, reports, processes=args.processes)
    if args.markdown:
        print(markdown(reports))


if __name__ == "__main__":
    sys.exit(main())
