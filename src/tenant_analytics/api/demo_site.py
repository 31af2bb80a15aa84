"""The demo bakery's landing page, with the snippet on it: the quick start's page to
tap around in. Registered only outside production (see ``api.register_blueprints``)."""

from __future__ import annotations

from flask import Blueprint, render_template

from ..demo import DEMO_SLUG
from ..errors import ApiError
from ..extensions import db
from ..products import list_products
from ..tenancy import public_tenant_by_slug

bp = Blueprint("demo_site", __name__)


@bp.get("/demo/")
def landing_page():
    tenant = public_tenant_by_slug(db.session, DEMO_SLUG)
    if tenant is None:
        raise ApiError(404, "No demo: run `flask --app tenant_analytics demo`", code="not_found")
    products = [p for p in list_products(db.session, tenant.id) if p.active]
    return render_template("demo_landing.html", tenant=tenant, products=products)
