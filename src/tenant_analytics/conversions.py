"""Turning a conversion beacon into an event: timestamp window, currency, once per transaction."""

from __future__ import annotations

from datetime import timedelta

from .ingestion import NewEvent
from .models import Tenant, utcnow
from .schemas import ConversionBeacon

# Beacons are sent right after payment; anything far outside that is a bad clock or a replay.
MAX_FUTURE = timedelta(minutes=10)
MAX_AGE = timedelta(days=30)


def conversion_event(beacon: ConversionBeacon, tenant: Tenant) -> NewEvent | None:
    """The event to record for ``beacon``, or None when it must be skipped."""
    now = utcnow()
    if beacon.timestamp is not None and not (now - MAX_AGE <= beacon.timestamp <= now + MAX_FUTURE):
        return None
    metadata = {"transaction_id": beacon.transaction_id} if beacon.transaction_id else None
    return NewEvent(
        beacon.event,
        metadata,
        created_at=beacon.timestamp,
        extra={"revenue": beacon.value, "currency": beacon.currency or tenant.currency},
        # Remembered forever: a retried beacon must never double the revenue.
        dedupe_key=f"txn:{beacon.transaction_id}" if beacon.transaction_id else None,
    )
