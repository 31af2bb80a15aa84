"""The factory, configuration and schema agree with what the issue promises."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_jwt_extended import create_access_token, create_refresh_token, decode_token
from flask_migrate import upgrade
from gunicorn.arbiter import Arbiter
from sqlalchemy import create_engine, func, make_url, select, text
from sqlalchemy.exc import OperationalError

from tenant_analytics import create_app, ratelimits
from tenant_analytics.config import (
    ConfigError,
    from_environment,
    normalize_database_url,
    warn_about_database,
)
from tenant_analytics.database_errors import (
    OnceAMinute,
    connection_failure,
    database_address,
    is_database_away,
    is_outage,
)
from tenant_analytics.extensions import db, limiter
from tenant_analytics.ingestion import ClientInfo, NewEvent, ingest
from tenant_analytics.models import DailyProductCount, Event, Tenant, utcnow
from tenant_analytics.partitions import ensure_partitions, include_in_migrations, month_of
from tenant_analytics.queries import store_alerts, store_dashboard, store_rfm
from tenant_analytics.ratelimits import warn_about_limits
from tenant_analytics.rollups import rebuild_rollups
from tenant_analytics.timewindows import tenant_zone

from .conftest import TEST_JWT_KEY, read_only_url, release_connections, scratch_database
from .servers import GUNICORN, ROOT, TcpForwarder, free_port

DATABASE_LOG = "tenant_analytics.database_errors"  # its once-a-minute lines


def test_models_match_migrations(app):
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": include_in_migrations})
        diff = compare_metadata(context, db.metadata)
    assert diff == []


def test_db_check_sees_no_change_where_partitions_exist(app, runner, is_postgres):
    """Autogenerate (flask db migrate / check) must not take the monthly partitions for
    tables to drop: migrations/env.py leaves them out as the comparison above does."""
    if is_postgres:
        with db.engine.begin() as connection:
            ensure_partitions(connection, [month_of(utcnow())])
    result = runner.invoke(args=["db", "check"])
    assert result.exit_code == 0, result.output


def test_production_refuses_development_secrets(monkeypatch):
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("SECRET_KEY", "x" * 40)
    monkeypatch.delenv("JWT_SECRET_KEY", raising=False)
    monkeypatch.delenv("VISITOR_HASH_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"\): JWT_SECRET_KEY, VISITOR_HASH_KEY"):
        create_app()


@pytest.mark.parametrize("spelling", ["production ", "Production", " PRODUCTION\n"])
def test_production_is_recognised_however_spelt(monkeypatch, spelling):
    monkeypatch.setenv("APP_ENV", spelling)
    monkeypatch.delenv("JWT_SECRET_KEY", raising=False)
    with pytest.raises(ConfigError, match="without secrets"):
        create_app()


@pytest.mark.parametrize(
    ("name", "published"),
    [
        ("JWT_SECRET_KEY", "dev-only-insecure-secret-do-not-use-in-production"),
        # the suite's keys before it drew its own, in the repository's history
        ("JWT_SECRET_KEY", "test-jwt-key-0123456789abcdef-0123456789"),
        ("VISITOR_HASH_KEY", "test-visitor-hash-key-0123456789abcdef"),
    ],
)
def test_production_refuses_a_key_that_was_once_published(monkeypatch, name, published):
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("JWT_SECRET_KEY", "v" * 32)
    monkeypatch.setenv("VISITOR_HASH_KEY", "w" * 32)
    monkeypatch.setenv(name, published)
    with pytest.raises(ConfigError, match=rf"published\): {name}$"):
        create_app()


def test_a_damaged_development_keys_file_is_named(monkeypatch, tmp_path):
    for name in ("APP_ENV", "FLASK_ENV", "JWT_SECRET_KEY", "VISITOR_HASH_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "instance").mkdir()
    (tmp_path / "instance" / "dev-secrets.json").write_text('{"JWT_SECRET_KEY": "x"')
    with pytest.raises(ConfigError, match=r"dev-secrets\.json is damaged"):
        create_app()
    assert [p.name for p in (tmp_path / "instance").iterdir()] == ["dev-secrets.json"]


def test_production_refuses_short_secrets(monkeypatch):
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("JWT_SECRET_KEY", "s3cret")  # guessable offline from any token
    monkeypatch.setenv("VISITOR_HASH_KEY", "v" * 32)
    with pytest.raises(ConfigError, match=r"under 32 bytes: JWT_SECRET_KEY$"):
        create_app()


def test_production_refuses_one_key_for_both_secrets(monkeypatch):
    monkeypatch.setenv("APP_ENV", "production")
    for name in ("JWT_SECRET_KEY", "VISITOR_HASH_KEY"):
        monkeypatch.setenv(name, TEST_JWT_KEY)
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY equal to VISITOR_HASH_KEY"):
        create_app()


@pytest.mark.parametrize("weak", ["a" * 32, "changeme-changeme-changeme-changeme"])
def test_production_refuses_secrets_no_one_drew_at_random(monkeypatch, weak):
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("JWT_SECRET_KEY", TEST_JWT_KEY)
    monkeypatch.setenv("VISITOR_HASH_KEY", weak)
    with pytest.raises(ConfigError, match=r"\(not drawn at random\): VISITOR_HASH_KEY$"):
        create_app()
    # 32 hex digits will do, even with few different ones (1 in 60 has under 12).
    monkeypatch.setenv("VISITOR_HASH_KEY", "0123456789a" + secrets.token_hex(16)[11:])
    monkeypatch.setenv("DATABASE_URL", "sqlite://")
    monkeypatch.setenv("RATELIMIT_STORAGE_URI", "memory://")
    assert create_app().config["APP_ENV"] == "production"


@pytest.mark.parametrize(
    ("setting", "value", "said"),
    [
        (
            "DATABASE_URL",
            "postgresq://app:hunter2@db/analytics",
            "no database is called 'postgresq'",
        ),
        ("DATABASE_URL", "postgresql://app:hunter2@db:54x32/analytics", "is not a database URL"),
        ("DATABASE_URL", "hunter2", "is not a database URL"),
        ("DATABASE_URL", "mysql://app:hunter2@db/analytics", "is not installed"),
        ("DATABASE_URL", "postgresql+asyncpg://app:hunter2@db/analytics", "is not installed"),
        ("RATELIMIT_STORAGE_URI", "memcached://:hunter2@cache:11211", "is not a storage like"),
        ("RATELIMIT_STORAGE_URI", "redis+sentinel://:hunter2@cache", "does not parse"),
        ("RATELIMIT_STORAGE_URI", "redis//:hunter2@cache:6379/0", "is not a storage like"),
        ("RATELIMIT_STORAGE_URI", "redsi://:hunter2@cache:6379/0", "is not a storage like"),
        ("RATELIMIT_STORAGE_URI", "redis://:hunter2@cache:notaport/0", "do not parse"),
        ("RATELIMIT_STORAGE_URI", "redis://:hunter2@cache:99999/0", "do not parse"),
        ("RATELIMIT_STORAGE_URI", "rediss://:hunter2@[::1/0", "do not parse"),
        ("RATELIMIT_STORAGE_URI", "redis://:hunter2@cache/0?socket_timeout=abc", "do not parse"),
    ],
)
def test_a_storage_url_that_names_nothing_usable_is_refused_without_its_password(
    monkeypatch, setting, value, said
):
    """A typo, said as one, in one line: not a traceback, and not the password in it."""
    monkeypatch.setenv("DATABASE_URL", "sqlite://")
    monkeypatch.setenv(setting, value)
    with pytest.raises(ConfigError, match=said) as refused:
        create_app()
    assert setting in str(refused.value) and "hunter2" not in str(refused.value)


BOUNDED_SETTINGS = {  # name: the greatest value taken
    "JWT_ACCESS_MINUTES": 365 * 24 * 60,
    "JWT_REFRESH_DAYS": 3650,
    "WRITE_LOCK_TIMEOUT_MS": 60_000,
    "MIGRATION_LOCK_TIMEOUT_MS": 2**31 - 1,  # PostgreSQL's greatest lock_timeout
    "IDEMPOTENCY_WINDOW_SECONDS": 30 * 86_400,
    "DATABASE_CONNECT_TIMEOUT": 3600,
    "BODY_READ_TIMEOUT_SECONDS": 3600,
    "TENANT_CACHE_SECONDS": 3600,
    "INTERACTION_MIN_MS": 10_000,
    "OWNER_REPORTS_AT_ONCE": 99,
}


def test_settings_at_their_bounds_start_and_sign_in(monkeypatch):
    """The greatest values make tokens (JWT_REFRESH_DAYS=999999999 started, then every
    sign-in was a 500: its expiry beyond the year 9999)."""
    monkeypatch.setenv("DATABASE_URL", "sqlite://")
    for name, greatest in BOUNDED_SETTINGS.items():
        monkeypatch.setenv(name, str(greatest))
    app = create_app()
    with app.test_request_context():
        assert decode_token(create_refresh_token(identity="1"))["sub"] == "1"
        assert decode_token(create_access_token(identity="1"))["sub"] == "1"


@pytest.mark.parametrize("name", BOUNDED_SETTINGS)
def test_a_setting_past_its_bound_is_refused_in_one_line(monkeypatch, name):
    monkeypatch.setenv("DATABASE_URL", "sqlite://")
    monkeypatch.setenv(name, str(BOUNDED_SETTINGS[name] + 1))
    with pytest.raises(ConfigError, match=f"^{name} must be <= {BOUNDED_SETTINGS[name]}, got"):
        create_app()


@pytest.mark.parametrize("limit", ["1 per 2 years", "10000000000 per second"])
def test_a_rate_limit_the_limiters_redis_cannot_count_is_refused(monkeypatch, limit):
    """Redis refused each count, and every worker went on counting alone, in memory."""
    monkeypatch.setenv("DATABASE_URL", "sqlite://")
    monkeypatch.setenv("API_RATE_LIMIT", limit)
    with pytest.raises(ConfigError, match=r"^API_RATE_LIMIT may allow at most 10\*\*9 per"):
        create_app()
    monkeypatch.setenv("API_RATE_LIMIT", "1000000000 per year")
    assert create_app().config["API_RATE_LIMIT"] == "1000000000 per year"


@pytest.mark.parametrize(
    "limit", ["0 per minute", "1 per 0 minute", "5/0second", "100 per minute;0 per second"]
)
def test_a_rate_limit_that_counts_nothing_is_refused(monkeypatch, limit):
    """ "0 per minute" refused every event of every tenant; limits reads a period of 0 as 1."""
    monkeypatch.setenv("DATABASE_URL", "sqlite://")
    monkeypatch.setenv("TRACK_RATE_LIMIT", limit)
    with pytest.raises(ConfigError, match=r"^TRACK_RATE_LIMIT must allow at least 1 per period"):
        create_app()
    monkeypatch.setenv("TRACK_RATE_LIMIT", "1 per 10 minutes")
    assert create_app().config["TRACK_RATE_LIMIT"] == "1 per 10 minutes"


@pytest.mark.parametrize(
    "storage",
    [
        "redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/mymaster",
        "redis://[::1]:6379/0",
        "rediss://:p%40ss@cache:6380/0?ssl_cert_reqs=none",
    ],
)
def test_a_storage_of_several_hosts_or_an_ipv6_one_is_taken(monkeypatch, storage):
    monkeypatch.setenv("DATABASE_URL", "sqlite://")
    monkeypatch.setenv("RATELIMIT_STORAGE_URI", storage)
    assert create_app().config["RATELIMIT_STORAGE_URI"] == storage


def test_development_without_secrets_makes_random_ones_once_per_instance(
    monkeypatch, tmp_path, caplog
):
    for name in ("APP_ENV", "FLASK_ENV", "JWT_SECRET_KEY", "VISITOR_HASH_KEY"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "one").mkdir()
    monkeypatch.chdir(tmp_path / "one")
    first, again = create_app(), create_app()
    keys = {name: first.config[name] for name in ("JWT_SECRET_KEY", "VISITOR_HASH_KEY")}
    # A worker started next, or the CLI, signs and hashes with the same keys...
    assert keys == {name: again.config[name] for name in keys}
    assert keys["JWT_SECRET_KEY"] != keys["VISITOR_HASH_KEY"]
    assert all(len(key) >= 32 for key in keys.values())
    kept = tmp_path / "one" / "instance" / "dev-secrets.json"
    assert json.loads(kept.read_text()) == keys
    assert kept.stat().st_mode & 0o777 == 0o600  # readable by its owner only
    told = f"APP_ENV is not production: JWT_SECRET_KEY, VISITOR_HASH_KEY from {kept}"
    assert told in caplog.text
    # ...and another checkout has its own: no key is written in the code.
    (tmp_path / "two").mkdir()
    monkeypatch.chdir(tmp_path / "two")
    elsewhere = create_app()
    assert all(elsewhere.config[name] != key for name, key in keys.items())
    # A key that is set is used as it is.
    monkeypatch.setenv("JWT_SECRET_KEY", "j" * 40)
    assert create_app().config["JWT_SECRET_KEY"] == "j" * 40


def test_production_needs_a_database_named(monkeypatch, tmp_path):
    """Not a SQLite file of its own in whatever directory each host starts in."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("RATELIMIT_STORAGE_URI", "memory://")
    for name in ("JWT_SECRET_KEY", "VISITOR_HASH_KEY"):
        monkeypatch.setenv(name, secrets.token_urlsafe(32))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ConfigError, match="without DATABASE_URL"):
        create_app()
    assert not (tmp_path / "instance").exists()
    monkeypatch.setenv("DATABASE_URL", "postgres://app@db.internal/analytics")
    uri = create_app().config["SQLALCHEMY_DATABASE_URI"]
    assert uri == "postgresql+psycopg2://app@db.internal/analytics"
    monkeypatch.setenv("APP_ENV", "development")
    monkeypatch.delenv("DATABASE_URL")
    assert create_app().config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///")  # quick start


