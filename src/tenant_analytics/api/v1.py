"""The versioned /api/v1 interaction API, whose contract existing clients fix."""

from __future__ import annotations

import time

from flask import Blueprint, current_app
from pydantic import ValidationError

from ..database_errors import log_not_recorded
from ..event_builders import conversion_event, interaction_event, v1_track_event
from ..extensions import db
from ..ingestion import NewEvent, TenantBusy, TenantRef
from ..logs import get_logger
from ..postgres_writer import locked_tenants
from ..ratelimits import api_group_and_tenant, conversion_group, per_tenant
from ..schemas import ConversionBeacon, Interaction, V1TrackEvent, beacon_answer
from ..tenancy import public_tenant_by_slug, request_body, requested_tenant, requested_tenant_or_404
from .requests import ingest_from_request, parse_body, sent_by_a_crawler

bp = Blueprint("v1", __name__, url_prefix="/api/v1")
log = get_logger(__name__)

# How long a sale's beacon keeps trying while its tenant's rollups are rebuilt (a zone
# change, forget-customer): it has no 503 to send back, a sale refused would be lost,
# and the browser sends it whether the page stays or not.
BEACON_BUSY_SECONDS = 30.0


@bp.post("/analytics/track")
@api_group_and_tenant
def track():
    """Record an interaction for a tenant named by public UUID or numeric id (202)."""
    body = parse_body(V1TrackEvent)
    tenant = requested_tenant_or_404()
    event = v1_track_event(db.session, body, tenant)
    if not sent_by_a_crawler():  # a bot's is accepted as any, and not stored
        ingest_from_request(tenant, [event])
    return {"success": True, "message": "Event accepted for processing"}, 202


@bp.post("/analytics/conversion")
@conversion_group
def conversion():
    """Payment beacon: always 200, ``ok`` when recorded (once per transaction), else ``skipped``."""
    raw = request_body() or {}  # none for a body over every limit: a skipped beacon
    skipped = beacon_answer("skipped", raw.get("transaction_id"))
    try:
        body = ConversionBeacon.model_validate(raw)
    except ValidationError:  # an unusable beacon is expected traffic, not a fault to log
        return skipped
    try:
        tenant = public_tenant_by_slug(db.session, body.tenant_slug)
        event = conversion_event(body, tenant) if tenant else None
        if event is None or sent_by_a_crawler():  # a bot's thank-you page sold nothing
            return skipped
        _ingest_when_free(tenant, event)
    except Exception as exc:  # a beacon must never fail the page
        db.session.rollback()
        log_not_recorded(log, "conversion beacon skipped", exc)
        return skipped
    return beacon_answer("ok", raw.get("transaction_id"))


def _ingest_when_free(tenant: TenantRef, event: NewEvent) -> None:
    """Ingest; while the tenant's rollups are locked (nothing was written), look each
    second, up to BEACON_BUSY_SECONDS, whether they still are (a try of the lock, never
    waited on, on a connection held for that look only: a write would wait out the lock
    timeout) and write again once they are not."""
    given_up_at = time.monotonic() + BEACON_BUSY_SECONDS
    while True:
        try:
            ingest_from_request(tenant, [event])
            return
        except TenantBusy:
            db.session.rollback()
            while True:
                if time.monotonic() >= given_up_at:
                    raise
                time.sleep(1)
                if not _rollups_locked(tenant.id):
                    break


def _rollups_locked(tenant_id: int) -> bool:
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        return tenant_id in locked_tenants(connection, {tenant_id})


@bp.post("/interactions")
@per_tenant
def interactions():
    """Low-level interaction: 201 when recorded, 202 otherwise (no tenant-existence feedback)."""
    started = time.monotonic()
    body = parse_body(Interaction)
    try:
        recorded = _record_interaction(body)
    except Exception as exc:  # the contract's "processing error": 202, like an unknown tenant
        db.session.rollback()
        log_not_recorded(log, "interaction not recorded", exc)
        recorded = False
    # Both answers wait for the same floor, so timing does not tell whether a tenant exists.
    floor = current_app.config["INTERACTION_MIN_SECONDS"]
    time.sleep(max(0.0, floor - (time.monotonic() - started)))
    if recorded:
        return {"status": "success"}, 201
    return {"status": "accepted"}, 202


def _record_interaction(body: Interaction) -> bool:
    """Store the interaction; False when it names no active tenant, or a bot sent it."""
    tenant = requested_tenant()
    if tenant is None or sent_by_a_crawler():
        return False
    ingest_from_request(tenant, [interaction_event(db.session, body, tenant)])
    return True
