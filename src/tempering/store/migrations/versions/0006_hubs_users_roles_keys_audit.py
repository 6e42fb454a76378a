"""hubs, users, project and hub roles, service accounts, key holders and expiry, the audit log, hub secrets

Existing data is kept and given an owner: a hub named "default" holds every project; a user "admin" (a server
administrator, with no password until the server's next start prints one) is that hub's admin, Owner of every
project, and the holder of every existing API key, which keeps working with its role.

Revision ID: 0006
Revises: 0005
"""

import secrets
import time

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def _big_id():
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table('hubs',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('users',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('is_admin', sa.Boolean(), nullable=False),
    sa.Column('disabled', sa.Boolean(), nullable=False),
    sa.Column('locale', sa.String(length=16), nullable=False),
    sa.Column('session_epoch', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('username')
    )
    op.create_table('hub_members',
    sa.Column('hub_id', sa.String(length=40), nullable=False),
    sa.Column('user_id', sa.String(length=40), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['hub_id'], ['hubs.id'], ),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('hub_id', 'user_id')
    )
    with op.batch_alter_table('hub_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hub_members_user_id'), ['user_id'], unique=False)
    op.create_table('project_members',
    sa.Column('project_id', sa.String(length=40), nullable=False),
    sa.Column('user_id', sa.String(length=40), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('project_id', 'user_id')
    )
    with op.batch_alter_table('project_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_project_members_user_id'), ['user_id'], unique=False)
    op.create_table('service_accounts',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('project_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('service_accounts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_service_accounts_project_id'), ['project_id'], unique=False)
    op.create_table('audit_log',
    sa.Column('seq', _big_id(), autoincrement=True, nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('hub_id', sa.String(length=40), nullable=True),
    sa.Column('project_id', sa.String(length=40), nullable=True),
    sa.Column('actor_user_id', sa.String(length=40), nullable=True),
    sa.Column('actor_key_id', sa.String(length=40), nullable=True),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=240), nullable=True),
    sa.Column('address', sa.String(length=64), nullable=True),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_log_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_log_hub_id'), ['hub_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_log_project_id'), ['project_id'], unique=False)
    op.create_table('hub_secrets',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('hub_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('ciphertext', sa.Text(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['hub_id'], ['hubs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('hub_id', 'name')
    )
    with op.batch_alter_table('hub_secrets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hub_secrets_hub_id'), ['hub_id'], unique=False)

    # Plain ADD COLUMNs: SQLite's batch mode would copy and drop ``projects`` to add a foreign key, which its
    # own foreign keys (files, jobs, ... → projects) forbid. The references are enforced on PostgreSQL.
    op.add_column('projects', sa.Column('hub_id', sa.String(length=40), nullable=True))
    op.add_column('projects', sa.Column('quotas', sa.JSON(), nullable=True))
    op.add_column('projects', sa.Column('status', sa.String(length=16), nullable=True))
    op.add_column('projects', sa.Column('deleted_at', sa.BigInteger(), nullable=True))
    op.create_index(op.f('ix_projects_hub_id'), 'projects', ['hub_id'], unique=False)
    op.add_column('api_keys', sa.Column('user_id', sa.String(length=40), nullable=True))
    op.add_column('api_keys', sa.Column('service_account_id', sa.String(length=40), nullable=True))
    op.add_column('api_keys', sa.Column('expires_at', sa.BigInteger(), nullable=True))
    op.add_column('api_keys', sa.Column('last_used_at', sa.BigInteger(), nullable=True))
    op.create_index(op.f('ix_api_keys_user_id'), 'api_keys', ['user_id'], unique=False)
    if op.get_bind().dialect.name != 'sqlite':
        op.create_foreign_key('fk_projects_hub_id', 'projects', 'hubs', ['hub_id'], ['id'])
        op.create_foreign_key('fk_api_keys_user_id', 'api_keys', 'users', ['user_id'], ['id'])
        op.create_foreign_key('fk_api_keys_service_account_id', 'api_keys', 'service_accounts',
                              ['service_account_id'], ['id'])
    _adopt_existing_data()


def _adopt_existing_data() -> None:
    """Give what the previous schema held an owner (see the module's docstring)."""
    bind = op.get_bind()
    projects = sa.table('projects', sa.column('id', sa.String()), sa.column('hub_id', sa.String()),
                        sa.column('quotas', sa.JSON()), sa.column('status', sa.String()))
    op.execute(projects.update().values(quotas={}, status='active'))
    project_ids = [row[0] for row in bind.execute(sa.select(projects.c.id))]
    if not project_ids:
        return  # a new database: the server's first start creates the hub, the admin and the project
    now = int(time.time())
    hub_id, admin_id = _id('hub_'), _id('user-')
    op.bulk_insert(sa.table('hubs', sa.column('id'), sa.column('name'), sa.column('settings', sa.JSON()),
                            sa.column('created_at')),
                   [{'id': hub_id, 'name': 'default', 'settings': {}, 'created_at': now}])
    op.bulk_insert(sa.table('users', sa.column('id'), sa.column('username'), sa.column('password_hash'),
                            sa.column('name'), sa.column('email'), sa.column('is_admin', sa.Boolean()),
                            sa.column('disabled', sa.Boolean()), sa.column('locale'),
                            sa.column('session_epoch'), sa.column('created_at')),
                   [{'id': admin_id, 'username': 'admin', 'password_hash': '', 'name': 'Administrator',
                     'email': None, 'is_admin': True, 'disabled': False, 'locale': 'en', 'session_epoch': 0,
                     'created_at': now}])
    op.bulk_insert(sa.table('hub_members', sa.column('hub_id'), sa.column('user_id'), sa.column('role'),
                            sa.column('created_at')),
                   [{'hub_id': hub_id, 'user_id': admin_id, 'role': 'admin', 'created_at': now}])
    op.bulk_insert(sa.table('project_members', sa.column('project_id'), sa.column('user_id'),
                            sa.column('role'), sa.column('created_at')),
                   [{'project_id': p, 'user_id': admin_id, 'role': 'owner', 'created_at': now}
                    for p in project_ids])
    op.execute(projects.update().values(hub_id=hub_id))
    keys = sa.table('api_keys', sa.column('user_id', sa.String()))
    op.execute(keys.update().values(user_id=admin_id))


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only")
