"""events.session_id: the sessions made up for landing-page events go

Code before 1 December 2026 gave every landing-page event sent without a session_id
(the snippet's page views, taps, times on page) a random session of its own, so each
counted as a store visit in session_stats, traffic_sources and the funnel's unique
mode; the code since keeps none. This clears those stored: a landing type's event
whose session is a version-4 UUID (as made up) that holds no other event, then counts
again the rollups of the tenants that had one.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04 04:00:00.000000

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

# The types the snippet sends (catalogue.LANDING_TYPES then), spelled out: a later
# catalogue must not change what this revision clears.
LANDING_TYPES = (
    "('pageview', 'click_whatsapp', 'click_call', 'click_toggle_currency',"
    " 'time_on_page', 'qr_scan', 'product_click')"
)
HEX = "[0-9a-f]"
# str(uuid4()), as the code made them up: lower-case hex, version 4, the RFC variant.
UUID4_SHAPE = f"{HEX * 8}-{HEX * 4}-4{HEX * 3}-[89ab]{HEX * 3}-{HEX * 12}"
MATCHES = {"postgresql": "session_id ~ '^{}$'", "sqlite": "session_id GLOB '{}'"}
# The events alone in a session shaped so, of a landing type: one pass grouping the
# sessions (no index leads with session_id), each then found by its primary key's
# first two columns (by its id alone, or by its session, it took over 10 minutes for
# 130,000 of 640,000 events; so, 7 s).
ALONE = """
    SELECT tenant_id, max(id) AS id FROM events WHERE {shaped}
    GROUP BY tenant_id, session_id HAVING count(*) = 1 AND max(event_type) IN {types}
"""


def alone(dialect: str) -> str:
    """The events whose session was made up for them: of a landing page's type, their
    session shaped as the code made them and holding no other event."""
    return ALONE.format(shaped=MATCHES[dialect].format(UUID4_SHAPE), types=LANDING_TYPES)


def upgrade():
    found = alone(op.get_context().dialect.name)
    clear = (
        "UPDATE events SET session_id = NULL"
        f" WHERE (tenant_id, id) IN (SELECT tenant_id, id FROM ({found}) alone)"
    )
    if op.get_context().as_sql:  # a script reads no rows: rebuild-rollups after
        op.execute(clear)
        return
    bind = op.get_bind()
    tenants = bind.execute(sa.text(f"SELECT DISTINCT tenant_id FROM ({found}) alone"))
    tenant_ids = sorted(tenant_id for (tenant_id,) in tenants)
    if not tenant_ids:
        return
    bind.execute(sa.text(clear))
    from sqlalchemy.orm import Session

    from tenant_analytics.rollups import rebuild_rollups

    session = Session(bind=bind)
    for tenant_id in tenant_ids:
        rebuild_rollups(session, tenant_id)
    session.flush()


def downgrade():
    pass  # the sessions were made up: nothing to restore
