"""List endpoints at fleet scale: paging through GET /api/v2/nodes in-process (TestClient).

    python benchmarks/api_lists.py [--sizes 100 1000 10000] [--page 1000] [--postgres URL] [--json FILE]

At each size N, N nodes (each with a discovery inventory of a few kB, as discovered machines
have) are inserted, then every page of GET /nodes?limit=PAGE is read by following `next`:
- per page: wall-clock latency (median and slowest page, each page's best of 3 passes) and the
  size of the answer;
- peak memory: the most Python memory (tracemalloc) allocated while one page was being answered
  and decoded, in a second pass (tracing slows the requests; the latencies come from the first);
- for contrast, the whole list at once: the service's list of all N nodes encoded as one JSON
  body (the shape GET /nodes answered before it was paged), its time and peak memory.
The per-page figures should stay flat as N grows; the unpaged ones grow with N.
SQLite always (a file in a temporary directory); PostgreSQL too with --postgres.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from _postgres import append_json, fresh_postgres
from fastapi.testclient import TestClient
from sqlalchemy import insert
from sqlalchemy.engine import make_url

from crowbar.api.app import create_app
from crowbar.api.settings import AppSettings
from crowbar.db.models import Node, utcnow
from crowbar.db.session import Database
from crowbar.services import auth, bootstrap, nodes

INVENTORY = {
    "nics": [{"name": f"eth{i}", "mac": f"52:54:00:00:00:0{i}", "speed": 10000, "driver": "ixgbe",
              "bus": f"0000:0{i}:00.0"} for i in range(4)],
    "cpu": {"count": 64, "model": "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"},
    "memory": {"installed_bytes": 512 * 2**30},
    "disks": [{"name": f"nvme{i}n1", "size_bytes": 3840 * 10**9, "model": "SAMSUNG MZQL23T8HCLS"}
              for i in range(8)],
    "dmi": {"vendor": "Example", "product": "R650", "serial": "X" * 12},
}


REPEAT = 3


def add_nodes(db: Database, n: int) -> None:
    now = utcnow()
    with db.session() as s:
        for start in range(0, n, 5000):
            s.execute(insert(Node.__table__), [
                {"name": f"node{i:05d}.bench.example.com", "description": "", "admin": False, "alive": True,
                 "available": True, "bootenv": "local", "discovery": INVENTORY, "hints": {}, "created_at": now}
                for i in range(start, min(n, start + 5000))])


def pages(client: TestClient, size: int, traced: bool) -> list[dict]:
    """Every page of GET /nodes: its latency, bytes, items and (traced) peak Python memory."""
    out, url, params = [], "/api/v2/nodes", {"limit": size}
    while url:
        if traced:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        r = client.get(url, params=params)
        body = r.json()
        seconds = time.perf_counter() - started
        assert r.status_code == 200, r.text
        row = {"seconds": seconds, "bytes": len(r.content), "items": len(body["items"])}
        if traced:
            row["peak_bytes"] = tracemalloc.get_traced_memory()[1] - base
        out.append(row)
        url, params = body["next"], None
    return out


def unpaged(db: Database, traced: bool) -> dict:
    """The whole list as one JSON body, as GET /nodes answered before paging."""
    if traced:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    with db.session() as s:
        body = json.dumps(nodes.list_nodes(s)).encode()
    row = {"seconds": time.perf_counter() - started, "bytes": len(body)}
    if traced:
        row["peak_bytes"] = tracemalloc.get_traced_memory()[1] - base
    return row


def case(url: str, n: int, size: int) -> dict:
    db = Database(url)
    bootstrap.prepare(db)
    add_nodes(db, n)
    with tempfile.TemporaryDirectory() as tmp, db.session() as s:
        token = auth.ensure_admin_token(s, Path(tmp) / "admin.token")
    client = TestClient(create_app(AppSettings(db=db)), headers={"authorization": f"Bearer {token}"})
    client.get("/api/v2/nodes", params={"limit": 1})  # warm up: imports, connection, first query plans
    # The machine may be shared: each page's latency is the best of REPEAT passes.
    passes = [pages(client, size, traced=False) for _ in range(REPEAT)]
    timed = [dict(p, seconds=min(q[i]["seconds"] for q in passes)) for i, p in enumerate(passes[0])]
    whole = unpaged(db, traced=False)
    tracemalloc.start()
    try:
        traced = pages(client, size, traced=True)
        whole["peak_bytes"] = unpaged(db, traced=True)["peak_bytes"]
    finally:
        tracemalloc.stop()
    client.close()
    db.dispose()
    assert sum(p["items"] for p in timed) == n
    latencies = [p["seconds"] for p in timed]
    return {"backend": make_url(url).get_backend_name(), "n": n, "page": size, "pages": len(timed),
            "page_median_s": statistics.median(latencies), "page_max_s": max(latencies),
            "page_max_bytes": max(p["bytes"] for p in timed),
            "page_peak_bytes": max(p["peak_bytes"] for p in traced),
            "all_pages_s": sum(latencies),
            "unpaged_s": whole["seconds"], "unpaged_bytes": whole["bytes"], "unpaged_peak_bytes": whole["peak_bytes"]}


def mib(value: int) -> str:
    return f"{value / 2**20:.1f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--page", type=int, default=1000, help="limit of each page (at most 1000)")
    ap.add_argument("--postgres", help="SQLAlchemy URL of a PostgreSQL server to benchmark too")
    ap.add_argument("--json", type=Path, help="append the results as JSON lines to this file")
    args = ap.parse_args()
    results = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            results.append(case(f"sqlite:///{tmp}/bench.db", n, args.page))
        if args.postgres:
            url, drop = fresh_postgres(args.postgres)
            try:
                results.append(case(url, n, args.page))
            finally:
                drop()
        for r in results:
            if r["n"] == n:
                print(json.dumps(r), file=sys.stderr, flush=True)
    print(f"GET /api/v2/nodes, pages of {args.page}, in-process (TestClient); peak = Python memory (tracemalloc).\n")
    print("| backend | nodes | pages | page median | slowest page | largest page | page peak memory "
          "| all pages | unpaged: one body | unpaged peak memory |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['backend']} | {r['n']:,} | {r['pages']} | {r['page_median_s'] * 1000:.1f} ms "
              f"| {r['page_max_s'] * 1000:.1f} ms | {r['page_max_bytes'] / 1024:.0f} KiB | {mib(r['page_peak_bytes'])} "
              f"| {r['all_pages_s']:.2f} s | {r['unpaged_s']:.2f} s, {r['unpaged_bytes'] / 1024:.0f} KiB "
              f"| {mib(r['unpaged_peak_bytes'])} |")
    if args.json:
        append_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
