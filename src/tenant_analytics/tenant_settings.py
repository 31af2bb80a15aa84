"""A tenant's settings changed by an owner or an operator: who may switch it back on,
and the recount of its rollups that a new time zone needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from .errors import ApiError, tenant_not_found
from .models import Tenant
from .rollups import lock_rollups_within, rebuild_rollups


def refuse_switching_on(tenant: Tenant, active: bool, *, by_operator: bool) -> None:
    """An owner may switch its tenant off and on; not on after an operator (the CLI, an
    admin) switched it off, as for abuse: 403 ``tenant_suspended``."""
    if active and tenant.suspended and not by_operator:
        raise ApiError(
            403,
            "An operator switched this tenant off; only an operator can switch it on.",
            code="tenant_suspended",
        )


def switch_tenant(tenant: Tenant, active: bool, *, by_operator: bool) -> None:
    """Switch the tenant on or off; an operator's word also decides ``suspended``.
    The caller commits, then forgets its cached tenants."""
    refuse_switching_on(tenant, active, by_operator=by_operator)
    tenant.active = active
    if by_operator:
        tenant.suspended = not active


def change_settings(
    session: Session,
    tenant: Tenant,
    changes: dict[str, Any],
    *,
    by_operator: bool,
    lock_wait: float,
    before_rebuild: Callable[[], None] = lambda: None,
) -> None:
    """Apply ``changes`` (fields of TenantUpdate) to ``tenant``; the caller commits.

    A new time zone recounts the rollups in this transaction (their days are local
    days). Before the tenant's row is written (a waiting change would hold it, and a
    connection) it takes the tenant's rollup lock, waiting ``lock_wait`` seconds at most:
    one rebuild at a time, the others told so (409 ``rebuild_in_progress``) rather than
    queued behind it for its length. ``before_rebuild`` runs once the recount is sure to
    happen (a rate limit's charge).
    """
    rebuild = changes.get("timezone", tenant.timezone) != tenant.timezone
    if rebuild and not lock_rollups_within(session, tenant.id, lock_wait):
        raise ApiError(
            409,
            "The tenant's rollups are being rebuilt (a time zone change or a rebuild "
            "command); send the change again once it is done.",
            code="rebuild_in_progress",
        )
    if "active" in changes:
        # Read again under the row's lock: an operator's suspension committed since the
        # tenant was read must refuse this switch, not be overwritten by it. After the
        # rollup lock, in the order a zone change takes both (else a deadlock).
        locked = {"key_share": True}
        if session.get(Tenant, tenant.id, with_for_update=locked, populate_existing=True) is None:
            raise tenant_not_found()  # deleted meanwhile
        refuse_switching_on(tenant, changes["active"], by_operator=by_operator)
    if rebuild:
        before_rebuild()
    for name, value in changes.items():
        if name == "active":
            switch_tenant(tenant, value, by_operator=by_operator)
        else:
            setattr(tenant, name, value)
    if rebuild:
        rebuild_rollups(session, tenant.id)
