"""Tables for people, JSON for scripts (`-o json`).

Values in tables are shown as they are: never read as rich markup (a description `[/]` is text,
not a tag that breaks the table), and with control characters as escapes (a name or an attribute
that holds a terminal escape sequence cannot drive the terminal; line breaks and tabs stay).
"""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()
if not console.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
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


def limit_option(f):
    return click.option("--limit", type=click.IntRange(min=1), help="show at most this many (default: all)")(f)


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
