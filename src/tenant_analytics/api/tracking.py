"""Public event tracking for landing pages and stores."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, current_app

from ..config import BATCH_MAX_BYTES
from ..errors import ApiError
from ..event_builders import batch_events, track_event
from ..ratelimits import per_tenant, per_tenant_events
from ..schemas import EventBatch, TrackEvent
from ..tenancy import requested_tenant_or_404
from .requests import ingest_from_request, parse_body, sent_by_a_crawler

bp = Blueprint("tracking", __name__)


@bp.post("/api/analytics/track")
@per_tenant
def track():
    """Record one event from a tenant's landing page (public; limited per tenant)."""
    body = parse_body(TrackEvent)
    tenant = requested_tenant_or_404()
    event = track_event(body, tenant, dedupe_window=dedupe_window())
    if sent_by_a_crawler():
        return {"success": True, "status": "bot_ignored"}, 200
    result = ingest_from_request(tenant, [event])
    if result.duplicates:
        return {"success": True, "status": "duplicate_ignored"}, 200
    return {"success": True, "status": "ok"}, 201


@bp.post("/api/analytics/batch")
@per_tenant_events
def batch():
    """Record up to 500 events for one tenant; invalid items are reported, valid ones stored."""
    envelope = parse_body(EventBatch, max_bytes=BATCH_MAX_BYTES)
    tenant = requested_tenant_or_404()
    events, rejected = batch_events(envelope.events, tenant, dedupe_window=dedupe_window())
    if not events:
        raise ApiError(
            422,
            "No event in the batch is valid.",
            code="validation_error",
            errors={"events": ["every item is invalid"]},
            extra={"rejected": rejected},
        )
    if sent_by_a_crawler():
        return {
            "success": True,
            "stored": 0,
            "duplicates": 0,
            "rejected": rejected,
            "bot_ignored": len(events),
        }, 200
    result = ingest_from_request(tenant, events)
    return {
        "success": True,
        "stored": result.stored,
        "duplicates": result.duplicates,
        "rejected": rejected,
    }, 201


def dedupe_window() -> timedelta:
    return timedelta(seconds=current_app.config["IDEMPOTENCY_WINDOW_SECONDS"])
