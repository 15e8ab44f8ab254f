"""quarantine retention records when a refused payload was removed; TRUNCATE on the audit log is
refused by the database itself, as UPDATE and DELETE already are

The privileges of the service role (INSERT and SELECT on audit_log, no ownership) are granted by
`cxrtriage db upgrade` after the migrations (db/roles.py), not here: the role's name is a site
setting, and every upgrade grants again, so tables added later are covered.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('rejections') as batch_op:
        batch_op.add_column(sa.Column('quarantine_removed_at', sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name == 'postgresql':
        # A row trigger never sees TRUNCATE; a statement trigger does (even for the owner).
        op.execute("CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
                   "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse()")


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")
    with op.batch_alter_table('rejections') as batch_op:
        batch_op.drop_column('quarantine_removed_at')
