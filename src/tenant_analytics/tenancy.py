"""Tenant scoping in one place: who may read which tenant, and which tenant a request names."""

from __future__ import annotations

from typing import Any

from flask import request
from flask_jwt_extended import current_user

from .errors import ApiError
from .extensions import db
from .ingestion import resolve_public_tenant
from .models import Tenant, User

TENANT_NOT_FOUND = "Tenant not found"


def owned_tenant_or_404(tenant_id: int) -> Tenant:
    """The tenant if the signed-in user owns it or is an admin.

    Raises a 404 ``ApiError`` otherwise, the same as for a tenant that does not
    exist, so the answer never reveals that another tenant's id is taken.
    """
    user: User = current_user
    tenant = db.session.get(Tenant, tenant_id) if 0 < tenant_id < 2**31 else None
    if tenant is None or not (user.is_admin or tenant in user.tenants):
        raise ApiError(404, TENANT_NOT_FOUND, code="not_found")
    return tenant


def request_body() -> dict[str, Any] | None:
    """The JSON body, whatever the Content-Type (``sendBeacon`` posts text/plain)."""
    body = request.get_json(force=True, silent=True)
    return body if isinstance(body, dict) else None


def requested_tenant(field: str = "tenant_id") -> Tenant | None:
    """The active tenant named by the body's ``field``, resolved once per request."""
    # Cached on the request, not on g: an app context may outlive one request.
    cache: dict[str, Tenant | None] = request.environ.setdefault(
        "tenant_analytics.requested_tenants", {}
    )
    if field not in cache:
        ref = (request_body() or {}).get(field)
        ok = isinstance(ref, str) or (isinstance(ref, int) and not isinstance(ref, bool))
        cache[field] = resolve_public_tenant(db.session, ref) if ok else None
    return cache[field]
