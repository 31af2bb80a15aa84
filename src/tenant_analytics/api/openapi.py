"""The API's OpenAPI document (public)."""

from __future__ import annotations

from flask import Blueprint, current_app

from ..openapi import build_document

bp = Blueprint("openapi", __name__)


@bp.get("/api/openapi.json")
def document():
    """The OpenAPI 3.1 document of this API, built once per process from its routes."""
    extensions = current_app.extensions
    if "openapi" not in extensions:
        extensions["openapi"] = build_document(current_app)
    return extensions["openapi"]
