"""What SQL a test's code runs: the statements, collected as they go to the database."""

from __future__ import annotations

from sqlalchemy import event


def statements(db):
    """A list that collects the SQL statements run on `db` from now on, and a function that stops it."""
    seen: list[str] = []

    def before(conn, cursor, statement, *args):
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", before)
    return seen, lambda: event.remove(db.engine, "before_cursor_execute", before)
