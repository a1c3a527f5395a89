"""node_roles loses its index on (node_id, state): the unique (node_id, role_id) index answers every
query by node (a node has a handful of noderoles, whose states are then read from the rows), and
each change of a noderole's state writes one index entry fewer (docs/benchmarks.md, "One set-up
database per size, a commit in one statement, one index fewer")

Revision ID: 0011
Revises: 0010
"""
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("node_roles") as batch:
        batch.drop_index("ix_node_roles_node_state")


def downgrade() -> None:
    with op.batch_alter_table("node_roles") as batch:
        batch.create_index("ix_node_roles_node_state", ["node_id", "state"], unique=False)
