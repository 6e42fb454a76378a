"""content blocklists (custom terms and regular expressions for the content filter)

Revision ID: 0004
Revises: 0003
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('content_blocklists',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('project_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('project_id', 'name')
    )
    with op.batch_alter_table('content_blocklists', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_content_blocklists_project_id'), ['project_id'], unique=False)

    op.create_table('content_blocklist_items',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('blocklist_id', sa.String(length=40), nullable=False),
    sa.Column('text', sa.String(length=500), nullable=False),
    sa.Column('is_regex', sa.Boolean(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['blocklist_id'], ['content_blocklists.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('content_blocklist_items', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_content_blocklist_items_blocklist_id'), ['blocklist_id'], unique=False)


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only")
