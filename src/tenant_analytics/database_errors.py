"""What a database error means and how the log says it: not migrated, the role refused,
an outage (away, full, read-only), a row gone; said once a minute, never to clients."""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import current_app
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from .extensions import db
from .ingestion import (
    IN_FAILED_TRANSACTION_STATE,
    READ_ONLY_STATE,
    CommitTimeout,
    CommitUncertain,
    is_read_only,
)
from .logs import get_logger

log = get_logger(__name__)


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
    if line == "database is locked":  # SQLite's busy timeout: another writer (a rebuild)
        return "the database is busy with another writer (a rollup rebuild?); try again"
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


def names_a_missing_row(exc: SQLAlchemyError) -> bool:
    """A foreign key broken by a write: what it names (a tenant, the only row events and
    rollups refer to) was deleted meanwhile."""
    orig = getattr(exc, "orig", None)
    return isinstance(exc, IntegrityError) and (
        getattr(orig, "pgcode", None) == "23503" or "FOREIGN KEY constraint failed" in str(orig)
    )


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


def drop_connections_not_to_be_trusted(context: Any) -> None:
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
