"""`make demo`: a Crowbar server on SQLite, a few nodes, a deployment of the test barclamp, annealed
with live progress. The server keeps running afterwards so you can look around with the CLI.

Everything lives under ./var/demo (database, admin token, server log); running the demo again stops
the previous demo server (by the PID it recorded) and starts over.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console

from crowbar.cli.client import Client

console = Console()
ROOT = Path.cwd() / "var" / "demo"
NODES = ["node1.demo.example.com", "node2.demo.example.com", "node3.demo.example.com"]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_previous() -> None:
    pidfile = ROOT / "server.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)
        except ProcessLookupError:
            pass
    shutil.rmtree(ROOT, ignore_errors=True)


def crowbar(*args: str, env: dict) -> None:
    console.print(f"[bold cyan]$ crowbar {' '.join(args)}[/]")
    subprocess.run([sys.executable, "-m", "crowbar.cli.main", *args], env=env, check=False)


def main() -> int:
    stop_previous()
    ROOT.mkdir(parents=True)
    port = 3000 if port_free(3000) else free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = dict(os.environ, CROWBAR_ENDPOINT=endpoint, CROWBAR_DATA_DIR=str(ROOT))
    console.rule("[bold]Crowbar demo")
    console.print(f"starting [bold]crowbar server[/] on {endpoint} (SQLite in {ROOT})")
    log = open(ROOT / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "crowbar.cli.main", "server", "--listen", f"127.0.0.1:{port}",
                               "--data-dir", str(ROOT), "--workers", "4"], env=env, stdout=log, stderr=log,
                              start_new_session=True)
    (ROOT / "server.pid").write_text(str(server.pid))
    for _ in range(200):
        try:
            if httpx.get(f"{endpoint}/api/v2/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            console.print(f"[red]the server exited; see {ROOT / 'server.log'}[/]")
            return 1
        time.sleep(0.1)
    crowbar("barclamps", "list", env=env)
    crowbar("nodes", "create", "admin.demo.example.com", "--admin", env=env)
    for name in NODES:
        subprocess.run([sys.executable, "-m", "crowbar.cli.main", "nodes", "create", name], env=env,
                       stdout=subprocess.DEVNULL, check=True)
    console.print(f"[bold cyan]$ crowbar nodes create[/] {' '.join(NODES)}  (one at a time)")
    crowbar("nodes", "list", env=env)
    crowbar("deployments", "create", "demo", env=env)
    for name in NODES:
        crowbar("deployments", "bind", "demo", "test-client-client", name, env=env)
    # Give the test roles a delay so the annealer's progress is visible.
    api = Client(endpoint)
    for dr in api.get("/deployment_roles", deployment="demo"):
        api.put(f"/deployments/demo/roles/{dr['role']}", {"data": {"test": {"delay": 1}}})
    console.print("[dim](each test role sleeps 1 s: deployment role data {test: {delay: 1}})[/]")
    crowbar("deployments", "commit", "demo", env=env)
    crowbar("anneal", "--wait", "--timeout", "120", env=env)
    crowbar("noderoles", "list", "--deployment", "demo", env=env)
    console.rule("[bold]Look around")
    console.print(f"API:           {endpoint}/api/v2   (token in {ROOT / 'admin.token'})\n"
                  f"OpenAPI page:  {endpoint}/api/v2/docs\n"
                  f"Server log:    {ROOT / 'server.log'}\n")
    prefix = "" if port == 3000 else f"CROWBAR_ENDPOINT={endpoint} "
    console.print(f"Try:  {prefix}.venv/bin/crowbar noderoles show 8\n"
                  f"      {prefix}.venv/bin/crowbar attribs get test-marker --node {NODES[1]}\n"
                  f"      {prefix}.venv/bin/crowbar events --limit 20\n"
                  f"Stop: kill {server.pid}   (the demo server keeps running until then)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
