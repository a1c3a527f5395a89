"""Users and roles: accounts (admin, operator, viewer) that own API tokens with an expiry

The admin token of earlier servers becomes the token of a user `admin` with the role admin.

Revision ID: 0007
Revises: 0006
"""
from datetime import datetime, timezone

from alembic import op
import sqlalchemy as sa

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("user_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_foreign_key("fk_api_tokens_user_id_users", "users", ["user_id"], ["id"], ondelete="CASCADE")
        batch.create_index("ix_api_tokens_user_id", ["user_id"])
    conn = op.get_bind()
    if conn.execute(sa.text("SELECT count(*) FROM api_tokens WHERE kind = 'admin'")).scalar():
        conn.execute(sa.text("INSERT INTO users (name, role, description, created_at) "
                             "VALUES ('admin', 'admin', 'the first administrator', :now)"),
                     {"now": datetime.now(timezone.utc)})
        conn.execute(sa.text("UPDATE api_tokens SET kind = 'user', name = 'admin/admin', "
                             "user_id = (SELECT id FROM users WHERE name = 'admin') WHERE kind = 'admin'"))


def downgrade() -> None:
    op.execute("UPDATE api_tokens SET kind = 'admin', name = 'admin' WHERE name = 'admin/admin'")
    op.execute("DELETE FROM api_tokens WHERE kind = 'user'")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_index("ix_api_tokens_user_id")
        batch.drop_constraint("fk_api_tokens_user_id_users", type_="foreignkey")
        batch.drop_column("rotated_at")
        batch.drop_column("expires_at")
        batch.drop_column("user_id")
    op.drop_table("users")
