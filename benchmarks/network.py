"""Networking benchmark: IP allocation through the service, conduits and interface plans.

    python benchmarks/network.py [--sizes 100 1000 10000] [--postgres URL] [--json FILE]

Cases, each at every size N:
- allocate, one transaction each: N nodes, `network.allocate` in its own transaction per node
  (what N separate API calls cost, minus HTTP), from a /16 host range;
- allocate, bulk: `network.allocate_many` for the N nodes in one transaction;
- conduits (pure): order the NICs and resolve every conduit of the template for N nodes;
- plans (pure): `plan_interfaces` + the networkd renderer for N nodes (2 NICs, 3 networks);
- plans (service): `network.node_plans(..., "networkd")` for N nodes read from the database.
SQLite always (a file in a temporary directory); PostgreSQL too when --postgres names a server
(a throwaway database is created and dropped). Prints a markdown table; the time per item shows
whether growth is linear.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

from _postgres import append_json, fresh_postgres
from sqlalchemy import insert, text
from sqlalchemy.engine import make_url

from crowbar.db.models import Node, utcnow
from crowbar.db.session import Database
from crowbar.network.conduits import (
    bus_order_for,
    order_nics,
    resolve_conduit,
    select_conduit_entry,
)
from crowbar.network.model import default_template, export_template, load_template
from crowbar.network.plan import plan_interfaces
from crowbar.network.render import render_networkd
from crowbar.services import bootstrap, network

NICS = [{"name": "eth0", "mac": "52:54:00:00:00:01", "speed": 1000, "driver": "e1000e", "bus": "0000:01:00.0"},
        {"name": "eth1", "mac": "52:54:00:00:00:02", "speed": 1000, "driver": "e1000e", "bus": "0000:01:00.1"}]
BENCH_NETWORK = {"conduit": "intf1", "vlan": 900, "use_vlan": True, "subnet": "10.200.0.0/16",
                 "ranges": {"host": {"start": "10.200.0.10", "end": "10.200.255.250"}}}


def bench_template() -> dict:
    """The default template with admin, storage and public widened to /16: room for 10,000 nodes."""
    data = export_template(default_template())
    data["networks"] = {name: body for name, body in copy.deepcopy(data["networks"]).items()
                        if name in ("admin", "storage", "public")}
    for name, second in (("admin", 124), ("storage", 125), ("public", 126)):
        body = data["networks"][name]
        body.update(subnet=f"10.{second}.0.0", netmask="255.255.0.0")
        if "router" in body:
            body["router"] = f"10.{second}.0.1"
        body["ranges"] = {"host": {"start": f"10.{second}.1.0", "end": f"10.{second}.255.250"}}
    return data


def add_nodes(db: Database, n: int, prefix: str) -> list[str]:
    names = [f"{prefix}{i:05d}.bench.example.com" for i in range(n)]
    now = utcnow()
    with db.session() as s:
        for start in range(0, n, 5000):
            s.execute(insert(Node.__table__), [
                {"name": name, "description": "", "admin": False, "alive": True, "available": True,
                 "bootenv": "local", "discovery": {"nics": NICS}, "hints": {}, "created_at": now}
                for name in names[start:start + 5000]])
    return names


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is the
    steadier measure of the work done here (SQLite runs in this process; PostgreSQL does not)."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def row(case: str, backend: str, n: int, fn) -> dict:
    wall, cpu = timed(fn)
    return {"case": case, "backend": backend, "n": n, "seconds": wall, "cpu_seconds": cpu}


def db_cases(url: str, n: int) -> list[dict]:
    db = Database(url)
    bootstrap.prepare(db)
    backend = make_url(url).get_backend_name()
    with db.session() as s:
        network.import_template(s, bench_template())
        network.create_network(s, "bench", BENCH_NETWORK)
    rows = []

    singles = add_nodes(db, n, "single")

    def one_by_one():
        for name in singles:
            with db.session() as s:
                network.allocate(s, "bench", name)

    rows.append(row("allocate, one transaction each", backend, n, one_by_one))

    bulk = add_nodes(db, n, "bulk")

    def all_at_once():
        with db.session() as s:
            network.allocate_many(s, "bench", bulk)

    rows.append(row("allocate, bulk (one transaction)", backend, n, all_at_once))
    with db.session() as s:
        count = s.execute(text("SELECT count(*), count(DISTINCT address) FROM network_allocations")).one()
    assert count[0] == count[1] == 2 * n, count

    for net in ("admin", "storage", "public"):
        with db.session() as s:
            network.allocate_many(s, net, bulk)

    def plans():
        with db.session() as s:
            out = network.node_plans(s, bulk, "networkd")
        assert len(out) == n

    rows.append(row("plans via the service (networkd)", backend, n, plans))
    db.dispose()
    return rows


def pure_cases(n: int) -> list[dict]:
    template = load_template(bench_template())
    nodes = [(f"node{i:05d}", [dict(nic, mac=f"52:54:00:{i >> 8 & 255:02x}:{i & 255:02x}:{j:02x}")
                               for j, nic in enumerate(NICS)],
              {"admin": f"10.124.{1 + i // 250}.{i % 250}", "storage": f"10.125.{1 + i // 250}.{i % 250}",
               "public": f"10.126.{1 + i // 250}.{i % 250}"}) for i in range(n)]

    def conduits():
        for _name, nics, _addresses in nodes:
            ordered = order_nics(nics, bus_order_for(template, None))
            entry = select_conduit_entry(template, len(ordered))
            for conduit, refs in entry.conduits.items():
                resolve_conduit(conduit, refs, ordered)

    def plans():
        for name, nics, addresses in nodes:
            render_networkd(plan_interfaces(name, nics, addresses, template))

    return [row("conduits resolved (pure)", "-", n, conduits),
            row("plans + networkd render (pure)", "-", n, plans)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--postgres", help="SQLAlchemy URL of a PostgreSQL server to benchmark too")
    ap.add_argument("--json", type=Path, help="append the results as JSON lines to this file")
    args = ap.parse_args()
    results: list[dict] = []
    for n in args.sizes:
        results += pure_cases(n)
        with tempfile.TemporaryDirectory() as tmp:
            results += db_cases(f"sqlite:///{tmp}/bench.db", n)
        if args.postgres:
            url, drop = fresh_postgres(args.postgres)
            try:
                results += db_cases(url, n)
            finally:
                drop()
        for row in results:
            if row["n"] == n:
                print(json.dumps(row), file=sys.stderr, flush=True)
    order = list(dict.fromkeys((r["case"], r["backend"]) for r in results))
    sizes = args.sizes
    print("Wall-clock seconds (CPU seconds of the benchmark process in parentheses).\n")
    print("| case | backend | " + " | ".join(f"N={n:,}" for n in sizes) + " | per item at the largest N |")
    print("|---|---|" + "---|" * len(sizes) + "---|")
    for case, backend in order:
        cells = {r["n"]: r for r in results if (r["case"], r["backend"]) == (case, backend)}
        per = cells[sizes[-1]]["seconds"] / sizes[-1] * 1e6
        print(f"| {case} | {backend} | "
              + " | ".join(f"{cells[n]['seconds']:.3f} ({cells[n]['cpu_seconds']:.3f})" for n in sizes)
              + f" | {per:.0f} µs |")
    if args.json:
        append_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
