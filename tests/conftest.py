"""Fixtures: the real Alembic migrations once per session, tables emptied after each test.

``TEST_DATABASE_URL`` selects PostgreSQL; without it the suite runs on an SQLite
file. ``TEST_REDIS_URL`` puts the rate limiter on Redis.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade
from sqlalchemy import create_engine, make_url, text

from tenant_analytics import create_app
from tenant_analytics.auth import access_token_for, create_user, new_sign_in
from tenant_analytics.config import normalize_database_url
from tenant_analytics.extensions import db, limiter
from tenant_analytics.ingestion import ClientInfo, NewEvent, enrich
from tenant_analytics.models import Tenant, User, utcnow
from tenant_analytics.storage import insert_events

# Drawn for each run: keys published here would be keys a production server could be
# given (its check refuses only the keys it knows are published).
TEST_HASH_KEY = secrets.token_urlsafe(32)
TEST_JWT_KEY = secrets.token_urlsafe(32)
# Every app the suite makes, and every server it starts, has keys: none writes the
# checkout's instance/dev-secrets.json (the tests of that file remove these).
os.environ.setdefault("JWT_SECRET_KEY", TEST_JWT_KEY)
os.environ.setdefault("VISITOR_HASH_KEY", TEST_HASH_KEY)
# The store columns a test event may set (``store_events``).
STORE_EVENT_FIELDS = (
    "session_id",
    "user_id",
    "product_slug",
    "product_name",
    "quantity",
    "revenue",
    "currency",
    "source",
)
REDIS_URL = os.environ.get("TEST_REDIS_URL")
RATE_LIMIT_PREFIX = f"test-{uuid.uuid4().hex}"


def _reset_postgres(url: str) -> None:
    engine = create_engine(normalize_database_url(url))
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        _reset_postgres(url)
        # As the app reads it: ``postgres://`` too starts with "postgresql" then.
        return normalize_database_url(url)
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"


@pytest.fixture(scope="session")
def migrated(database_url: str) -> str:
    """Apply the real migrations once; the schema every test runs on."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        upgrade()
        db.engine.dispose()
    return database_url


@pytest.fixture
def is_postgres(database_url: str) -> bool:
    return database_url.startswith("postgresql")


def app_config(database_url: str, **overrides: Any) -> dict[str, Any]:
    config = {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "VISITOR_HASH_KEY": TEST_HASH_KEY,
        "JWT_SECRET_KEY": TEST_JWT_KEY,
        "RATELIMIT_STORAGE_URI": REDIS_URL or "memory://",
        # The limiter keeps the first prefix it sees; counters are reset after each test.
        "RATELIMIT_KEY_PREFIX": RATE_LIMIT_PREFIX,
    }
    config.update(overrides)
    return config


@pytest.fixture
def make_app(migrated: str) -> Iterator[Any]:
    apps: list[Flask] = []

    def _make(**overrides: Any) -> Flask:
        app = create_app(app_config(migrated, **overrides))
        apps.append(app)
        return app

    yield _make
    for made in apps:
        release_connections(made)
    if apps:
        with apps[0].app_context():
            _empty_tables()
        limiter.reset()
        # One limiter per process, which outlives its apps: a test's unreachable storage
        # must not leave the next tests counting in its in-memory fallback.
        limiter._storage_dead = False


def release_connections(app: Flask) -> None:
    """Stop the app's group committer and empty its pool: every test makes its own apps,
    and PostgreSQL's max_connections is shared by the whole suite."""
    if committer := app.extensions.get("group_commit"):
        committer.close()
    with app.app_context():
        db.engine.dispose()


def _empty_tables() -> None:
    db.session.remove()
    with db.engine.begin() as conn:
        for table in reversed(db.metadata.sorted_tables):
            conn.execute(table.delete())
    db.engine.dispose()


@pytest.fixture
def app(make_app: Any) -> Iterator[Flask]:
    application = make_app()
    with application.app_context():
        yield application


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask):
    return app.test_cli_runner()


