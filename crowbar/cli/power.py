"""`crowbar nodes power | power-requests | set-power | power-drivers`: power requests and drivers.

A power action is a request the server queues and its power worker carries out: `nodes power`
prints the request; with --wait it follows it until it succeeded (exit 0) or failed (one line on
stderr, exit 1). The commands get the shared Context through click's `pass_obj` (like
crowbar.cli.network), so this module does not import crowbar.cli.main, which registers them.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import click

from crowbar.cli.client import CliError, seg, shown
from crowbar.cli.network import read_document
from crowbar.cli.output import SECONDS, emit_list, emit_object, output_option, table_options

REQUEST_COLUMNS = ["id", "node", "action", "state", "result", "actor", "created_at", "finished_at"]
DONE = ("succeeded", "failed")


def follow(api, request: dict, timeout: float, poll: float = 0.2) -> dict:
    """Poll a power request until it is done; CliError if it failed or is not done in `timeout` s."""
    deadline = time.monotonic() + timeout
    while request["state"] not in DONE:
        if time.monotonic() > deadline:
            raise CliError(f"power {request['action']} of {request['node']}: still {request['state']} after "
                           f"{timeout:g}s (request {request['id']}; see `crowbar nodes power-requests "
                           f"{request['node']}`)")
        time.sleep(poll)
        request = api.get(f"/power_requests/{request['id']}")
    if request["state"] == "failed":
        raise CliError(f"power {request['action']} of {request['node']} failed: {request['result']}")
    return request


@click.command("power")
@click.argument("node")
@click.argument("action", type=click.Choice(["on", "off", "cycle", "status", "soft-off", "boot-pxe", "boot-disk",
                                             "boot-http"]))
@click.option("--wait", is_flag=True, help="wait until the request succeeded or failed")
@click.option("--timeout", type=SECONDS, default=120, show_default=True, help="seconds --wait waits")
@output_option
@click.pass_obj
def nodes_power(ctx, node: str, action: str, wait: bool, timeout: float, output: str) -> None:
    """Power a node on, off, cycle it, or ask its status: queues a request for its power driver
    (the answer of `status` is the request's result: on, off or unknown). soft-off asks the OS to
    shut down; boot-pxe, boot-disk, boot-http choose the next boot's device (BMC drivers)."""
    api = ctx.api
    request = api.request("POST", f"/nodes/{seg(node)}/power", ok=(202,), json={"action": action}).json()
    if wait:
        request = follow(api, request, timeout)
    emit_object(request, output)


@click.command("power-requests")
@table_options
@click.argument("node", required=False)
@click.option("--state", type=click.Choice(["queued", "running", "succeeded", "failed"]))
@output_option
@click.pass_obj
def nodes_power_requests(ctx, node: str | None, state: str | None, output: str) -> None:
    """Power requests, oldest first (of one node, in one state)."""
    emit_list(ctx.api.list_all("/power_requests", node=node, state=state), REQUEST_COLUMNS, output)


def _setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise CliError(f"setting {shown(text)}: expected KEY=VALUE (a JSON value, or else a string)")
    try:
        return key, json.loads(value, parse_constant=_not_json, parse_float=_finite)
    except RecursionError:
        raise CliError(f"setting {key}: the JSON value is nested too deeply") from None
    except ValueError:  # NaN, Infinity and 1e999 are not JSON: they stay strings
        return key, value


def _not_json(word: str):
    raise ValueError(f"{word} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is out of range")
    return value


@click.command("set-power")
@click.argument("node", required=False)
@click.argument("driver", required=False)
@click.argument("settings", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--secret", "secrets", multiple=True, metavar="KEY",
              help="a secret setting (password) read from a hidden prompt, or from a line of stdin when "
                   "it is not a terminal: it stays out of the shell history and the process list")
@click.option("--file", "file", type=click.Path(path_type=Path, dir_okay=False),
              help="many nodes at once: a YAML or JSON list of {node, driver, settings} (a rack's BMCs), "
                   "set in one call, all of them or none")
@output_option
@click.pass_obj
def nodes_set_power(ctx, node: str | None, driver: str | None, settings: tuple[str, ...], secrets: tuple[str, ...],
                    file: Path | None, output: str) -> None:
    """Give a node its power driver and the driver's settings (VALUE is JSON, or else a string:
    `qmp=/run/vm1.qmp timeout=5 command='["qemu-system-x86_64", "-daemonize"]'`;
    `address=10.0.9.5 username=crowbar --secret password`), or many nodes theirs with --file. The
    server checks them against the driver's settings (`crowbar nodes power-drivers`); secret ones
    are never shown back."""
    if file is not None:
        if node or driver or settings or secrets:
            raise CliError("set-power: give NODE DRIVER [KEY=VALUE]... or --file FILE, not both")
        items = read_document(file, "power settings")
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise CliError(f"{file}: expected a list of {{node, driver, settings}}")
        answer = ctx.api.put("/nodes/power", {"items": items})
        emit_list(answer["items"], ["node", "driver", "settings"], output)
        return
    if not node or not driver:
        raise CliError("set-power: give NODE DRIVER [KEY=VALUE]..., or --file FILE for many nodes")
    values = dict(map(_setting, settings))
    for key in secrets:
        values[key] = _read_secret(key)
    answer = ctx.api.put(f"/nodes/{seg(node)}/power", {"driver": driver, "settings": values})
    emit_object(answer, output)


def _read_secret(key: str) -> str:
    stdin = click.get_text_stream("stdin")
    if stdin.isatty():
        return click.prompt(key, hide_input=True)
    line = stdin.readline().rstrip("\n")
    if not line:
        raise CliError(f"--secret {key}: no line on stdin")
    return line


@click.command("show-power")
@click.argument("node")
@output_option
@click.pass_obj
def nodes_show_power(ctx, node: str, output: str) -> None:
    """A node's power driver and settings (secret ones only as "(set)")."""
    emit_object(ctx.api.get(f"/nodes/{seg(node)}/power"), output)


@click.command("power-drivers")
@table_options
@output_option
@click.pass_obj
def nodes_power_drivers(ctx, output: str) -> None:
    """The power drivers, their timeouts and their settings (* required, secret ones marked)."""
    drivers = ctx.api.get("/power_drivers")["items"]
    if output == "json":
        emit_list(drivers, [], output)
        return
    rows = [{"driver": d["name"], "summary": d["summary"], "timeout": d["timeout"],
             "settings": "\n".join(f"{key}{'*' if s['required'] else ''}{' (secret)' if s['secret'] else ''}: "
                                   f"{s['type']}, {s['description']}" for key, s in d["settings"].items())}
            for d in drivers]
    emit_list(rows, ["driver", "summary", "timeout", "settings"], output)


COMMANDS = [nodes_power, nodes_power_requests, nodes_set_power, nodes_show_power, nodes_power_drivers]
