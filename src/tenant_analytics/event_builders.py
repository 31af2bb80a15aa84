"""From validated request bodies to ``NewEvent``s: defaults, revenue and dedupe keys."""

from __future__ import annotations

import hashlib
import os
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from .catalogue import EVENT_KINDS, PURCHASE, REVENUE_KINDS, STORE_TYPES
from .errors import invalid_body, validation_errors
from .ingestion import NewEvent, TenantRef
from .models import Product, utcnow
from .products import product_of_tenant
from .rollups import NEW_SESSION
from .schemas import ConversionBeacon, Interaction, TrackedEvent, V1TrackEvent
from .timewindows import tenant_zone

# Generated session ids only tell sessions apart; they need no secrecy, so a seeded PRNG
# serves, sparing a getrandom() system call (and a GIL hand-off) on every event.
_session_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _session_ids.seed(os.urandom(32)))


def new_session_id() -> str:
    return str(uuid.UUID(int=_session_ids.getrandbits(128), version=4))


STORE_COLUMNS = (
    "user_id",
    "product_slug",
    "product_name",
    "price",
    "source",
    "error_message",
)

# Idempotency keys block repeats only within their window, so ``events purge`` deletes
# those past it; transaction ids ("txn:") are kept for good.
IDEMPOTENCY_PREFIX = "idem:"
# A visitor's last counted QR scan of the tenant's codes ("qr:" and its visitor hash):
# deleted past its window as the idempotency keys are, and no key a client sends can be one.
QR_SCAN_PREFIX = "qr:"
# A visitor's scans of one tenant's codes this close together are one: a camera app that
# opens the link twice, or a landing page that leads back to the code under another name
# of this service (a loop no check of the URL can rule out), which counted each turn.
# Short: two phones of one browser behind one address scanning together are one visitor.
REPEAT_SCAN_WINDOW = timedelta(seconds=3)

# Beacons are sent right after payment; anything far outside that is a bad clock or a replay.
MAX_FUTURE = timedelta(minutes=10)
MAX_AGE = timedelta(days=30)


def beacon_time(moment: datetime, tenant: TenantRef) -> datetime | None:
    """A beacon's time in UTC. One without an offset is the tenant's local time, as a
    shop's template prints an order's ("2026-12-02 10:00"), and a date alone the start
    of that local day; None where no UTC time is that (years 1 and 9999)."""
    if moment.tzinfo is not None:
        return moment
    try:
        return moment.replace(tzinfo=tenant_zone(tenant.timezone)).astimezone(UTC)
    except OverflowError:
        return None


def conversion_event(beacon: ConversionBeacon, tenant: TenantRef) -> NewEvent | None:
    """The event to record for ``beacon``, or None when it must be skipped."""
    now = utcnow()
    when = None
    if beacon.timestamp is not None:
        when = beacon_time(beacon.timestamp, tenant)
        if when is None or not now - MAX_AGE <= when <= now + MAX_FUTURE:
            return None
    metadata = {"transaction_id": beacon.transaction_id} if beacon.transaction_id else None
    currency = beacon.currency or tenant.currency
    return NewEvent(
        beacon.event,
        metadata,
        # A clock a little ahead is stored as now, never on a day that has not begun.
        created_at=min(when, now) if when is not None else None,
        extra={"revenue": beacon.value, "currency": currency},
        dedupe_key=(
            transaction_key(beacon.transaction_id, beacon.value, currency, beacon.event)
            if beacon.transaction_id
            else None
        ),
    )


def v1_track_event(session: Session, body: V1TrackEvent, tenant: TenantRef) -> NewEvent:
    """A /api/v1/analytics/track event; a product must be the tenant's (422 otherwise:
    products are looked up within their tenant only). Its id is merged into the
    metadata, as the contract says; its slug and name, as the catalogue has them, are
    what the store reports count products by (a v1 purchase is in top_products)."""
    extra: dict[str, Any] = {}
    metadata = body.metadata
    if body.product_id is not None:
        product = product_of_tenant(session, tenant.id, body.product_id)
        if product is None:
            raise invalid_body({"product_id": ["No such product for this tenant."]})
        extra = product_columns(product)
        metadata = {**(metadata or {}), "product_id": body.product_id}
    return NewEvent(body.type, metadata, extra=extra)


def interaction_event(session: Session, body: Interaction, tenant: TenantRef) -> NewEvent:
    """A /api/v1/interactions event: it never tells whether a product exists, and never
    links another tenant's (dropped instead). The tenant's product is stored as v1
    track stores it."""
    product = None
    if body.product_id is not None:
        product = product_of_tenant(session, tenant.id, body.product_id)
    extra = {"product_id": None} if product is None else product_columns(product)
    return NewEvent(body.type, body.metadata, extra=extra)


