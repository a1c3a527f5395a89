"""Small SQL helpers every layer shares: batching ids under the bound-parameter limit, and which
engine a session or connection talks to."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

CHUNK = 5000  # stays far below SQLite's limit on bound parameters


def chunks(items: Sequence, size: int = CHUNK) -> Iterable[list]:
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def is_postgresql(bind: Engine | Connection | Session) -> bool:
    """True when the engine, connection or session talks to PostgreSQL (else SQLite)."""
    if isinstance(bind, Session):
        bind = bind.get_bind()
    return bind.dialect.name == "postgresql"
