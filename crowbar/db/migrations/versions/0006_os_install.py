"""OS install: a node's install progress and record, and the kind of each agent job

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# JSON on SQLite, JSONB on PostgreSQL; spelled out here so the migration never changes with models.py
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("install", JSONType, nullable=False, server_default="{}"))
    with op.batch_alter_table("agent_jobs") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="script"))


def downgrade() -> None:
    with op.batch_alter_table("agent_jobs") as batch:
        batch.drop_column("kind")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("install")
