"""`make demo`: the virtual lab, from power-on to installed Debian. Three qemu VMs (one of them
UEFI) PXE-boot from a Crowbar server in a network namespace of their own, are discovered and
inventoried, allocated and deployed: each one's discovery agent writes the Debian 12 image to its
disk, the VM reboots onto it, and its first boot calls home. A deployment then runs the lab
barclamp's script role `lab-facts` on the installed systems over SSH, and a table shows each node's
OS, firmware, root device and time from power-on to ready. The OS image is built once (mmdebstrap,
a few minutes) and cached by content. The lab keeps running afterwards: look around with the CLI
(its default endpoint is the lab's server), `crowbar nodes ssh NODE`, `crowbar lab down` removes it.

The lab lives in the default lab directory (`<data dir>/lab`, or CROWBAR_LAB_DIR); running the demo
again takes the previous lab down first.

`python -m crowbar.demo --no-lab` is the demo for machines without qemu: a Crowbar server on SQLite
(under ./var/demo), a few nodes, a deployment of the test barclamp annealed with live progress.
Running it again stops the previous demo server (by the PID it recorded) and starts over.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from crowbar.cli.client import Client
from crowbar.cli.output import console
from crowbar.procs import read_pidfile, stop_pid

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
    stop_pid(read_pidfile(ROOT / "server.pid"), "crowbar.cli.main", timeout=5)
    shutil.rmtree(ROOT, ignore_errors=True)


def crowbar(*args: str, env: dict) -> None:
    console.print(f"[bold cyan]$ crowbar {' '.join(args)}[/]")
    subprocess.run([sys.executable, "-m", "crowbar.cli.main", *args], env=env, check=False)


def sqlite_demo() -> int:
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
    from crowbar import config

    # A running lab would be the CLI's default endpoint: name this server then.
    prefix = "" if port == 3000 and not config.lab_endpoint() else f"CROWBAR_ENDPOINT={endpoint} "
    console.print(f"Try:  {prefix}.venv/bin/crowbar noderoles show 8\n"
                  f"      {prefix}.venv/bin/crowbar attribs get test-marker --node {NODES[1]}\n"
                  f"      {prefix}.venv/bin/crowbar events --limit 20\n"
                  f"Stop: kill {server.pid}   (the demo server keeps running until then)")
    return 0


# -- the lab --------------------------------------------------------------------------------------
LAB_NODES = 3
LAB_MEMORY_MB = 512
DEPLOYMENT = "lab"
OS = "debian-12"


def lab_env() -> dict:
    """The CLI's environment: the default endpoint, which is the running lab's server."""
    return {k: v for k, v in os.environ.items() if k not in ("CROWBAR_ENDPOINT", "CROWBAR_TOKEN")}


def run(*args: str, check: bool = True) -> int:
    """`crowbar ARGS`, shown, with its output (and progress bars) on this terminal."""
    console.print(f"[bold cyan]$ crowbar {' '.join(args)}[/]")
    code = subprocess.run([sys.executable, "-m", "crowbar.cli.main", *args], env=lab_env(), check=False).returncode
    if check and code != 0:
        raise SystemExit(f"`crowbar {' '.join(args)}` failed (exit {code})")
    return code


def _size(n: int | None) -> str:
    if not n:
        return "?"
    for unit, shift in (("GiB", 30), ("MiB", 20)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g} {unit}"
    return f"{n} B"


def inventory_table(lab, nodes: list[dict]):
    from rich.table import Table

    table = Table(title="Discovered: what each VM reported about itself")
    for column in ("node", "vm", "MACs", "CPUs", "memory", "disks", "NICs", "kernel"):
        table.add_column(column)
    vm_of = {vm.node: vm.name for vm in lab.state.vms}
    for node in nodes:
        inv = node.get("discovery") or {}
        nics = inv.get("nics") or []
        table.add_row(node["name"], vm_of.get(node["name"], ""), "\n".join(n.get("mac", "") for n in nics),
                      str((inv.get("cpu") or {}).get("count", "?")),
                      _size((inv.get("memory") or {}).get("installed_bytes")),
                      "\n".join(f"{d.get('name')} {_size(d.get('size_bytes'))}" for d in inv.get("disks") or []),
                      "\n".join(f"{n.get('name')} {n.get('driver')}" for n in nics), inv.get("kernel", ""))
    return table


def _ready_after(node: dict, lab) -> str:
    """Seconds from the lab's power-on to the node's ready step."""
    from datetime import datetime

    steps = [s for s in (node.get("install") or {}).get("steps", []) if s["state"] == "ready"]
    if not steps:
        return ""
    seconds = (datetime.fromisoformat(steps[-1]["at"]) - datetime.fromisoformat(lab.state.created_at)).total_seconds()
    return f"{seconds:.0f}s"


def result_table(api, lab):
    from rich.table import Table

    nodes = {n["name"]: api.get(f"/nodes/{n['name']}") for n in api.list_all("/nodes") if not n.get("admin")}
    addresses = {a["node"]: a["address"] for a in api.list_all("/networks/admin/allocations")}
    table = Table(title="Installed nodes and their lab-facts noderoles (the wall: read on the VM itself, over SSH)")
    for column in ("node", "vm", "firmware", "state", "power-on to ready", "admin address", "noderole",
                   "wall: os", "wall: kernel", "wall: root", "wall: IPv4"):
        table.add_column(column)
    for vm in lab.state.vms:
        node = nodes.get(vm.node or "", {})
        for nr in api.list_all("/node_roles", deployment=DEPLOYMENT, node=vm.node) if vm.node else [{}]:
            wall = (api.get(f"/node_roles/{nr['id']}").get("wall") or {}).get("lab", {}) if nr else {}
            table.add_row(vm.node or "", vm.name, vm.firmware.upper(), node.get("state", ""), _ready_after(node, lab),
                          addresses.get(vm.node, ""), f"{nr.get('id', '')} {nr.get('state', '')}",
                          wall.get("os", ""), wall.get("kernel", ""), wall.get("root", ""),
                          ", ".join(wall.get("ipv4", [])))
    return table


def lab_demo() -> int:
    from crowbar import config
    from crowbar.lab.lab import Lab, LabError, missing_tools

    problems = missing_tools()
    if os.geteuid() != 0:
        problems.append("root (network namespaces, bridges and taps)")
    try:
        from crowbar.cli import local

        local.host_kernel_version()
    except Exception as exc:
        problems.append(str(exc))
    if problems:
        console.print("[red]the lab needs:[/] " + "; ".join(problems))
        console.print("`make demo` installs the Debian packages; without qemu, run "
                      "`.venv/bin/python -m crowbar.demo --no-lab` (the SQLite-only demo)")
        return 1
    console.rule("[bold]Crowbar demo: the virtual lab")
    lab_dir = config.lab_dir()
    try:
        previous = Lab(lab_dir)
        if previous.state is not None:
            console.print(f"taking down the previous lab in {lab_dir}")
            run("lab", "down")
    except LabError as exc:
        console.print(f"[red]{exc}[/]")
        return 1
    console.print(f"{LAB_NODES} VMs ({LAB_MEMORY_MB} MB, TCG; vm2 UEFI) PXE-boot from a Crowbar server in a "
                  "network namespace, are discovered, then deployed with Debian 12 from the image store")
    started = time.monotonic()
    run("os", "build", OS)  # cached by content: a second run answers at once
    timings = {"OS image (build or cache)": time.monotonic() - started}
    started = time.monotonic()
    run("lab", "up", "--nodes", str(LAB_NODES), "--memory", str(LAB_MEMORY_MB), "--firmware", "mixed",
        "--wait", "--timeout", "900")
    timings["lab up, until all VMs were discovered"] = time.monotonic() - started
    lab = Lab(lab_dir)
    api = Client(lab.endpoint)
    nodes = [api.get(f"/nodes/{vm.node}") for vm in lab.state.vms]
    console.print(inventory_table(lab, nodes))

    console.rule("[bold]Allocate and deploy: the agents write Debian 12 to disk; the VMs reboot onto it")
    started = time.monotonic()
    for node in nodes:
        _allocate(api, node["name"])
    run("network", "allocations", "admin")
    run("nodes", "deploy", *[n["name"] for n in nodes], "--os", OS, "--wait", "--timeout", "1500")
    timings["allocate, install, reboot, first boot"] = time.monotonic() - started

    console.rule("[bold]Run a script role on the installed systems, over SSH")
    started = time.monotonic()
    run("roles", "list", "--barclamp", "lab")
    run("deployments", "create", DEPLOYMENT)
    for node in nodes:
        run("deployments", "bind", DEPLOYMENT, "lab-facts", node["name"])
    run("deployments", "commit", DEPLOYMENT)
    code = run("anneal", "--wait", "--timeout", "900", check=False)
    timings["lab-facts over SSH"] = time.monotonic() - started
    run("nodes", "list")
    run("noderoles", "list", "--deployment", DEPLOYMENT)
    console.print(result_table(api, lab))
    if code != 0:
        console.print("[red]the anneal did not finish: see `crowbar noderoles log ID` and `crowbar lab console vm1`[/]")
    console.print("  ".join(f"{what}: {seconds:.0f}s" for what, seconds in timings.items()))

    console.rule("[bold]Look around")
    hint = "" if "CROWBAR_ENDPOINT" not in os.environ else "(unset CROWBAR_ENDPOINT first) "
    console.print(f"The lab keeps running; the CLI's default endpoint is its server {hint}({lab.endpoint}).\n"
                  f"  .venv/bin/crowbar lab status               the namespace, the server, the VMs and their nodes\n"
                  f"  .venv/bin/crowbar lab console vm1          vm1's serial console (BIOS, iPXE, kernel, agent)\n"
                  f"  .venv/bin/crowbar nodes ssh {nodes[0]['name']} -- cat /etc/os-release\n"
                  f"  .venv/bin/crowbar os list                  the OS catalog: built images, who runs what\n"
                  f"  .venv/bin/crowbar noderoles list           the graph; `noderoles show ID` has the wall\n"
                  f"  .venv/bin/crowbar nodes show {nodes[0]['name']}   its inventory\n"
                  f"  .venv/bin/crowbar nodes power {nodes[0]['name']} cycle\n"
                  f"Tear down: .venv/bin/crowbar lab down      (VMs, server, dnsmasq, taps, bridges, namespace)")
    return code


def _allocate(api, name: str) -> None:
    """`crowbar nodes allocate NAME`, summed up in one line (its output is the whole node)."""
    console.print(f"[bold cyan]$ crowbar nodes allocate {name}[/]")
    out = api.post(f"/nodes/{name}/allocate")
    console.print(f"{name}: {out['state']}, admin address {out.get('admin_address')}")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m crowbar.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-lab", action="store_true",
                        help="the SQLite-only demo, for machines without qemu (no VMs, no root)")
    args = parser.parse_args(argv)
    return sqlite_demo() if args.no_lab else lab_demo()


if __name__ == "__main__":
    sys.exit(main())
