"""The networking tables: the migration matches the models, and goes down and up again."""

from __future__ import annotations

import re

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

import crowbar.db.network_models  # noqa: F401  (registers the tables on Base.metadata)
from crowbar.db import migrate
from crowbar.db.models import Base

TABLES = {"network_settings", "networks", "network_ranges", "network_allocations", "neutron_segments"}


def _ours(diff) -> list:
    """Differences that concern the networking tables (other tables belong to other migrations)."""
    pattern = re.compile(r"\b(" + "|".join(sorted(TABLES)) + r")\b")
    flat = [entry for item in diff for entry in (item if isinstance(item, list) else [item])]
    return [entry for entry in flat if pattern.search(repr(entry))]


def test_the_migration_matches_the_models(db):
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert _ours(diff) == []
    assert _ours([("add_index", "Index('ix', table=<network_allocations>)")])  # the filter sees ours
    names = set(inspect(db.engine).get_table_names())
    assert TABLES <= names


def test_constraints_exist_in_the_database(db):
    insp = inspect(db.engine)
    uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("network_allocations")}
    assert {("network_id", "address"), ("network_id", "node_id")} <= uniques
    assert ("network_type", "physical_network", "segmentation_id") in {
        tuple(u["column_names"]) for u in insp.get_unique_constraints("neutron_segments")}
    fks = {(tuple(f["constrained_columns"]), f["referred_table"], (f.get("options") or {}).get("ondelete"))
           for f in insp.get_foreign_keys("network_allocations")}
    assert (("node_id",), "nodes", "CASCADE") in fks


def test_downgrade_and_upgrade(sqlite_db):
    migrate.upgrade(sqlite_db.engine, "head")
    from alembic import command

    command.downgrade(migrate.alembic_config(sqlite_db.engine), "0001")
    assert not TABLES & set(inspect(sqlite_db.engine).get_table_names())
    migrate.upgrade(sqlite_db.engine)
    assert TABLES <= set(inspect(sqlite_db.engine).get_table_names())
    assert migrate.current_revision(sqlite_db.engine) == migrate.head_revision()
