"""`crowbar nodes deploy | reinstall | release | ssh` and `crowbar os build | list | show | delete`.

Deploying is long: with --wait, `nodes deploy` follows every node it started until each is ready
(exit 0) or one is a problem (its reason on stderr, exit 1), printing each node's lifecycle step and
install phase as they change (bytes written while the image streams). `os build` runs on the admin
host itself (mmdebstrap needs this machine's root) and writes the image store the server serves.
The commands get the shared Context through click's `pass_obj`, like crowbar.cli.power.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import click

from crowbar import config
from crowbar.cli.client import CliError, seg
from crowbar.cli.output import SECONDS, console, emit_list, emit_object, output_option, table_options

NODE_COLUMNS = ["name", "state", "os", "phase", "progress", "state_reason"]
DONE = ("ready",)


def _row(node: dict) -> dict:
    install = node.get("install") or {}
    total, written = install.get("total") or 0, install.get("bytes") or 0
    progress = f"{written / total:.0%}" if total and node["state"] in ("installing",) else ""
    return {"name": node["name"], "state": node["state"], "os": node.get("os") or "",
            "phase": install.get("phase") or "", "progress": progress,
            "state_reason": (node.get("state_reason") or "")[:120]}


def follow(api, names: list[str], timeout: float, until=DONE, poll: float = 2.0) -> list[dict]:
    """Poll nodes until each is in `until`; CliError when one is a problem or time runs out.
    Prints one line per change (lifecycle step, install phase, every 10% written)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, tuple] = {}
    while True:
        current = [api.get(f"/nodes/{seg(name)}") for name in names]
        for node in current:
            row = _row(node)
            tenth = row["progress"][:-2] if row["progress"].endswith("%") and len(row["progress"]) > 2 else ""
            key = (row["state"], row["phase"], tenth)
            if seen.get(node["name"]) != key:
                seen[node["name"]] = key
                detail = f" {row['phase']}" if row["phase"] and row["state"] in ("installing", "releasing") else ""
                detail += f" {row['progress']}" if row["progress"] else ""
                click.echo(f"{time.strftime('%H:%M:%S')} {node['name']}: {row['state']}{detail}", err=True)
        problems = [n for n in current if n["state"] == "problem"]
        if problems:
            raise CliError("; ".join(f"{n['name']} is a problem: {n.get('state_reason')}" for n in problems))
        if all(n["state"] in until for n in current):
            return current
        if time.monotonic() > deadline:
            waiting = ", ".join(f"{n['name']} ({n['state']})" for n in current if n["state"] not in until)
            raise CliError(f"not {' or '.join(until)} after {timeout:g}s: {waiting}")
        time.sleep(poll)


@click.command("deploy")
@click.argument("node_keys", metavar="NODE...", nargs=-1, required=True)
@click.option("--os", "os_name", help="OS to install (default: the node's, else debian-12); see `crowbar os list`")
@click.option("--allocate", is_flag=True, help="allocate the discovered ones first, in the same transaction "
                                             "(their agents take the install without a reboot)")
@click.option("--wait", is_flag=True, help="follow the nodes until they are ready (or one is a problem)")
@click.option("--timeout", type=SECONDS, default=1800, show_default=True, help="seconds --wait waits")
@output_option
@click.pass_obj
def nodes_deploy(ctx, node_keys: tuple[str, ...], os_name: str | None, allocate: bool, wait: bool, timeout: float,
                 output: str) -> None:
    """Install an OS on allocated nodes: all of them or none (one request)."""
    answer = ctx.api.post("/nodes/deploy", {"nodes": list(node_keys), "os": os_name, "allocate": allocate})
    nodes = answer["items"]
    if wait:
        nodes = follow(ctx.api, [n["name"] for n in nodes], timeout)
    emit_list([_row(n) for n in nodes], NODE_COLUMNS, output)


@click.command("reinstall")
@click.argument("node")
@click.option("--os", "os_name", help="OS to install (default: the node's)")
@click.option("--wait", is_flag=True, help="follow the node until it is ready again")
@click.option("--timeout", type=SECONDS, default=1800, show_default=True, help="seconds --wait waits")
@output_option
@click.pass_obj
def nodes_reinstall(ctx, node: str, os_name: str | None, wait: bool, timeout: float, output: str) -> None:
    """Install the node's OS again: a fresh root filesystem, from the discovery image."""
    answer = ctx.api.post(f"/nodes/{seg(node)}/reinstall", {"os": os_name})
    if wait:
        time.sleep(1)
        answer = follow(ctx.api, [answer["name"]], timeout)[0]
    emit_object(answer, output)


@click.command("release")
@click.argument("node")
@click.option("--erase", type=click.Choice(["quick", "full", "none"]), default="quick", show_default=True,
              help="quick: partition tables and signatures; full: every byte; none: only for an allocated node "
                   "that was never installed")
@click.option("--wait", is_flag=True, help="follow the node until it is discovered again")
@click.option("--timeout", type=SECONDS, default=3600, show_default=True, help="seconds --wait waits")
@output_option
@click.pass_obj
def nodes_release(ctx, node: str, erase: str, wait: bool, timeout: float, output: str) -> None:
    """Put the node back in the pool (discovered): its disks erased from the discovery image."""
    answer = ctx.api.post(f"/nodes/{seg(node)}/release", {"erase": None if erase == "none" else erase})
    if wait:
        answer = follow(ctx.api, [answer["name"]], timeout, until=("discovered",))[0]
    emit_object(answer, output)


