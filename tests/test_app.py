"""The factory, configuration and schema agree with what the issue promises."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tenant_analytics import create_app
from tenant_analytics.config import ConfigError, from_environment
from tenant_analytics.extensions import db
from tenant_analytics.partitions import is_partition

from .servers import ROOT


def include_name(name, type_, parent_names):
    """What migrations/env.py compares: monthly partitions are the app's, not the models'."""
    if type_ == "index":
        return not is_partition(parent_names.get("table_name"))
    return not (type_ == "table" and is_partition(name))


def test_models_match_migrations(app):
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": include_name})
        diff = compare_metadata(context, db.metadata)
    assert diff == []


def test_production_refuses_development_secrets(monkeypatch):
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("SECRET_KEY", "x" * 40)
    monkeypatch.delenv("JWT_SECRET_KEY", raising=False)
    monkeypatch.delenv("VISITOR_HASH_KEY", raising=False)
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY, VISITOR_HASH_KEY"):
        create_app()


def test_production_starts_with_real_secrets(monkeypatch):
    monkeypatch.setenv("FLASK_ENV", "production")
    for name in ("SECRET_KEY", "JWT_SECRET_KEY", "VISITOR_HASH_KEY"):
        monkeypatch.setenv(name, name.lower() * 4)
    assert create_app().config["APP_ENV"] == "production"


@pytest.mark.parametrize(
    "env",
    [{"TRACK_RATE_LIMIT": "lots"}, {"TRUSTED_PROXY_COUNT": "-1"}, {"RATELIMIT_ENABLED": "maybe"}],
)
def test_bad_settings_are_refused(env):
    with pytest.raises(ConfigError):
        from_environment(env)


def test_postgres_url_spelling_is_normalized():
    app = create_app({"SQLALCHEMY_DATABASE_URI": "postgres://u@h/db"})
    assert app.config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg2://u@h/db"


def test_factory_does_not_connect():
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": "postgresql://nobody@127.0.0.1:1/none",
            "RATELIMIT_STORAGE_URI": "redis://127.0.0.1:1",
        }
    )
    assert "tracking" in app.blueprints


def test_an_exhausted_connection_pool_answers_503_not_500(make_app, migrated):
    """More concurrent requests than pooled connections: a retryable 503, never a 500."""
    app = make_app(
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2}
    )
    with app.app_context(), db.engine.connect():  # the pool's only connection, held
        response = app.test_client().post(
            "/api/analytics/track", json={"tenant_id": 1, "event_type": "pageview"}
        )
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    body = response.get_json()
    assert body["success"] is False and "QueuePool" not in body["message"]


def test_the_wsgi_entry_point_freezes_what_startup_built(tmp_path):
    """A served worker's full garbage collections skip the objects the app was built from."""
    report = "import gc, wsgi; print(gc.get_freeze_count())"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": "sqlite://"}
    result = subprocess.run(
        [sys.executable, "-c", report], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 10_000
