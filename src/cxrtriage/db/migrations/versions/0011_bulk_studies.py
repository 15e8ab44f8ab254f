"""studies.bulk: a study requeued by bulk reprocessing (nightly or `cxrtriage reprocess`), so that
a worker filling a batch takes live studies first; a new instance makes the study live again

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('studies') as batch_op:
        batch_op.add_column(sa.Column('bulk', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('studies') as batch_op:
        batch_op.drop_column('bulk')
