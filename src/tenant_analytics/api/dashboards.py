"""Owner dashboards (JWT of an owner of the tenant, or of an admin)."""

from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint
from flask_jwt_extended import jwt_required

from ..extensions import db
from ..models import utcnow
from ..queries import landing_rollups
from ..tenancy import owned_tenant_or_404
from ..timewindows import tenant_zone

bp = Blueprint("dashboards", __name__)


@bp.get("/api/analytics/<int:tenant_id>")
@jwt_required()
def landing_dashboard(tenant_id: int):
    """Visitors today and this week, taps and scans over the last 7 local days."""
    tenant = owned_tenant_or_404(tenant_id)
    summary = landing_rollups.landing_summary(
        db.session,
        tenant_id=tenant.id,
        zone=tenant_zone(tenant.timezone),
        now=utcnow(),
        currency=tenant.currency,
    )
    return {"success": True, "data": asdict(summary)}


@bp.get("/api/analytics/<int:tenant_id>/today")
@jwt_required()
def today(tenant_id: int):
    """Today's visitors, WhatsApp and call taps, QR scans and product clicks (local day)."""
    tenant = owned_tenant_or_404(tenant_id)
    summary = landing_rollups.today_summary(
        db.session, tenant_id=tenant.id, zone=tenant_zone(tenant.timezone), now=utcnow()
    )
    return {"success": True, **asdict(summary)}
