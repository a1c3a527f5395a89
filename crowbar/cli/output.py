"""Tables for people, JSON for scripts (`-o json`)."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

console = Console()
if not console.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
    console = Console(width=200)


def output_option(f):
    return click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
                        show_default=True, help="table for people, json for scripts")(f)


def limit_option(f):
    return click.option("--limit", type=click.IntRange(min=1), help="show at most this many (default: all)")(f)


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
    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[_cell(row.get(c)) for c in columns])
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
        table.add_row(key, _cell(value) if not isinstance(value, str) else value)
    console.print(table)
