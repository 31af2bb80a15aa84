"""Database models. The Alembic migrations in ``migrations/`` create the schema."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    FetchedValue,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    false,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from .extensions import db

# The migration these models are (the head of migrations/versions; a test keeps them
# one). Revisions are numbered in order, so a database at a later one is newer.
SCHEMA_REVISION = "0017"
# The PostgreSQL advisory lock `db upgrade` holds (any constant of this app's own).
MIGRATIONS_LOCK = 7_310_455_001

# Compared in code-point order on every backend, as Python compares the rollups' names
# (migration 0008); SQLite's default collation is that order already.
PRODUCT_NAME = String(200).with_variant(String(200, collation="C"), "postgresql")
# Row ids are PostgreSQL integers: a larger number names no row, and querying with one
# would raise ("integer out of range") instead of finding nothing.
MAX_ROW_ID = 2**31 - 1
TENANT_SLUG_LENGTH = 80
DEFAULT_CURRENCY = "HNL"  # a new tenant's, until its owner sets one
LANDING_URL_LENGTH = 2048


def is_row_id(value: int) -> bool:
    """True if ``value`` could be the id of a row (a positive 32-bit integer)."""
    return 0 < value <= MAX_ROW_ID


# A tenant's slug names it in conversion beacons and URLs: "panaderia-rosa".
TENANT_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def canonical_slug(text: str) -> str:
    """A slug as stored, from one typed in capitals (``Panaderia-Rosa``); other text as is."""
    return text.lower() if text.isascii() else text


def is_tenant_slug(value: str) -> bool:
    """True if ``value`` could be a tenant's slug (lower-case letters, digits, single hyphens)."""
    return len(value) <= TENANT_SLUG_LENGTH and TENANT_SLUG.fullmatch(value) is not None


def utcnow() -> datetime:
    return datetime.now(UTC)


