"""Initial schema: barclamps, roles, attribs, nodes, deployments, noderoles and their edges, runs, events, tokens

Revision ID: 0001
Revises: 
Create Date: 2026-11-29 23:50:42.016748
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# JSON on SQLite, JSONB on PostgreSQL; spelled out here so the migration never changes with models.py
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('barclamps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('version', sa.String(length=32), nullable=False),
    sa.Column('source_path', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('deployments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('parent_id', sa.Integer(), nullable=True),
    sa.Column('system', sa.Boolean(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['parent_id'], ['deployments.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deployments_parent_id'), ['parent_id'], unique=False)

    op.create_table('events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('object_type', sa.String(length=32), nullable=False),
    sa.Column('object_id', sa.Integer(), nullable=True),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('from_state', sa.String(length=32), nullable=True),
    sa.Column('to_state', sa.String(length=32), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_object', ['object_type', 'object_id'], unique=False)

    op.create_table('nodes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('admin', sa.Boolean(), nullable=False),
    sa.Column('alive', sa.Boolean(), nullable=False),
    sa.Column('available', sa.Boolean(), nullable=False),
    sa.Column('bootenv', sa.String(length=64), nullable=False),
    sa.Column('discovery', JSONType, nullable=False),
    sa.Column('hints', JSONType, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('servers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('hostname', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('stopped', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=True),
    sa.Column('token_hash', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_table('roles',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('barclamp_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('jig', sa.String(length=64), nullable=False),
    sa.Column('requires', JSONType, nullable=False),
    sa.Column('flags', JSONType, nullable=False),
    sa.Column('wants_attribs', JSONType, nullable=False),
    sa.Column('conflicts', JSONType, nullable=False),
    sa.Column('template', JSONType, nullable=False),
    sa.Column('scripts', JSONType, nullable=False),
    sa.ForeignKeyConstraint(['barclamp_id'], ['barclamps.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    with op.batch_alter_table('roles', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_roles_barclamp_id'), ['barclamp_id'], unique=False)

    op.create_table('attribs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('barclamp_id', sa.Integer(), nullable=False),
    sa.Column('role_id', sa.Integer(), nullable=True),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('map', sa.Text(), nullable=False),
    sa.Column('default', JSONType, nullable=True),
    sa.Column('schema', JSONType, nullable=False),
    sa.Column('writable', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['barclamp_id'], ['barclamps.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['role_id'], ['roles.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    with op.batch_alter_table('attribs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_attribs_barclamp_id'), ['barclamp_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_attribs_role_id'), ['role_id'], unique=False)

    op.create_table('deployment_roles',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('deployment_id', sa.Integer(), nullable=False),
    sa.Column('role_id', sa.Integer(), nullable=False),
    sa.Column('proposed', JSONType, nullable=False),
    sa.Column('committed', JSONType, nullable=False),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['role_id'], ['roles.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('deployment_id', 'role_id')
    )
    with op.batch_alter_table('deployment_roles', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deployment_roles_role_id'), ['role_id'], unique=False)

    op.create_table('node_roles',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('role_id', sa.Integer(), nullable=False),
    sa.Column('deployment_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('cohort', sa.Integer(), nullable=False),
    sa.Column('proposed', JSONType, nullable=False),
    sa.Column('committed', JSONType, nullable=False),
    sa.Column('wall', JSONType, nullable=False),
    sa.Column('run_count', sa.Integer(), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], ),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], ),
    sa.ForeignKeyConstraint(['role_id'], ['roles.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('node_id', 'role_id')
    )
    with op.batch_alter_table('node_roles', schema=None) as batch_op:
        batch_op.create_index('ix_node_roles_deployment_state', ['deployment_id', 'state'], unique=False)
        batch_op.create_index('ix_node_roles_node_state', ['node_id', 'state'], unique=False)
        batch_op.create_index(batch_op.f('ix_node_roles_role_id'), ['role_id'], unique=False)
        batch_op.create_index('ix_node_roles_state_cohort_id', ['state', 'cohort', 'id'], unique=False)

    op.create_table('node_role_edges',
    sa.Column('parent_id', sa.Integer(), nullable=False),
    sa.Column('child_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['child_id'], ['node_roles.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['parent_id'], ['node_roles.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('parent_id', 'child_id')
    )
    with op.batch_alter_table('node_role_edges', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_node_role_edges_child_id'), ['child_id'], unique=False)

    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('node_role_id', sa.Integer(), nullable=False),
    sa.Column('server_id', sa.Integer(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attrs', JSONType, nullable=False),
    sa.Column('log', sa.Text(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['node_role_id'], ['node_roles.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['server_id'], ['servers.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_runs_node_role_id'), ['node_role_id'], unique=False)
        batch_op.create_index('ix_runs_state_server', ['state', 'server_id'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('ix_runs_state_server')
        batch_op.drop_index(batch_op.f('ix_runs_node_role_id'))

    op.drop_table('runs')
    with op.batch_alter_table('node_role_edges', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_node_role_edges_child_id'))

    op.drop_table('node_role_edges')
    with op.batch_alter_table('node_roles', schema=None) as batch_op:
        batch_op.drop_index('ix_node_roles_state_cohort_id')
        batch_op.drop_index(batch_op.f('ix_node_roles_role_id'))
        batch_op.drop_index('ix_node_roles_node_state')
        batch_op.drop_index('ix_node_roles_deployment_state')

    op.drop_table('node_roles')
    with op.batch_alter_table('deployment_roles', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deployment_roles_role_id'))

    op.drop_table('deployment_roles')
    with op.batch_alter_table('attribs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_attribs_role_id'))
        batch_op.drop_index(batch_op.f('ix_attribs_barclamp_id'))

    op.drop_table('attribs')
    with op.batch_alter_table('roles', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_roles_barclamp_id'))

    op.drop_table('roles')
    op.drop_table('api_tokens')
    op.drop_table('servers')
    op.drop_table('nodes')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_object')

    op.drop_table('events')
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deployments_parent_id'))

    op.drop_table('deployments')
    op.drop_table('barclamps')

