"""review app: "try an image" requests, classified by a worker instead of the web process

The web records the request and spools the upload; a worker writes the answer (probabilities,
flag, model, note, the heat map as a small PNG) into the row and removes the upload.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'trials',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('token', sa.String(length=32), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('spool_path', sa.Text(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('error', sa.Text(), nullable=False),
        sa.Column('result', sa.JSON(), nullable=False),
        sa.Column('cam_png', sa.LargeBinary(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['users.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('token'),
    )
    op.create_index('ix_trials_user_id', 'trials', ['user_id'])
    op.create_index('ix_trials_state', 'trials', ['state'])
    op.create_index('ix_trials_created_at', 'trials', ['created_at'])


def downgrade() -> None:
    op.drop_index('ix_trials_created_at', table_name='trials')
    op.drop_index('ix_trials_state', table_name='trials')
    op.drop_index('ix_trials_user_id', table_name='trials')
    op.drop_table('trials')
