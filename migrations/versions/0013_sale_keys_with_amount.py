"""dedupe_keys: a sale's key names its amount and currency ("txn:<id>:<value>:<currency>")

The sales recorded so far get their key in the new form, so that a beacon replayed
after the upgrade is still recorded once. Keys in the old form stay (kept for good,
as they were; nothing reads them any more). One statement in the database: no row
comes to Python (1,000,000 sales take about 20 s on PostgreSQL).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 18:20:00.000000

"""

import re

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# The beacon's key (event_builders.transaction_key) from the sale it recorded: its
# revenue with two decimals (numeric(14, 2); a float on SQLite), and its currency.
NEW_KEYS = {
    "postgresql": """
        INSERT INTO dedupe_keys (tenant_id, key, seen_at)
        SELECT tenant_id, 'txn:' || (metadata ->> 'transaction_id') || ':'
               || to_char(revenue, 'FM999999999999990.00') || ':' || currency, created_at
        FROM events
        WHERE metadata ? 'transaction_id' AND revenue IS NOT NULL AND currency IS NOT NULL
        ON CONFLICT DO NOTHING
    """,
    "sqlite": """
        INSERT INTO dedupe_keys (tenant_id, key, seen_at)
        SELECT tenant_id, 'txn:' || json_extract(metadata, '$.transaction_id') || ':'
               || printf('%.2f', revenue) || ':' || currency, created_at
        FROM events
        WHERE json_extract(metadata, '$.transaction_id') IS NOT NULL
          AND revenue IS NOT NULL AND currency IS NOT NULL
        ON CONFLICT DO NOTHING
    """,
}
# And back, "txn:<id>" of every key in the new form (the sales recorded since).
NEW_FORM = re.compile(r":[0-9]+\.[0-9]{2}:[A-Z]{3}$")
OLD_KEYS_POSTGRESQL = """
    INSERT INTO dedupe_keys (tenant_id, key, seen_at)
    SELECT tenant_id, regexp_replace(key, ':[^:]*:[^:]*$', ''), seen_at
    FROM dedupe_keys
    WHERE key LIKE 'txn:%' AND key ~ ':[0-9]+[.][0-9]{2}:[A-Z]{3}$'
    ON CONFLICT DO NOTHING
"""


def upgrade():
    op.execute(NEW_KEYS[op.get_bind().dialect.name])


def downgrade():
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(OLD_KEYS_POSTGRESQL)
        return
    # SQLite has no regexp_replace; its databases are small.
    keys = bind.execute(
        sa.text("SELECT tenant_id, key, seen_at FROM dedupe_keys WHERE key LIKE 'txn:%'")
    ).all()
    old = [
        {"tenant_id": tenant_id, "key": key.rsplit(":", 2)[0], "seen_at": seen_at}
        for tenant_id, key, seen_at in keys
        if NEW_FORM.search(key)
    ]
    if old:
        bind.execute(
            sa.text(
                "INSERT INTO dedupe_keys (tenant_id, key, seen_at)"
                " VALUES (:tenant_id, :key, :seen_at) ON CONFLICT DO NOTHING"
            ),
            old,
        )
