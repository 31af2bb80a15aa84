"""daily revenue without a ceiling

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 15:40:00.000000

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


# A day's revenue sums events of up to 999,999,999,999.99 each: numeric(18, 2) overflowed
# after 10,000 of them and then refused every later purchase of that day. On PostgreSQL,
# dropping a numeric's precision changes no stored value and rewrites no row.
def upgrade():
    with op.batch_alter_table("daily_revenue") as batch:
        batch.alter_column("amount", type_=sa.Numeric(scale=2), existing_type=sa.Numeric(18, 2))


def downgrade():
    with op.batch_alter_table("daily_revenue") as batch:
        batch.alter_column("amount", type_=sa.Numeric(18, 2), existing_type=sa.Numeric(scale=2))
