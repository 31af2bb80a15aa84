"""Configuration read once from the environment, with strict parsing."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import click
from limits import parse_many as parse_rate_limits
from redis.connection import parse_url as parse_redis_url
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

# Where flask-limiter may keep its counts: the Redis client (redis) is installed, and
# these set up without reaching the server (a Redis Cluster connects at once). The
# others limits knows need drivers this app does not install (memcached, MongoDB).
RATE_LIMIT_STORAGE_SCHEMES = ("redis", "rediss", "redis+unix", "redis+sentinel", "memory")

# The keys that sign tokens and hash visitors. Flask's SECRET_KEY is not among them
# and not read: nothing uses it (no cookie sessions, see NoCookieSessions).
SECRET_SETTINGS = ("JWT_SECRET_KEY", "VISITOR_HASH_KEY")
# Outside production, keys left unset are made at random once and kept here, in the
# instance folder: a default written in the code would let anyone who reads it sign
# an admin's token on a server started without APP_ENV.
DEV_SECRETS_FILE = "dev-secrets.json"
# Keys that were once published (an early version's development default): known to
# anyone, so refused in production like no key at all.
PUBLISHED_SECRETS = frozenset(
    {
        "dev-only-insecure-secret-do-not-use-in-production",
        # The test suite's keys until it drew its own: in the repository's history.
        "test-visitor-hash-key-0123456789abcdef",
        "test-jwt-key-0123456789abcdef-0123456789",
    }
)
# HMAC-SHA256 keys shorter than its 32-byte output weaken it (RFC 7518 §3.2).
MIN_SECRET_BYTES = 32
# Keys no random draw gives (short of odds like 1 in 10^17): "aaaa…", a word over and
# over ("changeme-changeme-…").
MIN_SECRET_SYMBOLS = 5

# Request bodies: every endpoint accepts 64 KiB, the batch endpoint more, and no
# endpoint more than that (Flask refuses a longer body before it is read).
BODY_MAX_BYTES = 64 * 1024
BATCH_MAX_BYTES = 500 * 1024
MAX_CONTENT_LENGTH = BATCH_MAX_BYTES


class ConfigError(click.ClickException):
    """Raised when the environment holds a setting the app cannot run with; the command
    line (``flask --app tenant_analytics …``) prints it as one line and exits 1."""


def _int(
    env: Mapping[str, str], name: str, default: int, minimum: int = 0, maximum: int | None = None
) -> int:
    """An integer setting from ``minimum`` to ``maximum``: beyond a bound a time or a date
    overflows (a token's expiry: every sign-in a 500) or the database refuses it."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")


def _origins(env: Mapping[str, str], name: str) -> list[str]:
    """Comma-separated web origins (``https://dash.example.com``), as browsers send them."""
    origins = [item.strip() for item in (env.get(name) or "").split(",") if item.strip()]
    for origin in origins:
        # Exactly a scheme, a host and maybe a port: flask-cors would read "*", "?" or "^"
        # as a pattern, matched from the start ("https://*.example.com" lets in
        # "https://aexample.com.attacker.net").
        if not _ORIGIN.fullmatch(origin):
            raise ConfigError(f"{name}: {origin!r} is not an origin like https://dash.example.com")
    return origins


# What printed QR codes hold: a scheme, an ASCII host (punycode for others) of DNS
# labels (letters, digits, inner hyphens; "https://-" is no host; the root's final dot
# allowed), maybe a port and a path; no credentials, query or fragment, nothing a
# header could not carry.
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PUBLIC_URL = re.compile(
    rf"https?://{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?(:[0-9]{{1,5}})?(/[A-Za-z0-9._~/-]*)?"
)


def _opens_in_a_browser(host: str) -> bool:
    """A host whose last label is a number is read by browsers as an IPv4 address
    (http://1.2.3, http://123): only a real one leads anywhere."""
    if not host.rstrip(".").rsplit(".", 1)[-1].isdigit():
        return True
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _public_url(env: Mapping[str, str]) -> str | None:
    value = (env.get("PUBLIC_URL") or "").strip()
    if not value:
        return None
    try:
        address = urlsplit(value)
        valid = (
            _PUBLIC_URL.fullmatch(value)
            and address.port != 0
            and _opens_in_a_browser(address.hostname or "")
        )
    except ValueError:  # a port over 65535
        valid = False
    if not valid:
        raise ConfigError(
            f"PUBLIC_URL must be an address like https://stats.example.com, got {value!r}"
        )
    return value.rstrip("/")


APP_ENVIRONMENTS = ("development", "production")


def _app_env(env: Mapping[str, str]) -> str:
    """APP_ENV (or FLASK_ENV), development when neither is set.

    Anything else is refused rather than read as development: a typo ("prod") must
    not start production with the development secrets. Case and surrounding spaces
    do not matter ("Production " is production).
    """
    given = {name: env[name].strip().lower() for name in ("APP_ENV", "FLASK_ENV") if env.get(name)}
    for name, value in given.items():
        if value not in APP_ENVIRONMENTS:
            raise ConfigError(f"{name} must be development or production, got {env[name]!r}")
    if len(set(given.values())) > 1:
        raise ConfigError("APP_ENV and FLASK_ENV disagree; set one of them")
    return next(iter(given.values()), "development")


ONE_YEAR = parse_rate_limits("1 per year")[0].get_expiry()  # as limits counts a year
_ZERO_PERIOD = re.compile(r"(?:\bper\b|/)\s*0+\s*[A-Za-z]", re.IGNORECASE)


def _rate_limit(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name) or default
    try:
        limits = parse_rate_limits(value)
    except ValueError as exc:
        raise ConfigError(f"{name} is not a rate limit like '100 per minute': {value!r}") from exc
    # "0 per minute" refuses every request; limits reads "1 per 0 minute" as per minute.
    if any(limit.amount < 1 for limit in limits) or _ZERO_PERIOD.search(value):
        raise ConfigError(f"{name} must allow at least 1 per period of at least 1: {value!r}")
    # Past these the limiter's Redis refuses its counts ("value is not an integer or out of
    # range"), and each worker then counts alone, in memory.
    if any(limit.amount > 10**9 or limit.get_expiry() > ONE_YEAR for limit in limits):
        raise ConfigError(f"{name} may allow at most 10**9 per period of at most a year: {value!r}")
    return value


def _optional_rate_limit(env: Mapping[str, str], name: str) -> str | None:
    """The limit ``name`` sets, checked as ``_rate_limit`` does; None when unset or empty."""
    value = env.get(name)
    return _rate_limit(env, name, value) if value else None


def normalize_database_url(url: str) -> str:
    """Pin plain PostgreSQL URLs (and the ``postgres://`` spelling) to psycopg2.

    SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3, which we do not install.
    """
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def from_environment(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Build the Flask config mapping from environment variables."""
    env = os.environ if env is None else env
    database_url = env.get("DATABASE_URL")
    return {
        "APP_ENV": _app_env(env),
        "SQLALCHEMY_DATABASE_URI": database_url or None,
        "JWT_SECRET_KEY": env.get("JWT_SECRET_KEY") or None,
        "VISITOR_HASH_KEY": env.get("VISITOR_HASH_KEY") or None,
        # Unset: memory:// outside production (see check_production_settings).
        "RATELIMIT_STORAGE_URI": env.get("RATELIMIT_STORAGE_URI") or None,
        "RATELIMIT_KEY_PREFIX": env.get("RATELIMIT_KEY_PREFIX", "tenant-analytics"),
        "RATELIMIT_ENABLED": _flag(env, "RATELIMIT_ENABLED", True),
        "TRACK_RATE_LIMIT": _rate_limit(env, "TRACK_RATE_LIMIT", "100 per minute"),
        # Off unless set: what one client address may post to one tenant (see ratelimits).
        "TRACK_ADDRESS_RATE_LIMIT": _optional_rate_limit(env, "TRACK_ADDRESS_RATE_LIMIT"),
        "LOGIN_RATE_LIMIT": _rate_limit(env, "LOGIN_RATE_LIMIT", "10 per minute"),
        "LOGIN_ADDRESS_RATE_LIMIT": _rate_limit(env, "LOGIN_ADDRESS_RATE_LIMIT", "30 per minute"),
        "API_RATE_LIMIT": _rate_limit(env, "API_RATE_LIMIT", "60 per minute"),
        "OWNER_HEAVY_RATE_LIMIT": _rate_limit(env, "OWNER_HEAVY_RATE_LIMIT", "20 per hour"),
        "OWNER_REPORTS_AT_ONCE": _int(env, "OWNER_REPORTS_AT_ONCE", 4, 1, 99),
        "GROUP_COMMIT": _flag(env, "GROUP_COMMIT", True),
        # PostgreSQL: libpq waits for ever for a server that does not answer (a host gone
        # from the network); a DATABASE_URL's own ?connect_timeout= wins.
        "DATABASE_CONNECT_TIMEOUT": _int(env, "DATABASE_CONNECT_TIMEOUT", 10, 1, 3600),
        # Past a minute a write's request has given up its batch anyway.
        "WRITE_LOCK_TIMEOUT_SECONDS": _int(env, "WRITE_LOCK_TIMEOUT_MS", 2000, 1, 60_000) / 1000,
        # PostgreSQL: the longest a migration's step waits for a lock (0: no limit), while
        # the reads and writes of its table queue behind it. At most what PostgreSQL takes.
        "MIGRATION_LOCK_TIMEOUT_MS": _int(env, "MIGRATION_LOCK_TIMEOUT_MS", 5000, 0, 2**31 - 1),
        "TENANT_CACHE_SECONDS": _int(env, "TENANT_CACHE_SECONDS", 10, 0, 3600),
        # Under gunicorn: the longest a body may pause (a phone losing signal mid-upload);
        # gunicorn sets none, and such a client held its worker's stop or reload for good.
        "BODY_READ_TIMEOUT_SECONDS": _int(env, "BODY_READ_TIMEOUT_SECONDS", 20, 1, 3600),
        "IDEMPOTENCY_WINDOW_SECONDS": _int(env, "IDEMPOTENCY_WINDOW_SECONDS", 5, 0, 30 * 86_400),
        "INTERACTION_MIN_SECONDS": _int(env, "INTERACTION_MIN_MS", 15, 0, 10_000) / 1000,
        "TRUSTED_PROXY_COUNT": _int(env, "TRUSTED_PROXY_COUNT", 0),
        "DASHBOARD_ORIGINS": _origins(env, "DASHBOARD_ORIGINS"),
        # The address QR codes hold (https://stats.example.com); else the request's own.
        "PUBLIC_URL": _public_url(env),
        "JWT_ACCESS_TOKEN_EXPIRES": timedelta(
            minutes=_int(env, "JWT_ACCESS_MINUTES", 60, 1, 365 * 24 * 60)
        ),
        "JWT_REFRESH_TOKEN_EXPIRES": timedelta(days=_int(env, "JWT_REFRESH_DAYS", 30, 1, 3650)),
        # Hosts' clocks differ by a second or so: a token one host issued "in the future"
        # by its neighbour's clock (iat, nbf) is still good there.
        "JWT_DECODE_LEEWAY": 10,
    }


def development_secrets(instance_path: str) -> dict[str, str]:
    """The instance folder's own random keys, made by the first process to ask."""
    path = os.path.join(instance_path, DEV_SECRETS_FILE)
    if not os.path.exists(path):
        os.makedirs(instance_path, exist_ok=True)
        made = {name: secrets.token_urlsafe(48) for name in SECRET_SETTINGS}
        handle, draft = tempfile.mkstemp(dir=instance_path, prefix=".dev-secrets-")  # 0600
        try:
            with os.fdopen(handle, "w") as file:
                json.dump(made, file)
                file.flush()
                os.fsync(file.fileno())
            os.link(draft, path)  # whole or not at all, and never replaced: workers agree
        except FileExistsError:
            pass
        finally:
            os.unlink(draft)
    try:
        with open(path) as file:
            kept = json.load(file)
        return {name: str(kept[name]) for name in SECRET_SETTINGS}
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is damaged: delete it (new keys end old tokens)") from exc


def fill_development_secrets(config: dict[str, Any], instance_path: str) -> None:
    """Outside production, give each unset secret the instance folder's random key."""
    missing = [name for name in SECRET_SETTINGS if not config.get(name)]
    if missing and config.get("APP_ENV") != "production":
        made = development_secrets(instance_path)
        config.update({name: made[name] for name in missing})
        # At startup: a server meant for production may have been started without APP_ENV.
        logging.getLogger(__name__).warning(
            "APP_ENV is not production: %s from %s",
            ", ".join(missing),
            os.path.join(instance_path, DEV_SECRETS_FILE),
        )


def _is_patterned(key: str) -> bool:
    """Whether ``key`` has fewer than MIN_SECRET_SYMBOLS different characters, or is a
    shorter string repeated (its whole length over)."""
    if len(set(key)) < MIN_SECRET_SYMBOLS:
        return True
    return any(key[period:] == key[:-period] for period in range(1, len(key) // 2 + 1))


def warn_about_database(config: Mapping[str, Any]) -> None:
    """At a production server's start: SQLite is the quick start's database, not one to
    serve real tenants from (one writer at a time, money in floating point)."""
    uri = config["SQLALCHEMY_DATABASE_URI"]
    if config["APP_ENV"] == "production" and make_url(uri).get_backend_name() == "sqlite":
        logging.getLogger(__name__).warning(
            "DATABASE_URL is SQLite: one writer at a time for every worker and tenant, and"
            " money summed in floating point; serve real tenants from PostgreSQL"
        )


def check_production_settings(config: dict[str, Any]) -> None:
    """Refuse to run in production without a database named, without secrets of its
    own or with short ones, or with rate limits counted per process unless asked for
    (memory://, one worker)."""
    if config.get("APP_ENV") != "production":
        config["RATELIMIT_STORAGE_URI"] = config.get("RATELIMIT_STORAGE_URI") or "memory://"
        return
    unset = [
        name
        for name in SECRET_SETTINGS
        if not config.get(name) or config[name] in PUBLISHED_SECRETS
    ]
    if unset:
        raise ConfigError(
            "refusing to start in production without secrets (unset or published): "
            + ", ".join(unset)
        )
    short = [name for name in SECRET_SETTINGS if len(config[name].encode()) < MIN_SECRET_BYTES]
    if short:
        raise ConfigError(
            f"refusing to start in production with secrets under {MIN_SECRET_BYTES} bytes: "
            + ", ".join(short)
        )
    guessable = [name for name in SECRET_SETTINGS if _is_patterned(config[name])]
    if guessable:
        raise ConfigError(
            "refusing to start in production with secrets that repeat a pattern (not drawn"
            " at random): " + ", ".join(guessable)
        )
    if config["JWT_SECRET_KEY"] == config["VISITOR_HASH_KEY"]:
        # One leaked (a hash key is shared with analysts more readily) would be both.
        raise ConfigError(
            "refusing to start in production with JWT_SECRET_KEY equal to VISITOR_HASH_KEY:"
            " give each its own"
        )
    if not config.get("RATELIMIT_STORAGE_URI"):
        if config.get("RATELIMIT_ENABLED", True):
            raise ConfigError(
                "refusing to start in production without RATELIMIT_STORAGE_URI: set it to"
                " redis://… (memory:// counts per process: each worker would allow the"
                " whole limit; set it explicitly for a single worker)"
            )
        config["RATELIMIT_STORAGE_URI"] = "memory://"
    if not config.get("SQLALCHEMY_DATABASE_URI"):
        raise ConfigError(
            "refusing to start in production without DATABASE_URL: set it to"
            " postgresql://… (unset, each host and each working directory would keep"
            " events of its own in a SQLite file under ./instance)"
        )


def check_storage_urls(config: dict[str, Any]) -> None:
    """Refuse a DATABASE_URL or RATELIMIT_STORAGE_URI that names no storage we can use,
    in one line that quotes neither (they may hold a password): a typo, not an outage."""
    database_url = config.get("SQLALCHEMY_DATABASE_URI")
    if database_url:
        try:
            dialect = make_url(database_url).get_dialect()
        except NoSuchModuleError:
            scheme = str(database_url).split(":", 1)[0]
            raise ConfigError(
                f"DATABASE_URL: no database is called {scheme!r}; use postgresql://user@host/db"
            ) from None
        except (ArgumentError, ValueError):  # unparseable, or a port that is no number
            raise ConfigError(
                "DATABASE_URL is not a database URL like postgresql://user:password@host:5432/db"
            ) from None
        try:
            dialect.import_dbapi()
        except ImportError:  # postgresql+psycopg://, mysql://: a driver not installed
            scheme = str(database_url).split(":", 1)[0]
            raise ConfigError(
                f"DATABASE_URL: the driver of {scheme!r} is not installed; use"
                " postgresql://user@host/db (psycopg2) or sqlite:///path"
            ) from None
    storage = config.get("RATELIMIT_STORAGE_URI")
    if storage:
        storage = config["RATELIMIT_STORAGE_URI"] = storage.strip()
        scheme = storage.split("://", 1)[0].lower() if "://" in storage else None
        if scheme not in RATE_LIMIT_STORAGE_SCHEMES:
            raise ConfigError(
                "RATELIMIT_STORAGE_URI is not a storage like redis://host:6379/0 (or memory://;"
                f" this app takes {', '.join(name + '://' for name in RATE_LIMIT_STORAGE_SCHEMES)})"
            )
        try:  # each worker would fail on these later, with a traceback of its own
            if scheme in ("redis", "rediss"):  # one host (others may list several)
                _ = urlsplit(storage).port  # no number or out of range, a bad [host]
                parse_redis_url(storage)  # options: ?socket_timeout=abc
        except ValueError:
            raise ConfigError(
                "RATELIMIT_STORAGE_URI is not a storage like redis://host:6379/0: its host,"
                " port or options do not parse"
            ) from None
