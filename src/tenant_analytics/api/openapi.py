"""The API's OpenAPI document and the index that points to it (public)."""

from __future__ import annotations

from flask import Blueprint, current_app, request, url_for

from ..openapi import build_document

bp = Blueprint("openapi", __name__)


@bp.get("/")
def index():
    """Where to start, for whoever opens the server's address in a browser: the service
    has no page of its own (owners' dashboards are JSON, for their own front end)."""
    links = {"openapi": url_for(".document"), "health": url_for("health.health")}
    if "demo_site" in current_app.blueprints:
        links["demo"] = url_for("demo_site.landing_page")
    return {"service": "tenant-analytics", **links}


@bp.get("/api/openapi.json")
def document():
    """The OpenAPI 3.1 document of this API, built once per process from its routes."""
    extensions = current_app.extensions
    if "openapi" not in extensions:
        extensions["openapi"] = build_document(current_app)
    # The app's root as this request reached it: under a path too (SCRIPT_NAME). Not a
    # relative "..": openapi-core and schemathesis take that as a literal prefix.
    return {**extensions["openapi"], "servers": [{"url": request.script_root or "/"}]}
