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
# The sales of those transaction ids: one pass over the events for up to CHUNK of them.
SALES = """
    SELECT DISTINCT tenant_id, {txn}, revenue, currency FROM events
    WHERE {txn} IN :transaction_ids AND revenue IS NOT NULL AND currency IS NOT NULL
      AND event_type IN {sales}
"""
CHUNK = 5000  # bound parameters: SQLite takes 32,766


def _beacons(bind) -> list:
    txn = TRANSACTION_ID[bind.dialect.name]
    return bind.execute(sa.text(BEACONS.format(txn=txn, sales=SALE_TYPES))).all()


def _sale_keys(bind, transaction_ids: list[str]) -> set[tuple[int, str]]:
    """(tenant, key) of the sales recorded with ``transaction_ids``, in the old form."""
    txn = TRANSACTION_ID[bind.dialect.name]
    query = sa.text(SALES.format(txn=txn, sales=SALE_TYPES)).bindparams(
        sa.bindparam("transaction_ids", expanding=True)
    )
    keys = set()
    for start in range(0, len(transaction_ids), CHUNK):
        chunk = transaction_ids[start : start + CHUNK]
        for tenant_id, transaction_id, revenue, currency in bind.execute(
            query, {"transaction_ids": chunk}
        ):
            keys.add((tenant_id, _old_key(transaction_id, Decimal(str(revenue)), currency)))
    return keys


def _add_keys(bind, keys: set[tuple[int, str]]) -> None:
    now = datetime.now(UTC)
    if keys:
        bind.execute(
            sa.text(
                "INSERT INTO dedupe_keys (tenant_id, key, seen_at)"
                " VALUES (:tenant, :key, :now) ON CONFLICT DO NOTHING"
            ),
            [{"tenant": tenant_id, "key": key, "now": now} for tenant_id, key in sorted(keys)],
        )


def _old_key(transaction_id, value: Decimal, currency: str) -> str:
    return f"txn:{transaction_id}:{abs(value):.2f}:{currency}"


def upgrade():
    if op.get_context().as_sql:
        return  # a script reads no rows
    bind = op.get_bind()
    beacons = _beacons(bind)
    if not beacons:
        return
    from tenant_analytics.catalogue import EVENT_KINDS
    from tenant_analytics.event_builders import transaction_key

    new_keys, old_keys = set(), set()
    for tenant_id, event_type, transaction_id, revenue, currency in beacons:
        if event_type not in EVENT_KINDS:
            continue  # loaded around the app (COPY): no beacon of its own, its key kept
        value = Decimal(str(revenue))  # a float on SQLite
        new_keys.add((tenant_id, transaction_key(str(transaction_id), value, currency, event_type)))
        old_keys.add((tenant_id, _old_key(transaction_id, value, currency)))
    _add_keys(bind, new_keys)
    held_by_a_sale = _sale_keys(bind, sorted({str(row[2]) for row in beacons}))
    gone = sorted(old_keys - held_by_a_sale)
    if gone:
        bind.execute(
            sa.text("DELETE FROM dedupe_keys WHERE tenant_id = :tenant AND key = :key"),
            [{"tenant": tenant_id, "key": key} for tenant_id, key in gone],
        )


def downgrade():
    """The older code keys a tap's beacon as a sale: each recorded gets that key back."""
    if op.get_context().as_sql:
        return
    bind = op.get_bind()
    _add_keys(
        bind,
        {
            (tenant_id, _old_key(transaction_id, Decimal(str(revenue)), currency))
            for tenant_id, _type, transaction_id, revenue, currency in _beacons(bind)
        },
    )
