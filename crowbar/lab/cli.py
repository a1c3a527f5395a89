"""`crowbar lab up | status | console | down`: the virtual lab from the command line."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import click

from crowbar import config
from crowbar.cli.client import CliError
from crowbar.cli.output import console, emit_list, output_option
from crowbar.lab.lab import Lab, LabError


def dir_option(f):
    return click.option("--dir", "directory", type=click.Path(path_type=Path), envvar="CROWBAR_LAB_DIR",
                        help="lab directory (default <data dir>/lab; the CLI's default endpoint follows "
                             "CROWBAR_LAB_DIR)")(f)


def _lab(directory: Path | None) -> Lab:
    try:
        return Lab(directory, say=lambda line: console.print(f"[dim]lab:[/] {line}"))
    except LabError as exc:
        raise CliError(str(exc)) from None


@click.group("lab")
def lab_group() -> None:
    """A virtual lab on this machine: qemu VMs that PXE-boot from a Crowbar server, all inside a
    network namespace of their own."""


@lab_group.command("up")
@click.option("--nodes", "-n", type=click.IntRange(1, 15), default=3, show_default=True, help="number of VMs")
@click.option("--nics", default="1", show_default=True,
              help="NICs per VM (the first on the admin bridge, the others on a data bridge); "
                   "or one value per VM: 1,2")
@click.option("--memory", default="512", show_default=True, help="MB of RAM per VM, or one per VM: 384,512")
@click.option("--disk", default="4", show_default=True, help="GB of (sparse) disk per VM, or one per VM")
@click.option("--kvm", is_flag=True, help="try hardware acceleration (default: TCG, software emulation)")
@click.option("--firmware", default="bios", show_default=True,
              help="bios (SeaBIOS), uefi (OVMF), mixed (every second VM UEFI), or one per VM: bios,uefi")
@click.option("--proxies", is_flag=True,
              help="the server runs the caching proxies (online mode); they reach the mirror and PyPI "
                   "through the lab's uplink, the VMs nothing outside the lab")
@click.option("--bmc", type=click.Choice(["ipmi", "redfish", "none"]), default="none", show_default=True,
              help="give each VM a BMC (ipmi_sim, or the Redfish emulator) that powers it; discovered "
                   "nodes are then powered through it (docs/architecture.md, lab BMCs)")
@click.option("--wait", is_flag=True, help="wait, with progress, until every VM is discovered")
@click.option("--timeout", type=float, default=600, show_default=True, help="seconds --wait waits")
@click.option("--os", "os_name", default="debian-12", show_default=True,
              help="OS --deploy installs (built first when the image store has none)")
@click.option("--deploy", is_flag=True, help="then take every VM to ready: allocate, install --os, boot its disk")
@dir_option
def lab_up(nodes: int, nics: str, memory: str, disk: str, kvm: bool, firmware: str, proxies: bool, bmc: str,
           wait: bool, timeout: float, os_name: str, deploy: bool, directory: Path | None) -> None:
    """Create the lab: namespace, bridges, a provisioning server, N PXE-booting VMs."""
    lab = _lab(directory)
    started = time.monotonic()
    if deploy:
        wait = True
        _ensure_os_image(os_name)
    try:
        state = lab.up(nodes, nics=nics, memory=memory, disk=disk, kvm=kvm, firmware=firmware, bmc=bmc,
                       proxies=proxies)
    except LabError as exc:
        raise CliError(str(exc)) from None
    console.print(f"lab running in namespace [bold]{state.namespace}[/]: server {state.server['url']} "
                  f"(for the CLI: {lab.endpoint}); {len(state.vms)} VMs PXE-booting")
    if not wait:
        console.print("follow with `crowbar lab status`; `crowbar lab console vm1` shows a VM's serial console")
        return
    _wait(lab, timeout)
    console.print(f"all {len(state.vms)} VMs discovered in {time.monotonic() - started:.0f}s")
    if deploy:
        _deploy(lab, os_name, timeout=max(timeout, 1800))
        console.print(f"all {len(state.vms)} VMs ready on {os_name} in {time.monotonic() - started:.0f}s")
    _print_vms(lab.status())
    hint = "" if lab.dir == config.lab_dir().absolute() else f"CROWBAR_LAB_DIR={lab.dir} "
    console.print(f"the CLI now reaches the lab's server: try `{hint}crowbar nodes list`")


def _wait(lab: Lab, timeout: float) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]discovering"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=not console.is_terminal) as bar:
        task = bar.add_task("", total=len(lab.state.vms))

        def progress(done: int, total: int, pending: list[str]) -> None:
            bar.update(task, completed=done, total=total,
                       description=f"waiting for {', '.join(pending)}" if pending else "done")

        try:
            lab.wait_discovered(timeout, progress)
        except LabError as exc:
            raise CliError(str(exc), code=2 if "within" in str(exc) else 1) from None


def _ensure_os_image(os_name: str) -> None:
    """Build the OS image now (with progress) unless the store has it: the lab's server serves it."""
    from crowbar.cli import local

    if local.os_image_built(config.os_image_dir(), os_name):
        return
    console.print(f"building the {os_name} image (once: it is cached by content)")
    last = [""]

    def progress(step: str, done: int, total: int) -> None:
        phase = step.split(":")[0]
        if phase != last[0]:
            last[0] = phase
            console.print(f"[dim]os build:[/] {phase}")

    local.build_os_image(config.os_image_dir(), os_name, progress)


