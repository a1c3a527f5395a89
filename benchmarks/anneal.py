"""Annealer benchmark: N nodes x 5 roles (the test barclamp's graph, noop jig), SQLite and PostgreSQL.

    python benchmarks/anneal.py --nodes 100 1000 10000 [--postgres URL] [--workers 8] [--markdown]

Each node gets its own bench-admin, bench-server, bench-library, bench-client and bench-client-client
(a 4-cohort graph per node), plus the core crowbar-managed-node every node gets. Reported: setup time
(create nodes, bind, commit), anneal time, noderoles per second, the anneal's CPU seconds in this
process (all its threads; PostgreSQL's own are not counted) and per noderole, and the peak
resident memory of the process. Each case runs in a fresh subprocess, so that peak belongs to that case alone.
The anneal runs under the server's garbage-collection policy (crowbar/server/collector.py), as it
does in `crowbar server`; `--python-gc` leaves it to Python's own rule.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _postgres import append_json, fresh_postgres
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from crowbar.db.models import Node, NodeRole
from crowbar.db.session import Database
from crowbar.engine.annealer import Annealer
from crowbar.engine.graph import Binder
from crowbar.server.collector import Collector
from crowbar.services import bootstrap, catalog, deployments, lookup, nodes

HERE = Path(__file__).parent
ROLES = ["bench-admin", "bench-server", "bench-library", "bench-client", "bench-client-client"]


def setup(db: Database, n: int, commit: bool = True) -> None:
    """The bench barclamp, its deployment, `n` nodes each bound to ROLES; committed unless told."""
    with db.session() as s:
        catalog.import_barclamp(s, HERE / "barclamps" / "bench")
        deployments.create_deployment(s, "bench")
    batch = 500
    for start in range(0, n, batch):
        with db.session() as s:
            dep = lookup.deployment(s, "bench")
            binder = Binder(s)
            for i in range(start, min(n, start + batch)):
                node = nodes.create_node(s, f"node{i:05d}.bench.example.com", binder=binder)
                node_row = s.get(Node, node["id"])
                for role in ROLES:
                    binder.bind(dep, binder.role(role), node_row)
    if commit:
        with db.session() as s:
            deployments.commit(s, "bench")


def run_one(url: str, n: int, workers: int, collector: bool) -> dict:
    db = Database(url)
    bootstrap.prepare(db)
    policy = Collector() if collector else None  # the server's garbage-collection policy, as it runs there
    if policy:
        policy.start()
    t0 = time.perf_counter()
    setup(db, n)
    t1 = time.perf_counter()
    annealer = Annealer(db, workers=workers)
    c1 = time.process_time()
    annealer.run_until_idle(timeout=3600)
    t2 = time.perf_counter()
    c2 = time.process_time()
    if policy:
        policy.stop()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with db.session() as s:
        counts = dict(s.execute(select(NodeRole.state, func.count()).group_by(NodeRole.state)).all())
    annealer._pool.shutdown()
    db.dispose()
    total = sum(counts.values())
    assert counts.get("active") == total, f"not all active: {counts}"
    return {"backend": make_url(url).get_backend_name(), "nodes": n, "noderoles": total,
            "setup_s": round(t1 - t0, 2), "anneal_s": round(t2 - t1, 2),
            "noderoles_per_s": round(total / (t2 - t1)), "anneal_cpu_s": round(c2 - c1, 2),
            "anneal_cpu_ms_per_noderole": round((c2 - c1) / total * 1000, 3), "peak_rss_mb": round(peak_kb / 1024, 1),
            "collector": collector}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--postgres", help="SQLAlchemy URL of a PostgreSQL server to benchmark too")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--json", type=Path, help="append results as JSON lines to this file")
    ap.add_argument("--python-gc", action="store_true",
                    help="leave garbage collection to Python's own rule (default: the server's, crowbar.server.collector)")
    ap.add_argument("--one", nargs=2, metavar=("URL", "N"), help=argparse.SUPPRESS)  # a single case, in a child
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.workers, not args.python_gc)), flush=True)
        return
    results = []

    def case(url: str, n: int) -> None:
        out = subprocess.run([sys.executable, __file__, "--workers", str(args.workers), "--one", url, str(n)]
                             + (["--python-gc"] if args.python_gc else []),
                             check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)

    for n in args.nodes:
        with tempfile.TemporaryDirectory() as tmp:
            case(f"sqlite:///{tmp}/bench.db", n)
        if args.postgres:
            url, drop = fresh_postgres(args.postgres)
            try:
                case(url, n)
            finally:
                drop()
    if args.json:
        append_json(args.json, results, workers=args.workers)


if __name__ == "__main__":
    sys.exit(main())
