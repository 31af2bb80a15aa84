"""Monthly partitions of ``events`` on PostgreSQL: created ahead, on demand, dropped whole.

SQLite keeps one plain table; there ``purge`` deletes rows instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import delete, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, SessionTransaction

from .models import Event
from .postgres_writer import limit_lock_waits

# pg_advisory_xact_lock(PARTITION_LOCK, month number) serializes the making of one
# month's partition (ROLLUP_LOCK, in rollups.py, is 7_411).
PARTITION_LOCK = 7_412
PARTITION_NAME = re.compile(r"^events_y(\d{4})m(\d{2})$")

# The events table the search path finds, not any schema's table of that name.
LIST_PARTITIONS = text("""
    SELECT child.relname
    FROM pg_inherits
    JOIN pg_class child ON child.oid = pg_inherits.inhrelid
    WHERE pg_inherits.inhparent = to_regclass('events')
""")


def is_partition(name: str | None) -> bool:
    """True for a monthly partition's table name (Alembic ignores them)."""
    return bool(name and PARTITION_NAME.match(name))


def include_in_migrations(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    """Alembic's ``include_name``: monthly partitions and their indexes are the app's, made
    at run time, not the models' (autogenerate and schema comparisons leave them out)."""
    if type_ == "table":
        return not is_partition(name)
    if type_ == "index":
        return not is_partition(parent_names.get("table_name"))
    return True


def month_of(moment: datetime | date) -> date:
    if isinstance(moment, datetime):
        moment = moment.astimezone(UTC)
    return date(moment.year, moment.month, 1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def partition_name(month: date) -> str:
    return f"events_y{month.year:04d}m{month.month:02d}"


def ensure_partitions(connection: Connection, months: Iterable[date]) -> list[str]:
    """Create the partitions for ``months`` that do not exist yet; return the new names."""
    if connection.dialect.name != "postgresql":
        return []
    existing = set(connection.scalars(LIST_PARTITIONS))
    created = []
    for month in sorted(set(months)):
        name = partition_name(month)
        if name in existing:
            continue
        # Another transaction may be making it: IF NOT EXISTS looks before it waits, and
        # would then fail on the name. So wait first, and look again.
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:lock, :month)"),
            {"lock": PARTITION_LOCK, "month": month.year * 12 + month.month},
        )
        if connection.scalar(text("SELECT to_regclass(:name)"), {"name": name}) is not None:
            continue
        # The partition's foreign key locks tenants after events: taken first, it is waited
        # for holding nothing, not with events held while a zone change or a tenant's
        # deletion (tenants written, events read next) waits for events.
        connection.execute(text("LOCK TABLE tenants IN SHARE ROW EXCLUSIVE MODE"))
        connection.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF events "
                f"FOR VALUES FROM ('{month.isoformat()} 00:00+00') "
                f"TO ('{next_month(month).isoformat()} 00:00+00')"
            )
        )
        created.append(name)
    return created


# Months known to have a partition, per database: checked once per process, not per write.
_known_months: set[tuple[str, date]] = set()
# Session.info key: months whose partition the session's transaction created, not yet committed.
_CREATED = "tenant_analytics_created_months"


def ensure_partitions_cached(session: Session, months: set[date]) -> None:
    """``ensure_partitions`` for months this process has not seen yet, in ``session``'s transaction
    (the app's writers make them first, ``make_partitions_first``; the demo and tests here).

    A month counts as known only once that transaction commits: rolled back, its
    CREATE TABLE leaves no partition, and the next write of the month must make it again.
    """
    connection = session.connection()
    database = connection.engine.url.render_as_string()
    missing = {month for month in months if (database, month) not in _known_months}
    if missing:
        ensure_partitions(connection, missing)
        session.info.setdefault(_CREATED, set()).update((database, month) for month in missing)


@event.listens_for(Session, "after_commit")
def _remember_created(session: Session) -> None:
    if not session.in_nested_transaction():  # a savepoint's release commits nothing yet
        _known_months.update(session.info.pop(_CREATED, ()))


@event.listens_for(Session, "after_transaction_end")
def _forget_uncommitted(session: Session, _transaction: SessionTransaction) -> None:
    # Any other end (rollback, close, a savepoint's): checked again on the next write.
    session.info.pop(_CREATED, None)


def make_partitions_first(
    connection: Connection, months: set[date], *, lock_timeout: float | None = None
) -> None:
    """Make the partitions of ``months`` this process does not know yet in a transaction of
    their own on ``connection`` (none open on it), committed before the write that needs them.

    In the write's transaction, a partition's lock on ``events`` was held while the write
    waited for its tenants' rollup locks: a rebuild holding one and reading events then
    waited for the write, a deadlock PostgreSQL ended by failing the write.
    """
    database = connection.engine.url.render_as_string()
    missing = {month for month in months if (database, month) not in _known_months}
    if not missing or connection.dialect.name != "postgresql":
        return
    with connection.begin():
        if lock_timeout is not None:
            limit_lock_waits(connection, lock_timeout)
        ensure_partitions(connection, missing)
    _known_months.update((database, month) for month in missing)


def partitions_known(engine: Engine, months: set[date]) -> bool:
    """True when this process has already made sure every month of ``months`` has its partition."""
    database = engine.url.render_as_string()
    return all((database, month) in _known_months for month in months)


def create_ahead(connection: Connection, *, now: datetime, months_ahead: int) -> list[str]:
    """Partitions for this month and the next ``months_ahead`` months."""
    months, month = [], month_of(now)
    for _ in range(months_ahead + 1):
        months.append(month)
        month = next_month(month)
    return ensure_partitions(connection, months)


def purge_before(connection: Connection, cutoff: datetime) -> tuple[list[str], int | None]:
    """Drop every partition whose whole month lies before ``cutoff``: the partitions that
    went, and None (their rows were not counted).

    SQLite has no partitions: the rows older than ``cutoff`` are deleted, and counted.
    """
    if connection.dialect.name != "postgresql":
        result = connection.execute(delete(Event).where(Event.created_at < cutoff))
        return [], result.rowcount
    dropped = []
    _known_months.clear()
    for name in sorted(connection.scalars(LIST_PARTITIONS)):
        match = PARTITION_NAME.match(name)
        if match is None:
            continue
        month = date(int(match[1]), int(match[2]), 1)
        if datetime.combine(next_month(month), datetime.min.time(), UTC) <= cutoff:
            connection.execute(text(f"DROP TABLE {name}"))
            dropped.append(name)
    return dropped, None
