"""Roles that re-run when the network template changes: the networks (and their fields) a role's
runs derive values from, so that changing them re-queues the role's active noderoles

Revision ID: 0010
Revises: 0009
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# JSON on SQLite, JSONB on PostgreSQL; spelled out here so the migration never changes with models.py
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("roles") as batch:
        batch.add_column(sa.Column("reruns_on_networks", JSONType, nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("roles") as batch:
        batch.drop_column("reruns_on_networks")
