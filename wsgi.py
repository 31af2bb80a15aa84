"""WSGI entry point: ``gunicorn wsgi:app``."""

from tenant_analytics import create_app

app = create_app()
