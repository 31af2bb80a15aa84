"""store rollups: per-product counts, sessions' last-seen days per scope

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 15:00:00.000000

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        "daily_event_counts",
        sa.Column("session_events", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.create_table(
        "daily_product_counts",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("event_type", sa.String(length=40), nullable=False),
        sa.Column("product_slug", sa.String(length=200), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("product_name", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "day", "event_type", "product_slug"),
    )
    op.create_table(
        "session_last_seen",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=160), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("last_day", sa.Date(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "scope", "session_id"),
    )
    op.create_table(
        "session_last_seen_counts",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=160), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("sessions", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "scope", "day"),
    )
    rebuild_existing_rollups()


def rebuild_existing_rollups():
    """Fill the new rollups from the events already stored (nothing to do on a new database)."""
    if op.get_context().as_sql:  # offline (--sql): no rows to read; rebuild-rollups after
        return
    bind = op.get_bind()
    # Plain SQL for the tenants: the Tenant model may have columns this revision lacks.
    tenants = bind.execute(
        sa.text(
            "SELECT id FROM tenants WHERE id IN (SELECT DISTINCT tenant_id FROM events) ORDER BY id"
        )
    ).all()
    if not tenants:
        return
    # The app's own rebuild: it rewrites every rollup of a tenant.
    from sqlalchemy.orm import Session

    from tenant_analytics.rollups import rebuild_rollups

    session = Session(bind=bind)
    for (tenant_id,) in tenants:
        rebuild_rollups(session, tenant_id)
    session.flush()


def downgrade():
    op.drop_table("session_last_seen_counts")
    op.drop_table("session_last_seen")
    op.drop_table("daily_product_counts")
    with op.batch_alter_table("daily_event_counts") as batch_op:
        batch_op.drop_column("session_events")
