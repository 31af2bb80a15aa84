"""HTTP layer: one blueprint per resource, thin handlers."""

from flask import Flask
from werkzeug.routing import IntegerConverter


class AsciiIntegerConverter(IntegerConverter):
    """``<int:…>`` in ASCII digits, written one way: Werkzeug's ``\\d+`` also takes an
    Arabic-Indic or a full-width one, and "01", for 1: spellings a proxy's or a log's
    rule for /api/tenants/1 would miss."""

    regex = r"0|[1-9][0-9]*"


def register_blueprints(app: Flask) -> None:
    app.url_map.converters["int"] = AsciiIntegerConverter  # before any rule is added
    from . import (
        auth,
        dashboards,
        demo_site,
        health,
        openapi,
        qr,
        store_reports,
        tenants,
        tracking,
        v1,
    )

    app.register_blueprint(auth.bp)
    app.register_blueprint(tracking.bp)
    app.register_blueprint(dashboards.bp)
    app.register_blueprint(store_reports.bp)
    app.register_blueprint(tenants.bp)
    app.register_blueprint(v1.bp)
    app.register_blueprint(qr.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(health.bp)
    if app.config["APP_ENV"] != "production":  # the quick start's page; no demo in production
        app.register_blueprint(demo_site.bp)
