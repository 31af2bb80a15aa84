"""Rollups of tenants in CET, EET, MET or WET rebuilt with summer time (PostgreSQL)

PostgreSQL read these four zone names as fixed-offset abbreviations when a rebuild
counted days (a zone change, `rebuild-rollups`, migration 0005's fill), so an hour
of each summer day went to the day before; writes counted it right, in Python.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 18:00:00.000000

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

ZONES = ("CET", "EET", "MET", "WET")


def upgrade():
    bind = op.get_bind()
    if bind.dialect.name != "postgresql" or op.get_context().as_sql:
        return  # SQLite's rebuild counts days in Python; a script reads no rows
    # Plain SQL: the Tenant model may have columns a later revision adds.
    tenants = bind.execute(
        sa.text("SELECT id FROM tenants WHERE timezone IN :zones").bindparams(
            sa.bindparam("zones", expanding=True)
        ),
        {"zones": list(ZONES)},
    ).all()
    if not tenants:
        return
    from sqlalchemy.orm import Session

    from tenant_analytics.rollups import rebuild_rollups

    session = Session(bind=bind)
    for (tenant_id,) in tenants:
        rebuild_rollups(session, tenant_id)
    session.flush()


def downgrade():
    pass  # the rollups counted right are right at any revision
