"""Discovery nonce: the hashed one-time nonce of a node's discovery boot script, and its expiry

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("boot_nonce_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("boot_nonce_expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("boot_nonce_expires_at")
        batch.drop_column("boot_nonce_hash")
