"""One JSON error shape for every error the API returns.

``{"success": false, "error": <code>, "message": <text>, "errors": {field: [..]}}``
(``errors`` only for validation failures). Database details never reach clients.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from flask_limiter import RateLimitExceeded
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm.exc import ObjectDeletedError, StaleDataError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES

from .extensions import db
from .ingestion import (
    IN_FAILED_TRANSACTION_STATE,
    READ_ONLY_STATE,
    CommitTimeout,
    CommitUncertain,
    TenantBusy,
    is_read_only,
)
from .logs import get_logger

log = get_logger(__name__)
_WERKZEUG_TOO_LARGE = RequestEntityTooLarge.description


class ApiError(Exception):
    """An error with a status code and a message meant for the client."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        errors: dict[str, list[str]] | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.errors = errors
        self.extra = extra
        self.headers = headers or {}


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    errors: dict[str, list[str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[Response, int]:
    body: dict[str, Any] = {
        **(extra or {}),
        "success": False,
        "error": code or _default_code(status),
        "message": message,
    }
    if errors:
        body["errors"] = errors
    return jsonify(body), status


def _default_code(status: int) -> str:
    return HTTP_STATUS_CODES.get(status, "error").lower().replace(" ", "_")


def validation_errors(exc: ValidationError) -> dict[str, list[str]]:
    """Pydantic errors as ``{"field.path": ["message", ...]}``."""
    fields: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in err["loc"]) or "body"
        fields.setdefault(loc, []).append(_client_message(err))
    return fields


def _client_message(err: ErrorDetails) -> str:
    """Pydantic's message, but in the client's terms where pydantic speaks of its own:
    text checked after a validator is measured in "items", a nested model is named."""
    kind, context = err["type"], err.get("ctx", {})
    if kind in ("too_short", "too_long") and isinstance(err.get("input"), str):
        limit = context["min_length" if kind == "too_short" else "max_length"]
        bound = "at least" if kind == "too_short" else "at most"
        return f"Text should have {bound} {limit} character{'' if limit == 1 else 's'}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "Should be a JSON object"
    if kind == "extra_forbidden":
        return "Not a field of this request"
    if kind == "value_error":  # our own validators' words, without pydantic's "Value error, "
        return str(context.get("error", err["msg"]))
    return err["msg"]


def unavailable(
    message: str, *, retry_after: int = 1, extra: dict[str, Any] | None = None
) -> tuple[Response, int]:
    """A 503: the database (or the limiter's storage) busy or away, nothing (or nothing
    certain) was done; retry in ``retry_after`` seconds."""
    response, status = error_response(503, message, code="unavailable", extra=extra)
    response.headers["Retry-After"] = str(retry_after)
    return response, status


def rate_limited(about: str, retry_after: int | None = None) -> ApiError:
    """The 429 of every limit, ``about`` saying which; retry in ``retry_after`` seconds."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return ApiError(429, f"Rate limit exceeded: {about}", code="rate_limited", headers=headers)


def api_error_response(exc: ApiError) -> tuple[Response, int]:
    """An ApiError as the answer, where it is returned rather than raised."""
    response, status = error_response(
        exc.status, exc.message, code=exc.code, errors=exc.errors, extra=exc.extra
    )
    response.headers.update(exc.headers)
    return response, status


def invalid_body(errors: dict[str, list[str]]) -> ApiError:
    """The 422 of a body that fails validation, with each field's errors."""
    return ApiError(422, "The request body is invalid.", code="validation_error", errors=errors)


def invalid_field(field: str, message: str) -> ApiError:
    """The 422 of one bad query argument: ``message`` is the answer's and the field's."""
    return ApiError(422, message, code="validation_error", errors={field: [message]})


def is_not_migrated(exc: SQLAlchemyError) -> bool:
    """A table or column the code reads is not there: the migrations have not been run,
    or not the latest (new code started before `db upgrade`)."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "pgcode", None) in ("42P01", "42703"):  # undefined table, column
        return True
    said = str(orig or "")
    return "no such table" in said or "no such column" in said or "has no column named" in said


# What a server that answers says of a connection it will not take from this role (its
# FATAL line): a setting to fix, not an outage (too many clients, starting up).
_REFUSALS = (
    "does not exist",  # the role or the database
    "authentication failed",  # password, scram, peer, ident
    "no pg_hba.conf entry",
    "is not permitted to log in",
    "not allowed to connect",  # a database with ALLOW_CONNECTIONS false
    "permission denied for database",  # no CONNECT privilege
)


def connection_failure(exc: SQLAlchemyError) -> str:
    """A connection that failed, said as a command line says it: refused by a server that
    answered (an unknown role or database, a wrong password), or out of reach."""
    line = driver_first_line(exc)
    if "FATAL:" in line and any(reason in line for reason in _REFUSALS):
        return f"the database refused the connection: {line}"
    return f"cannot reach the database: {line}"


def is_privilege_missing(exc: BaseException) -> bool:
    """PostgreSQL refused the app's role (42501): a grant or an ownership a deploy or a
    restore left out (a DBA's script run as a superuser makes the superuser's tables).
    Its message names the object, never a value."""
    return getattr(getattr(exc, "orig", None), "pgcode", None) == "42501"


ROLE_REFUSED = "the database refused this role"


def role_refused(exc: SQLAlchemyError, remedy: str) -> str:
    """The line that says which object the role was refused, and ``remedy``."""
    return f"{ROLE_REFUSED}: {driver_first_line(exc)} ({remedy})"


# Said by the server's log: the app's own requests cannot be "run as" anything else.
SERVE_AS_OWNER = (
    "grant the role the tables and the schema, or make it their owner: a script of the "
    "migrations run as another role makes that role's tables"
)


class OnceAMinute:
    """An error line said at most once a minute (each request of an outage would say
    it again), then with how many times it went unsaid meanwhile.

    Lines said as an ``outage`` end with one "answers again" line when ``answered`` is
    called (a connection handed out), which says what went unsaid since: quiet alone
    would not tell an ended outage from a suppressed one.
    """

    QUIET_SECONDS = 60.0
    KEPT_LINES = 100  # distinct lines remembered; the driver's words vary little

    def __init__(self) -> None:
        self._said: dict[str, tuple[float, int]] = {}
        self._outage_lines: set[str] = set()  # said as an outage since it last answered
        self._answered_at = -self.QUIET_SECONDS

    def answered(self, what: str = "the database") -> None:
        """``what`` was used again: end a said outage, at most once a minute (a server
        that fails every other request would otherwise say both lines every time)."""
        if not self._outage_lines:
            return
        now = time.monotonic()
        if now - self._answered_at < self.QUIET_SECONDS:
            return
        ended, self._outage_lines = self._outage_lines, set()
        unsaid = sum(self._said.pop(line, (0.0, 0))[1] for line in ended)  # said at once next
        self._answered_at = now
        log.warning("%s answers again%s", what, f" ({unsaid} failures unsaid)" if unsaid else "")

    def say(
        self,
        line: str,
        logger: logging.Logger = log,
        level: int = logging.ERROR,
        *,
        outage: bool = False,
    ) -> None:
        if outage:
            self._outage_lines.add(line)
        now = time.monotonic()
        last, unsaid = self._said.get(line, (-self.QUIET_SECONDS, 0))
        if now - last < self.QUIET_SECONDS:
            self._said[line] = (last, unsaid + 1)
            return
        if len(self._said) >= self.KEPT_LINES:
            self._said.clear()
        self._said[line] = (now, 0)
        logger.log(level, "%s%s", line, f" ({unsaid} more since, unsaid)" if unsaid else "")


TENANT_UNAVAILABLE = "Tenant not found or not available"


def tenant_not_found() -> ApiError:
    """The 404 of an owner's route naming a tenant the caller cannot see (or none)."""
    return ApiError(404, "Tenant not found", code="not_found")


def product_not_found() -> ApiError:
    """The 404 of a product id the tenant has not (or no longer)."""
    return ApiError(404, "Product not found", code="not_found")


def deleted_meanwhile(exc: SQLAlchemyError) -> ApiError | None:
    """The 404 of an owner's request whose tenant (or product) an operator deleted while
    it ran (``tenant delete``): its row gone under an UPDATE, a read after the commit.
    None for another row's: not this race, a fault to trace."""
    said = str(exc)
    if "<Product" in said or "'products'" in said:
        return product_not_found()
    if "<Tenant" in said or "'tenants'" in said:
        return tenant_not_found()
    return None


def tenant_unavailable() -> ApiError:
    """The 404 of a public write naming no active tenant."""
    return ApiError(404, TENANT_UNAVAILABLE, code="tenant_not_found")


def names_a_missing_row(exc: SQLAlchemyError) -> bool:
    """A foreign key broken by a write: what it names (a tenant, the only row events and
    rollups refer to) was deleted meanwhile."""
    orig = getattr(exc, "orig", None)
    return isinstance(exc, IntegrityError) and (
        getattr(orig, "pgcode", None) == "23503" or "FOREIGN KEY constraint failed" in str(orig)
    )


NOT_READY = "The service is not ready; retry shortly."
NO_CONNECTION_FREE = "no database connection free in time"
NOT_MIGRATED = "the database lacks a table or column: run `flask --app tenant_analytics db upgrade`"


def say_database_problem(exc: SQLAlchemyError) -> None:
    """Log, once a minute, why the database could not be used: not migrated (with the
    driver's words: which table or column, as a typo in code would say), no connection
    free, or the driver's first line (an outage only if it says the server is away or
    full: a lock or statement timeout is not, and its end is not announced)."""
    lines: OnceAMinute = current_app.extensions["outage_lines"]
    if is_not_migrated(exc):
        lines.say(f"{NOT_MIGRATED} ({driver_first_line(exc)})")
    elif is_privilege_missing(exc):
        lines.say(f"{role_refused(exc, SERVE_AS_OWNER)} at {database_address()}")
    elif isinstance(exc, PoolTimeout):
        lines.say(NO_CONNECTION_FREE, level=logging.WARNING)
    else:
        lines.say(_unavailable_line(exc), outage=is_database_away(exc))


def database_address() -> str:
    """Where DATABASE_URL points, without its password: under gevent the driver's own
    words are only "Connection refused", naming no host."""
    url = db.engine.url
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    host = url.host or url.query.get("host") or "localhost"  # ?host=/run/postgresql: a socket
    return f"{host if isinstance(host, str) else ','.join(host)}:{url.port or 5432}/{url.database}"


def _unavailable_line(exc: SQLAlchemyError) -> str:
    # A lock or statement timeout is no outage: "unavailable" would send an operator
    # to a server that answers.
    what = "read-only" if is_read_only(exc) else "unavailable" if is_outage(exc) else "error"
    return (
        f"database {what} at {database_address()}:"
        f" {type(getattr(exc, 'orig', None) or exc).__name__}: {driver_first_line(exc)}"
    )


def driver_first_line(exc: SQLAlchemyError) -> str:
    """The driver's first line (a refused port, an unknown database): a typo in
    DATABASE_URL must not look like an outage. Parameters are never in it."""
    return (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0][:300]


# PostgreSQL's SQLSTATE classes of a server away or full: connection exceptions, too
# many connections (53300 and its class), shut down or starting (57P01-57P03). A
# deadlock or a statement timeout is an OperationalError too, but a fault to trace.
_OUTAGE_STATES = ("08", "53", "57P01", "57P02", "57P03")
TOO_MANY_CONNECTIONS = "53300"


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached or used at all (SQLite's
    and the driver's own connection errors carry no SQLSTATE), or no connection was free."""
    if isinstance(exc, PoolTimeout) or is_read_only(exc):
        return True
    if not isinstance(exc, OperationalError) or is_not_migrated(exc):
        return False
    state = getattr(exc.orig, "pgcode", None)
    return state is None or state.startswith(_OUTAGE_STATES)


def is_database_away(exc: BaseException) -> bool:
    """An outage of the server itself (away, full, shutting down), not of this process's
    pool: the outages whose end a connection handed out announces (a read-only server
    hands out connections while it still refuses writes)."""
    if not is_outage(exc) or isinstance(exc, PoolTimeout) or is_read_only(exc):
        return False
    # Of class 53 only too many connections ends with a connection handed out: a full
    # disk or memory refuses writes from a server that hands them out all along.
    state = getattr(getattr(exc, "orig", None), "pgcode", None)
    return state is None or not state.startswith("53") or state == TOO_MANY_CONNECTIONS


def outage_reason(exc: BaseException) -> str | None:
    """One line saying why the database could not take a write, when ``exc`` is an
    outage (away, out of connections, a commit unconfirmed, not migrated); None for
    anything else, a fault worth its traceback."""
    if isinstance(exc, SQLAlchemyError) and is_outage(exc) and not isinstance(exc, PoolTimeout):
        return _unavailable_line(exc)
    if isinstance(exc, SQLAlchemyError) and is_not_migrated(exc):
        return NOT_MIGRATED
    if isinstance(exc, SQLAlchemyError) and is_privilege_missing(exc):
        return role_refused(exc, SERVE_AS_OWNER)
    if isinstance(exc, PoolTimeout):
        return NO_CONNECTION_FREE
    if isinstance(exc, CommitTimeout):
        return "not written in time (withdrawn unwritten)"
    if isinstance(exc, CommitUncertain):
        innermost, cause = exc, exc.__cause__
        while isinstance(cause, CommitUncertain):  # the committer's, re-raised per request
            innermost, cause = cause, cause.__cause__
        if cause is None:
            return f"commit outcome unknown: {innermost}"
        said = driver_first_line(cause) if isinstance(cause, SQLAlchemyError) else str(cause)
        return f"commit outcome unknown: {type(cause).__name__}" + (f": {said}" if said else "")
    return None


def log_not_recorded(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """Log an event the answer says was not recorded: in an outage one line a minute,
    not a traceback of seventy per request; anything else with its traceback."""
    reason = outage_reason(exc)
    if reason is None:
        logger.warning("%s", what, exc_info=exc)
    else:
        current_app.extensions["outage_lines"].say(
            f"{what}: {reason}", logger, logging.WARNING, outage=is_database_away(exc)
        )


def _drop_connections_not_to_be_trusted(context: Any) -> None:
    """Errors after which a PostgreSQL connection is taken as a disconnect.

    A read-only server keeps refusing writes on its sessions (a standby after a failover;
    default_transaction_read_only holds for a session's life): that connection and every
    other the pool holds are dropped, so the next ones reach the new primary, or find the
    setting lifted.

    A COMMIT or ROLLBACK that raised leaves psycopg2 sure the transaction ended, but a
    cancel (a statement timeout, a DBA's) that lands as COMMIT starts leaves it open and
    aborted on the server; the driver's rollback then sends nothing, and every later
    statement on the session is refused with 25P02. Such a connection alone is dropped;
    an error the server reported on it is marked so (it still wrote nothing).
    """
    error = context.sqlalchemy_exception
    if context.dialect.name != "postgresql" or error is None or context.is_disconnect:
        return  # not the driver's error, or a disconnect SQLAlchemy handles as its own
    state = getattr(context.original_exception, "pgcode", None)
    if state == READ_ONLY_STATE:
        context.is_disconnect = True
    elif state == IN_FAILED_TRANSACTION_STATE or (
        context.connection is not None and context.statement is None  # COMMIT, ROLLBACK
    ):
        context.is_disconnect = True
        context.invalidate_pool_on_disconnect = False
        error.dropped_while_live = state is not None  # see ingestion.dropped_while_live


def register_error_handlers(app: Flask) -> None:
    """Route every exception through the one JSON shape."""
    # This app's: a database away, or not migrated.
    outage_lines = app.extensions["outage_lines"] = OnceAMinute()
    with app.app_context():  # a connection handed out answered (the pool pings it first)
        event.listen(db.engine, "checkout", lambda *_: outage_lines.answered())
        event.listen(db.engine, "handle_error", _drop_connections_not_to_be_trusted)

    # Registered after Flask-SQLAlchemy's, so run before it (last registered, first run).
    @app.teardown_appcontext
    def _close_a_lost_connection(_exc: BaseException | None) -> None:
        """A connection the database dropped under a request fails the session's closing
        rollback, once the answer is made: that answer stands (a counted scan's redirect)
        rather than the server's bare HTML 500, and the connection is discarded."""
        try:
            db.session.remove()
        except SQLAlchemyError as exc:
            reason = outage_reason(exc)
            if reason is None:
                log.warning("closing a request's database session failed", exc_info=exc)
            else:
                outage_lines.say(
                    f"a connection was lost after its answer: {reason}",
                    outage=is_database_away(exc),
                )
            db.session.remove()

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return api_error_response(exc)

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError):
        return _api_error(invalid_body(validation_errors(exc)))

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded):
        if exc.response is not None:  # an endpoint's own answer (the conversion beacon's)
            return exc.response
        return api_error_response(rate_limited(exc.description))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        description = exc.description or exc.name
        if isinstance(exc, RequestEntityTooLarge) and description == _WERKZEUG_TOO_LARGE:
            # Flask's own limit, above every endpoint's (some take less: their 413 says so).
            largest = app.config["MAX_CONTENT_LENGTH"] // 1024
            description = f"The body is over {largest} KiB, more than any endpoint takes."
        response, _ = error_response(status, description)
        for name, value in exc.get_headers():  # keeps Allow on 405, Retry-After where set
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, status

    @app.errorhandler(CommitTimeout)
    def _commit_timeout(exc: CommitTimeout):
        if not isinstance(exc, TenantBusy):  # those the committer logs once per batch
            log.warning("events not stored, the client is told to send them again: %s", exc)
        return unavailable("The events were not stored in time; send them again.")

    @app.errorhandler(CommitUncertain)
    def _commit_uncertain(exc: CommitUncertain):
        outage_lines.say(outage_reason(exc) or str(exc), outage=True)
        return unavailable(
            "The database did not confirm the write (its connection failed, or it "
            "stopped answering); the events may have been stored."
        )

    @app.errorhandler(OperationalError)
    def _database_unavailable(exc: OperationalError):
        say_database_problem(exc)
        if is_not_migrated(exc):  # SQLite's "no such table" is an OperationalError
            return unavailable(NOT_READY)
        return unavailable("The service is temporarily unavailable; retry shortly.")

    @app.errorhandler(PoolTimeout)
    def _connections_exhausted(exc: PoolTimeout):
        # More requests than pooled connections (easy with gevent's many greenlets).
        say_database_problem(exc)
        return unavailable("The service is busy; retry shortly.")

    @app.errorhandler(StaleDataError)
    @app.errorhandler(ObjectDeletedError)
    def _deleted_meanwhile(exc: SQLAlchemyError):
        gone = deleted_meanwhile(exc)
        if gone is None:
            return _database_error(exc)
        db.session.rollback()
        log.warning("a request's row was deleted while it ran: %s", type(exc).__name__)
        return _api_error(gone)

    @app.errorhandler(SQLAlchemyError)
    def _database_error(exc: SQLAlchemyError):
        if is_not_migrated(exc):
            say_database_problem(exc)
            return unavailable(NOT_READY)
        if is_outage(exc) or is_privilege_missing(exc):
            # Read-only: a standby after a failover, a full disk's guard. Refused: a
            # deploy's fault, as not migrated is, not the request's.
            say_database_problem(exc)
            return unavailable("The service is temporarily unavailable; retry shortly.")
        if getattr(exc, "connection_invalidated", False):  # see the handle_error listener
            log.warning("a connection not to be trusted was dropped: %s", driver_first_line(exc))
            return unavailable("The service is temporarily unavailable; retry shortly.")
        if names_a_missing_row(exc):
            # The tenant was deleted while this process still had it cached (`tenant
            # delete` waits the cache out; a request already under way may not).
            log.warning("a write named a tenant that no longer exists")
            return _api_error(tenant_unavailable())
        log.exception("database error in %s", _this_request())
        return error_response(500, "Internal server error.")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error in %s", _this_request())
        return error_response(500, "Internal server error.")


def _this_request() -> str:
    """The failed request as a log line names it: method and path, escaped (a path may
    hold any character, a newline too), never its query or body."""
    return f"{request.method} {request.path!r}"
