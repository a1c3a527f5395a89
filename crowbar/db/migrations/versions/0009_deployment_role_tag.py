"""Deployment roles bound by tag: the node tag a role was bound by, remembered so that a commit binds
the nodes that gained the tag since and an export names the tag instead of the nodes

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployment_roles") as batch:
        batch.add_column(sa.Column("tag", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployment_roles") as batch:
        batch.drop_column("tag")