def test_production_needs_a_shared_rate_limit_storage(monkeypatch, caplog):
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("DATABASE_URL", "sqlite://")
    for name in ("JWT_SECRET_KEY", "VISITOR_HASH_KEY"):
        monkeypatch.setenv(name, secrets.token_urlsafe(32))
    monkeypatch.delenv("RATELIMIT_STORAGE_URI", raising=False)
    with pytest.raises(ConfigError, match="without RATELIMIT_STORAGE_URI"):
        create_app()
    monkeypatch.setenv("RATELIMIT_ENABLED", "false")  # nothing to count (the benchmark)
    caplog.clear()
    app = create_app()
    assert app.config["RATELIMIT_STORAGE_URI"] == "memory://"
    assert caplog.text == ""  # every command builds the app: a server's start says it
    warn_about_limits(app)
    assert "RATELIMIT_ENABLED is false: no limit on events, sign-in or scans" in caplog.text
    monkeypatch.delenv("RATELIMIT_ENABLED")
    monkeypatch.setenv("RATELIMIT_STORAGE_URI", "memory://")  # asked for: one worker
    caplog.clear()
    app = create_app()
    assert app.config["RATELIMIT_STORAGE_URI"] == "memory://"
    warn_about_limits(app)
    assert "RATELIMIT_STORAGE_URI is memory://: run one worker" in caplog.text
    monkeypatch.delenv("APP_ENV")
    monkeypatch.delenv("RATELIMIT_STORAGE_URI")
    assert create_app().config["RATELIMIT_STORAGE_URI"] == "memory://"  # development