@pytest.fixture
def make_tenant(app: Flask):
    def _make(slug: str | None = None, **fields: Any) -> Tenant:
        slug = slug or f"t-{uuid.uuid4().hex[:10]}"
        tenant = Tenant(slug=slug, name=fields.pop("name", slug.title()), **fields)
        db.session.add(tenant)
        db.session.commit()
        return tenant

    return _make


@pytest.fixture
def make_user(app: Flask):
    def _make(*tenants: Tenant, admin: bool = False, password: str = "s3cret-pass") -> User:
        email = f"u-{uuid.uuid4().hex[:10]}@example.com"
        user = create_user(db.session, email, password, tenants=list(tenants), is_admin=admin)
        db.session.commit()
        return user

    return _make


@pytest.fixture
def auth_headers(app: Flask):
    def _headers(user: User) -> dict[str, str]:
        return {"Authorization": f"Bearer {access_token_for(user, new_sign_in())}"}

    return _headers


def _insert_as_ingested(tenant: Tenant, events: list[tuple[NewEvent, ClientInfo]]) -> None:
    """Enrich and insert ``events`` as ingestion does (hashes, rollups), then commit."""
    now = utcnow()
    rows = [enrich(tenant, e, client, hash_key=TEST_HASH_KEY, now=now) for e, client in events]
    insert_events(db.session, rows)
    db.session.commit()


@pytest.fixture
def add_events(app: Flask):
    """Store events directly: ``add_events(tenant, [(type, created_at, visitor, metadata)])``."""

    def _add(tenant: Tenant, events: list[tuple[str, datetime, str, dict | None]]) -> None:
        _insert_as_ingested(
            tenant,
            [
                (
                    NewEvent(event_type, metadata, created_at=created_at),
                    ClientInfo(ip=visitor, user_agent="pytest", referrer=None),
                )
                for event_type, created_at, visitor, metadata in events
            ],
        )

    return _add


@pytest.fixture
def store_events(app):
    """Store events as ingestion would: ``store_events(tenant, [ev(...), ...])``."""

    def _store(tenant: Tenant, events: list[tuple[str, datetime, dict[str, Any]]]) -> None:
        client = ClientInfo(ip="10.0.0.1", user_agent="pytest", referrer=None)
        # Every row has the same keys: the store fields, None where a test leaves one out.
        _insert_as_ingested(
            tenant,
            [
                (
                    NewEvent(
                        event_type,
                        None,
                        created_at=created_at,
                        extra={name: columns.get(name) for name in STORE_EVENT_FIELDS},
                    ),
                    client,
                )
                for event_type, created_at, columns in events
            ],
        )

    return _store


@contextmanager
def scratch_database(database_url: str, suffix: str, options: str = "") -> Iterator[str]:
    """A new PostgreSQL database beside the suite's (``CREATE DATABASE ... options``), its
    URL yielded, dropped after."""
    url = make_url(normalize_database_url(database_url))
    name = f"{url.database}_{suffix}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.exec_driver_sql(f'CREATE DATABASE "{name}" {options}')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def scratch_database_url(database_url, tmp_path):
    """An empty database beside the suite's, for migrating step by step; dropped after."""
    if not database_url.startswith("postgres"):
        yield f"sqlite:///{tmp_path / 'upgrade.db'}"
        return
    with scratch_database(database_url, "upgrade") as url:
        yield url


def read_only_url(database_url: str) -> str:
    """``database_url`` with sessions that start read-only, as a standby's after a failover."""
    url = make_url(database_url)
    given = url.query.get("options")  # keep what the URL already sets
    options = " ".join(filter(None, [given, "-c default_transaction_read_only=on"]))
    return url.update_query_dict({"options": options}).render_as_string(hide_password=False)


def sessions_gone(connection, where: str, **params: object) -> None:
    """Wait until the server sessions ``where`` names (pg_stat_activity) have ended."""
    query = text(f"SELECT count(*) FROM pg_stat_activity WHERE {where}")
    # The view holds still for the rest of a transaction once read: read it anew each time.
    forget = text("SELECT pg_stat_clear_snapshot()")
    deadline = time.monotonic() + 10
    while connection.execute(forget) and connection.execute(query, params).scalar():
        assert time.monotonic() < deadline, "the ended sessions are still there"
        time.sleep(0.01)
