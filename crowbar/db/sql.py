"""Small SQL helpers every layer shares: batching ids under the bound-parameter limit, which
engine a session or connection talks to, keyset paging, numbers read from JSON columns."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, Engine, Float, Integer, Select, any_, bindparam, tuple_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import ColumnElement

CHUNK = 5000  # stays far below SQLite's limit on bound parameters
# Ids are INTEGER columns: 32 bits on PostgreSQL. A larger number names no row, and PostgreSQL
# refuses to even compare a column with it ("integer out of range"); SQLite cannot bind one past
# 64 bits. Lookups answer "not found" past it, and paging markers refuse it.
MAX_ID = 2**31 - 1


def chunks(items: Sequence, size: int = CHUNK) -> Iterable[list]:
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def is_postgresql(bind: Engine | Connection | Session) -> bool:
    """True when the engine, connection or session talks to PostgreSQL (else SQLite)."""
    if isinstance(bind, Session):
        bind = bind.get_bind()
    return bind.dialect.name == "postgresql"


def among(column, ids: Iterable[int], bind: Engine | Connection | Session | bool) -> ColumnElement[bool]:
    """`column IN (ids)` for an integer column; on PostgreSQL (`bind` is, or talks to, it)
    `column = ANY(:ids)`, one array parameter. An IN list is a placeholder per id, so its
    statement's text changes with the number of ids: psycopg parses each one anew (it caches
    statements under 4 KB and 50 parameters) and PostgreSQL plans each anew. With one array the
    text is always the same: psycopg parses it once and, from its fifth run, PostgreSQL runs it
    prepared. The hot paths of the annealer use it (docs/benchmarks.md, "Less work per noderole")."""
    pg = bind if isinstance(bind, bool) else is_postgresql(bind)
    if pg:
        return column == any_(bindparam(None, list(ids), type_=ARRAY(Integer)))
    return column.in_(list(ids))


def ids_where(ids: Sequence[int], pg: bool, column: str = "id", name: str = "ids") -> tuple[str, dict]:
    """`column` among these integer ids, for a statement written as text: (its condition, its
    parameters). One array parameter on PostgreSQL (the same text whatever the count, as `among`);
    on SQLite, which has no arrays, an IN list the statement expands (a list parameter: see
    db.events.record_changes), so that its text too stays the same and is compiled once."""
    if pg:
        return f"{column} = ANY(CAST(:{name} AS integer[]))", {name: list(ids)}
    return f"{column} IN :{name}", {name: list(ids)}



def keyset(query: Select, key, limit: int | None = None, marker=None) -> Select:
    """`query` in ascending `key` order, from just after `marker` (the last key of the previous
    page), at most `limit` rows: keyset paging, which costs the same on every page (no OFFSET)
    and neither repeats nor skips a row when rows are added between pages.

    `key` is a column, or a tuple of columns that is unique together (and NOT NULL) with
    `marker` a tuple of their values: the order is then column by column, and the marker is
    compared as a row value (SQLite 3.15+, PostgreSQL), which an index on those columns serves."""
    columns = key if isinstance(key, tuple) else (key,)
    if marker is not None:
        query = query.where(tuple_(*columns) > tuple_(*marker) if isinstance(key, tuple) else key > marker)
    query = query.order_by(*columns)
    return query if limit is None else query.limit(limit)


class json_number(ColumnElement):  # noqa: N801 - used like a SQL function
    """The number at `path` (keys) in the JSON column `column`, as a float; NULL where the path is
    missing or holds anything but a number (a string there is no error, unlike a plain CAST on
    PostgreSQL). For reading inventory values (memory, CPUs) in a WHERE or ORDER BY."""

    type = Float()
    inherit_cache = True

    def __init__(self, column, *path: str):
        self.column, self.path = column, tuple(path)

    def _gen_cache_key(self, anon_map, bindparams):  # the path is part of the SQL text
        return (json_number, self.column._gen_cache_key(anon_map, bindparams), self.path)


def _path_ok(path: tuple[str, ...]) -> None:
    for key in path:
        if not key.replace("_", "").isalnum():
            raise ValueError(f"json_number: path key {key!r} must be letters, digits and '_'")


@compiles(json_number)
def _json_number_sqlite(element, compiler, **kw):
    _path_ok(element.path)
    column, path = compiler.process(element.column, **kw), "$." + ".".join(element.path)
    # json_valid first: a row an older server stored with NaN or a lone surrogate is not JSON to
    # SQLite, and json_type would fail the whole query (NULL for that row instead)
    return (f"(CASE WHEN json_valid({column}) THEN CASE WHEN json_type({column}, '{path}') IN ('integer', 'real') "
            f"THEN CAST(json_extract({column}, '{path}') AS REAL) END END)")


@compiles(json_number, "postgresql")
def _json_number_postgresql(element, compiler, **kw):
    _path_ok(element.path)
    column, path = compiler.process(element.column, **kw), "{" + ",".join(element.path) + "}"
    return (f"(CASE WHEN jsonb_typeof({column} #> '{path}') = 'number' "
            f"THEN CAST({column} #>> '{path}' AS DOUBLE PRECISION) END)")


class json_array_sum(ColumnElement):  # noqa: N801 - used like a SQL function
    """The sum of the numbers at key `field` of the objects in the JSON array at key `array` of the
    JSON column `column` (a node's disks' `size_bytes`), as a float; NULL where there is no such
    array or no number in it. A correlated subquery over that one row's array (SQLite json_each,
    PostgreSQL jsonb_array_elements), for a WHERE or ORDER BY like `json_number`."""

    type = Float()
    inherit_cache = True

    def __init__(self, column, array: str, field: str):
        self.column, self.array, self.field = column, array, field

    def _gen_cache_key(self, anon_map, bindparams):
        return (json_array_sum, self.column._gen_cache_key(anon_map, bindparams), self.array, self.field)


@compiles(json_array_sum)
def _json_array_sum_sqlite(element, compiler, **kw):
    _path_ok((element.array, element.field))
    column, array, item = compiler.process(element.column, **kw), f"$.{element.array}", f"$.{element.field}"
    return (f"(SELECT sum(CASE WHEN json_type(_e.value, '{item}') IN ('integer', 'real') "
            f"THEN json_extract(_e.value, '{item}') END) FROM json_each(CASE WHEN json_valid({column}) AND "
            f"json_type({column}, '{array}') = 'array' THEN {column} END, '{array}') AS _e "
            f"WHERE _e.type = 'object')")


@compiles(json_array_sum, "postgresql")
def _json_array_sum_postgresql(element, compiler, **kw):
    _path_ok((element.array, element.field))
    column, array, item = compiler.process(element.column, **kw), element.array, element.field
    return (f"(SELECT sum(CASE WHEN jsonb_typeof(_e -> '{item}') = 'number' "
            f"THEN CAST(_e ->> '{item}' AS DOUBLE PRECISION) END) "
            f"FROM jsonb_array_elements(CASE WHEN jsonb_typeof({column} -> '{array}') = 'array' "
            f"THEN {column} -> '{array}' END) AS _e WHERE jsonb_typeof(_e) = 'object')")
