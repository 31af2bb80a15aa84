"""HTTP layer: one blueprint per resource, thin handlers."""

from flask import Flask


def register_blueprints(app: Flask) -> None:
    from . import auth, dashboards, tracking

    app.register_blueprint(auth.bp)
    app.register_blueprint(tracking.bp)
    app.register_blueprint(dashboards.bp)
