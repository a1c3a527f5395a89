"""Provisioning: node lifecycle state, boot MAC, power settings; node MACs; agent jobs

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("state", sa.String(32), nullable=False, server_default="ready"))
        batch.add_column(sa.Column("state_reason", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("state_changed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("os", sa.String(64), nullable=True))
        batch.add_column(sa.Column("boot_mac", sa.String(17), nullable=True))
        batch.add_column(sa.Column("power_driver", sa.String(32), nullable=False, server_default="manual"))
        batch.add_column(sa.Column("power", JSONType, nullable=False, server_default="{}"))
        batch.add_column(sa.Column("agent_action", sa.String(16), nullable=True))
        batch.create_unique_constraint("uq_nodes_boot_mac", ["boot_mac"])
    op.create_table(
        "node_macs",
        sa.Column("mac", sa.String(17), primary_key=True),
        sa.Column("node_id", sa.Integer(), sa.ForeignKey("nodes.id", ondelete="CASCADE"), nullable=False),
    )
    op.create_index("ix_node_macs_node_id", "node_macs", ["node_id"])
    op.create_table(
        "agent_jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("node_id", sa.Integer(), sa.ForeignKey("nodes.id", ondelete="CASCADE"), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="SET NULL"), nullable=True),
        sa.Column("server_id", sa.Integer(), sa.ForeignKey("servers.id"), nullable=True),
        sa.Column("script", sa.Text(), nullable=False),
        sa.Column("timeout", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_agent_jobs_node_state", "agent_jobs", ["node_id", "state"])
    op.create_index("ix_agent_jobs_run_id", "agent_jobs", ["run_id"])


def downgrade() -> None:
    op.drop_table("agent_jobs")
    op.drop_table("node_macs")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_constraint("uq_nodes_boot_mac", type_="unique")
        for col in ("agent_action", "power", "power_driver", "boot_mac", "os", "state_changed_at", "state_reason", "state"):
            batch.drop_column(col)
