"""deployments and their request log

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('deployments',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('project_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=240), nullable=False),
    sa.Column('fine_tuned_model', sa.String(length=200), nullable=True),
    sa.Column('base_model', sa.String(length=200), nullable=False),
    sa.Column('task', sa.String(length=24), nullable=False),
    sa.Column('content_filter', sa.Boolean(), nullable=False),
    sa.Column('max_concurrent_requests', sa.Integer(), nullable=False),
    sa.Column('backend', sa.String(length=16), nullable=False),
    sa.Column('upstream_url', sa.String(length=500), nullable=True),
    sa.Column('upstream_model', sa.String(length=240), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('deleted_at', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deployments_deleted_at'), ['deleted_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_deployments_fine_tuned_model'), ['fine_tuned_model'], unique=False)
        batch_op.create_index(batch_op.f('ix_deployments_name'), ['name'], unique=False)
        batch_op.create_index(batch_op.f('ix_deployments_project_id'), ['project_id'], unique=False)

    op.create_table('deployment_requests',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('deployment_id', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('endpoint', sa.String(length=32), nullable=False),
    sa.Column('adapter', sa.String(length=240), nullable=True),
    sa.Column('stream', sa.Boolean(), nullable=False),
    sa.Column('status', sa.Integer(), nullable=False),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('latency_ms', sa.Double(), nullable=False),
    sa.Column('ttft_ms', sa.Double(), nullable=True),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], ),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('deployment_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deployment_requests_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_deployment_requests_deployment_id'), ['deployment_id'], unique=False)



def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only")
