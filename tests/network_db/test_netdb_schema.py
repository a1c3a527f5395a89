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


def test_triggers_count_releases_even_when_a_node_deletion_cascades(db):
    from sqlalchemy import insert, select, text

    from crowbar.db.models import Node, utcnow
    from crowbar.db.network_models import NetworkAllocation, NetworkRow, NetworkSettings
    from crowbar.services import network, nodes

    with db.session() as s:
        node_id = nodes.create_node(s, "gone.example.com", bind_roles=False)["id"]
        network.allocate(s, "admin", "gone.example.com")
        before = s.execute(select(NetworkSettings.released)).scalar()
    with db.session() as s:  # a raw delete of the node, as any other code might do it
        s.execute(text("DELETE FROM nodes WHERE id = :id"), {"id": node_id})
    with db.session() as s:
        assert s.execute(select(NetworkAllocation)).first() is None
        assert s.execute(select(NetworkSettings.released)).scalar() > before
        admin = s.scalar(select(NetworkRow.id).where(NetworkRow.name == "admin"))
        node_id = s.execute(insert(Node.__table__).values(
            name="moved.example.com", description="", admin=False, alive=True, available=True,
            bootenv="local", discovery={}, hints={}, created_at=utcnow())).inserted_primary_key[0]
        s.execute(insert(NetworkAllocation.__table__).values(
            network_id=admin, node_id=node_id, range="host", address="192.168.124.90",
            address_key=network.address_key("192.168.124.90"), created_at=utcnow()))
        middle = s.execute(select(NetworkSettings.released)).scalar()
        s.execute(text("UPDATE network_allocations SET address = '192.168.124.91', "
                       "address_key = :k"), {"k": network.address_key("192.168.124.91")})
        assert s.execute(select(NetworkSettings.released)).scalar() > middle


def test_downgrade_and_upgrade(sqlite_db):
    migrate.upgrade(sqlite_db.engine, "head")
    from alembic import command

    command.downgrade(migrate.alembic_config(sqlite_db.engine), "0001")
    assert not TABLES & set(inspect(sqlite_db.engine).get_table_names())
    migrate.upgrade(sqlite_db.engine)
    assert TABLES <= set(inspect(sqlite_db.engine).get_table_names())
    assert migrate.current_revision(sqlite_db.engine) == migrate.head_revision()
