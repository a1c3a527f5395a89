"""Networks: the network template, named ranges, IP allocations, Neutron tenant segments

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 12:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# JSON on SQLite, JSONB on PostgreSQL; spelled out here so the migration never changes with the models
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('network_settings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('teaming_mode', sa.Integer(), nullable=False),
    sa.Column('conduit_map', JSONType, nullable=False),
    sa.Column('interface_map', JSONType, nullable=False),
    sa.Column('neutron', JSONType, nullable=False),
    sa.Column('version', sa.String(length=32), nullable=False),
    sa.Column('released', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('networks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('category', sa.String(length=64), nullable=False),
    sa.Column('subnet', sa.String(length=64), nullable=False),
    sa.Column('vlan', sa.Integer(), nullable=True),
    sa.Column('use_vlan', sa.Boolean(), nullable=False),
    sa.Column('add_bridge', sa.Boolean(), nullable=False),
    sa.Column('mtu', sa.Integer(), nullable=False),
    sa.Column('conduit', sa.String(length=64), nullable=False),
    sa.Column('router', sa.String(length=64), nullable=True),
    sa.Column('router_pref', sa.Integer(), nullable=True),
    sa.Column('team_mode', sa.Integer(), nullable=False),
    sa.Column('use_team', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('network_ranges',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('network_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('first', sa.String(length=64), nullable=False),
    sa.Column('last', sa.String(length=64), nullable=False),
    sa.Column('cursor', sa.String(length=32), nullable=True),
    sa.Column('cursor_epoch', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['network_id'], ['networks.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('network_id', 'name', name='uq_network_ranges_network_name')
    )
    op.create_table('network_allocations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('network_id', sa.Integer(), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('range', sa.String(length=64), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.Column('address_key', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['network_id'], ['networks.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('network_id', 'address', name='uq_network_allocations_address'),
    sa.UniqueConstraint('network_id', 'node_id', name='uq_network_allocations_node'),
    sa.UniqueConstraint('network_id', 'address_key', name='uq_network_allocations_address_key')
    )
    with op.batch_alter_table('network_allocations', schema=None) as batch_op:
        batch_op.create_index('ix_network_allocations_node_id', ['node_id'], unique=False)

    op.create_table('neutron_segments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('network_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('network_type', sa.String(length=16), nullable=False),
    sa.Column('physical_network', sa.String(length=64), nullable=False),
    sa.Column('segmentation_id', sa.Integer(), nullable=False),
    sa.Column('provider', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('network_id'),
    sa.UniqueConstraint('network_type', 'physical_network', 'segmentation_id',
                        name='uq_neutron_segments_segment')
    )
    _create_release_triggers()


# Every allocation deleted (released, its node or network deleted: cascades fire triggers too)
# or moved to another address bumps network_settings.released, voiding the allocator's cursors.
SQLITE_TRIGGERS = [
    "CREATE TRIGGER network_allocations_released AFTER DELETE ON network_allocations "
    "BEGIN UPDATE network_settings SET released = released + 1; END",
    "CREATE TRIGGER network_allocations_moved AFTER UPDATE OF address_key ON network_allocations "
    "BEGIN UPDATE network_settings SET released = released + 1; END",
]
POSTGRESQL_TRIGGERS = [
    "CREATE FUNCTION network_allocations_released() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN UPDATE network_settings SET released = released + 1; RETURN NULL; END $$",
    "CREATE TRIGGER network_allocations_released AFTER DELETE ON network_allocations "
    "FOR EACH STATEMENT EXECUTE FUNCTION network_allocations_released()",
    "CREATE TRIGGER network_allocations_moved AFTER UPDATE OF address_key ON network_allocations "
    "FOR EACH STATEMENT EXECUTE FUNCTION network_allocations_released()",
]


def _create_release_triggers() -> None:
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": SQLITE_TRIGGERS, "postgresql": POSTGRESQL_TRIGGERS}.get(dialect, []):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        op.execute("DROP TRIGGER IF EXISTS network_allocations_released"
                   + (" ON network_allocations" if dialect == "postgresql" else ""))
        op.execute("DROP TRIGGER IF EXISTS network_allocations_moved"
                   + (" ON network_allocations" if dialect == "postgresql" else ""))
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS network_allocations_released()")
    op.drop_table('neutron_segments')
    with op.batch_alter_table('network_allocations', schema=None) as batch_op:
        batch_op.drop_index('ix_network_allocations_node_id')
    op.drop_table('network_allocations')
    op.drop_table('network_ranges')
    op.drop_table('networks')
    op.drop_table('network_settings')
