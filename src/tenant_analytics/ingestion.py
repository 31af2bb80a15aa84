"""The one ingestion path every endpoint goes through.

validate (the endpoint's schema) -> resolve the tenant -> enrich (visitor
hash, user agent, referrer, timestamp) -> store.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Tenant, utcnow
from .privacy import REFERRER_MAX, USER_AGENT_MAX, truncate, visitor_hash
from .store import insert_events


@dataclass(frozen=True)
class ClientInfo:
    """What the request tells about its sender. The IP is used for hashing only."""

    ip: str | None
    user_agent: str | None
    referrer: str | None


@dataclass
class NewEvent:
    """A validated event, before enrichment."""

    event_type: str
    metadata: dict[str, Any] | None = None
    created_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_public_tenant(session: Session, ref: int | str) -> Tenant | None:
    """An active tenant by integer id, numeric string or public UUID; else None."""
    if isinstance(ref, str):
        ref = ref.strip()
        if ref.isdigit():
            ref = int(ref)
        else:
            try:
                public_id = uuid.UUID(ref)
            except ValueError:
                return None
            return session.scalar(
                select(Tenant).where(Tenant.public_id == public_id, Tenant.active.is_(True))
            )
    if not 0 < ref < 2**31:
        return None
    tenant = session.get(Tenant, ref)
    return tenant if tenant is not None and tenant.active else None


def enrich(
    tenant: Tenant, event: NewEvent, client: ClientInfo, *, hash_key: str, now: datetime
) -> dict[str, Any]:
    """The stored row for ``event``: tenant, type, metadata and the privacy-safe client data."""
    return {
        "tenant_id": tenant.id,
        "event_type": event.event_type,
        "metadata": event.metadata,
        "created_at": event.created_at or now,
        "visitor_hash": visitor_hash(hash_key, tenant.id, client.ip, client.user_agent),
        "user_agent": truncate(client.user_agent, USER_AGENT_MAX),
        "referrer": truncate(client.referrer, REFERRER_MAX),
        **event.extra,
    }


def ingest(
    session: Session,
    tenant: Tenant,
    events: Sequence[NewEvent],
    client: ClientInfo,
    *,
    hash_key: str,
) -> int:
    """Enrich and store ``events`` for ``tenant``; commit; return how many were stored."""
    now = utcnow()
    rows = [enrich(tenant, event, client, hash_key=hash_key, now=now) for event in events]
    insert_events(session, rows)
    session.commit()
    return len(rows)
