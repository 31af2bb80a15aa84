"""dedupe_keys: a tap's or a share's beacon keyed apart from the sales ("txn-<sha256>")

A beacon of any event with a transaction id was keyed as a sale ("txn:<id>:<value>:
<currency>"), so one sent with an order's number and amount (a WhatsApp tap, a share)
hid that order's sale for good. Each such beacon recorded gets the key the code now
gives it (sent again, it is still recorded once), and its old key goes unless a sale
holds it too.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02 12:00:00.000000

"""

from datetime import UTC, datetime
from decimal import Decimal

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

SALE_TYPES = "('conversion', 'purchase')"
TRANSACTION_ID = {
    "postgresql": "metadata ->> 'transaction_id'",
    "sqlite": "json_extract(metadata, '$.transaction_id')",
}
# A beacon's event: the only ones with a transaction id and a revenue.
BEACONS = """
    SELECT DISTINCT tenant_id, event_type, {txn}, revenue, currency FROM events
    WHERE {txn} IS NOT NULL AND revenue IS NOT NULL AND currency IS NOT NULL
      AND event_type NOT IN {sales}
"""
OLD_KEY_UNLESS_A_SALE = """
    DELETE FROM dedupe_keys WHERE tenant_id = :tenant AND key = :key AND NOT EXISTS (
        SELECT 1 FROM events WHERE tenant_id = :tenant AND event_type IN {sales}
          AND {txn} = :transaction_id AND revenue = :revenue AND currency = :currency
    )
"""


def _beacons(bind) -> tuple[str, list]:
    txn = TRANSACTION_ID[bind.dialect.name]
    return txn, bind.execute(sa.text(BEACONS.format(txn=txn, sales=SALE_TYPES))).all()


def _add_key(bind, tenant_id: int, key: str) -> None:
    bind.execute(
        sa.text(
            "INSERT INTO dedupe_keys (tenant_id, key, seen_at)"
            " VALUES (:tenant, :key, :now) ON CONFLICT DO NOTHING"
        ),
        {"tenant": tenant_id, "key": key, "now": datetime.now(UTC)},
    )


def _old_key(transaction_id, value: Decimal, currency: str) -> str:
    return f"txn:{transaction_id}:{abs(value):.2f}:{currency}"


def upgrade():
    if op.get_context().as_sql:
        return  # a script reads no rows
    bind = op.get_bind()
    txn, beacons = _beacons(bind)
    if not beacons:
        return
    from tenant_analytics.event_builders import transaction_key

    for tenant_id, event_type, transaction_id, revenue, currency in beacons:
        value = Decimal(str(revenue))  # a float on SQLite
        _add_key(bind, tenant_id, transaction_key(str(transaction_id), value, currency, event_type))
        bind.execute(
            sa.text(OLD_KEY_UNLESS_A_SALE.format(txn=txn, sales=SALE_TYPES)),
            {
                "tenant": tenant_id,
                "key": _old_key(transaction_id, value, currency),
                "transaction_id": str(transaction_id),
                "revenue": revenue,
                "currency": currency,
            },
        )


def downgrade():
    """The older code keys a tap's beacon as a sale: each recorded gets that key back."""
    if op.get_context().as_sql:
        return
    bind = op.get_bind()
    _txn, beacons = _beacons(bind)
    for tenant_id, _event_type, transaction_id, revenue, currency in beacons:
        _add_key(bind, tenant_id, _old_key(transaction_id, Decimal(str(revenue)), currency))
