"""Tenant scoping in one place: who may read which tenant, and which tenant a request names."""

from __future__ import annotations

import time
import uuid
from typing import Any

from flask import current_app, request
from flask_jwt_extended import current_user
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge, RequestTimeout

from .errors import tenant_not_found, tenant_unavailable
from .extensions import db
from .models import Tenant, User, is_row_id
from .rollups import TenantInfo


def public_tenant_by_slug(session: Session, slug: str) -> Tenant | None:
    """An active tenant by slug; else None."""
    return session.scalar(select(Tenant).where(Tenant.slug == slug, Tenant.active.is_(True)))


TenantKey = int | uuid.UUID


def tenant_key_of(ref: object) -> TenantKey | None:
    """The one canonical form of a public tenant reference, or None if it cannot name one.

    An integer id (also as a string of ASCII digits, e.g. ``"7"``) or a public UUID
    in any spelling UUID accepts; every spelling of one tenant gives the same key.
    """
    if isinstance(ref, bool):
        return None
    if isinstance(ref, int):
        return ref if is_row_id(ref) else None
    if not isinstance(ref, str) or len(ref) > 64:
        return None
    ref = ref.strip()
    if ref.isascii() and ref.isdigit():
        return tenant_key_of(int(ref))
    try:
        return uuid.UUID(ref)
    except ValueError:
        return None


def resolve_public_tenant(session: Session, key: TenantKey) -> Tenant | None:
    """An active tenant by its canonical key (see ``tenant_key_of``); else None."""
    if isinstance(key, uuid.UUID):
        return session.scalar(
            select(Tenant).where(Tenant.public_id == key, Tenant.active.is_(True))
        )
    tenant = session.get(Tenant, key)
    return tenant if tenant is not None and tenant.active else None


def owned_tenant_or_404(tenant_id: int) -> Tenant:
    """The tenant if the signed-in user owns it or is an admin.

    Raises a 404 ``ApiError`` otherwise, the same as for a tenant that does not
    exist, so the answer never reveals that another tenant's id is taken.
    """
    user: User = current_user
    tenant = None
    if is_row_id(tenant_id):
        # One query either way: loading the owners only for a tenant that exists took
        # measurably longer, and so told another tenant's id from a free one.
        query = select(Tenant).where(Tenant.id == tenant_id)
        if not user.is_admin:
            query = query.where(Tenant.owners.any(User.id == user.id))
        tenant = db.session.scalar(query)
    if tenant is None:
        raise tenant_not_found()
    return tenant


def readable_tenants(user: User) -> list[Tenant]:
    """The tenants ``user`` may read, by id: all of them for an admin, else their own."""
    if user.is_admin:
        return list(db.session.scalars(select(Tenant).order_by(Tenant.id)))
    return sorted(user.tenants, key=lambda tenant: tenant.id)


def request_body() -> dict[str, Any] | None:
    """The JSON body, whatever the Content-Type (``sendBeacon`` posts text/plain)."""
    try:
        body = request.get_json(force=True, silent=True)
    except RecursionError:  # "[[[[..." a few thousand deep: not a body we take
        return None
    except (RequestEntityTooLarge, ClientDisconnected, RequestTimeout):
        # The view answers it (413, 400, 408). Raised into a rate limit's key function, it
        # would be taken for the limiter's storage failing: every limit of the process
        # counted in memory for a moment, sign-in's included.
        return None
    return body if isinstance(body, dict) else None


class ActiveTenants:
    """Active tenants by reference, remembered for a few seconds per process.

    The tracking endpoints look a tenant up on every event; this saves the
    query. A deactivated tenant keeps receiving events for at most ``ttl``
    seconds in other processes (this process forgets at once, see ``forget``).
    Misses are not remembered, so a new tenant works immediately, and entries are
    keyed by canonical reference, so the cache holds at most two per active tenant
    (its id and its public UUID) however clients spell them.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[TenantKey, tuple[float, TenantInfo]] = {}

    def get(self, ref: object) -> TenantInfo | None:
        key = tenant_key_of(ref)
        if key is None:
            return None
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        try:
            tenant = resolve_public_tenant(db.session, key)
        except SQLAlchemyError:
            # The limiter asks first and swallows errors: a transaction left aborted
            # would hide the real error behind InFailedSqlTransaction in the view.
            db.session.rollback()
            raise
        if tenant is None:
            self._entries.pop(key, None)
            return None
        info = TenantInfo.of(tenant)
        if self.ttl > 0:
            self._entries[key] = (now, info)
        return info

    def forget(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def active_tenants() -> ActiveTenants:
    return current_app.extensions["active_tenants"]


def requested_tenant(field: str = "tenant_id") -> TenantInfo | None:
    """The active tenant named by the body's ``field``, resolved once per request.

    A lookup the database failed fails again at once for the rest of the request (the
    rate limiter asks before the view does): with the database away, each request
    waits out one connect timeout, not two.
    """
    # Cached on the request, not on g: an app context may outlive one request.
    cache: dict[str, TenantInfo | SQLAlchemyError | None] = request.environ.setdefault(
        "tenant_analytics.requested_tenants", {}
    )
    if field not in cache:
        try:
            cache[field] = active_tenants().get((request_body() or {}).get(field))
        except SQLAlchemyError as error:
            cache[field] = error
    found = cache[field]
    if isinstance(found, SQLAlchemyError):
        raise found
    return found


def requested_tenant_or_404(field: str = "tenant_id") -> TenantInfo:
    """``requested_tenant``, or the 404 ``tenant_not_found`` raised when there is none."""
    tenant = requested_tenant(field)
    if tenant is None:
        raise tenant_unavailable()
    return tenant
