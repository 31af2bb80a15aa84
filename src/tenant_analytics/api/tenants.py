"""Owners manage their tenants and products (JWT of an owner, or of an admin)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import chain

from flask import Blueprint, current_app, request, stream_with_context
from flask_jwt_extended import current_user, jwt_required
from sqlalchemy.exc import IntegrityError, NoResultFound

from ..database_errors import names_a_missing_row, outage_reason
from ..errors import ApiError, invalid_body, product_not_found, tenant_not_found
from ..extensions import db
from ..logs import get_logger
from ..models import Product, Tenant
from ..products import create_product, list_products, product_of_tenant
from ..ratelimits import spend_heavy_owner_work
from ..schemas import ProductCreate, ProductUpdate, TenantUpdate
from ..tenancy import active_tenants, owned_tenant_or_404, readable_tenants
from ..tenant_data import exported_text
from ..tenant_settings import change_settings, refuse_switching_on
from .qr import is_own_qr_redirect
from .requests import parse_body

bp = Blueprint("tenants", __name__, url_prefix="/api/tenants")
log = get_logger(__name__)


SLUG_TAKEN = "A product with this slug already exists."


@contextmanager
def _committed_or_409(message: str) -> Iterator[None]:
    """Run the block and commit; a unique-constraint clash (a taken slug) becomes a 409,
    a tenant deleted meanwhile (its foreign key) a 404."""
    try:
        yield
        db.session.commit()
    except IntegrityError as error:
        db.session.rollback()
        if names_a_missing_row(error):  # the tenant, deleted meanwhile
            raise tenant_not_found() from None
        raise ApiError(409, message, code="conflict") from None


def _product_or_404(tenant: Tenant, product_id: int) -> Product:
    product = product_of_tenant(db.session, tenant.id, product_id)
    if product is None:
        raise product_not_found()
    return product


@bp.get("")
@jwt_required()
def list_tenants():
    """The caller's tenants (every tenant for an admin)."""
    return {"success": True, "tenants": [t.to_dict() for t in readable_tenants(current_user)]}


@bp.get("/<int:tenant_id>")
@jwt_required()
def get_tenant(tenant_id: int):
    """One tenant's settings."""
    return {"success": True, "tenant": owned_tenant_or_404(tenant_id).to_dict()}


@bp.patch("/<int:tenant_id>")
@jwt_required()
def update_tenant(tenant_id: int):
    """Change name, timezone (IANA), currency, active, the RFM VIP threshold or the
    landing page its QR codes lead to."""
    tenant = owned_tenant_or_404(tenant_id)
    changes = parse_body(TenantUpdate).model_dump(exclude_unset=True)
    operator = current_user.is_admin
    refuse_switching_on(tenant, changes.get("active", False), by_operator=operator)
    if changes.get("landing_url") and is_own_qr_redirect(changes["landing_url"]):
        raise invalid_body({"landing_url": ["may not be a QR redirect of this service (a loop)"]})
    change_settings(
        db.session,
        tenant,
        changes,
        by_operator=operator,
        # A write's moment with the rollup lock is waited out, as writes wait for each other.
        lock_wait=current_app.config["WRITE_LOCK_TIMEOUT_SECONDS"],
        before_rebuild=lambda: spend_heavy_owner_work(tenant.id),  # a recount of every event
    )
    db.session.commit()
    active_tenants().forget()
    return {"success": True, "tenant": tenant.to_dict()}


@bp.get("/<int:tenant_id>/export")
@jwt_required()
def export_tenant(tenant_id: int):
    """All of the tenant's data as JSON lines, streamed (as `flask tenant export`)."""
    tenant = owned_tenant_or_404(tenant_id)
    if request.method == "HEAD":  # a download manager's look: nothing read, nothing spent
        return _export_response(tenant, iter(()))  # no Content-Length: 0, as a list gets
    spend_heavy_owner_work(tenant.id)
    pieces = exported_text(db.session, tenant)
    try:
        first = next(pieces)  # read before the 200 is sent: a database away is still a 503
    except NoResultFound:  # the tenant's row, deleted since it was found above
        raise tenant_not_found() from None
    return _export_response(tenant, stream_with_context(_ended_by_failure(chain([first], pieces))))


def _export_response(tenant: Tenant, body: Iterable[str]):
    response = current_app.response_class(body, mimetype="application/x-ndjson")
    response.headers["Content-Disposition"] = f'attachment; filename="{tenant.slug}.jsonl"'
    response.headers["Cache-Control"] = "no-store"
    return response


class ExportCutShort(Exception):
    """An export's stream failed after its 200: raised to the server, which then cuts the
    connection, so the download ends in an error rather than looking complete."""


def _ended_by_failure(pieces: Iterator[str]) -> Iterator[str]:
    """The export's stream, cut off where reading fails (the 200 is sent by then; a
    download cut short lacks its {"end": …} line too). The failure is logged here, as the
    app logs any, PostgreSQL's message left out; the server is handed an error without
    it, as gunicorn logs what it is handed."""
    try:
        yield from pieces
    except Exception as exc:
        db.session.rollback()
        reason = outage_reason(exc)
        if reason is None:
            log.error("export cut short", exc_info=exc)
        else:
            log.error("export cut short: %s", reason)
        raise ExportCutShort("export cut short (its cause is logged above)") from None


@bp.get("/<int:tenant_id>/products")
@jwt_required()
def get_products(tenant_id: int):
    """The tenant's products, inactive ones included."""
    tenant = owned_tenant_or_404(tenant_id)
    return {
        "success": True,
        "products": [p.to_dict() for p in list_products(db.session, tenant.id)],
    }


@bp.post("/<int:tenant_id>/products")
@jwt_required()
def add_product(tenant_id: int):
    """Create a product (slugs are unique within the tenant)."""
    tenant = owned_tenant_or_404(tenant_id)
    body = parse_body(ProductCreate)
    with _committed_or_409(SLUG_TAKEN):
        product = create_product(db.session, tenant.id, **body.model_dump())
    return {"success": True, "product": product.to_dict()}, 201


@bp.patch("/<int:tenant_id>/products/<int:product_id>")
@jwt_required()
def update_product(tenant_id: int, product_id: int):
    """Change a product's name, slug, price or active flag."""
    product = _product_or_404(owned_tenant_or_404(tenant_id), product_id)
    with _committed_or_409(SLUG_TAKEN):
        for name, value in parse_body(ProductUpdate).model_dump(exclude_unset=True).items():
            setattr(product, name, value)
    return {"success": True, "product": product.to_dict()}


@bp.delete("/<int:tenant_id>/products/<int:product_id>")
@jwt_required()
def delete_product(tenant_id: int, product_id: int):
    """Deactivate a product; its events and history stay."""
    product = _product_or_404(owned_tenant_or_404(tenant_id), product_id)
    product.active = False
    db.session.commit()
    return {"success": True, "product": product.to_dict()}
