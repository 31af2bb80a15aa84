"""Database models. The Alembic migrations in ``migrations/`` create the schema."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    FetchedValue,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    TypeDecorator,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .extensions import db


def utcnow() -> datetime:
    return datetime.now(UTC)


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
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


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
    slug: Mapped[str] = mapped_column(String(80), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    owners: Mapped[list[User]] = relationship(secondary=tenant_owners, back_populates="tenants")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "public_id": str(self.public_id),
            "slug": self.slug,
            "name": self.name,
            "active": self.active,
            "timezone": self.timezone,
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


class Event(db.Model):
    """One tracked event. Append-only; ``tenant_id`` leads the primary key."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_tenant_created", "tenant_id", "created_at"),
        Index("ix_events_tenant_type_created", "tenant_id", "event_type", "created_at"),
    )

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    # PostgreSQL fills it from events_id_seq; on SQLite store.py allocates it.
    id: Mapped[int] = mapped_column(
        BigIntId, primary_key=True, autoincrement=False, server_default=FetchedValue()
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    event_type: Mapped[str] = mapped_column(String(40))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    visitor_hash: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    referrer: Mapped[str | None] = mapped_column(String(1024))


class IdSequence(db.Model):
    """Id counters for SQLite, which cannot number a composite primary key.

    PostgreSQL uses real sequences (see the migrations); this table stays empty there.
    """

    __tablename__ = "id_sequences"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_value: Mapped[int] = mapped_column(BigInteger, default=0)
