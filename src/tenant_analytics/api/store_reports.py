"""Store reports for owners (JWT of an owner of the tenant, or of an admin)."""

from __future__ import annotations

import re
from datetime import date
from typing import cast

from flask import Blueprint, request
from flask_jwt_extended import jwt_required

from ..errors import invalid_field
from ..extensions import db
from ..models import utcnow
from ..queries import store_alerts, store_dashboard, store_funnel, store_rfm
from ..ratelimits import take_a_report_slot
from ..tenancy import owned_tenant_or_404
from ..timewindows import tenant_zone

bp = Blueprint("store_reports", __name__)

ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# Far enough from date.min/max that a local day's UTC bounds never overflow.
EARLIEST_DATE, LATEST_DATE = date(1970, 1, 1), date(9999, 12, 30)
SOURCE_MAX = 100  # events.source
OFFSET_MAX = 10**9  # past any customer list


def _mode_arg() -> store_dashboard.Mode:
    """``?mode=``: total (the default) or unique; 422 otherwise."""
    mode = request.args.get("mode", "total")
    if mode not in store_dashboard.MODES:
        raise invalid_field("mode", "mode must be 'total' or 'unique'.")
    return cast(store_dashboard.Mode, mode)


def _source_arg() -> str | None:
    """``?source=``: the traffic source to narrow the funnel to; 422 when unstorable."""
    source = request.args.get("source") or None
    if source is not None and (len(source) > SOURCE_MAX or "\x00" in source):
        raise invalid_field(
            "source", f"source must be at most {SOURCE_MAX} characters, without NUL."
        )
    return source


def _date_arg(name: str) -> date | None:
    """``?<name>=YYYY-MM-DD`` as a date, None when absent; 422 when malformed."""
    value = request.args.get(name)
    if value is None:
        return None
    try:
        day = date.fromisoformat(value) if ISO_DATE.fullmatch(value) else None
    except ValueError:
        day = None
    if day is None or not EARLIEST_DATE <= day <= LATEST_DATE:
        raise invalid_field(
            name, f"{name} must be a date as YYYY-MM-DD from {EARLIEST_DATE} to {LATEST_DATE}."
        )
    return day


def _count_arg(name: str, default: int, most: int) -> int:
    """``?<name>=`` as a whole number from 0 to ``most``; 422 otherwise."""
    value = request.args.get(name)
    if value is None:
        return default
    digits = value.isascii() and value.isdigit() and len(value) <= len(str(most))
    if not digits or int(value) > most:
        raise invalid_field(name, f"{name} must be a whole number from 0 to {most}.")
    return int(value)


# English and Spanish names, any case: ?segment=vip, ?segment=En%20riesgo
SEGMENT_NAMES = {
    name.casefold(): segment
    for segment, label in store_rfm.SEGMENT_LABELS.items()
    for name in (segment, label)
}


def _segment_arg() -> str | None:
    """``?segment=``: an RFM segment to list alone; 422 when it names none."""
    value = request.args.get("segment")
    if value is None:
        return None
    segment = SEGMENT_NAMES.get(value.strip().casefold())
    if segment is None:
        names = ", ".join(store_rfm.SEGMENT_LABELS)
        raise invalid_field("segment", f"segment must be one of {names} (or the Spanish label).")
    return segment


@bp.get("/api/analytics/<int:tenant_id>/dashboard-stats")
@jwt_required()
def dashboard_stats(tenant_id: int):
    """Every store KPI over the last 7 local days; ``?mode=unique`` counts sessions."""
    tenant = owned_tenant_or_404(tenant_id)
    take_a_report_slot(tenant.id)
    mode = _mode_arg()
    return store_dashboard.dashboard_stats(
        db.session,
        tenant_id=tenant.id,
        zone=tenant_zone(tenant.timezone),
        now=utcnow(),
        mode=mode,
        currency=tenant.currency,
    )


@bp.get("/api/analytics/<int:tenant_id>/funnel")
@jwt_required()
def funnel(tenant_id: int):
    """Sessions per funnel step between ``start`` and ``end`` (local dates, default 30 days)."""
    tenant = owned_tenant_or_404(tenant_id)
    take_a_report_slot(tenant.id)
    zone = tenant_zone(tenant.timezone)
    start, end = store_funnel.funnel_dates(zone, utcnow(), _date_arg("start"), _date_arg("end"))
    start = max(start, EARLIEST_DATE)  # the default 30 days before an early ``end``
    if start > end:
        raise invalid_field("start", "start must not be after end.")
    return store_funnel.conversion_funnel(
        db.session,
        tenant_id=tenant.id,
        zone=zone,
        start=start,
        end=end,
        source=_source_arg(),
    )


@bp.get("/api/analytics/<int:tenant_id>/rfm")
@jwt_required()
def rfm(tenant_id: int):
    """Recency, frequency, monetary and segment of each signed-in buyer over 90 days,
    a page at a time (``?limit=`` up to 1000, ``?offset=``), of one ``?segment=`` if named."""
    tenant = owned_tenant_or_404(tenant_id)
    take_a_report_slot(tenant.id)
    segment = _segment_arg()
    limit = _count_arg("limit", store_rfm.RFM_PAGE_MAX, store_rfm.RFM_PAGE_MAX)
    offset = _count_arg("offset", 0, OFFSET_MAX)
    return store_rfm.rfm_segments(
        db.session,
        tenant_id=tenant.id,
        zone=tenant_zone(tenant.timezone),
        now=utcnow(),
        vip_threshold=tenant.vip_monetary_threshold,
        currency=tenant.currency,
        segment=segment,
        offset=offset,
        limit=limit,
    )


@bp.get("/api/analytics/<int:tenant_id>/alerts")
@jwt_required()
def alerts(tenant_id: int):
    """Active smart alerts (high abandonment, unsold popular products, payment errors,
    abandoned carts, stuck sessions)."""
    tenant = owned_tenant_or_404(tenant_id)
    take_a_report_slot(tenant.id)
    alerts = store_alerts.smart_alerts(
        db.session, tenant_id=tenant.id, zone=tenant_zone(tenant.timezone), now=utcnow()
    )
    return {"alerts": alerts}
