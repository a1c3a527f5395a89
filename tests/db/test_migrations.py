"""The migrations are the schema: they build exactly what the models describe, on both engines,
and downgrade cleanly."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

import crowbar.db.network_models  # noqa: F401  (registers the network tables on Base.metadata)
from crowbar.db import migrate
from crowbar.db.models import Base


def test_migrations_match_the_models(db):
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    assert migrate.current_revision(db.engine) == migrate.head_revision()


def test_downgrade_to_the_first_revision_and_back(db):
    migrate_cfg = migrate.alembic_config(db.engine)
    from alembic import command

    command.downgrade(migrate_cfg, "0001")
    tables = set(inspect(db.engine).get_table_names())
    assert "agent_jobs" not in tables and "networks" not in tables and "node_roles" in tables
    assert "state" not in {c["name"] for c in inspect(db.engine).get_columns("nodes")}
    migrate.upgrade(db.engine)
    assert {"agent_jobs", "networks", "node_macs"} <= set(inspect(db.engine).get_table_names())
    assert migrate.current_revision(db.engine) == migrate.head_revision()
