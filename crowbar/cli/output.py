"""Tables for people, JSON for scripts (`-o json`).

Every listing takes `--columns a,b,c` (which fields, in that order; any field of its rows),
`--sort FIELD[,-FIELD]` (`-` sorts that field descending; numbers as numbers, empty last) and
`--limit N` (with --sort: the first N after sorting, so everything is read first). They apply to
`-o json` too. Tables fit the terminal's width (80 columns too: cells wrap); off a terminal
they are 200 columns wide unless COLUMNS says otherwise.

Values in tables are shown as they are: never read as rich markup (a description `[/]` is text,
not a tag that breaks the table), and with control characters as escapes (a name or an attribute
that holds a terminal escape sequence cannot drive the terminal; line breaks and tabs stay).
"""

from __future__ import annotations

import json
import os

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()
if not console.is_terminal and not os.environ.get("COLUMNS"):  # piped or captured: do not squeeze tables
    console = Console(width=200)


def output_option(f):
    return click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
                        show_default=True, help="table for people, json for scripts")(f)


class Seconds(click.ParamType):
    """A number of seconds to wait: zero or more (inf waits for ever); NaN is refused."""

    name = "seconds"

    def convert(self, value, param, ctx):
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not seconds >= 0:  # negative, or NaN (which compares false to everything)
            self.fail(f"{value!r} is not a number of seconds (0 or more)", param, ctx)
        return seconds


SECONDS = Seconds()


def confirm_option(f):
    """--yes: a command that deletes asks first when it runs on a terminal, unless --yes is given."""
    return click.option("-y", "--yes", is_flag=True, help="do not ask for confirmation")(f)


def confirm(question: str, yes: bool) -> None:
    """Ask `question` on a terminal (abort unless answered yes); off a terminal, or with --yes,
    go ahead: scripts are not stopped by a question nobody can answer."""
    import sys

    if yes or not sys.stdin.isatty():
        return
    if not click.confirm(question, default=False):
        raise click.Abort()


def _stash(ctx: click.Context, param: click.Parameter, value):
    ctx.meta[f"crowbar.table.{param.name}"] = value
    return value


def _limit(ctx: click.Context, param: click.Parameter, value):
    """The limit a command asks the API for: none when the rows are sorted here first."""
    _stash(ctx, param, value)
    return None if ctx.meta.get("crowbar.table.sort") else value


def limit_option(f):
    """--limit N, passed to the API (the first N in its order; all of them with --sort)."""
    return click.option("--limit", type=click.IntRange(min=1), callback=_limit,
                        help="show at most this many (default: all)")(f)


def table_options(f):
    """--columns and --sort on a listing (and --limit, if it has no limit_option of its own); put it
    first, above the command's other options. emit_list applies them."""
    if not any(p.name == "limit" for p in getattr(f, "__click_params__", [])):
        f = click.option("--limit", type=click.IntRange(min=1), expose_value=False, callback=_stash,
                         help="show at most this many (default: all)")(f)
    f = click.option("--sort", metavar="FIELD[,-FIELD...]", is_eager=True, expose_value=False, callback=_stash,
                     help="sort by these fields (-FIELD: descending)")(f)
    return click.option("--columns", metavar="FIELD,...", is_eager=True, expose_value=False, callback=_stash,
                        help="show these fields, in this order")(f)


def _sorted(rows: list[dict], field: str, descending: bool) -> list[dict]:
    """Rows by one field (numbers before text, as numbers); rows without it last either way."""
    def key(row: dict):
        value = row.get(field)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (0, value, "")
        return (1, 0, _cell(value).lower())
    empty = [r for r in rows if r.get(field) in (None, "")]
    return sorted([r for r in rows if r.get(field) not in (None, "")], key=key, reverse=descending) + empty


def _fields(spec: str, known: list[str], option: str) -> list[str]:
    fields = [f.strip() for f in spec.split(",") if f.strip()]
    unknown = [f for f in fields if f.lstrip("-") not in known]
    if not fields or unknown:
        raise click.UsageError(f"{option} {spec!r}: {'unknown field ' + ', '.join(unknown) if unknown else 'no field'}"
                               f" (fields: {', '.join(known)})")
    return fields


def shape(rows: list[dict], columns: list[str]) -> tuple[list[dict], list[str]]:
    """`rows` and `columns` as the command line's --columns, --sort and --limit ask."""
    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    known = list(dict.fromkeys([*columns, *(k for row in rows for k in row)]))
    if meta.get("crowbar.table.columns"):
        columns = _fields(meta["crowbar.table.columns"], known, "--columns")
        rows = [{c: row.get(c) for c in columns} for row in rows]
    if meta.get("crowbar.table.sort"):
        for field in reversed(_fields(meta["crowbar.table.sort"], known, "--sort")):
            rows = _sorted(rows, field.lstrip("-"), field.startswith("-"))
    if meta.get("crowbar.table.limit"):
        rows = rows[: meta["crowbar.table.limit"]]
    return rows, columns


CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7f, *range(0x80, 0xa0)] if c not in (0x09, 0x0a)}


def plain(text: str) -> Text:
    """Text as it is: no markup, control characters (but line breaks and tabs) as escapes."""
    return Text(text.translate(CONTROLS))


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value) if not isinstance(value, list) or any(isinstance(v, (dict, list)) for v in value) \
            else ", ".join(str(v) for v in value)
    return str(value)


def emit_list(rows: list[dict], columns: list[str], output: str, title: str | None = None) -> None:
    rows, columns = shape(rows, columns)
    if output == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title=plain(title) if title else None, show_lines=False)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[plain(_cell(row.get(c))) for c in columns])
    console.print(table)
    if not rows:
        console.print("(none)")


def emit_object(obj: dict, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(obj, indent=2, default=str))
        return
    table = Table(show_header=False, box=None)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in obj.items():
        if isinstance(value, (dict, list)) and value and not all(isinstance(v, (str, int)) for v in (value if isinstance(value, list) else [0])):
            value = json.dumps(value, indent=2, default=str)
        table.add_row(plain(str(key)), plain(_cell(value) if not isinstance(value, str) else value))
    console.print(table)
