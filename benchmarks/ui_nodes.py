"""The web UI's nodes list at fleet scale: the API pages it asks for, and the page in a browser.

    python benchmarks/ui_nodes.py [--sizes 100 1000 10000] [--postgres URL] [--no-browser] [--json FILE]

At each size N, N nodes with a discovery inventory (memory from 16 to 1,024 GiB) are inserted,
then each query the nodes page makes is timed (GET /api/v2/nodes?limit=100, best of 3, in-process
through the whole app: edge, session cookie, unit of work): the first page by name, a page in the
middle (the marker of the node halfway), sorted by memory descending (first and middle page),
filtered by memory >= 512 GiB and sorted by CPUs, sorted by disk (all of a node's disks together:
1 to 8 of 3.84 TB) descending (middle page), filtered by disk >= 20,000 GiB, filtered by state, by
a name prefix. Each node has three power requests (each row shows the node's power state).
With the browser (Debian's chromium through Playwright, SQLite only): the time from asking for the
middle page (clicking Next on the page before it) until its rows are drawn, served by uvicorn on
loopback. SQLite always; PostgreSQL too with --postgres.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from _postgres import append_json, fresh_postgres
from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from crowbar.api.app import create_app
from crowbar.api.settings import AppSettings
from crowbar.db.models import Node, PowerRequest, utcnow
from crowbar.db.session import Database
from crowbar.services import auth, bootstrap

REPEAT = 3


def inventory(i: int) -> dict:
    return {"cpu": {"count": 8 * (1 + i % 16), "model": "Xeon"}, "memory": {"total_bytes": (16 << (i % 7)) * 2**30},
            "disks": [{"name": f"nvme{d}n1", "size_bytes": 3840 * 10**9} for d in range(1 + i % 8)],
            "nics": [{"name": f"eth{n}", "mac": f"52:54:00:{i >> 8 & 255:02x}:{i & 255:02x}:0{n}"} for n in range(4)],
            "dmi": {"vendor": "Example", "product": "R650", "serial": f"S{i:08d}"}}


def add_nodes(db: Database, n: int) -> None:
    now, states = utcnow(), ("ready", "ready", "ready", "allocated", "discovered", "problem")
    with db.session() as s:
        for start in range(0, n, 5000):
            s.execute(insert(Node.__table__), [
                {"name": f"node{i:05d}.bench.example.com", "description": "", "admin": False, "alive": True,
                 "available": True, "bootenv": "local", "discovery": inventory(i), "hints": {}, "created_at": now,
                 "state": states[i % len(states)], "install": {}, "power": {}}
                for i in range(start, min(n, start + 5000))])
        # three finished power requests per node (the list shows each node's power state from them)
        ids = list(s.scalars(select(Node.id)))
        for start in range(0, len(ids), 5000):
            s.execute(insert(PowerRequest.__table__), [
                {"node_id": node_id, "action": action, "state": "succeeded", "result": "on", "actor": "bench",
                 "created_at": now, "finished_at": now}
                for node_id in ids[start:start + 5000] for action in ("on", "status", "cycle")])


def timed(client: TestClient, url: str) -> tuple[float, int]:
    best, count = float("inf"), 0
    for _ in range(REPEAT):
        t = time.perf_counter()
        r = client.get(url)
        best = min(best, time.perf_counter() - t)
        assert r.status_code == 200, r.text
        count = len(r.json()["items"])
    return best, count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser_page(app, token: str, n: int) -> float:
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"])
            page = b.new_page()
            page.goto(f"http://127.0.0.1:{port}/ui/")
            page.fill("#token", token)
            page.click("#sign-in")
            page.wait_for_selector("#nav:not([hidden])")
            page.goto(f"http://127.0.0.1:{port}/ui/#/nodes?limit=100")
            page.wait_for_selector("#page-info:has-text('nodes 1–')")
            best = float("inf")
            for _ in range(REPEAT):
                if n > 100:
                    t = time.perf_counter()
                    page.click("#next")
                    page.wait_for_selector("#page-info:has-text('nodes 101–')")
                    best = min(best, time.perf_counter() - t)
                    page.click("#prev")
                    page.wait_for_selector("#page-info:has-text('nodes 1–')")
                else:
                    t = time.perf_counter()
                    page.click("#node-filters button")
                    page.wait_for_selector("#page-info:has-text('nodes 1–')")
                    best = min(best, time.perf_counter() - t)
            b.close()
        return best
    finally:
        server.should_exit = True
        thread.join(10)


def run(url: str, backend: str, n: int, browser: bool) -> dict:
    db = Database(url)
    bootstrap.prepare(db)
    with db.session() as s:
        token = auth.ensure_admin_token(s, Path(tempfile.mkdtemp()) / "admin.token")
    add_nodes(db, n)
    with db.session() as s:
        middle = s.scalar(select(Node.id).where(Node.name == f"node{n // 2:05d}.bench.example.com"))
    app = create_app(AppSettings(db=db))
    client = TestClient(app)
    assert client.post("/api/v2/session", json={"token": token}).status_code == 201  # the cookie, as the UI
    cases = {
        "by name, first page": "/api/v2/nodes?limit=100&sort=name",
        "by name, middle page": f"/api/v2/nodes?limit=100&sort=name&marker={middle}",
        "by memory desc, first page": "/api/v2/nodes?limit=100&sort=-memory",
        "by memory desc, middle page": f"/api/v2/nodes?limit=100&sort=-memory&marker={middle}",
        "memory >= 512 GiB, by cpus": "/api/v2/nodes?limit=100&sort=cpus&memory_min=524288",
        "by disk desc, middle page": f"/api/v2/nodes?limit=100&sort=-disk&marker={middle}",
        "disk >= 20,000 GiB, by name": "/api/v2/nodes?limit=100&sort=name&disk_min=20000",
        "state=problem, by name": "/api/v2/nodes?limit=100&sort=name&state=problem",
        "name prefix node001": "/api/v2/nodes?limit=100&sort=name&name=node001",
    }
    out = {"backend": backend, "nodes": n}
    for label, path in cases.items():
        seconds, count = timed(client, path)
        out[label] = round(seconds * 1000, 1)
        print(f"{backend:10} {n:>6} {label:30} {seconds * 1000:7.1f} ms  ({count} rows)", flush=True)
    if browser:
        out["browser: next page drawn"] = round(browser_page(app, token, n) * 1000, 1)
        print(f"{backend:10} {n:>6} {'browser: next page drawn':30} {out['browser: next page drawn']:7.1f} ms", flush=True)
    client.close()
    db.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--postgres")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(f"sqlite:///{tmp}/bench.db", "SQLite", n, not args.no_browser)
            if args.json:
                append_json(Path(args.json), [result])
        if args.postgres:
            url, drop = fresh_postgres(args.postgres)
            try:
                result = run(url, "PostgreSQL", n, False)
                if args.json:
                    append_json(Path(args.json), [result])
            finally:
                drop()


if __name__ == "__main__":
    sys.exit(main())
