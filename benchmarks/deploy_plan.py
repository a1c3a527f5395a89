"""Deploy planning benchmark: the server's side of `crowbar nodes deploy` for N allocated nodes,
in-process, on SQLite and PostgreSQL.

    python benchmarks/deploy_plan.py --nodes 1000 10000 [--postgres URL] [--batch 250] [--json FILE]

Each node is discovered with the fleet simulator's inventory (crowbar.lab.fleet: two NICs, two
disks, a BMC) on an admin network made a /16, allocated (an admin address each), then deployed in
bulk calls of `--batch` nodes, one transaction each, as `POST /nodes/deploy` does: each node's
lifecycle steps, its install job, its cloud-init seed with its netplan, the OS rules' choice.
Reported: seconds and CPU seconds of the deploy calls, milliseconds of CPU per node, and the
setup's seconds (discover, allocate) for scale. The image store holds a stand-in image (deploy
reads its manifest only).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _postgres import append_json, each_case

from crowbar.db.session import Database
from crowbar.lab.fleet import _mac, fake_image_store, inventory
from crowbar.services import allocation, bootstrap, install, provisioning
from crowbar.services.network.changes import update_network

ADMIN_16 = {"subnet": "10.128.0.0/16", "router": "10.128.0.1",
            "ranges": {"admin": {"start": "10.128.0.10", "end": "10.128.0.11"},
                       "dhcp": {"start": "10.128.0.21", "end": "10.128.0.200"},
                       "switch": {"start": "10.128.0.241", "end": "10.128.0.250"},
                       "host": {"start": "10.128.1.1", "end": "10.128.255.250"}}}


def run_case(n: int, database: str | None, batch: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="crowbar-deploy-plan-") as tmp:
        root = Path(tmp)
        db = Database(database or f"sqlite:///{root}/bench.db")
        bootstrap.prepare(db)
        ctx = install.Context(images=fake_image_store(root / "os-images"), public_key="ssh-ed25519 AAAAbench bench")
        with db.session() as s:
            update_network(s, "admin", ADMIN_16, force=True)
        t0 = time.perf_counter()
        names: list[str] = []
        for start in range(0, n, batch):
            with db.session() as s:
                names += [provisioning.discover(s, inventory(i, [_mac(i, 0), _mac(i, 1)]))["node"]
                          for i in range(start, min(n, start + batch))]
        t1 = time.perf_counter()
        for start in range(0, n, batch):
            with db.session() as s:
                allocation.allocate_many(s, names[start:start + batch])
        t2, c2 = time.perf_counter(), time.process_time()
        for start in range(0, n, batch):
            with db.session() as s:
                done = install.deploy(s, names[start:start + batch], None, ctx)
                assert all(node["state"] == "hardware-installed" for node in done), done[0]["state"]
        t3, c3 = time.perf_counter(), time.process_time()
        db.dispose()
    return {"backend": "postgresql" if database else "sqlite", "nodes": n, "batch": batch,
            "discover_s": round(t1 - t0, 2), "allocate_s": round(t2 - t1, 2),
            "deploy_s": round(t3 - t2, 2), "deploy_cpu_s": round(c3 - c2, 2),
            "deploy_cpu_ms_per_node": round((c3 - c2) / n * 1000, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--postgres", help="SQLAlchemy URL of a PostgreSQL server to benchmark too")
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--batch", type=int, default=250, help="nodes per deploy call (default 250, as the fleet's)")
    ap.add_argument("--json", type=Path, help="append results as JSON lines to this file")
    args = ap.parse_args()
    reports = each_case(args.nodes, args.postgres, args.no_sqlite, "crowbar_deploy_plan", "nodes deployed",
                        lambda n, database: run_case(n, database, args.batch))
    if args.json:
        append_json(args.json, reports)
    print(json.dumps(reports), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
