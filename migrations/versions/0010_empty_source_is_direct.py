"""events.source: an empty source is no source ("direct"), as the API now stores it

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 10:10:00.000000

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_context().as_sql:  # a script (--sql) reads no rows: rebuild-rollups after
        op.execute("UPDATE events SET source = NULL WHERE source = ''")
        return
    bind = op.get_bind()
    # Plain SQL: the Tenant model may have columns this revision lacks.
    tenants = bind.execute(
        sa.text(
            "SELECT id FROM tenants WHERE id IN"
            " (SELECT DISTINCT tenant_id FROM events WHERE source = '')"
        )
    ).all()
    if not tenants:
        return
    bind.execute(sa.text("UPDATE events SET source = NULL WHERE source = ''"))
    # Their rollups counted '' as a source of its own: counted again, as "direct".
    from sqlalchemy.orm import Session

    from tenant_analytics.rollups import rebuild_rollups

    session = Session(bind=bind)
    for (tenant_id,) in tenants:
        rebuild_rollups(session, tenant_id)
    session.flush()


def downgrade():
    pass  # '' and NULL meant the same; nothing to restore
