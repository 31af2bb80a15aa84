"""dedupe_keys: a sale's key names its amount and currency ("txn:<id>:<value>:<currency>")

The sales recorded so far get their key in the new form, so that a beacon replayed
after the upgrade is still recorded once. Keys in the old form stay (kept for good,
as they were; nothing reads them any more).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 18:20:00.000000

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

CHUNK = 1000
WITH_TRANSACTION = {
    "postgresql": "metadata ? 'transaction_id'",
    "sqlite": "json_extract(metadata, '$.transaction_id') IS NOT NULL",
}


def upgrade():
    bind = op.get_bind()
    from sqlalchemy.orm import Session

    from tenant_analytics.event_builders import transaction_key
    from tenant_analytics.models import DedupeKey, UTCDateTime
    from tenant_analytics.storage import dialect_insert

    condition = WITH_TRANSACTION[bind.dialect.name]
    sales = bind.execute(
        sa.text(
            "SELECT tenant_id, metadata, revenue, currency, created_at FROM events"
            f" WHERE {condition} AND revenue IS NOT NULL AND currency IS NOT NULL"
        ).columns(metadata=sa.JSON, revenue=sa.Numeric(14, 2), created_at=UTCDateTime)
    ).all()
    session = Session(bind=bind)
    keys = [
        {
            "tenant_id": tenant_id,
            "key": transaction_key(str(metadata["transaction_id"]), revenue, currency),
            "seen_at": created_at,
        }
        for tenant_id, metadata, revenue, currency, created_at in sales
        if isinstance(metadata, dict) and metadata.get("transaction_id")
    ]
    table = DedupeKey.__table__
    for start in range(0, len(keys), CHUNK):
        insert = dialect_insert(session)(table).values(keys[start : start + CHUNK])
        session.execute(insert.on_conflict_do_nothing(index_elements=["tenant_id", "key"]))
    session.flush()


def downgrade():
    pass  # the old keys were kept: a downgraded server finds its sales in them