def test_a_production_server_on_sqlite_is_told_to_use_postgresql(monkeypatch, caplog):
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("RATELIMIT_STORAGE_URI", "memory://")
    for name in ("JWT_SECRET_KEY", "VISITOR_HASH_KEY"):
        monkeypatch.setenv(name, secrets.token_urlsafe(32))
    for database, told in (("sqlite:////tmp/p.db", True), ("postgresql://app@db/a", False)):
        monkeypatch.setenv("DATABASE_URL", database)
        caplog.clear()
        warn_about_database(create_app().config)
        assert ("serve real tenants from PostgreSQL" in caplog.text) is told, database
    monkeypatch.setenv("APP_ENV", "development")  # the quick start: SQLite as meant
    monkeypatch.setenv("DATABASE_URL", "sqlite:////tmp/p.db")
    caplog.clear()
    warn_about_database(create_app().config)
    assert "PostgreSQL" not in caplog.text


def test_production_starts_with_real_secrets_and_no_flask_secret(monkeypatch):
    monkeypatch.setenv("FLASK_ENV", "production")
    monkeypatch.setenv("RATELIMIT_STORAGE_URI", "memory://")
    monkeypatch.setenv("DATABASE_URL", "sqlite://")
    monkeypatch.delenv("SECRET_KEY", raising=False)  # nothing uses it
    for name in ("JWT_SECRET_KEY", "VISITOR_HASH_KEY"):
        monkeypatch.setenv(name, secrets.token_urlsafe(32))
    app = create_app()
    assert app.config["APP_ENV"] == "production"
    assert app.config["SECRET_KEY"] is None


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({"TRACK_RATE_LIMIT": "lots"}, "TRACK_RATE_LIMIT"),
        ({"TRACK_ADDRESS_RATE_LIMIT": "a few"}, "TRACK_ADDRESS_RATE_LIMIT"),
        # Not development: a typo must not start production with the development secrets.
        ({"APP_ENV": "prod"}, "APP_ENV"),
        ({"APP_ENV": "staging", "FLASK_ENV": "production"}, "APP_ENV"),
        ({"APP_ENV": "development", "FLASK_ENV": "production"}, "APP_ENV and FLASK_ENV"),
        ({"TRUSTED_PROXY_COUNT": "-1"}, "TRUSTED_PROXY_COUNT"),
        ({"RATELIMIT_ENABLED": "maybe"}, "RATELIMIT_ENABLED"),
        # PostgreSQL's 0 would mean no limit at all.
        ({"WRITE_LOCK_TIMEOUT_MS": "0"}, "WRITE_LOCK_TIMEOUT_MS"),
        # No scheme: browsers never send that.
        ({"DASHBOARD_ORIGINS": "dash.example.com"}, "DASHBOARD_ORIGINS"),
        # An origin has no path.
        ({"DASHBOARD_ORIGINS": "https://dash.example.com/"}, "DASHBOARD_ORIGINS"),
        # flask-cors: a pattern, too wide.
        ({"DASHBOARD_ORIGINS": "https://*.example.com"}, "DASHBOARD_ORIGINS"),
        ({"DASHBOARD_ORIGINS": "https://dash.example.com$|.*"}, "DASHBOARD_ORIGINS"),
        # What printed QR codes hold: an address a phone can open, and a header can carry.
        ({"PUBLIC_URL": "stats.example.com"}, "PUBLIC_URL"),
        ({"PUBLIC_URL": "javascript:alert(1)//"}, "PUBLIC_URL"),
        ({"PUBLIC_URL": "https://stats.example.com/\nX-Evil: 1"}, "PUBLIC_URL"),
        ({"PUBLIC_URL": "https://統計.example"}, "PUBLIC_URL"),  # punycode: headers are ASCII
        ({"PUBLIC_URL": "https://user:pw@stats.example.com"}, "PUBLIC_URL"),
        ({"PUBLIC_URL": "https://stats.example.com/?c=1"}, "PUBLIC_URL"),
        # No host name: labels are letters and digits, with hyphens inside only.
        ({"PUBLIC_URL": "https://-"}, "PUBLIC_URL"),
        ({"PUBLIC_URL": "https://stats..example.com"}, "PUBLIC_URL"),
        ({"PUBLIC_URL": "https://.example.com"}, "PUBLIC_URL"),
        ({"PUBLIC_URL": "https://stats-.example.com"}, "PUBLIC_URL"),
        ({"PUBLIC_URL": f"https://{'a' * 64}.example.com"}, "PUBLIC_URL"),  # labels: 63 at most
        # A number last: browsers read an IPv4 address, and these are none.
        ({"PUBLIC_URL": "http://1.2.3"}, "PUBLIC_URL"),
        ({"PUBLIC_URL": "http://999.999.999.999"}, "PUBLIC_URL"),
        ({"PUBLIC_URL": "https://123"}, "PUBLIC_URL"),
        # No such port: a code nobody can open.
        ({"PUBLIC_URL": "http://127.0.0.1:99999"}, "PUBLIC_URL"),
        ({"PUBLIC_URL": "http://127.0.0.1:0"}, "PUBLIC_URL"),
    ],
)
def test_bad_settings_are_refused(env, refused):
    """The one-line error starts with the setting at fault, and names no other one given:
    an operator fixes the right one (and a refusal for another reason fails here)."""
    with pytest.raises(ConfigError, match=rf"^{refused}\b") as error:
        from_environment(env)
    named = [name for name in env if name in error.value.message]
    assert named == [name for name in env if name in refused]


def test_defaults_and_units_of_the_timing_settings():
    """README's table: INTERACTION_MIN_MS 15 (milliseconds), JWT_ACCESS_MINUTES 60,
    JWT_REFRESH_DAYS 30, TENANT_CACHE_SECONDS 10; each read in its own unit."""
    defaults = from_environment({})
    assert defaults["INTERACTION_MIN_SECONDS"] == 0.015
    assert defaults["JWT_ACCESS_TOKEN_EXPIRES"] == timedelta(minutes=60)
    assert defaults["JWT_REFRESH_TOKEN_EXPIRES"] == timedelta(days=30)
    assert defaults["TENANT_CACHE_SECONDS"] == 10
    given = from_environment(
        {
            "INTERACTION_MIN_MS": "250",
            "JWT_ACCESS_MINUTES": "5",
            "JWT_REFRESH_DAYS": "2",
            "TENANT_CACHE_SECONDS": "7",
        }
    )
    assert given["INTERACTION_MIN_SECONDS"] == 0.25
    assert given["JWT_ACCESS_TOKEN_EXPIRES"] == timedelta(minutes=5)
    assert given["JWT_REFRESH_TOKEN_EXPIRES"] == timedelta(days=2)
    assert given["TENANT_CACHE_SECONDS"] == 7


