"""per-deployment content filter policy; content filter hits in the request log

Existing deployments keep what their ``content_filter`` flag meant: true → null (the server's default
policy), false → a policy that is off (``{"enabled": false}``).

Revision ID: 0005
Revises: 0004
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('content_filter_policy', sa.JSON(), nullable=True))
    with op.batch_alter_table('deployment_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('filtered', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('filtered_categories', sa.JSON(), nullable=True))

    deployments = sa.table('deployments', sa.column('content_filter', sa.Boolean()),
                           sa.column('content_filter_policy', sa.JSON()))
    op.execute(deployments.update().where(deployments.c.content_filter.is_(False))
               .values(content_filter_policy={"enabled": False}))


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only")
