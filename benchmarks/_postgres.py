"""What the benchmarks share: a fresh PostgreSQL database per case, dropped afterwards, and the
JSON lines of results (--json FILE)."""

from __future__ import annotations

import json
import platform
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def fresh_postgres(url: str, prefix: str = "crowbar_bench", template: str | None = None) -> tuple[str, Callable[[], None]]:
    """A new database on the server `url` points at: (its URL, a function that drops it). Empty, or
    a copy of the database `template` (a URL on the same server; nothing may be connected to it)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    copy = f' TEMPLATE "{make_url(template).database}"' if template else ""
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"{copy}'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(url).set(database=name).render_as_string(hide_password=False), drop


def append_json(path: Path, rows: list[dict], **extra) -> None:
    """Append each result as one JSON line, with the Python version (and `extra`) it ran under."""
    with path.open("a") as fh:
        for row in rows:
            fh.write(json.dumps(row | {"python": platform.python_version(), **extra}) + "\n")


def each_case(sizes: list[int], postgres: str | None, no_sqlite: bool, prefix: str, what: str,
              run: Callable[[int, str | None], dict]) -> list[dict]:
    """`run(size, database)` for each size on SQLite (database None; not with `no_sqlite`) and on a
    fresh database of the PostgreSQL server `postgres` (dropped afterwards): the reports, each
    printed as a JSON line as it comes."""
    reports = []
    for n in sizes:
        for engine_url in ([] if no_sqlite else [None]) + ([postgres] if postgres else []):
            database, drop = fresh_postgres(engine_url, prefix) if engine_url else (None, None)
            try:
                print(f"{'postgresql' if database else 'sqlite'}, {n} {what}:", file=sys.stderr, flush=True)
                reports.append(run(n, database))
            finally:
                if drop:
                    drop()
            print(json.dumps(reports[-1]), flush=True)
    return reports