def test_settings_are_read_from_the_environment():
    config = from_environment(
        {
            "DASHBOARD_ORIGINS": "https://dash.example.com, http://localhost:3000",
            "WRITE_LOCK_TIMEOUT_MS": "500",
        }
    )
    assert config["DASHBOARD_ORIGINS"] == ["https://dash.example.com", "http://localhost:3000"]
    assert config["WRITE_LOCK_TIMEOUT_SECONDS"] == 0.5
    assert from_environment({})["DASHBOARD_ORIGINS"] == []
    assert from_environment({"PUBLIC_URL": " https://stats.example.com/ "})["PUBLIC_URL"] == (
        "https://stats.example.com"
    )
    assert from_environment({})["PUBLIC_URL"] is None
    accepted = [
        "http://10.0.0.5:8080/stats",
        "https://xn--5tzm5g.example",
        "https://a-b.c",
        "http://intranet",
        "https://stats.example.com.",  # the root's final dot, as the landing URLs take it
        f"https://{'a' * 63}.example.com",
        "https://1and1.example",
    ]
    for address in accepted:
        assert from_environment({"PUBLIC_URL": address})["PUBLIC_URL"] == address


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


def test_an_unreachable_database_answers_503_with_retry_after(app, make_app, caplog):
    # (``app`` first: the fixtures' teardown empties the tables through the first app made.)
    url = "postgresql://nobody:hunter2@127.0.0.1:1/none"
    unreachable = make_app(SQLALCHEMY_DATABASE_URI=url)
    response = unreachable.test_client().post(
        "/api/analytics/track", json={"tenant_id": 1, "event_type": "pageview"}
    )
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["error"] == "unavailable"  # as every other 503 of the API
    assert "127.0.0.1" not in response.get_data(as_text=True)
    # The operator's log says why: a typo in DATABASE_URL is not an outage.
    reasons = [r.getMessage() for r in caplog.records if r.name == DATABASE_LOG]
    assert any('connection to server at "127.0.0.1", port 1 failed' in r for r in reasons)
    # Where it looked, in the app's own words too (under gevent the driver says only
    # "Connection refused"), and never the password.
    assert any(r.startswith("database unavailable at 127.0.0.1:1/none: ") for r in reasons)
    assert "hunter2" not in caplog.text


def test_a_database_reached_through_a_socket_is_logged_by_its_directory(app, make_app, caplog):
    """libpq takes a Unix socket's directory as ?host=: the log names it, not localhost."""
    url = "postgresql://nobody@/none?host=/nonexistent/socket-dir"
    answer = make_app(SQLALCHEMY_DATABASE_URI=url).test_client().get("/api/health")
    assert answer.status_code == 503
    reasons = [r.getMessage() for r in caplog.records if r.name == DATABASE_LOG]
    assert reasons[0].startswith("database unavailable at /nonexistent/socket-dir:5432/none: ")


def test_an_outage_is_logged_once_a_minute_not_per_request(app, make_app, caplog, monkeypatch):
    unreachable = make_app(SQLALCHEMY_DATABASE_URI="postgresql://nobody@127.0.0.1:1/none")
    client = unreachable.test_client()

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == DATABASE_LOG]

    event = {"tenant_id": 1, "event_type": "pageview"}
    for _ in range(3):
        assert client.post("/api/analytics/track", json=event).status_code == 503
    assert len(said()) == 1 and "(" not in said()[0].split(": ", 1)[0]
    monkeypatch.setattr(
        "tenant_analytics.database_errors.OnceAMinute.QUIET_SECONDS", 0.0
    )  # a minute on
    client.post("/api/analytics/track", json=event)
    assert len(said()) == 2 and said()[1].endswith("(2 more since, unsaid)")


def test_an_outage_ends_with_a_line_saying_the_database_answers_again(
    app, make_app, make_tenant, migrated, is_postgres, caplog, monkeypatch
):
    """Quiet alone would not tell an ended outage from a suppressed one."""
    if not is_postgres:
        pytest.skip("an embedded SQLite file does not go away")
    tenant_id = make_tenant().id
    target = make_url(migrated)
    forwarder = TcpForwarder((target.host or "127.0.0.1", target.port or 5432))
    url = target.set(host="127.0.0.1", port=forwarder.port).render_as_string(False)
    client = make_app(SQLALCHEMY_DATABASE_URI=url).test_client()
    event = {"tenant_id": tenant_id, "event_type": "pageview"}

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == DATABASE_LOG]

    try:
        for _ in range(3):
            assert client.post("/api/analytics/track", json=event).status_code == 503
        forwarder.open()
        for _ in range(2):
            assert client.post("/api/analytics/track", json=event).status_code == 201
        down, back = said()
        assert down.startswith(f"database unavailable at 127.0.0.1:{forwarder.port}/")
        assert back == "the database answers again (2 failures unsaid)"
        forwarder.shut()  # a second outage is said at once, not after the first's minute
        assert client.post("/api/analytics/track", json=event).status_code == 503
        assert len(said()) == 3 and said()[2].startswith("database unavailable at")
        forwarder.open()  # back within the minute: said with the next minute's lines
        assert client.post("/api/analytics/track", json=event).status_code == 201
        assert len(said()) == 3
        monkeypatch.setattr(OnceAMinute, "QUIET_SECONDS", 0.0)  # a minute on
        assert client.post("/api/analytics/track", json=event).status_code == 201
        assert said()[3:] == ["the database answers again"]
    finally:
        forwarder.shut()


def test_an_outage_ends_with_its_own_lines_counted_not_the_limiters(caplog):
    lines = OnceAMinute()
    for _ in range(3):
        lines.say("database unavailable at db:5432/analytics", outage=True)
        lines.say("sign-in refused: the limiter's storage did not answer")
    lines.answered()
    lines.say("sign-in refused: the limiter's storage did not answer")  # its minute goes on
    lines.say("database unavailable at db:5432/analytics", outage=True)  # a new outage
    assert [r.getMessage() for r in caplog.records] == [
        "database unavailable at db:5432/analytics",
        "sign-in refused: the limiter's storage did not answer",
        "the database answers again (2 failures unsaid)",
        "database unavailable at db:5432/analytics",
    ]


def test_a_lock_or_statement_timeout_is_no_outage_whose_end_is_announced(
    app, make_app, make_tenant, migrated, is_postgres, caplog
):
    """The server answers all along: a connection handed out says nothing of its end,
    and a recovery line every minute while every write still failed would mislead."""
    if not is_postgres:
        pytest.skip("PostgreSQL's lock_timeout")
    tenant_id = make_tenant().id
    options = {"connect_args": {"options": "-c lock_timeout=100"}, "pool_pre_ping": True}
    timing_out = make_app(SQLALCHEMY_ENGINE_OPTIONS=options, TENANT_CACHE_SECONDS=0)
    client = timing_out.test_client()
    with timing_out.app_context():
        address = database_address()
    event = {"tenant_id": tenant_id, "event_type": "pageview"}
    db.session.close()  # the suite's session, which read the tenant, holds no lock on it
    with create_engine(migrated).connect() as holder:
        holder.execute(text("SET lock_timeout = '10s'"))
        holder.execute(text("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE"))
        for _ in range(2):
            assert client.post("/api/analytics/track", json=event).status_code == 503
        holder.rollback()
    assert client.post("/api/analytics/track", json=event).status_code == 201
    logged = [r.getMessage() for r in caplog.records if r.name == DATABASE_LOG]
    assert len(logged) == 1 and "LockNotAvailable" in logged[0]  # said, once
    assert logged[0].startswith(f"database error at {address}:")  # not "unavailable"
    assert not [line for line in logged if "answers again" in line]


