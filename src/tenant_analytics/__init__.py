"""tenant-analytics: a multi-tenant, privacy-first analytics API."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response
from flask.sessions import SecureCookieSessionInterface
from limits.errors import ConfigurationError as LimitsConfigurationError
from sqlalchemy import event, make_url
from sqlalchemy.engine import Engine
from werkzeug.middleware.proxy_fix import ProxyFix

from .config import (
    MAX_CONTENT_LENGTH,
    ConfigError,
    check_production_settings,
    check_storage_urls,
    fill_development_secrets,
    from_environment,
    normalize_database_url,
)
from .cooperative import cooperate_with_gevent
from .extensions import cors, db, jwt, limiter, migrate
from .privacy import ClientPortStripped

PUBLIC_ROUTES = r"/api/(analytics/track|analytics/batch|v1/.*)"
# What an owner's dashboard calls, from DASHBOARD_ORIGINS only (bearer tokens, no cookies).
OWNER_ROUTES = r"/api/(auth/.*|tenants(/.*)?|analytics/\d+(/.*)?)"
# A script on another origin reads only the headers named here: a throttled snippet
# or dashboard must see how long to wait.
RATE_LIMIT_HEADERS = [
    "Retry-After",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: environment settings, then ``config`` overrides on top."""
    # The SQLite quick start keeps its file in ./instance of the directory it runs from.
    app = Flask(__name__, instance_path=os.path.abspath("instance"))
    # "/api/analytics/track/" (as the store documents write it) is the same route, not a
    # redirect; "//" is no route, not a redirect built from the request's Host header.
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_CONTENT_LENGTH,
        SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True},
        # ratelimits.rate_limit_headers sets them instead, Retry-After only on a 429.
        RATELIMIT_HEADERS_ENABLED=False,
        # Exact "N per minute" over any minute; a refused hit (a whole batch) costs nothing.
        RATELIMIT_STRATEGY="moving-window",
        RATELIMIT_SWALLOW_ERRORS=True,  # a Redis outage must not turn events away
        # Nor switch the limits off, with a logged traceback per request: each process
        # counts in memory meanwhile (warned once) and goes back to Redis when it answers.
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
        # A Redis that hangs rather than refuses: a second, then memory, not a request held
        # for redis-py's own default (none at all before redis 8).
        RATELIMIT_STORAGE_OPTIONS={"socket_timeout": 1, "socket_connect_timeout": 1},
        JWT_ERROR_MESSAGE_KEY="message",
        # static/ta.js loads on every page view of every tenant: an hour in the browser's
        # cache rather than a revalidation each time (a new snippet is live within the hour).
        SEND_FILE_MAX_AGE_DEFAULT=3600,
    )
    app.config.update(from_environment())
    if config:
        app.config.update(config)
    # A database error's message would list the bound values (user agents, metadata,
    # customers' ids) and errors are logged; kept even when a caller replaces the options.
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
        "hide_parameters": True,
        **app.config["SQLALCHEMY_ENGINE_OPTIONS"],
    }
    fill_development_secrets(app.config, app.instance_path)
    check_production_settings(app.config)
    if not app.config.get("SQLALCHEMY_DATABASE_URI"):
        os.makedirs(app.instance_path, exist_ok=True)
        path = os.path.join(app.instance_path, "tenant_analytics.db")
        app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{path}"
    app.config["SQLALCHEMY_DATABASE_URI"] = normalize_database_url(
        app.config["SQLALCHEMY_DATABASE_URI"]
    )
    check_storage_urls(app.config)
    _bound_connection_waits(app.config)
    cooperate_with_gevent()

    proxies = app.config["TRUSTED_PROXY_COUNT"]
    if proxies > 0:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            ClientPortStripped(app.wsgi_app), x_for=proxies, x_proto=proxies
        )

    # A JSON API with bearer tokens keeps no cookie session; skip its signing work per request.
    app.session_interface = NoCookieSessions()
    db.init_app(app)
    migrate.init_app(app, db, directory=_migrations_dir())
    jwt.init_app(app)
    try:
        limiter.init_app(app)
    except (LimitsConfigurationError, ValueError):  # redis+sentinel://host, no port
        # (limits before 4 split it without a check: a ValueError)
        raise ConfigError(  # limits' own words may quote the URI's password
            "RATELIMIT_STORAGE_URI: its address does not parse (redis+sentinel://host:26379/"
            "service, redis://host:6379/0)"
        ) from None
    cors.init_app(app, resources=_cors_resources(app.config["DASHBOARD_ORIGINS"]))

    from .group_commit import GroupCommitter
    from .tenancy import ActiveTenants

    app.extensions["active_tenants"] = ActiveTenants(app.config["TENANT_CACHE_SECONDS"])
    if app.config["GROUP_COMMIT"]:
        app.extensions["group_commit"] = GroupCommitter(
            app, lock_timeout=app.config["WRITE_LOCK_TIMEOUT_SECONDS"]
        )

    from .api import register_blueprints
    from .api.requests import WholeBodyRequest, read_the_body_first, refuse_encoded_bodies
    from .auth import canonical_bearer_scheme, register_jwt_callbacks, uncached_private_answers
    from .cli import register_commands
    from .errors import register_error_handlers
    from .ratelimits import quiet_storage_failures, rate_limit_headers, say_when_the_storage_is_back

    app.request_class = WholeBodyRequest
    register_error_handlers(app)
    app.before_request(canonical_bearer_scheme)
    app.before_request(refuse_encoded_bodies)
    app.before_request(read_the_body_first)
    app.after_request(rate_limit_headers)
    app.after_request(say_when_the_storage_is_back)
    quiet_storage_failures()
    app.after_request(uncached_private_answers)
    app.after_request(not_sniffed)
    app.after_request(untyped_when_empty)
    register_jwt_callbacks(jwt)
    register_blueprints(app)
    register_commands(app)
    return app


