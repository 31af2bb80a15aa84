"""One JSON error shape for every error the API returns.

``{"success": false, "error": <code>, "message": <text>, "errors": {field: [..]}}``
(``errors`` only for validation failures). Database details never reach clients.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, request
from flask_limiter import RateLimitExceeded
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from sqlalchemy import event
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm.exc import ObjectDeletedError, StaleDataError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES

from .database_errors import (
    OnceAMinute,
    driver_first_line,
    drop_connections_not_to_be_trusted,
    is_database_away,
    is_not_migrated,
    is_outage,
    is_privilege_missing,
    names_a_missing_row,
    outage_reason,
    say_database_problem,
)
from .extensions import db
from .ingestion import CommitTimeout, CommitUncertain, TenantBusy
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


NOT_READY = "The service is not ready; retry shortly."


def register_error_handlers(app: Flask) -> None:
    """Route every exception through the one JSON shape."""
    # This app's: a database away, or not migrated.
    outage_lines = app.extensions["outage_lines"] = OnceAMinute()
    with app.app_context():  # a connection handed out answered (the pool pings it first)
        event.listen(db.engine, "checkout", lambda *_: outage_lines.answered())
        event.listen(db.engine, "handle_error", drop_connections_not_to_be_trusted)

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
