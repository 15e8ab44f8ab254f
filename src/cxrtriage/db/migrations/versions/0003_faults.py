"""faults: SR export retry window, claims and attempt log; association ownership and liveness;
purged studies

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sr_exports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retry_since', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('sends', sa.Integer(), nullable=False, server_default='0'))
    op.create_table('sr_export_attempts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('export_id', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resend', sa.Boolean(), nullable=False),
    sa.Column('status', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['export_id'], ['sr_exports.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('sr_export_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sr_export_attempts_export_id'), ['export_id'], unique=False)
    with op.batch_alter_table('associations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('receiver_id', sa.String(length=128), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_associations_receiver_id'), ['receiver_id'], unique=False)
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('purged_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('purged_at')
    with op.batch_alter_table('associations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_associations_receiver_id'))
        batch_op.drop_column('last_seen_at')
        batch_op.drop_column('receiver_id')
    with op.batch_alter_table('sr_export_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sr_export_attempts_export_id'))
    op.drop_table('sr_export_attempts')
    with op.batch_alter_table('sr_exports', schema=None) as batch_op:
        batch_op.drop_column('sends')
        batch_op.drop_column('claimed_until')
        batch_op.drop_column('retry_since')
