"""rollups and partitioned events

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 11:25:43.705274

"""

import warnings

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "daily_event_counts",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("event_type", sa.String(length=40), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("value_sum", sa.Numeric(precision=20, scale=3), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "day", "event_type"),
    )
    op.create_table(
        "daily_revenue",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount", sa.Numeric(precision=18, scale=2), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "day", "currency"),
    )
    op.create_table(
        "daily_visitor_counts",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("visitors", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "day"),
    )
    op.create_table(
        "daily_visitors",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("visitor_hash", sa.String(length=45), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "day", "visitor_hash"),
    )
    op.create_table(
        "last_seen_counts",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("visitors", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "day"),
    )
    op.create_table(
        "visitor_last_seen",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("visitor_hash", sa.String(length=45), nullable=False),
        sa.Column("last_day", sa.Date(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "visitor_hash"),
    )
    if op.get_bind().dialect.name == "postgresql":
        partition_events_by_month()
    else:
        # created_at joins the primary key on SQLite too, so the models hold one definition.
        with warnings.catch_warnings():
            # Alembic notes that the copied table's key differs: that is the point.
            warnings.filterwarnings("ignore", "Table '_alembic_tmp_events'", sa.exc.SAWarning)
            with op.batch_alter_table("events", recreate="always") as batch_op:
                batch_op.create_primary_key("pk_events", ["tenant_id", "id", "created_at"])


EVENT_COLUMNS = """
    tenant_id integer NOT NULL
        CONSTRAINT events_tenant_id_fkey REFERENCES tenants (id) ON DELETE CASCADE,
    id bigint NOT NULL DEFAULT nextval('events_id_seq'),
    created_at timestamptz NOT NULL,
    event_type varchar(40) NOT NULL,
    metadata jsonb,
    visitor_hash varchar(45),
    user_agent varchar(512),
    referrer varchar(1024),
    session_id varchar(64),
    user_id varchar(254),
    product_id integer,
    product_slug varchar(200),
    product_name varchar(200),
    price numeric(14, 2),
    quantity integer,
    source varchar(100),
    error_message varchar(1000),
    revenue numeric(14, 2),
    currency varchar(3),
    CONSTRAINT events_pkey PRIMARY KEY (tenant_id, id, created_at)
"""


EVENT_COLUMN_NAMES = (
    "tenant_id",
    "id",
    "created_at",
    "event_type",
    "metadata",
    "visitor_hash",
    "user_agent",
    "referrer",
    "session_id",
    "user_id",
    "product_id",
    "product_slug",
    "product_name",
    "price",
    "quantity",
    "source",
    "error_message",
    "revenue",
    "currency",
)


def partition_events_by_month():
    """Rebuild ``events`` as a table range-partitioned by month, keeping its rows.

    Partitions are named ``events_yYYYYmMM``; the app creates later months ahead
    of time (``flask events partitions``) and on demand when a row needs one.
    """
    op.execute("ALTER TABLE events RENAME TO events_unpartitioned")
    op.execute("ALTER INDEX events_pkey RENAME TO events_unpartitioned_pkey")
    op.execute("ALTER INDEX ix_events_tenant_created RENAME TO ix_events_unpartitioned_1")
    op.execute("ALTER INDEX ix_events_tenant_type_created RENAME TO ix_events_unpartitioned_2")
    op.execute(f"CREATE TABLE events ({EVENT_COLUMNS}) PARTITION BY RANGE (created_at)")
    op.execute("CREATE INDEX ix_events_tenant_created ON events (tenant_id, created_at)")
    op.execute(
        "CREATE INDEX ix_events_tenant_type_created ON events (tenant_id, event_type, created_at)"
    )
    op.execute("""
        DO $$
        DECLARE
            month date := date_trunc('month', LEAST(
                (SELECT min(created_at) FROM events_unpartitioned), now()) AT TIME ZONE 'UTC');
            last date := date_trunc('month', GREATEST(
                (SELECT max(created_at) FROM events_unpartitioned), now()) AT TIME ZONE 'UTC')
                + interval '2 months';
        BEGIN
            WHILE month <= last LOOP
                EXECUTE format(
                    'CREATE TABLE events_y%sm%s PARTITION OF events '
                    'FOR VALUES FROM (%L) TO (%L)',
                    to_char(month, 'YYYY'), to_char(month, 'MM'),
                    month::text || ' 00:00+00',
                    (month + interval '1 month')::date::text || ' 00:00+00');
                month := month + interval '1 month';
            END LOOP;
        END $$;
    """)
    columns = ", ".join(EVENT_COLUMN_NAMES)
    op.execute(f"INSERT INTO events ({columns}) SELECT {columns} FROM events_unpartitioned")
    op.execute("ALTER SEQUENCE events_id_seq OWNED BY events.id")
    op.execute("DROP TABLE events_unpartitioned")


def downgrade():
    op.drop_table("visitor_last_seen")
    op.drop_table("last_seen_counts")
    op.drop_table("daily_visitors")
    op.drop_table("daily_visitor_counts")
    op.drop_table("daily_revenue")
    op.drop_table("daily_event_counts")
    if op.get_bind().dialect.name == "postgresql":
        unpartition_events()
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Table '_alembic_tmp_events'", sa.exc.SAWarning)
            with op.batch_alter_table("events", recreate="always") as batch_op:
                batch_op.create_primary_key("pk_events", ["tenant_id", "id"])


def unpartition_events():
    """Copy ``events`` back into one plain table keyed (tenant_id, id), as 0002 left it.

    A full copy, under an exclusive lock for its length; upgrading again partitions it anew.
    """
    op.execute("ALTER TABLE events RENAME TO events_partitioned")
    op.execute("ALTER INDEX events_pkey RENAME TO events_partitioned_pkey")
    op.execute("ALTER INDEX ix_events_tenant_created RENAME TO ix_events_partitioned_1")
    op.execute("ALTER INDEX ix_events_tenant_type_created RENAME TO ix_events_partitioned_2")
    columns = EVENT_COLUMNS.replace(
        "PRIMARY KEY (tenant_id, id, created_at)", "PRIMARY KEY (tenant_id, id)"
    )
    op.execute(f"CREATE TABLE events ({columns})")
    names = ", ".join(EVENT_COLUMN_NAMES)
    op.execute(f"INSERT INTO events ({names}) SELECT {names} FROM events_partitioned")
    op.execute("CREATE INDEX ix_events_tenant_created ON events (tenant_id, created_at)")
    op.execute(
        "CREATE INDEX ix_events_tenant_type_created ON events (tenant_id, event_type, created_at)"
    )
    op.execute("ALTER SEQUENCE events_id_seq OWNED BY events.id")
    op.execute("DROP TABLE events_partitioned")  # and its partitions
