"""`crowbar os rules show | set FILE | explain NODE | test FILE --node NODE | apply`.

The rules (docs/os-deployment.md) are a YAML file: ordered rules, each a JMESPath condition over a
node's facts and what it gives (os, root_device, tags), and a default. `set` sends the file's text
(the server keeps it as written); `test` tries a file on one node without saving it.
"""

from __future__ import annotations

from pathlib import Path

import click

from crowbar.cli.client import CliError, seg
from crowbar.cli.output import emit_list, emit_object, output_option

MAX_FILE = 256 * 1024


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE:
        raise CliError(f"{path} is larger than {MAX_FILE // 1024} KiB: that is not a rules file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{path} is not UTF-8 text") from None


def _verdict(row: dict) -> str:
    if row.get("error"):
        return "error"
    if row.get("chosen"):
        return "CHOSEN"
    return "matches (later)" if row.get("matched") else "no"


def _emit_explanation(answer: dict, output: str) -> None:
    if output == "json":
        emit_object(answer, output)
        return
    rows = [{"rule": r["rule"], "verdict": _verdict(r), "when": r["when"], "why": "; ".join(r["why"])}
            for r in answer["rules"]]
    emit_list(rows, ["rule", "verdict", "when", "why"], output,
              title=f"OS rules on {answer['node']}" + ("" if answer.get("saved") else " (not saved)"))
    choice = answer["choice"]
    click.echo(f"{answer['node']}: {'the default applies' if choice['rule'] is None else 'rule ' + choice['rule']}"
               f" -> os {choice['os'] or '(the node’s, else debian-12)'}, tags {', '.join(choice['tags']) or '(none)'}"
               + (f", root device {choice['root_device']}" if choice.get("root_device") else ""))


@click.group("rules")
def rules_group() -> None:
    """Rules that choose each node's OS, root-device hints and tags (first match wins)."""


@rules_group.command("show")
@output_option
@click.pass_obj
def rules_show(ctx, output: str) -> None:
    """The rules as they were set (YAML), or with -o json the parsed rules and who set them."""
    answer = ctx.api.get("/os_rules")
    if output == "json":
        emit_object(answer, output)
    else:
        click.echo(answer["source"].rstrip() or "# no OS rules: deploy uses --os, the node's OS, else debian-12")


@rules_group.command("set")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@output_option
@click.pass_obj
def rules_set(ctx, file: Path, output: str) -> None:
    """Replace the rules with FILE's (YAML); every node's tags are computed again."""
    answer = ctx.api.put("/os_rules", {"rules": _read(file)})
    if output == "json":
        emit_object(answer, output)
    else:
        click.echo(f"{len(answer['rules'])} rule(s) set; default os {answer['default'].get('os') or '(none)'}; "
                   f"{answer['nodes_tagged']} node(s) tagged")


@rules_group.command("explain")
@click.argument("node")
@output_option
@click.pass_obj
def rules_explain(ctx, node: str, output: str) -> None:
    """Every rule's verdict on NODE, why, and what it gets."""
    _emit_explanation(ctx.api.get(f"/os_rules/explain/{seg(node)}"), output)


@rules_group.command("test")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--node", required=True, help="the node to try the rules on")
@output_option
@click.pass_obj
def rules_test(ctx, file: Path, node: str, output: str) -> None:
    """Try FILE's rules on NODE before saving them: every verdict, nothing written."""
    _emit_explanation(ctx.api.post("/os_rules/test", {"rules": _read(file), "node": node}), output)


@rules_group.command("apply")
@output_option
@click.pass_obj
def rules_apply(ctx, output: str) -> None:
    """Compute every node's tags again (after roles were bound: conditions may read them)."""
    emit_object(ctx.api.post("/os_rules/apply"), output)
