"""Discovery and agent-poll cost, in process: the real application (create_app) driven through
ASGI in this one process, with no HTTP server and no client library, so the CPU time measured is
the server's own work per request (routing, the edge, the unit of work, the service, the
database driver; SQLite is in-process, PostgreSQL's backend is not counted).

    python benchmarks/discovery.py [--nodes 1000] [--postgres URL] [--profile FILE] [--json FILE]

For each engine, one request at a time: N boot scripts for unknown MACs (a machine's first PXE
boot), N discoveries of new machines (the simulated fleet's inventory: a 2-socket rack server, two
NICs, two disks, a BMC; crowbar.lab.fleet.inventory), then N idle agent polls. Reported per request kind: CPU milliseconds per request (process time, all threads) and
wall p50/p99. With --profile, a cProfile of the discoveries (threadpool calls inlined, so that the
profile sees the route's work) is written to FILE.sqlite (and FILE.postgresql).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import sys
import tempfile
import time
from pathlib import Path

import anyio.to_thread

from _postgres import append_json, fresh_postgres
from crowbar.api.app import create_app
from crowbar.api.settings import AppSettings
from crowbar.db.session import Database
from crowbar.lab.fleet import _mac, inventory
from crowbar.provisioner.discovery import TokenBucket
from crowbar.services import bootstrap


async def _inline(func, *args, **_kw):
    return func(*args)


class Asgi:
    """One request at a time into the ASGI app: (status, body)."""

    def __init__(self, app):
        self.app = app

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        hdrs = [(b"host", b"127.0.0.1"), (b"content-length", str(len(body)).encode())]
        if body:
            hdrs.append((b"content-type", b"application/json"))
        hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "root_path": "", "headers": hdrs, "client": ("127.0.0.1", 40000),
                 "server": ("127.0.0.1", 8000), "state": {}}
        sent = False

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        out = {"status": None, "body": b""}

        async def send(message):
            if message["type"] == "http.response.start":
                out["status"] = message["status"]
            elif message["type"] == "http.response.body":
                out["body"] += message.get("body", b"")

        await self.app(scope, receive, send)
        return out["status"], out["body"]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else 0.0


async def measure(api: Asgi, requests: list[tuple[str, str, dict]]) -> dict:
    """Send each (method, path, headers) in turn, each to answer 200: CPU ms per request, wall p50/p99."""
    walls = []
    cpu0 = time.process_time()
    for method, path, headers in requests:
        t = time.perf_counter()
        status, answer = await api.request(method, path, headers=headers)
        walls.append(time.perf_counter() - t)
        if status != 200:
            raise SystemExit(f"{method} {path} answered {status}: {answer[:300]!r}")
    cpu = time.process_time() - cpu0
    return {"cpu_ms": round(cpu / len(requests) * 1000, 3), "p50_ms": round(percentile(walls, 50) * 1000, 2),
            "p99_ms": round(percentile(walls, 99) * 1000, 2)}


async def run(url: str, n: int, profile: Path | None) -> dict:
    db = Database(url)
    bootstrap.prepare(db)
    app = create_app(AppSettings(db=db, discovery_limit=TokenBucket(rate=None)))
    api = Asgi(app)
    await api.request("GET", "/api/v2/health")  # builds the middleware stack
    bodies = [json.dumps(inventory(i, [_mac(i, 0, 0x7E), _mac(i, 1, 0x7E)])).encode() for i in range(n)]
    result = {"nodes": n}
    # the PXE boot before the discovery: an unknown MAC's script
    result["boot"] = await measure(api, [("GET", f"/boot/{_mac(i, 0, 0x7E).replace(':', '-')}.ipxe", {})
                                         for i in range(n)])
    tokens = []
    profiler = cProfile.Profile() if profile else None
    original = anyio.to_thread.run_sync
    if profiler:
        anyio.to_thread.run_sync = _inline
    try:
        walls = []
        cpu0 = time.process_time()
        if profiler:
            profiler.enable()
        for body in bodies:
            t = time.perf_counter()
            status, answer = await api.request("POST", "/api/v2/discovery", body)
            walls.append(time.perf_counter() - t)
            if status != 201:
                raise SystemExit(f"discovery answered {status}: {answer[:300]!r}")
            tokens.append(json.loads(answer)["token"])
        if profiler:
            profiler.disable()
        cpu = time.process_time() - cpu0
    finally:
        anyio.to_thread.run_sync = original
    result["discovery"] = {"cpu_ms": round(cpu / n * 1000, 3), "p50_ms": round(percentile(walls, 50) * 1000, 2),
                           "p99_ms": round(percentile(walls, 99) * 1000, 2)}
    if profiler:
        profiler.dump_stats(str(profile))
    result["poll"] = await measure(api, [("GET", "/api/v2/agent/next", {"authorization": f"Bearer {token}"})
                                         for token in tokens])
    db.dispose()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--postgres", help="SQLAlchemy URL of a PostgreSQL server to measure too")
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--profile", type=Path, help="write a cProfile of the discoveries to FILE.<engine>")
    ap.add_argument("--json", type=Path, help="append results as JSON lines to this file")
    args = ap.parse_args()
    reports = []
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory(prefix="crowbar-disc-bench-") as tmp:
            prof = args.profile.with_suffix(".sqlite") if args.profile else None
            reports.append({"backend": "sqlite", **asyncio.run(run(f"sqlite:///{tmp}/crowbar.db", args.nodes, prof))})
            print(json.dumps(reports[-1]), flush=True)
    if args.postgres:
        url, drop = fresh_postgres(args.postgres, "crowbar_disc")
        try:
            prof = args.profile.with_suffix(".postgresql") if args.profile else None
            reports.append({"backend": "postgresql", **asyncio.run(run(url, args.nodes, prof))})
            print(json.dumps(reports[-1]), flush=True)
        finally:
            drop()
    if args.json:
        append_json(args.json, reports)


if __name__ == "__main__":
    sys.exit(main())
