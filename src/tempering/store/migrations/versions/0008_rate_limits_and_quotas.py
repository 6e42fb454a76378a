"""rate limits per deployment (requests and tokens per minute); what the job queue needs for quotas

Existing deployments get Azure's serverless defaults (1,000 requests and 200,000 tokens per minute). Jobs get
their estimated trained tokens (unknown for existing ones: they count with their trained tokens once known),
the time of their first claim (the UTC day their tokens count against) and the quota they wait on, once the job was told.

Revision ID: 0008
Revises: 0007
"""

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMNs (no batch copy: on SQLite that rebuilds the table and would break foreign keys to it)
    op.add_column('deployments', sa.Column('max_requests_per_1_minute', sa.Integer(), nullable=False,
                                           server_default='1000'))
    op.add_column('deployments', sa.Column('max_tokens_per_1_minute', sa.BigInteger(), nullable=False,
                                           server_default='200000'))
    op.add_column('jobs', sa.Column('estimated_tokens', sa.BigInteger(), nullable=True))
    op.add_column('jobs', sa.Column('claimed_at', sa.BigInteger(), nullable=True))
    op.add_column('jobs', sa.Column('quota_wait', sa.String(length=64), nullable=True))
    # jobs already claimed count against the day they started
    op.execute("UPDATE jobs SET claimed_at = started_at WHERE started_at IS NOT NULL")


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only")
