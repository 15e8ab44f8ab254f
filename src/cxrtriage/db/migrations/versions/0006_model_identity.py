"""a model version is its device UID (weights and operating point), not its weights alone

Revision ID: 0006
Revises: 0005
"""
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

# Names for the constraints 0001 created unnamed, so that SQLite's batch mode can find them.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _old_unique_name() -> str:
    return ("model_versions_weights_sha256_key" if op.get_bind().dialect.name == "postgresql"
            else "uq_model_versions_weights_sha256")


def upgrade() -> None:
    with op.batch_alter_table('model_versions', naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint(_old_unique_name(), type_='unique')
        batch_op.create_index('ix_model_versions_weights_sha256', ['weights_sha256'])
        batch_op.create_unique_constraint('uq_model_versions_device_uid', ['device_uid'])


def downgrade() -> None:
    with op.batch_alter_table('model_versions', naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint('uq_model_versions_device_uid', type_='unique')
        batch_op.drop_index('ix_model_versions_weights_sha256')
        batch_op.create_unique_constraint(_old_unique_name(), ['weights_sha256'])
