"""OS rules: the rules document (which OS, root-device hints and tags a node gets) and node tags

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# JSON on SQLite, JSONB on PostgreSQL; spelled out here so the migration never changes with models.py
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "os_rules",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("document", JSONType, nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
    )
    op.create_table(
        "node_tags",
        sa.Column("node_id", sa.Integer(), sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("tag", sa.String(64), primary_key=True),
    )
    op.create_index("ix_node_tags_tag", "node_tags", ["tag"])


def downgrade() -> None:
    op.drop_index("ix_node_tags_tag", table_name="node_tags")
    op.drop_table("node_tags")
    op.drop_table("os_rules")