def not_sniffed(response: Response) -> Response:
    """Every answer is the type it says: a browser must not take a JSON error that
    echoes a sender's text (a metadata key) for HTML or script."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def untyped_when_empty(response: Response) -> Response:
    """An answer without a body (an OPTIONS, a 204) names no type: Flask's default is
    HTML's."""
    if not response.is_streamed and response.calculate_content_length() == 0:
        response.headers.pop("Content-Type", None)
    return response


class NoCookieSessions(SecureCookieSessionInterface):
    """Flask's cookie session, switched off: never read, never written."""

    def open_session(self, app: Flask, request: Any) -> Any:
        return self.make_null_session(app)

    def save_session(self, app: Flask, session: Any, response: Any) -> None:
        return None


# A connection whose server went silent (a host off the network, packets dropped) is
# found out in about 30 s, not the kernel's 15 minutes: keepalive probes while it is idle,
# and tcp_user_timeout (ms) while data it sent goes unacknowledged (a waiting query has
# none outstanding, so a slow query is not cut).
SILENT_SERVER_SETTINGS = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


def _bound_connection_waits(config: dict[str, Any]) -> None:
    """Give libpq a connect timeout and the settings above, each unless the URL names it
    (keyword arguments would override the URL's)."""
    url = make_url(config["SQLALCHEMY_DATABASE_URI"])
    if url.get_backend_name() != "postgresql":
        return
    wanted = {"connect_timeout": config["DATABASE_CONNECT_TIMEOUT"], **SILENT_SERVER_SETTINGS}
    options = config["SQLALCHEMY_ENGINE_OPTIONS"]
    options["connect_args"] = {
        **{name: value for name, value in wanted.items() if name not in url.query},
        **options.get("connect_args", {}),
    }


def _migrations_dir() -> str:
    """``migrations/`` at the project root (this package lives in ``src/``)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(os.path.dirname(os.path.dirname(here)), "migrations")


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL and a busy timeout let several gunicorn workers share the SQLite file."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


# PostgreSQL's own log takes a failed statement's text (log_min_error_statement is
# "error" by default) and its error's DETAIL ("Failing row contains …"), and the write
# path's statements carry their rows' values: user agents, metadata, customers' ids.
# Only a superuser may change either for its own session; for a role that is not one an
# administrator sets them once (see the README).
HIDE_VALUES_FROM_SERVER_LOG = (
    "SELECT set_config('log_min_error_statement', 'panic', false),"
    " set_config('log_error_verbosity', 'terse', false)"
    " WHERE current_setting('is_superuser') = 'on'"
)


@event.listens_for(Engine, "connect")
def _values_out_of_server_log(dbapi_connection: Any, _record: Any) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    cursor.execute(HIDE_VALUES_FROM_SERVER_LOG)
    cursor.close()
    dbapi_connection.commit()  # a session setting: kept, whatever becomes of the transaction


def _cors_resources(dashboard_origins: list[str]) -> dict[str, dict[str, Any]]:
    """Any page may post events; only the configured dashboards may call the owner API."""
    # A snippet's JSON post is preflighted: let browsers reuse the answer (Chrome keeps it
    # two hours at most) rather than send an OPTIONS before every event.
    public = {
        "origins": "*",
        "methods": ["POST"],
        "max_age": 7200,
        "expose_headers": RATE_LIMIT_HEADERS,
    }
    # The snippet may be loaded with crossorigin (subresource integrity, error details).
    snippet = {"origins": "*", "methods": ["GET"], "max_age": 7200}
    resources: dict[str, dict[str, Any]] = {PUBLIC_ROUTES: public, r"/static/.*": snippet}
    if dashboard_origins:
        resources[OWNER_ROUTES] = {
            "origins": dashboard_origins,
            "methods": ["GET", "POST", "PATCH", "DELETE"],
            "allow_headers": ["Authorization", "Content-Type"],
            "max_age": 600,
            # The QR code's: where it leads, and the file name to save it under.
            "expose_headers": [*RATE_LIMIT_HEADERS, "X-QR-Target", "Content-Disposition"],
        }
    return resources