def ssh_command(node: dict, key: Path | None, command: tuple[str, ...], known_hosts: Path,
                namespace: str | None = None) -> list[str]:
    """The ssh command line for `node` (its SSH address and key hints, set when it was installed);
    run inside `namespace` (the virtual lab's) when its nodes are only reachable there. The node's
    reported host keys are checked strictly; a node that reported none is trusted on first use
    (`known_hosts`)."""
    ssh = ((node.get("hints") or {}).get("crowbar") or {}).get("ssh") or {}
    address = ssh.get("address")
    if not address:
        raise CliError(f"node {node['name']} has no SSH address yet (it is {node['state']}; installed nodes get "
                       "their admin address; else `crowbar attribs set ssh-address ADDR --node NODE`)")
    port = int(ssh.get("port", 22))
    keys = (node.get("install") or {}).get("host_keys") or []
    if keys:
        # the keys the node reported at its last boot: checked strictly, in a file of its own that
        # is rewritten each time (a reinstalled node's new keys replace the old ones)
        known_hosts = known_hosts.parent / "known_hosts.d" / node["name"]
        known_hosts.parent.mkdir(parents=True, exist_ok=True)
        host = address if port == 22 else f"[{address}]:{port}"
        known_hosts.write_text("".join(f"{host} {key}\n" for key in keys))
    argv = ["ip", "netns", "exec", namespace] if namespace else []
    argv += ["ssh", "-o", f"UserKnownHostsFile={known_hosts}",
             "-o", f"StrictHostKeyChecking={'yes' if keys else 'accept-new'}",
             "-o", "ConnectTimeout=10", "-p", str(port)]
    chosen = key or (Path(ssh["key"]) if ssh.get("key") and os.access(ssh["key"], os.R_OK) else None)
    if chosen:
        argv += ["-i", str(chosen), "-o", "IdentitiesOnly=yes"]
    argv.append(f"{ssh.get('user', 'root')}@{address}")
    if command:
        argv += ["--", *command]
    return argv


@click.command("ssh", context_settings={"ignore_unknown_options": True})
@click.argument("node")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--key", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="private key (default: the admin server's, when this user can read it)")
@click.pass_obj
def nodes_ssh(ctx, node: str, command: tuple[str, ...], key: Path | None) -> None:
    """Open a shell on the node, or run COMMAND there (`crowbar nodes ssh NODE -- uname -a`)."""
    if shutil.which("ssh") is None:
        raise CliError("ssh is not installed here: apt-get install openssh-client")
    known = config.data_dir() / "known_hosts"
    known.parent.mkdir(parents=True, exist_ok=True)
    argv = ssh_command(ctx.api.get(f"/nodes/{seg(node)}"), key, command, known,
                       config.lab_namespace(ctx.api.endpoint))
    sys.stdout.flush()
    os.execvp(argv[0], argv)


install_commands = (nodes_deploy, nodes_reinstall, nodes_release, nodes_ssh)


# -- the OS catalog -----------------------------------------------------------------------------

@click.group("os")
def os_group() -> None:
    """Operating systems nodes can be deployed with: recipes, built images, who runs what."""


@os_group.command("build")
@click.argument("name")
@click.option("--store", type=click.Path(path_type=Path), envvar="CROWBAR_OS_IMAGES",
              help="image store (default: <cache dir>/os, where the server looks)")
@click.option("--mirror", help="Debian mirror URL (default: the recipe's, i.e. the one this host's apt uses)")
@click.option("--force", is_flag=True, help="build again even when the cache has this image")
@output_option
def os_build(name: str, store: Path | None, mirror: str | None, force: bool, output: str) -> None:
    """Build OS NAME's image on this host with mmdebstrap (cached by recipe and mirror state)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from crowbar.cli import local

    plain = not console.is_terminal
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=plain) as bar:
        task = bar.add_task("starting", total=1)
        last = [""]

        def progress(step: str, done: int, total: int) -> None:
            bar.update(task, description=step[:80], completed=done if total else 0, total=max(total, 1))
            phase = step.split(":")[0]
            if plain and phase != last[0]:
                last[0] = phase
                click.echo(f"{time.strftime('%H:%M:%S')} {phase}", err=True)

        image = local.build_os_image(store or config.os_image_dir(), name, progress, mirror=mirror, force=force)
    m = image.manifest
    emit_object({"name": image.name, "digest": image.digest, "path": str(image.path), "size": m.get("size"),
                 "sha256": m.get("sha256"), "kernel": m.get("kernel"), "packages": len(m.get("packages", [])),
                 "built_at": m.get("built_at"), "build_seconds": m.get("build_seconds")}, output)


@os_group.command("list")
@table_options
@output_option
@click.pass_obj
def os_list(ctx, output: str) -> None:
    """The catalog: what can be built, what is built (size), which nodes run what."""
    rows = ctx.api.get("/os_images")
    if output == "json":
        emit_list(rows, [], output)
        return
    table = [{"name": r["name"], "title": r["title"], "built": "yes" if r["built"] else "no",
              "size": f"{r['current']['size'] / (1 << 20):.0f} MiB" if r["current"] else "",
              "kernel": (r["current"] or {}).get("kernel") or "",
              "nodes": ", ".join(n["node"] for n in r["nodes"])} for r in rows]
    emit_list(table, ["name", "title", "built", "size", "kernel", "nodes"], output)


@os_group.command("show")
@click.argument("name")
@output_option
@click.pass_obj
def os_show(ctx, name: str, output: str) -> None:
    """An OS: its recipe, built images (the newest with its package list), nodes running it."""
    emit_object(ctx.api.get(f"/os_images/{seg(name)}"), output)


@os_group.command("delete")
@click.argument("name")
@output_option
@click.pass_obj
def os_delete(ctx, name: str, output: str) -> None:
    """Delete an OS's built images (refused while a node is being installed with it)."""
    emit_object(ctx.api.delete(f"/os_images/{seg(name)}"), output)
