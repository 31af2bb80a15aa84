"""The app's loggers: a logged database error names what broke, never the rows it broke on.

The engine hides bound parameters (``hide_parameters``), but PostgreSQL's own
messages quote data: ``DETAIL: Failing row contains (…)`` lists a whole event
(user agent, metadata), ``invalid input syntax for type …: "…"`` the value,
``Key (…)=(…) already exists`` the key. A traceback logged through these loggers
keeps each frame and, of a database error, its SQLSTATE, condition and the
names PostgreSQL reports (table, column, constraint) instead of its message.
"""

from __future__ import annotations

import logging
import sqlite3
import traceback

from psycopg2 import Error as PostgresError
from psycopg2 import errorcodes
from sqlalchemy.exc import SQLAlchemyError, StatementError

_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"
_ORIGINAL = "Original exception was:"
_DIAGNOSTIC_NAMES = ("schema_name", "table_name", "column_name", "datatype_name", "constraint_name")
# Conditions whose message names an object, never a value, and which report no names of
# their own: insufficient_privilege ("permission denied for table events").
_MESSAGE_NAMES_ONLY = ("42501",)


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, whose records carry tracebacks with no database message."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, _DatabaseMessagesLeftOut) for f in logger.filters):
        logger.addFilter(_DatabaseMessagesLeftOut())
    return logger


class _DatabaseMessagesLeftOut(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # Formatters print a record's exc_text when it is set instead of formatting exc_info.
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = loggable_traceback(record.exc_info[1])
        return True


def loggable_traceback(error: BaseException) -> str:
    """``error``'s traceback as logging prints it, chained exceptions included, with every
    database error's message replaced by ``database_error_summary``."""
    chain: list[tuple[BaseException, str]] = []  # outermost first, each with how it follows
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if current.__cause__ is not None:
            chain.append((current, _CAUSE))
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            chain.append((current, _CONTEXT))
            current = current.__context__
        else:
            chain.append((current, ""))
            current = None
    parts: list[str] = []
    for position, (exception, link) in enumerate(reversed(chain)):  # innermost first
        if position:
            parts.append(link)
        if exception.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(exception.__traceback__))
        parts.extend(_exception_only(exception))
    return "".join(parts).rstrip("\n")


def database_error_summary(error: BaseException) -> str | None:
    """What may be logged of a driver's error, or None if ``error`` is not one."""
    if isinstance(error, PostgresError):
        if error.pgcode is None:  # raised by the driver itself (connecting, a lost server)
            return str(error).strip()
        condition = errorcodes.lookup(error.pgcode) or "unknown condition"
        names = ", ".join(
            f"{name.removesuffix('_name')} {value}"
            for name in _DIAGNOSTIC_NAMES
            if (value := getattr(error.diag, name, None))
        )
        if error.pgcode in _MESSAGE_NAMES_ONLY and error.diag.message_primary:
            names = error.diag.message_primary
        return f"SQLSTATE {error.pgcode} {condition.lower()}" + (f" ({names})" if names else "")
    if isinstance(error, sqlite3.Error):  # SQLite's messages name columns, never values
        return str(error)
    return None


def _exception_only(error: BaseException) -> list[str]:
    """The traceback's last line: Python's own, but for a database error's message."""
    summary = database_error_summary(error)
    if isinstance(error, StatementError) and error.orig is not None:
        driver = database_error_summary(error.orig)
        if driver is not None:
            statement = f"\n[SQL: {error.statement}]" if error.statement else ""
            summary = f"({type(error.orig).__qualname__}) {driver}{statement}"
    if summary is None and isinstance(error, SQLAlchemyError):
        # PendingRollbackError and its kind repeat the first error's message, row and all.
        message, quoted, _ = str(error).partition(_ORIGINAL)
        summary = f"{message}{_ORIGINAL} (left out)" if quoted else None
    if summary is None:
        return traceback.format_exception_only(error)
    kind = type(error)
    return [f"{kind.__module__}.{kind.__qualname__}: {summary}\n"]