def test_an_unexpected_error_is_logged_with_the_request_it_answered(make_app, caplog):
    app = make_app()

    def broken():
        raise RuntimeError("a bug")

    app.add_url_rule("/api/broken/<path:rest>", "broken", lambda rest: broken())
    answer = app.test_client().get("/api/broken/a%1Bb?secret=1")  # ESC, escaped in the log
    assert answer.status_code == 500
    assert answer.get_json()["message"] == "Internal server error."
    (record,) = [r for r in caplog.records if r.name == "tenant_analytics.errors"]
    assert record.getMessage() == "unhandled error in GET '/api/broken/a\\x1bb'"
    assert record.exc_info is not None  # with its traceback


def test_a_database_without_tables_says_to_migrate(
    app, make_app, scratch_database_url, is_postgres, caplog
):
    unmigrated = make_app(SQLALCHEMY_DATABASE_URI=scratch_database_url)
    client = unmigrated.test_client()
    for _ in range(2):
        response = client.post(
            "/api/analytics/track", json={"tenant_id": 1, "event_type": "pageview"}
        )
        assert response.status_code == 503, response.get_json()
    assert "run `flask --app tenant_analytics db upgrade`" in caplog.text
    health = client.get("/api/health")
    assert health.status_code == 503
    assert health.get_json()["message"] == "The database is not migrated."
    # And the command line says so in one line, as it does of a database it cannot reach.
    commands = [["tenant", "list"], ["events", "purge", "--older-than", "100"], ["demo"]]
    failing = [
        (scratch_database_url, "Error: the database lacks a table or column: run `flask", []),
        (
            "postgresql://nobody:hunter2@127.0.0.1:1/none",
            "Error: cannot reach the database: ",
            [["db", "upgrade"]],  # Flask-Migrate's, through migrations/env.py
        ),
    ]
    if is_postgres:  # a server that answers and refuses: a typo, not an outage
        stranger = make_url(scratch_database_url).set(username="no_such_role", password="hunter2")
        failing.append(
            (
                stranger.render_as_string(hide_password=False),
                "Error: the database refused the connection: ",
                [["db", "upgrade"]],
            )
        )
    for url, said, also in failing:
        broken = make_app(SQLALCHEMY_DATABASE_URI=url)
        for args in commands + also:
            with broken.app_context():  # not the suite's app, whose context is current
                result = broken.test_cli_runner().invoke(args=args)
            assert result.exit_code == 1, result.output
            assert result.output.startswith(said), result.output
            assert "Traceback" not in result.output and "hunter2" not in result.output
    assert "InFailedSqlTransaction" not in caplog.text  # the real error, not its echo
    with unmigrated.app_context():
        db.engine.dispose()


@pytest.mark.parametrize(
    ("driver_line", "said"),
    [
        ('FATAL:  role "shop" does not exist', "the database refused the connection"),
        ("FATAL:  password authentication failed for user", "the database refused the connection"),
        ("FATAL:  no pg_hba.conf entry for host", "the database refused the connection"),
        ("FATAL:  sorry, too many clients already", "cannot reach the database"),  # busy
        ("FATAL:  the database system is starting up", "cannot reach the database"),
        ("Connection refused", "cannot reach the database"),
    ],
)
def test_a_connection_refused_is_told_from_one_out_of_reach(driver_line, said):
    failed = OperationalError(
        "connect", {}, Exception(f"connection to server failed: {driver_line}")
    )
    assert connection_failure(failed) == f"{said}: connection to server failed: {driver_line}"


def test_sqlite_busy_with_another_writer_is_not_said_out_of_reach():
    failed = OperationalError("INSERT", {}, Exception("database is locked"))
    assert connection_failure(failed).startswith("the database is busy with another writer")


def test_a_migration_the_database_refuses_is_one_line(
    app, make_app, scratch_database_url, is_postgres
):
    """`flask db upgrade` on a standby (read-only) or as a role that does not own the
    database (PostgreSQL 15's public schema is its owner's): alembic's traceback, once."""
    if not is_postgres:
        pytest.skip("SQLite has neither standbys nor privileges")
    url = make_url(scratch_database_url)
    role = f"{url.database}_guest"  # roles are the cluster's: one per suite database
    admin = create_engine(scratch_database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        if connection.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}):
            connection.exec_driver_sql(f'DROP ROLE "{role}"')  # left by a run cut short
        connection.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
    refused = [
        (read_only_url(scratch_database_url), "in a read-only transaction"),
        (url.set(username=role).render_as_string(hide_password=False), "for schema public"),
    ]
    results = []
    try:
        for database_url, _ in refused:
            migrating = make_app(SQLALCHEMY_DATABASE_URI=database_url)
            with migrating.app_context():
                results.append(migrating.test_cli_runner().invoke(args=["db", "upgrade"]))
            release_connections(migrating)
        with admin.connect() as connection:
            tables = connection.scalar(
                text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            )
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        admin.dispose()
    for result, (_, said) in zip(results, refused, strict=True):
        assert result.exit_code == 1, result.output
        last = result.output.splitlines()[-1]  # after alembic's own INFO lines
        assert last.startswith("Error: the database refused the migration: "), result.output
        assert said in last and "Traceback" not in result.output
    assert tables == 0  # nothing made


def test_an_exhausted_connection_pool_answers_503_not_500(make_app, migrated, caplog):
    """More concurrent requests than pooled connections: a retryable 503, never a 500."""
    app = make_app(
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2}
    )
    with app.app_context(), db.engine.connect():  # the pool's only connection, held
        for _ in range(3):
            response = app.test_client().post(
                "/api/analytics/track", json={"tenant_id": 1, "event_type": "pageview"}
            )
        health = app.test_client().get("/api/health")
    assert (response.status_code, health.status_code) == (503, 503)
    # Said once a minute (a pool too small for its traffic would say it per request), as
    # what it is: the database answered all along, so no end of an outage is said either.
    app.test_client().post("/api/analytics/track", json={"tenant_id": 1, "event_type": "pageview"})
    logged = [r.getMessage() for r in caplog.records if r.name == DATABASE_LOG]
    assert logged == ["no database connection free in time"]
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