def _deploy(lab: Lab, os_name: str, timeout: float) -> None:
    seen: dict[str, tuple] = {}

    def progress(nodes: dict[str, dict]) -> None:
        for vm, node in sorted(nodes.items()):
            install = node.get("install") or {}
            total, done = install.get("total") or 0, install.get("bytes") or 0
            pct = f" {done / total:.0%}" if total and node["state"] == "installing" else ""
            key = (node["state"], install.get("phase"), pct[:-2])
            if seen.get(vm) != key:
                seen[vm] = key
                phase = f" {install.get('phase')}" if node["state"] == "installing" else ""
                console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {vm}: {node['state']}{phase}{pct}")

    try:
        lab.deploy_all(os_name, timeout, progress)
    except LabError as exc:
        raise CliError(str(exc)) from None


def _print_vms(status: dict) -> None:
    rows = [{**vm, "macs": ", ".join(vm["macs"]), "alive": "yes" if vm["alive"] else "no",
             "memory": f"{vm['memory_mb']} MB", "disk": f"{vm['disk_gb']:g} GB"} for vm in status["vms"]]
    emit_list(rows, ["name", "macs", "memory", "disk", "pid", "alive", "node", "state", "admin_address"], "table")


@lab_group.command("status")
@output_option
@dir_option
def lab_status(output: str, directory: Path | None) -> None:
    """The namespace, the server, every VM and the node it became."""
    status = _lab(directory).status()
    if output == "json":
        click.echo(json.dumps(status, indent=2))
        return
    if status["namespace"] is None:
        console.print(f"no lab in {status['dir']} (`crowbar lab up` creates one)")
        return
    server = status["server"]
    console.print(f"lab in {status['dir']}: {'running' if status['running'] else '[red]not running[/]'}\n"
                  f"  namespace {status['namespace']} ({'present' if status['namespace_exists'] else 'missing'}), "
                  f"bridges {', '.join(status['bridges'])}, admin address {status['admin_address']}\n"
                  f"  server pid {server.get('pid')} ({'alive' if server.get('alive') else 'dead'}), "
                  f"{server.get('url')}, CLI endpoint {status['endpoint']}, log {server.get('log')}")
    if status.get("api_error"):
        console.print(f"  [red]API: {status['api_error']}[/]")
    _print_vms(status)


# SeaBIOS's serial copy of the screen is a terminal stream: escape sequences, backspaces, CRs.
_TERMINAL = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)|[^\n]\x08|\r(?=\n)")


def _printable(text: str, raw: bool) -> str:
    return text if raw else _TERMINAL.sub("", text).replace("\x08", "")


@lab_group.command("console")
@click.argument("node")
@click.option("--follow", "-f", is_flag=True, help="keep printing what the VM writes (Ctrl-C stops)")
@click.option("--lines", type=int, default=0, help="only the last N lines")
@click.option("--raw", is_flag=True, help="as the VM wrote it, terminal escape sequences included")
@dir_option
def lab_console(node: str, follow: bool, lines: int, raw: bool, directory: Path | None) -> None:
    """A VM's serial console log (NODE: vm1, or the node's name)."""
    lab = _lab(directory)
    if lab.state is None:
        raise CliError(f"no lab in {lab.dir}")
    vm = next((v for v in lab.state.vms if node in (v.name, v.node)), None)
    if vm is None:
        raise CliError(f"no VM {node!r} in the lab (VMs: {', '.join(v.name for v in lab.state.vms)})")
    try:
        data = vm.console.read_bytes()
    except FileNotFoundError:
        raise CliError(f"{vm.console} does not exist") from None
    text = _printable(data.decode(errors="replace"), raw)
    if lines:
        text = "\n".join(text.splitlines()[-lines:]) + "\n"
    sys.stdout.write(text)
    sys.stdout.flush()
    if follow:
        position = len(data)
        try:
            while True:
                time.sleep(0.5)
                with open(vm.console, "rb") as f:
                    f.seek(position)
                    more = f.read()
                if more:
                    position += len(more)
                    sys.stdout.write(_printable(more.decode(errors="replace"), raw))
                    sys.stdout.flush()
        except KeyboardInterrupt:
            pass


@lab_group.command("down")
@dir_option
def lab_down(directory: Path | None) -> None:
    """Stop the VMs and the server, delete taps, bridges and the namespace, remove the lab's files."""
    lab = _lab(directory)
    if lab.state is None:
        console.print(f"no lab in {lab.dir}: nothing to do")
        return
    namespace = lab.state.namespace
    try:
        done = lab.down()
    except LabError as exc:
        raise CliError(str(exc)) from None
    for line in done:
        console.print(f"[dim]lab:[/] {line}")
    console.print(f"lab {namespace} is down")


