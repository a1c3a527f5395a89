"""What the benchmarks share: a fresh PostgreSQL database per case, dropped afterwards, and the
JSON lines of results (--json FILE)."""

from __future__ import annotations

import json
import platform
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def fresh_postgres(url: str, prefix: str = "crowbar_bench") -> tuple[str, Callable[[], None]]:
    """A new, empty database on the server `url` points at: (its URL, a function that drops it)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

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
