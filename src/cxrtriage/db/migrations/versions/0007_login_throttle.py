"""review app: failed sign-ins counted per (name, address) while their window is open

The throttle reads these rows instead of counting audit rows, so repeated failures become one
audit row when a window opens and one summary when it closes: a password spray cannot flood the
append-only audit log. The rows are state, not history: they are deleted when their window closes.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'login_failures',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('username', sa.String(length=64), nullable=False),
        sa.Column('client', sa.String(length=64), nullable=False),
        sa.Column('first_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('basic', sa.Integer(), nullable=False),
        sa.Column('refused', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('username', 'client', name='uq_login_failures_username_client'),
    )
    op.create_index('ix_login_failures_client', 'login_failures', ['client'])
    op.create_index('ix_login_failures_last_at', 'login_failures', ['last_at'])


def downgrade() -> None:
    op.drop_index('ix_login_failures_last_at', table_name='login_failures')
    op.drop_index('ix_login_failures_client', table_name='login_failures')
    op.drop_table('login_failures')
