"""a heat-map export records the instance it was made from (sr_exports.source_instance_id)

SRs, which read the whole study, leave it empty.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

# Named, so that SQLite's batch mode can find the constraint again on downgrade.
FOREIGN_KEY = 'fk_sr_exports_source_instance_id'


def upgrade() -> None:
    with op.batch_alter_table('sr_exports') as batch_op:
        batch_op.add_column(sa.Column('source_instance_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(FOREIGN_KEY, 'instances', ['source_instance_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('sr_exports') as batch_op:
        batch_op.drop_constraint(FOREIGN_KEY, type_='foreignkey')
        batch_op.drop_column('source_instance_id')
