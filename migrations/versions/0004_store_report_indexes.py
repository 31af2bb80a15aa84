"""store report indexes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 12:40:00.000000

"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# What the store reports read from a window of a tenant's events (queries/store.py):
# with these columns in the index, PostgreSQL scans the window without the table.
COVERED = ["event_type", "session_id", "source", "product_slug", "product_name"]


def upgrade():
    # On PostgreSQL ``events`` is partitioned by month: an index created on the parent
    # is created on every partition, and on the partitions created later.
    op.create_index(
        "ix_events_tenant_created_covering",
        "events",
        ["tenant_id", "created_at"],
        postgresql_include=COVERED,
    )
    # Same key without the extra columns: one index less to maintain on every insert.
    op.drop_index("ix_events_tenant_created", table_name="events")


def downgrade():
    op.create_index("ix_events_tenant_created", "events", ["tenant_id", "created_at"])
    op.drop_index("ix_events_tenant_created_covering", table_name="events")
