"""product names rolled up before 0008 recounted in code-point order (PostgreSQL)

Before 0008, max() and GREATEST() picked a product's name by the database's
collation: on a database created with a linguistic one (en-US, ICU) the rollups kept
another name ("Pan dulce") than the reports from raw events read ("aaaa"). 0008
changed the columns' collation but not the names already rolled up.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 11:30:00.000000

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade():
    bind = op.get_bind()
    if bind.dialect.name != "postgresql" or op.get_context().as_sql:
        return  # SQLite compares code points; a script reads no rows
    # The database's own collation: in code-point order "P" (80) comes before "a" (97).
    if not bind.scalar(sa.text("SELECT 'aaaa' < 'Pan dulce'")):
        return
    tenants = bind.scalars(
        sa.text("SELECT DISTINCT tenant_id FROM daily_product_counts ORDER BY 1")
    ).all()
    if not tenants:
        return
    from sqlalchemy.orm import Session

    from tenant_analytics.rollups import rebuild_rollups

    session = Session(bind=bind)
    for tenant_id in tenants:
        rebuild_rollups(session, tenant_id)
    session.flush()


def downgrade():
    pass  # names picked in code-point order are right at any revision
