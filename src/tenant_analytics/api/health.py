"""Health check for load balancers and supervisors (public, not rate limited)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ..database_errors import (
    NOT_MIGRATED,
    database_address,
    is_not_migrated,
    is_privilege_missing,
    say_database_problem,
)
from ..errors import unavailable
from ..extensions import db
from ..models import SCHEMA_REVISION
from ..ratelimits import limiter_storage_answers

bp = Blueprint("health", __name__)


@bp.get("/api/health")
def health():
    """Whether this process can serve: 200 while its database answers (migrated), else 503.

    The rate-limit storage is reported but not required: events flow without it.
    """
    database = _database_state()
    db.session.close()  # the connection back to the pool before Redis is asked
    if database == "read_only":
        db.engine.dispose()  # the next probe connects afresh: to a new primary, say
    limits = not current_app.config["RATELIMIT_ENABLED"] or limiter_storage_answers()
    parts = {
        "database": "ok" if database == "ok" else "unavailable",
        "rate_limit_storage": "ok" if limits else "unavailable",
    }
    if database == "ok":
        response, status = jsonify(status="ok", **parts), 200
    else:  # the one error shape, with what was checked
        response, status = unavailable(DATABASE_PROBLEMS[database], extra=parts)
    response.headers["Cache-Control"] = "no-store"
    return response, status


DATABASE_PROBLEMS = {
    "unavailable": "The database does not answer.",
    "not_migrated": "The database is not migrated.",
    "role_refused": "The database refuses this service's role access to its tables.",
    "read_only": "The database is read-only: events cannot be stored.",
}


def _database_state() -> str:
    """ "ok" when the database answers at this code's schema (or a later one: a rolling
    deploy's newer code may have migrated it), else a key of DATABASE_PROBLEMS."""
    try:
        revision = db.session.scalar(text("SELECT version_num FROM alembic_version"))
        # A standby after a failover answers reads as well as the primary did.
        read_only = db.engine.dialect.name == "postgresql" and db.session.scalar(READ_ONLY)
    except SQLAlchemyError as exc:
        db.session.rollback()
        say_database_problem(exc)  # once probes alone reach a host, only they can say why
        if is_not_migrated(exc):
            return "not_migrated"
        return "role_refused" if is_privilege_missing(exc) else "unavailable"
    lines = current_app.extensions["outage_lines"]
    if revision is None or revision < SCHEMA_REVISION:
        lines.say(
            f"{NOT_MIGRATED} (the database is at {revision or 'no revision'},"
            f" this code needs {SCHEMA_REVISION})"
        )
        return "not_migrated"
    if read_only == "on":
        lines.say(f"database read-only at {database_address()}: health answers 503")
        return "read_only"
    return "ok"


READ_ONLY = text("SELECT current_setting('transaction_read_only')")
