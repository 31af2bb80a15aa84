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

# Only the names that differ: the days rolled up since 0008, which writes still reach,
# are right already, so no row a write takes is locked. The day as the rebuild counts it.
RENAME = """
UPDATE daily_product_counts AS rolled_up SET product_name = seen.name
FROM (
    SELECT (created_at AT TIME ZONE :zone)::date AS day, event_type, product_slug,
           max(product_name) AS name
    FROM events WHERE tenant_id = :tenant AND product_slug IS NOT NULL
    GROUP BY 1, 2, 3
) AS seen
WHERE rolled_up.tenant_id = :tenant AND rolled_up.day = seen.day
  AND rolled_up.event_type = seen.event_type AND rolled_up.product_slug = seen.product_slug
  AND rolled_up.product_name IS DISTINCT FROM seen.name
"""


def upgrade():
    bind = op.get_bind()
    if bind.dialect.name != "postgresql" or op.get_context().as_sql:
        return  # SQLite compares code points; a script reads no rows
    # The database's own collation: in code-point order "P" (80) comes before "a" (97).
    if not bind.scalar(sa.text("SELECT 'aaaa' < 'Pan dulce'")):
        return
    from tenant_analytics.timewindows import postgres_zone, tenant_zone

    bind.execute(sa.text("SET LOCAL timezone_abbreviations = 'Default'"))
    tenants = bind.execute(
        sa.text(
            "SELECT id, timezone FROM tenants"
            " WHERE id IN (SELECT DISTINCT tenant_id FROM daily_product_counts) ORDER BY id"
        )
    ).all()
    for tenant_id, zone in tenants:
        bind.execute(
            sa.text(RENAME), {"tenant": tenant_id, "zone": postgres_zone(tenant_zone(zone))}
        )


def downgrade():
    pass  # names picked in code-point order are right at any revision
