"""Public event tracking for landing pages and stores."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, current_app

from ..config import TRACK_MAX_BYTES
from ..errors import error_response
from ..event_builders import track_event
from ..extensions import db
from ..ingestion import ingest
from ..ratelimits import per_tenant
from ..schemas import TrackEvent
from ..tenancy import requested_tenant
from .requests import client_info, hash_key, parse_body

bp = Blueprint("tracking", __name__)

TENANT_UNAVAILABLE = "Tenant not found or not available"


@bp.post("/api/analytics/track")
@per_tenant
def track():
    """Record one event from a tenant's landing page (public; limited per tenant)."""
    body = parse_body(TrackEvent, max_bytes=TRACK_MAX_BYTES)
    tenant = requested_tenant()
    if tenant is None:
        return error_response(404, TENANT_UNAVAILABLE, code="tenant_not_found")
    window = timedelta(seconds=current_app.config["IDEMPOTENCY_WINDOW_SECONDS"])
    event = track_event(body, tenant, dedupe_window=window)
    result = ingest(db.session, tenant, [event], client_info(), hash_key=hash_key())
    if result.duplicates:
        return {"success": True, "status": "duplicate_ignored"}, 200
    return {"success": True, "status": "ok"}, 201
