"""tenants.suspended: switched off by an operator, which its owners cannot undo

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 18:40:00.000000

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade():
    # A tenant switched off before could have been either's: left to its owners, as it was.
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(
            sa.Column("suspended", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade():
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("suspended")
