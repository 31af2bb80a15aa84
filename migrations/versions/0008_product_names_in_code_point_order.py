"""product names compared in code-point order

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 20:30:00.000000

"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# A product's name in the reports is the greatest seen. Python picks it for a batch in
# code-point order; max() and GREATEST() compared by the database's collation, and a
# linguistic one (en_US, ICU) disagrees ("aaaa" < "Pan dulce"). With COLLATE "C" on the
# columns they all agree, whatever the database was created with. SQLite compares bytes
# (code points) already. The type stays: no row is rewritten, the indexes holding the
# column are rebuilt.
COLUMNS = [("events", "product_name"), ("daily_product_counts", "product_name")]


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.execute(f'ALTER TABLE {table} ALTER COLUMN {column} TYPE varchar(200) COLLATE "C"')


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.execute(f'ALTER TABLE {table} ALTER COLUMN {column} TYPE varchar(200) COLLATE "default"')