def dialect_insert(session: Session) -> Callable[[Any], postgresql.Insert | sqlite.Insert]:
    """The backend's INSERT, which has ON CONFLICT."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert
    return sqlite.insert


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are
    stored as naive UTC and given back their UTC tzinfo when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where a UTC datetime is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)  # PostgreSQL gives its session's TimeZone's offset


JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-numbers a lone INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")

tenant_owners = Table(
    "tenant_owners",
    db.metadata,
    Column("tenant_id", ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
)


class Tenant(db.Model):
    """A business with a landing page; the unit of isolation."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True, default=uuid.uuid4)
    slug: Mapped[str] = mapped_column(String(TENANT_SLUG_LENGTH), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Switched off by an operator (the CLI, an admin): its owners cannot switch it on.
    suspended: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    currency: Mapped[str] = mapped_column(
        String(3), default=DEFAULT_CURRENCY, server_default=DEFAULT_CURRENCY
    )
    # RFM "VIP" needs this much spent in 90 days, in the tenant's currency.
    vip_monetary_threshold: Mapped[Decimal] = mapped_column(
        Numeric(14, 2), default=Decimal(100000), server_default="100000"
    )
    # Where the tenant's QR codes lead (GET /q/<slug>); no QR redirect without one.
    landing_url: Mapped[str | None] = mapped_column(String(LANDING_URL_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    owners: Mapped[list[User]] = relationship(secondary=tenant_owners, back_populates="tenants")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "public_id": str(self.public_id),
            "slug": self.slug,
            "name": self.name,
            "active": self.active,
            "suspended": self.suspended,
            "timezone": self.timezone,
            "landing_url": self.landing_url,
            "currency": self.currency,
            "vip_monetary_threshold": float(self.vip_monetary_threshold),
        }


class User(db.Model):
    """A tenant owner (or an admin, who may read every tenant)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    tenants: Mapped[list[Tenant]] = relationship(secondary=tenant_owners, back_populates="owners")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "tenants": sorted(t.id for t in self.tenants),
            "is_admin": self.is_admin,
        }


class SignOut(db.Model):
    """A sign-in ended by its owner (POST /api/auth/logout): the tokens it issued are
    refused until they would have expired anyway."""

    __tablename__ = "sign_outs"

    sign_in: Mapped[str] = mapped_column(String(64), primary_key=True)
    # When the last token of the sign-in expires; NULL when tokens never expire.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)


class Event(db.Model):
    """One tracked event. Append-only; ``tenant_id`` leads the primary key.

    On PostgreSQL the table is range-partitioned by month on ``created_at``
    (which therefore belongs to the primary key); see migration 0003.
    """

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_tenant_type_created", "tenant_id", "event_type", "created_at"),
        # A tenant's window of events, carrying the columns the store reports read, so
        # PostgreSQL answers them from the index alone (migration 0004); SQLite ignores
        # INCLUDE.
        Index(
            "ix_events_tenant_created_covering",
            "tenant_id",
            "created_at",
            postgresql_include=[
                "event_type",
                "session_id",
                "source",
                "product_slug",
                "product_name",
            ],
        ),
    )

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    # PostgreSQL fills it from events_id_seq; on SQLite storage.py allocates it.
    id: Mapped[int] = mapped_column(
        BigIntId, primary_key=True, autoincrement=False, server_default=FetchedValue()
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True, default=utcnow)
    event_type: Mapped[str] = mapped_column(String(40))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    visitor_hash: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    referrer: Mapped[str | None] = mapped_column(String(1024))
    # Store and v1 fields; NULL where an event has none (/track makes up a session_id
    # for a store event sent without one; a landing event keeps the client's, or none).
    session_id: Mapped[str | None] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(String(254))
    product_id: Mapped[int | None] = mapped_column(Integer)
    product_slug: Mapped[str | None] = mapped_column(String(200))
    product_name: Mapped[str | None] = mapped_column(PRODUCT_NAME)
    price: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    quantity: Mapped[int | None] = mapped_column(Integer)
    source: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(String(1000))
    # Money an event brought in (purchase: price x quantity; conversion: value).
    revenue: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    currency: Mapped[str | None] = mapped_column(String(3))


# The columns a write fills (the id comes from the database, or storage.py on SQLite).
# Plain str: "metadata" is a quoted_name, a str subclass orjson refuses as a key.
EVENT_COLUMNS: tuple[str, ...] = tuple(
    str(c.name) for c in Event.__table__.columns if c.name != "id"
)


class Product(db.Model):
    """Something a tenant sells; deleting one only deactivates it."""

    __tablename__ = "products"
    __table_args__ = (UniqueConstraint("tenant_id", "slug", name="uq_products_tenant_slug"),)

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    # Unique across tenants: clients name a product by id alone.
    id: Mapped[int] = mapped_column(
        Integer, primary_key=True, autoincrement=False, server_default=FetchedValue()
    )
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str | None] = mapped_column(String(200))
    price: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "name": self.name,
            "slug": self.slug,
            "price": float(self.price) if self.price is not None else None,
            "active": self.active,
        }


class DedupeKey(db.Model):
    """Keys already seen per tenant: idempotency keys and conversion transaction ids.

    The primary key makes the check atomic: two concurrent writers of the same
    key cannot both insert it.
    """

    __tablename__ = "dedupe_keys"

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class IdSequence(db.Model):
    """Id counters for SQLite, which cannot number a composite primary key.

    PostgreSQL uses real sequences (see the migrations); this table stays empty there.
    """

    __tablename__ = "id_sequences"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_value: Mapped[int] = mapped_column(BigInteger, default=0)


# --- Rollups: maintained in the same transaction as the events they count. ----------------
# Days are the tenant's local calendar days at the time of writing.


class DailyEventCount(db.Model):
    """Events per tenant, local day and type; ``value_sum`` adds time_on_page seconds."""

    __tablename__ = "daily_event_counts"

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    event_type: Mapped[str] = mapped_column(String(40), primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger)
    value_sum: Mapped[Decimal] = mapped_column(Numeric(20, 3))
    # Of ``events``, those with a session_id (the store's events per session).
    session_events: Mapped[int] = mapped_column(BigInteger, server_default="0")


class DailyRevenue(db.Model):
    """Revenue of conversion and purchase events per tenant, local day and currency."""

    __tablename__ = "daily_revenue"

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    amount: Mapped[Decimal] = mapped_column(Numeric(scale=2))  # no ceiling: a sum of prices


class DailyVisitor(db.Model):
    """The set of visitor hashes seen per tenant and local day."""

    __tablename__ = "daily_visitors"

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    visitor_hash: Mapped[str] = mapped_column(String(45), primary_key=True)


class DailyVisitorCount(db.Model):
    """Distinct visitors per tenant and local day (the size of each ``daily_visitors`` set)."""

    __tablename__ = "daily_visitor_counts"

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    visitors: Mapped[int] = mapped_column(BigInteger)


class VisitorLastSeen(db.Model):
    """The latest local day each visitor was seen."""

    __tablename__ = "visitor_last_seen"

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    visitor_hash: Mapped[str] = mapped_column(String(45), primary_key=True)
    last_day: Mapped[date] = mapped_column(Date)


class LastSeenCount(db.Model):
    """How many visitors were last seen on each day.

    Distinct visitors of the last N days = the sum of the last N rows, so a
    week's distinct count reads 7 rows instead of every visitor.
    """

    __tablename__ = "last_seen_counts"

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    visitors: Mapped[int] = mapped_column(BigInteger)


class DailyProductCount(db.Model):
    """Events per tenant, local day, type and product (events with a product slug only)."""

    __tablename__ = "daily_product_counts"

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    event_type: Mapped[str] = mapped_column(String(40), primary_key=True)
    product_slug: Mapped[str] = mapped_column(String(200), primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger)
    product_name: Mapped[str | None] = mapped_column(PRODUCT_NAME)  # the greatest seen


class SessionLastSeen(db.Model):
    """The latest local day each session was seen in each scope (see ``rollups.session_scopes``).

    A scope is a slice of a tenant's events: all of them, one source, one type,
    or one type from one source.
    """

    __tablename__ = "session_last_seen"

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    scope: Mapped[str] = mapped_column(String(160), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_day: Mapped[date] = mapped_column(Date)


class SessionLastSeenCount(db.Model):
    """How many sessions of each scope were last seen on each day.

    Distinct sessions of a scope from day D to today = the sum of its rows from D
    on, as ``LastSeenCount`` does for visitors.
    """

    __tablename__ = "session_last_seen_counts"

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    scope: Mapped[str] = mapped_column(String(160), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    sessions: Mapped[int] = mapped_column(BigInteger)