def product_columns(product: Product) -> dict[str, Any]:
    """A catalogue product's id, and its slug and name when it has a slug (what the
    store reports count products by)."""
    columns: dict[str, Any] = {"product_id": product.id}
    if product.slug is not None:
        columns.update(product_slug=product.slug, product_name=product.name)
    return columns


def transaction_key(transaction_id: str, value: Decimal, currency: str, event: str) -> str:
    """A beacon's dedupe key, remembered forever: a retried beacon must never double the
    revenue. With its amount: anyone may send a beacon, and one forged ahead of a real
    sale (order numbers are easy to guess) must not hide a sale of another amount. A
    conversion and a purchase are one sale; a beacon of any other type (a tap, a share)
    has keys of its own, so it never hides one."""
    amount = f"{abs(value):.2f}"  # abs: -0 is the sale of 0
    if EVENT_KINDS[event] in REVENUE_KINDS:
        return f"txn:{transaction_id}:{amount}:{currency}"
    # Hashed: the event's name and a 128-character order number would not fit the column.
    other = "|".join((event, transaction_id, amount, currency))
    return "txn-" + hashlib.sha256(other.encode()).hexdigest()


def track_event(
    body: TrackedEvent,
    tenant: TenantRef,
    *,
    dedupe_window: timedelta,
    batch_index: int | None = None,
) -> NewEvent:
    """The event for a ``POST /api/analytics/track`` body, or a batch's item ``batch_index``.

    A store event without a session_id gets a fresh UUID, as the store documents
    say; a landing-page event keeps none (the snippet has no sessions, and one
    made up per event would count each tap as a store visit). The idempotency key is the client's
    or, when the client sent a session_id, derived from session, type, product
    and the second it arrived, as the store documents specify; without a
    session_id that derived key would be unique anyway, so none is kept. A batch
    item's derived key has its place in the batch and its content too: a batch's
    items all arrive in one second, and two page views of one session in it, or in
    two batches of that second, are two page views (the same batch sent again still
    repeats every key).
    """
    now = utcnow()
    columns = {name: getattr(body, name) for name in STORE_COLUMNS}
    quantity = body.quantity()
    columns["quantity"] = quantity
    generated = body.session_id is None and body.event_type in STORE_TYPES
    columns["session_id"] = new_session_id() if generated else body.session_id
    columns[NEW_SESSION] = generated
    if body.price is not None:  # a price is in some currency: the tenant's unless said
        columns["currency"] = body.currency or tenant.currency
    if body.event_type == PURCHASE and body.price is not None:
        columns["revenue"] = body.price * (quantity or 1)
    key = body.idempotency_key
    if key is None and body.session_id:
        parts = (
            body.session_id,
            body.event_type,
            body.product_slug or "",
            f"{now:%Y-%m-%dT%H:%M:%S}",
            # A batch item's place and content: sent again, the batch repeats both; an
            # item of another content at that place in another batch of the same
            # second (a phone flushing often) is another event.
            *(() if batch_index is None else (f"batch item {batch_index}", body.model_dump_json())),
        )
        key = hashlib.sha256("|".join(parts).encode()).hexdigest()
    return NewEvent(
        body.event_type,
        body.metadata,
        extra=columns,
        dedupe_key=f"{IDEMPOTENCY_PREFIX}{key}" if key else None,
        dedupe_window=dedupe_window,
    )


OTHER_TENANTS_ITEM = (
    "Not the batch's tenant_id: send each tenant's events in a batch of its own"
    " (an item needs no tenant_id)."
)


def batch_events(
    items: Sequence[Any], tenant: TenantRef, *, dedupe_window: timedelta
) -> tuple[list[NewEvent], list[dict[str, Any]]]:
    """Validate each batch item alone: the events to store and a report of the rejected."""
    events, rejected = [], []
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("tenant_id", tenant.id) != tenant.id:
            # A queue of several shops' events flushed as one: not into this one's figures.
            rejected.append({"index": index, "errors": {"tenant_id": [OTHER_TENANTS_ITEM]}})
            continue
        try:
            body = TrackedEvent.model_validate(item)
        except ValidationError as exc:
            rejected.append({"index": index, "errors": validation_errors(exc)})
            continue
        events.append(track_event(body, tenant, dedupe_window=dedupe_window, batch_index=index))
    return events, rejected