@lab_group.command("simulate")
@click.option("--nodes", "-n", type=click.IntRange(1, 100_000), required=True, help="simulated machines")
@click.option("--concurrency", "-c", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="requests in flight at once, over the whole fleet")
@click.option("--install-delay", type=click.FloatRange(0, 3600), default=5.0, show_default=True,
              help="seconds each simulated OS install takes")
@click.option("--server", "server_url", help="an existing server (its admin token from CROWBAR_TOKEN or the CLI's "
                                           "token files); default: start one of our own, in a temporary directory")
@click.option("--database", help="SQLAlchemy URL for the server we start (default: SQLite in its data dir)")
@click.option("--workers", type=click.IntRange(1, 256), default=8, show_default=True,
              help="annealer workers of the server we start")
@click.option("--os", "os_name", help="OS to deploy (default: what the server's OS rules choose)")
@click.option("--poll", type=click.FloatRange(0, 600), help="seconds between agent polls (default: the `seconds` "
                                                           "the server answers, like the real agent)")
@click.option("--timeout", type=click.FloatRange(1, 86400), default=1800, show_default=True,
              help="seconds any one phase may take")
@click.option("--keep", type=click.Path(path_type=Path), help="run our server in this directory and keep it")
@click.option("--allocate-on-deploy", is_flag=True, help="allocate in the deploy call (one phase) instead of "
                                                       "a separate allocate, which makes the agents reboot")
@click.option("--long-poll", type=click.IntRange(0, 300), default=50, show_default=True,
              help="seconds the agents ask the server to hold an idle poll (Prefer: wait=), as the real agent; "
                   "0: plain polls")
@click.option("--batch", type=click.IntRange(1, 10_000), default=10_000, show_default=True,
              help="nodes per bulk call of the operator (enroll, allocate, deploy), as the CLI sends them: all at once")
@output_option
def lab_simulate(nodes: int, concurrency: int, install_delay: float, server_url: str | None, database: str | None,
                 workers: int, os_name: str | None, poll: float | None, timeout: float, keep: Path | None,
                 allocate_on_deploy: bool, long_poll: int, batch: int, output: str) -> None:
    """A simulated fleet: NODES asyncio clients that speak the discovery agent's HTTP protocol take a
    real server through discover, allocate, deploy (to ready) and the anneal of a deployment of
    noop roles on every node; reports each phase's nodes/s and API latency by route (and, for a
    server started here, its CPU seconds, peak RSS and database size). Uses the `fake` power driver."""
    import tempfile

    from crowbar.cli.client import find_token_with_source
    from crowbar.lab.fleet import FleetError, LocalServer, Options, simulate

    def say(line: str) -> None:
        click.echo(f"simulate: {line}", err=True)

    options = Options(nodes=nodes, concurrency=concurrency, install_delay=install_delay, os_name=os_name,
                      poll=poll, timeout=timeout, allocate_on_deploy=allocate_on_deploy, long_poll=long_poll,
                      batch=batch)
    try:
        if server_url:
            token, _ = find_token_with_source(server_url)
            if not token:
                raise CliError(f"no admin token for {server_url}: set CROWBAR_TOKEN")
            report = simulate(server_url, token, options, say=say)
        else:
            with tempfile.TemporaryDirectory(prefix="crowbar-fleet-") as tmp:
                root = keep or Path(tmp)
                root.mkdir(parents=True, exist_ok=True)
                server = LocalServer(root, database=database, workers=workers)
                say(f"starting crowbar server on {server.url} in {root} (log {server.log_path})")
                server.start()
                try:
                    options.state_dir = str(root / "power")
                    report = simulate(server.url, server.token, options, say=say, server=server.process(),
                                      db_size=server.sqlite_size)
                finally:
                    server.stop()
                report["server"] = {"url": server.url, "database": "postgresql" if database else "sqlite",
                                    "workers": workers}
    except FleetError as exc:
        raise CliError(str(exc)) from None
    if output == "json":
        click.echo(json.dumps(report, indent=2))
        return
    console.print(f"{report['nodes']} simulated machines in {report['total_seconds']} s "
                  f"(concurrency {report['concurrency']}, install {report['install_delay']} s)")
    for phase in report["phases"]:
        extra = ", ".join(f"{k} {phase[k]}" for k in ("server_cpu_s", "server_peak_rss_mb", "db_mb", "noderoles")
                          if k in phase)
        console.print(f"[bold]{phase['phase']}[/]: {phase['nodes']} nodes in {phase['seconds']} s, "
                      f"{phase['nodes_per_s']} nodes/s, {phase['requests']} requests" + (f", {extra}" if extra else ""))
        for route, r in phase["routes"].items():
            console.print(f"  {route:32} x{r['count']:<7} p50 {r['p50_ms']:>7} ms  p95 {r['p95_ms']:>7} ms  "
                          f"p99 {r['p99_ms']:>7} ms")
        for key, count in phase["errors"].items():
            console.print(f"  [red]{key}: {count}[/]")
    if report["failures"]:
        raise CliError(f"{len(report['failures'])} machines failed; first: {report['failures'][0]}")
