"""per-deployment quantization of the local engine's weights

Existing deployments keep the server's setting (null: ``TEMPERING_SERVE_QUANTIZE``).

Revision ID: 0011
Revises: 0010
"""

from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('quantization', sa.String(length=8), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only; restore a backup taken before the upgrade")