def test_a_setting_the_server_cannot_start_with_is_one_line(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": "sqlite://",
        "APP_ENV": "production",
        "JWT_SECRET_KEY": "short",
    }
    result = subprocess.run(
        [sys.executable, "-c", "import wsgi"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == Arbiter.APP_LOAD_ERROR
    assert result.stderr.splitlines() == [
        "tenant-analytics: refusing to start in production with secrets under 32 bytes:"
        " JWT_SECRET_KEY"
    ]


@pytest.mark.parametrize("workers", [1, 2])
def test_gunicorn_stops_when_its_workers_cannot_start_with_a_setting(tmp_path, workers):
    """Not a master that respawns failing workers for ever, holding the port, answering
    nothing, and seen as running by whatever supervises it."""
    env = {
        **os.environ,
        "DATABASE_URL": "sqlite://",
        "APP_ENV": "production",
        "JWT_SECRET_KEY": "short",
    }
    command = [GUNICORN, "--workers", str(workers), "--bind", f"127.0.0.1:{free_port()}"]
    server = subprocess.Popen(
        [*command, "--no-control-socket", "wsgi:app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, log = server.communicate(timeout=60)
    finally:
        server.kill()
    # Two workers failing at the same moment can make gunicorn's halt fail in turn (1).
    assert server.returncode in ({Arbiter.APP_LOAD_ERROR} if workers == 1 else {1, 4})
    assert "tenant-analytics: refusing to start in production with secrets under 32" in log


@pytest.fixture
def linguistic_database_url(database_url):
    """An empty PostgreSQL database whose default collation is ICU's en-US; dropped after."""
    if not database_url.startswith("postgres"):
        pytest.skip("SQLite compares text by code point, whatever is asked")
    engine = create_engine(normalize_database_url(database_url))
    with engine.connect() as connection:
        icu = "SELECT count(*) FROM pg_collation WHERE collprovider = 'i'"
        has_icu = connection.scalar(text(icu))
    engine.dispose()
    if not has_icu:
        pytest.skip("this PostgreSQL was built without ICU")
    icu_en_us = "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
    with scratch_database(database_url, "en_us", icu_en_us) as url:
        yield url


def test_product_names_compare_by_code_point_under_a_linguistic_collation(
    linguistic_database_url,
):
    """The rollups keep a product's greatest name as Python compares text; under en-US the
    raw events' max() once picked another one ("Pan dulce" over "aaaa"), and the reports
    read from rollups differed from the raw events'."""
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": linguistic_database_url,
            "GROUP_COMMIT": False,
            "VISITOR_HASH_KEY": "k" * 32,
        }
    )
    with app.app_context():
        upgrade()
        tenant = Tenant(slug="shop", name="Shop")
        db.session.add(tenant)
        db.session.commit()
        views = [
            NewEvent("product_view", extra={"product_slug": "pan", "product_name": name})
            for name in ("aaaa", "Pan dulce")
        ]
        client = ClientInfo("203.0.113.1", "pytest", None)
        ingest(db.session, tenant, views, client, hash_key="k", lock_timeout=2.0)
        raw = db.session.scalar(select(func.max(Event.product_name)))
        rolled_up = db.session.scalar(select(func.max(DailyProductCount.product_name)))
        assert raw == rolled_up == "aaaa"  # "a" (97) after "P" (80)
        db.session.remove()
        db.engine.dispose()


def test_report_ties_rank_by_code_point_under_a_linguistic_collation(linguistic_database_url):
    """RFM's equal spenders, the alert's equally viewed products and the dashboard's
    WhatsApp sessions tapped at one time came in the database's collation order: a
    restore onto an en-US server moved customers between pages."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": linguistic_database_url, "GROUP_COMMIT": False})
    with app.app_context():
        upgrade()
        tenant = Tenant(slug="shop", name="Shop")
        db.session.add(tenant)
        db.session.commit()
        sales = [("a", 10), ("B", 10), ("c", 20)]
        purchases = [
            NewEvent("purchase", extra={"user_id": user, "revenue": Decimal(spent)})
            for user, spent in sales
        ]
        views = [
            NewEvent("product_view", extra={"session_id": f"s{n}", "product_slug": slug})
            for slug in ("pan", "Queso")
            for n in range(store_alerts.POPULAR_VIEWS_ABOVE + 1)
        ]
        taps = [
            NewEvent("whatsapp_cart_click", extra={"session_id": session})
            for session in ("a", "B", "c")
        ]
        client = ClientInfo("203.0.113.1", "pytest", None)
        everything = purchases + views + taps  # one batch: one time, so taps tie
        ingest(db.session, tenant, everything, client, hash_key="k", lock_timeout=2.0)
        now = utcnow()
        popular = store_alerts.unconverted_popular_products(
            db.session,
            tenant_id=tenant.id,
            zone=ZoneInfo("UTC"),
            start=now - timedelta(days=7),
            end=now,
        )
        tapped = store_dashboard.recent_whatsapp_sessions(
            db.session, tenant_id=tenant.id, start=now - timedelta(days=7), end=now, limit=2
        )
        report = store_rfm.rfm_segments(
            db.session,
            tenant_id=tenant.id,
            zone=ZoneInfo("UTC"),
            now=now,
            vip_threshold=Decimal(1000),
            currency=tenant.currency,
        )
        users = select(Event.user_id).where(Event.user_id.is_not(None))
        by_sql = db.session.scalars(users.order_by(Event.user_id)).all()
        db.session.remove()
        db.engine.dispose()
    assert by_sql == ["a", "B", "c"]  # en-US: the order the report once had for ties
    assert [row["visitor_id"] for row in report["rfm"]] == ["c", "B", "a"]  # "B" (66) < "a" (97)
    assert popular == [("Queso", 11), ("pan", 11)]  # en-US: pan, then Queso
    assert tapped == ["B", "a"]  # en-US: a, B


def test_upgrading_recounts_names_rolled_up_by_a_linguistic_collation(linguistic_database_url):
    """0015: names rolled up before 0008 (here by 0005's fill) were picked by en-US."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": linguistic_database_url, "GROUP_COMMIT": False})
    now = utcnow()
    with app.app_context():
        upgrade(revision="0004")
        with db.engine.begin() as connection:
            ensure_partitions_if_any(connection, now)
            connection.execute(
                text(
                    "INSERT INTO tenants (id, public_id, slug, name, active, timezone,"
                    " currency, created_at)"
                    " VALUES (7, :uuid, 'old-shop', 'Old shop', true, 'UTC', 'HNL', :now)"
                ),
                {"uuid": uuid.uuid4().hex, "now": now},
            )
            for number, name in enumerate(["aaaa", "Pan dulce"], start=1):
                connection.execute(
                    text(
                        "INSERT INTO events (tenant_id, id, created_at, event_type, session_id,"
                        " product_slug, product_name) VALUES"
                        " (7, :id, :at, 'product_view', 's', 'pan', :name)"
                    ),
                    {"id": number, "at": now, "name": name},
                )
        name_rolled_up = select(DailyProductCount.product_name)
        upgrade(revision="0014")
        before = db.session.scalar(name_rolled_up)
        db.session.remove()
        upgrade()
        after = db.session.scalar(name_rolled_up)
        db.session.remove()
        db.engine.dispose()
    assert (before, after) == ("Pan dulce", "aaaa")


def test_upgrading_a_populated_database_rebuilds_the_rollups_0005_adds(scratch_database_url):
    """0005 fills its new rollups from the events already stored, whatever the models became."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": scratch_database_url, "GROUP_COMMIT": False})
    now = utcnow()
    with app.app_context():
        upgrade(revision="0004")
        with db.engine.begin() as connection:
            ensure_partitions_if_any(connection, now)
            connection.execute(
                text(
                    "INSERT INTO tenants (id, public_id, slug, name, active, timezone,"
                    " currency, created_at)"
                    " VALUES (7, :uuid, 'old-shop', 'Old shop', true, 'UTC', 'HNL', :now)"
                ),
                {"uuid": uuid.uuid4().hex, "now": now},  # a UUID as both databases read it
            )
            for number, session in enumerate(["s1", "s1", "s2"], start=1):
                connection.execute(
                    text(
                        "INSERT INTO events (tenant_id, id, created_at, event_type, session_id,"
                        " product_slug, product_name) VALUES"
                        " (7, :id, :at, 'product_view', :session, 'pan', 'Pan')"
                    ),
                    {"id": number, "at": now, "session": session},
                )
        upgrade()
        views = db.session.execute(
            select(DailyProductCount.product_slug, DailyProductCount.events).where(
                DailyProductCount.tenant_id == 7
            )
        ).all()
        db.session.remove()
        db.engine.dispose()
    assert views == [("pan", 3)]


def test_upgrading_makes_stored_empty_sources_direct(scratch_database_url):
    """0010: events stored with source '' before the API took it for none count as direct."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": scratch_database_url, "GROUP_COMMIT": False})
    now = utcnow()
    with app.app_context():
        upgrade(revision="0009")
        with db.engine.begin() as connection:
            ensure_partitions_if_any(connection, now)
            connection.execute(
                text(
                    "INSERT INTO tenants (id, public_id, slug, name, active, timezone,"
                    " currency, created_at)"
                    " VALUES (7, :uuid, 'old-shop', 'Old shop', true, 'UTC', 'HNL', :now)"
                ),
                {"uuid": uuid.uuid4().hex, "now": now},
            )
            for number, source in enumerate(["", None, "instagram"], start=1):
                connection.execute(
                    text(
                        "INSERT INTO events (tenant_id, id, created_at, event_type, session_id,"
                        " source) VALUES (7, :id, :at, 'page_view', :session, :source)"
                    ),
                    {"id": number, "at": now, "session": f"s{number}", "source": source},
                )
        # As 0009's app kept them (the model is head's: it reads columns 0009 lacks).
        rebuild_rollups(db.session, 7)
        db.session.commit()
        upgrade()
        sources = sorted(str(s) for s in db.session.scalars(select(Event.source)))
        stats = store_dashboard.dashboard_stats(
            db.session, tenant_id=7, zone=tenant_zone("UTC"), now=now, mode="total"
        )
        db.session.remove()
        db.engine.dispose()
    assert sources == ["None", "None", "instagram"]
    assert stats["traffic_sources"] == [
        {"source": "direct", "sessions": 2},
        {"source": "instagram", "sessions": 1},
    ]


def ensure_partitions_if_any(connection, now):
    if connection.dialect.name == "postgresql":
        ensure_partitions(connection, [month_of(now)])


def test_health_says_whether_the_database_and_the_limiter_answer(
    app, make_app, monkeypatch, caplog
):
    healthy = app.test_client().get("/api/health")
    assert (healthy.status_code, healthy.headers["Cache-Control"]) == (200, "no-store")
    assert healthy.get_json() == {"status": "ok", "database": "ok", "rate_limit_storage": "ok"}
    # Redis away: still serving (events are counted in memory meanwhile), and said so.
    no_redis = make_app(RATELIMIT_STORAGE_URI="redis://127.0.0.1:1/0").test_client()
    asked = []
    monkeypatch.setattr(limiter.storage, "check", lambda: asked.append(1) or False)
    # flask-limiter's own look for a dead storage's return, on its schedule, not asked here
    monkeypatch.setattr(limiter, "_Limiter__should_check_backend", lambda: False)
    answers = [no_redis.get("/api/health") for _ in range(3)]
    assert {(a.status_code, a.get_json()["rate_limit_storage"]) for a in answers} == {
        (200, "unavailable")
    }
    assert len(asked) == 1  # found dead, then known so: a hung Redis holds no more probes
    monkeypatch.setattr(ratelimits, "STORAGE_RECHECK_SECONDS", 0.0)  # time to ask again
    monkeypatch.setattr(limiter.storage, "check", lambda: asked.append(1) or True)
    answer = no_redis.get("/api/health")
    assert (len(asked), answer.get_json()["rate_limit_storage"]) == (2, "ok")
    assert not limiter._storage_dead  # back to counting in Redis
    make_app()  # the limiter (one per process) counts in a working storage again
    # The database away, or never migrated: out of the load balancer's rotation.
    for database, said in (
        ("postgresql://nobody@127.0.0.1:1/none", "The database does not answer."),
        ("sqlite://", "The database is not migrated."),
    ):
        down = make_app(SQLALCHEMY_DATABASE_URI=database).test_client().get("/api/health")
        assert down.status_code == 503, database
        body = down.get_json()
        assert (body["error"], body["database"]) == ("unavailable", "unavailable")
        assert body["message"] == said  # nothing of the driver's
    # And the log says why: once a load balancer takes a host out, only probes reach it.
    logged = [r.getMessage() for r in caplog.records if r.name == DATABASE_LOG]
    assert logged[0].startswith("database unavailable at 127.0.0.1:1/none: OperationalError")
    assert logged[1].startswith("the database lacks a table or column: run `flask")


def stored_events(tenant_id: int) -> int:
    db.session.rollback()
    return db.session.scalar(select(func.count()).where(Event.tenant_id == tenant_id))


@pytest.mark.parametrize("group_commit", [True, False])
def test_a_read_only_database_is_a_503_said_once_a_minute_and_out_of_rotation(
    make_app, make_tenant, migrated, is_postgres, caplog, group_commit
):
    if not is_postgres:
        pytest.skip("a read-only server is PostgreSQL's")
    tenant = make_tenant(landing_url="https://pan.example/")
    app = make_app(SQLALCHEMY_DATABASE_URI=read_only_url(migrated), GROUP_COMMIT=group_commit)
    client = app.test_client()
    event = {"tenant_id": tenant.id, "event_type": "pageview"}
    batch = {"tenant_id": tenant.id, "events": [event, event]}
    answers = [
        client.post("/api/analytics/track", json=event),
        client.post("/api/analytics/track", json=event),
        client.post("/api/analytics/batch", json=batch),
    ]
    assert [(a.status_code, a.headers.get("Retry-After")) for a in answers] == [(503, "1")] * 3
    assert {a.get_json()["error"] for a in answers} == {"unavailable"}
    assert client.get(f"/q/{tenant.slug}").headers["Location"] == "https://pan.example/"
    health = client.get("/api/health")
    assert health.status_code == 503
    assert health.get_json()["message"] == "The database is read-only: events cannot be stored."
    assert stored_events(tenant.id) == 0
    said = [r for r in caplog.records if r.name.startswith("tenant_analytics")]
    assert not [r for r in said if r.exc_info], "a traceback per request"
    lines = [r.getMessage() for r in said if r.name == DATABASE_LOG]
    assert len(lines) == 2, lines  # three refused writes: one line
    with app.app_context():
        assert lines[0].startswith(f"database read-only at {database_address()}:")
    assert "ReadOnlySqlTransaction" in lines[0]
    assert lines[1].endswith(": health answers 503")


@contextmanager
def read_only_for_a_while(app, database_url: str) -> Iterator[None]:
    """The database read-only (a primary demoted, say) until the block ends; the app's
    pool emptied first, as on a host started meanwhile."""
    name = make_url(database_url).database
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(
                f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'
            )
        with app.app_context():
            db.engine.dispose()
        yield
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(
                f'ALTER DATABASE "{name}" RESET default_transaction_read_only'
            )
        admin.dispose()


@pytest.mark.parametrize("group_commit", [True, False])
def test_writes_resume_once_the_database_is_read_write_again(
    make_app, make_tenant, migrated, is_postgres, group_commit
):
    """Sessions begun read-only stay so: refused once, the pool's connections are dropped,
    and the next write connects afresh, to a primary again."""
    if not is_postgres:
        pytest.skip("a read-only server is PostgreSQL's")
    tenant = make_tenant()
    app = make_app(GROUP_COMMIT=group_commit)
    client = app.test_client()
    event = {"tenant_id": tenant.id, "event_type": "pageview"}
    with read_only_for_a_while(app, migrated):
        assert client.post("/api/analytics/track", json=event).status_code == 503
    answers = [client.post("/api/analytics/track", json=event).status_code for _ in range(3)]
    assert answers == [201] * 3
    assert stored_events(tenant.id) == 3


def test_health_answers_200_once_the_database_is_read_write_again(make_app, migrated, is_postgres):
    """A probe that found the database read-only lets go of the pool: its connections
    began read-only and stay so, which would keep the host out of rotation for good."""
    if not is_postgres:
        pytest.skip("a read-only server is PostgreSQL's")
    app = make_app()
    client = app.test_client()
    with read_only_for_a_while(app, migrated):
        assert client.get("/api/health").status_code == 503
    assert [client.get("/api/health").status_code for _ in range(3)] == [200] * 3


def test_health_answers_within_a_second_or_two_when_redis_hangs(make_app):
    """A Redis that accepts connections and never answers (a full server, a black hole)
    must not hold the load balancer's probe, or a request, for redis-py's default."""
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        port = black_hole.getsockname()[1]
        app = make_app(RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{port}/0")
        started = time.monotonic()
        answer = app.test_client().get("/api/health")
        waited = time.monotonic() - started
    make_app()  # the limiter (one per process) counts in a working storage again
    assert answer.status_code == 200
    assert (answer.get_json()["database"], answer.get_json()["rate_limit_storage"]) == (
        "ok",
        "unavailable",
    )
    assert waited < 3.5  # the one-second timeouts, not redis-py's five (or forever)


@pytest.mark.parametrize("timeout_in", ["settings", "url"])
def test_a_database_that_accepts_and_never_answers_is_a_503_in_time(make_app, timeout_in):
    """libpq waits for ever for a server that never answers (a host gone from the
    network): DATABASE_CONNECT_TIMEOUT, or the URL's own connect_timeout, bounds it."""
    make_app()  # the first app, which empties the tables after the test, on the real one
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        url = f"postgresql://nobody@127.0.0.1:{black_hole.getsockname()[1]}/none"
        if timeout_in == "url":  # wins over the setting's ten seconds
            app = make_app(SQLALCHEMY_DATABASE_URI=f"{url}?connect_timeout=1")
        else:
            app = make_app(SQLALCHEMY_DATABASE_URI=url, DATABASE_CONNECT_TIMEOUT=1)
        answers: list[int] = []
        started = time.monotonic()
        asking = threading.Thread(
            target=lambda: answers.append(app.test_client().get("/api/health").status_code),
            daemon=True,  # left behind, should it hang
        )
        asking.start()
        asking.join(8)
        waited = time.monotonic() - started
    assert answers == [503]
    assert waited < 5  # libpq gives up after 1 s, at most twice for the pre-ping's retry


def test_an_outage_is_told_from_a_fault(app, make_app, is_postgres):
    """An outage is logged in one line; a fault (a deadlock, a statement timeout) keeps its
    traceback, although the driver raises both as OperationalError."""
    away = make_app(SQLALCHEMY_DATABASE_URI="postgresql://nobody@127.0.0.1:1/none")
    with away.app_context(), pytest.raises(OperationalError) as refused:
        db.session.execute(text("SELECT 1"))
    assert is_outage(refused.value)
    if is_postgres:
        with app.app_context(), pytest.raises(OperationalError) as cancelled:
            db.session.execute(text("SET LOCAL statement_timeout = '10ms'"))
            db.session.execute(text("SELECT pg_sleep(1)"))
        db.session.rollback()
        assert not is_outage(cancelled.value)


def test_only_an_outage_a_handed_out_connection_ends_is_said_to_end(app, is_postgres):
    """A full disk refuses writes on connections the server hands out all along: no
    "answers again" for it on the next checkout, as there is for too many connections."""
    if not is_postgres:
        pytest.skip("SQLSTATEs are PostgreSQL's")
    raised = {}
    with app.app_context():
        for state in ("disk_full", "too_many_connections", "out_of_memory"):
            raising = f"DO $$ BEGIN RAISE EXCEPTION 'full' USING ERRCODE = '{state}'; END $$"
            with pytest.raises(OperationalError) as error:
                db.session.execute(text(raising))
            db.session.rollback()
            raised[state] = error.value
    assert all(is_outage(error) for error in raised.values())  # a 503 to retry, each
    away = {state: is_database_away(error) for state, error in raised.items()}
    assert away == {"disk_full": False, "too_many_connections": True, "out_of_memory": False}


def test_postgresql_connections_find_a_silent_server_out(app, is_postgres, make_app, database_url):
    """Keepalive probes and tcp_user_timeout reach libpq (what it reports it uses), and a
    DATABASE_URL's own setting wins."""
    if not is_postgres:
        pytest.skip("libpq's settings")
    separator = "&" if "?" in database_url else "?"
    own = make_app(SQLALCHEMY_DATABASE_URI=f"{database_url}{separator}keepalives_idle=7")
    for flask_app, idle in ((app, "30"), (own, "7")):
        with flask_app.app_context(), db.engine.connect() as connection:
            used = connection.connection.dbapi_connection.get_dsn_parameters()
        assert (used["keepalives_idle"], used["tcp_user_timeout"]) == (idle, "30000")
        assert (used["keepalives_interval"], used["keepalives_count"]) == ("10", "3")


def test_a_method_a_route_does_not_take_is_a_json_405_naming_those_it_does(client):
    answer = client.get("/api/analytics/track")
    assert answer.status_code == 405
    assert answer.get_json()["success"] is False
    assert {method.strip() for method in answer.headers["Allow"].split(",")} >= {"POST"}
    assert "GET" not in answer.headers["Allow"]


def test_no_answer_may_be_sniffed_for_another_type(client, make_tenant):
    """A JSON error echoes a sender's text (metadata keys): a browser must not run it."""
    tenant = make_tenant()
    answers = [
        client.post("/api/analytics/track", json={"tenant_id": tenant.id, "event_type": "x"}),
        client.post(
            "/api/analytics/track", json={"tenant_id": tenant.id, "event_type": "pageview"}
        ),
        client.get("/api/analytics/track"),  # 405
        client.get("/static/ta.js"),
        client.get("/api/health"),
    ]
    for answer in answers:
        answer.close()  # the script's file
    assert [answer.headers.get("X-Content-Type-Options") for answer in answers] == [
        "nosniff"
    ] * len(answers)
    assert [answer.status_code for answer in answers] == [422, 201, 405, 200, 200]
