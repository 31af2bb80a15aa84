"""Public event tracking for landing pages and stores."""

from __future__ import annotations

from flask import Blueprint

from ..config import TRACK_MAX_BYTES
from ..errors import error_response
from ..extensions import db
from ..ingestion import NewEvent, ingest
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
    event = NewEvent(body.event_type, body.metadata)
    ingest(db.session, tenant, [event], client_info(), hash_key=hash_key())
    return {"success": True}, 201
