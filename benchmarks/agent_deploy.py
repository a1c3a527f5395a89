"""The agent's side of an OS deployment, in process: what each request an installing machine makes
costs the server. The real application (create_app) is driven through ASGI in this one process
(benchmarks/discovery.py's Asgi: no HTTP server, no client library), one request at a time, so the
CPU time measured is the server's own work (routing, the edge, the unit of work, the services, the
driver; SQLite is in-process, PostgreSQL's backend is not counted).

    python benchmarks/agent_deploy.py [--nodes 100 1000 10000] [--postgres URL] [--profile FILE] [--json FILE]

Set-up (not measured): an admin network made a /16, N machines discovered with the fleet's
inventory (crowbar.lab.fleet), then allocated and deployed in bulk (the services, calls of 250)
onto a stand-in image. Measured, each
step for every node before the next step (as a fleet installing at once does it): the poll that
takes the install job, the installer's two progress posts, the job's result, the poll that takes
the reboot, the boot script of the installed disk, and the installed system's two calls home
(booted, ready). Reported per step: CPU milliseconds per request, wall p50/p99, and the SQL
statements it sent. With --profile, a cProfile of all the measured steps (threadpool calls
inlined) is written to FILE.<engine>.<nodes>.
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
from sqlalchemy import event, select

from _postgres import append_json, each_case
from discovery import Asgi, _inline, percentile
from crowbar.api.app import create_app
from crowbar.api.settings import AppSettings
from crowbar.db.models import Node
from crowbar.db.session import Database
from crowbar.lab.fleet import HOST_KEY, _mac, fake_image_store, inventory
from crowbar.provisioner.discovery import TokenBucket
from crowbar.services import allocation, bootstrap, install, provisioning
from crowbar.services.network.changes import update_network
from deploy_plan import ADMIN_16

BATCH = 250


async def step(api: Asgi, statements: list[int], name: str, requests: list[tuple[str, str, dict, bytes]],
               check) -> tuple[dict, list]:
    """Send each (method, path, headers, body); `check(status, answer)` must hold for each."""
    walls, answers = [], []
    n0 = statements[0]
    cpu0 = time.process_time()
    for method, path, headers, body in requests:
        t = time.perf_counter()
        status, answer = await api.request(method, path, body, headers=headers)
        walls.append(time.perf_counter() - t)
        if not check(status, answer):
            raise SystemExit(f"{name}: {method} {path} answered {status}: {answer[:300]!r}")
        answers.append(answer)
    cpu = time.process_time() - cpu0
    n = len(requests)
    return ({"cpu_ms": round(cpu / n * 1000, 3), "p50_ms": round(percentile(walls, 50) * 1000, 2),
             "p99_ms": round(percentile(walls, 99) * 1000, 2),
             "statements": round((statements[0] - n0) / n, 1)}, answers)


async def run(url: str, n: int, profile: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="crowbar-agent-deploy-") as tmp:
        db = Database(url)
        bootstrap.prepare(db)
        images = fake_image_store(Path(tmp) / "os-images")
        app = create_app(AppSettings(db=db, discovery_limit=TokenBucket(rate=None), os_images=images,
                                     ssh_public_key="ssh-ed25519 AAAAbench bench"))
        api = Asgi(app)
        await api.request("GET", "/api/v2/health")  # builds the middleware stack
        ctx = install.Context(images=images, public_key="ssh-ed25519 AAAAbench bench")
        with db.session() as s:
            update_network(s, "admin", ADMIN_16, force=True)
        names, tokens = [], []
        for start in range(0, n, BATCH):
            with db.session() as s:
                for i in range(start, min(n, start + BATCH)):
                    found = provisioning.discover(s, inventory(i, [_mac(i, 0), _mac(i, 1)]))
                    names.append(found["node"])
                    tokens.append(found["token"])
        for start in range(0, n, BATCH):
            with db.session() as s:
                allocation.allocate_many(s, names[start:start + BATCH])
                install.deploy(s, names[start:start + BATCH], None, ctx)
        statements = [0]

        def count(*_args):
            statements[0] += 1

        event.listen(db.engine, "before_cursor_execute", count)
        auth = [{"authorization": f"Bearer {t}"} for t in tokens]
        ok = lambda status, _answer: status == 200  # noqa: E731
        result = {"nodes": n}
        profiler = cProfile.Profile() if profile else None
        original = anyio.to_thread.run_sync
        if profiler:
            anyio.to_thread.run_sync = _inline
            profiler.enable()
        try:
            result["poll: take the install job"], jobs = await step(
                api, statements, "take job", [("GET", "/api/v2/agent/next", a, b"") for a in auth],
                lambda status, answer: status == 200 and json.loads(answer).get("action") == "run")
            job_ids = [json.loads(j)["job"] for j in jobs]
            for phase in ("write-image", "verify-image"):
                body = json.dumps({"phase": phase, "bytes": 0, "total": 1 << 30}).encode()
                result[f"progress: {phase}"], _ = await step(
                    api, statements, phase,
                    [("POST", f"/api/v2/agent/progress/{j}", a, body) for j, a in zip(job_ids, auth)], ok)
            body = json.dumps({"exit_code": 0, "output": "crowbar-install: simulated install done\n"}).encode()
            result["job result"], _ = await step(
                api, statements, "job result",
                [("POST", f"/api/v2/agent/jobs/{j}", a, body) for j, a in zip(job_ids, auth)], ok)
            result["poll: take the reboot"], _ = await step(
                api, statements, "take reboot", [("GET", "/api/v2/agent/next", a, b"") for a in auth],
                lambda status, answer: status == 200 and json.loads(answer).get("action") == "reboot")
            result["boot script: local disk"], _ = await step(
                api, statements, "boot script",
                [("GET", f"/boot/{_mac(i, 0).replace(':', '-')}.ipxe", {}, b"") for i in range(n)],
                lambda status, answer: status == 200 and b"crowbar.url=" not in answer)
            facts = {"boot_id": "bench", "kernel": "6.1.0-28-amd64", "os": "Debian GNU/Linux 12 (bookworm)"}
            for name, extra in (("booted", {}), ("ready", {"host_keys": [HOST_KEY]})):
                body = json.dumps({**facts, "step": name, **extra}).encode()
                result[f"call home: {name}"], _ = await step(
                    api, statements, name, [("POST", "/api/v2/agent/booted", a, body) for a in auth], ok)
        finally:
            if profiler:
                profiler.disable()
                profiler.dump_stats(str(profile))
            anyio.to_thread.run_sync = original
        with db.session() as s:
            states = set(s.scalars(select(Node.state).where(Node.name.in_(names)).distinct()))
        if states != {"ready"}:
            raise SystemExit(f"nodes not all ready at the end: {sorted(states)}")
        result["total cpu_ms per node"] = round(sum(v["cpu_ms"] for k, v in result.items()
                                                    if isinstance(v, dict)), 2)
        db.dispose()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[1000])
    ap.add_argument("--postgres", help="SQLAlchemy URL of a PostgreSQL server to measure too")
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--profile", type=Path, help="write a cProfile of the measured requests to FILE.<engine>.<nodes>")
    ap.add_argument("--json", type=Path, help="append results as JSON lines to this file")
    args = ap.parse_args()

    def case(n: int, database: str | None) -> dict:
        engine = "postgresql" if database else "sqlite"
        prof = args.profile.with_suffix(f".{engine}.{n}") if args.profile else None
        with tempfile.TemporaryDirectory(prefix="crowbar-agent-deploy-db-") as tmp:
            return {"backend": engine, **asyncio.run(run(database or f"sqlite:///{tmp}/crowbar.db", n, prof))}

    reports = each_case(args.nodes, args.postgres, args.no_sqlite, "crowbar_agent_deploy", "machines installing",
                        case)
    if args.json:
        append_json(args.json, reports)


if __name__ == "__main__":
    sys.exit(main())
