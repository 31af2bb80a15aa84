"""Database work done in-process through the app's own code.

The raw reference queries (``queries.landing``) run here, outside gunicorn,
against the same database the server uses.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import date, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import psycopg2

from tenant_analytics import create_app
from tenant_analytics.extensions import db
from tenant_analytics.models import Tenant
from tenant_analytics.queries import landing

T = TypeVar("T")


@contextmanager
def app_session() -> Iterator[Any]:
    """The app's SQLAlchemy session (configured from the environment), in an app context."""
    app = create_app()
    with app.app_context():
        try:
            yield db.session
        finally:
            db.session.remove()
            db.engine.dispose()


def ensure_event_partitions(first: datetime, last: datetime) -> list[str]:
    """Create the monthly ``events`` partitions covering [first, last], if the app partitions.

    Returns the partitions created (none on an unpartitioned schema).
    """
    try:
        from tenant_analytics.partitions import ensure_partitions, month_of, next_month
    except ImportError:
        return []
    months: list[date] = []
    month = month_of(first)
    while month <= month_of(last):
        months.append(month)
        month = next_month(month)
    with app_session(), db.engine.begin() as connection:
        return ensure_partitions(connection, months)


def timed_median(
    function: Callable[[], T], runs: int, budget: float = float("inf")
) -> tuple[float, T, int]:
    """Median seconds of up to ``runs`` calls of ``function``, the last call's result and
    how many calls there were: a further call starts only if, as slow as the slowest so
    far, it would end within ``budget`` seconds of the first's start (one call at least).
    """
    times, result = [], None
    started_all = time.perf_counter()
    for _ in range(max(runs, 1)):
        if times and time.perf_counter() - started_all + max(times) > budget:
            break
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result, len(times)  # type: ignore[return-value]


def raw_summaries(
    tenant_id: int, *, now: datetime, runs: int, budget: float
) -> tuple[float, dict[str, Any], float, dict[str, Any], int]:
    """Time the raw landing and today queries (median of up to ``runs``, within ``budget``
    seconds each) at ``now``.

    Returns (landing seconds, landing summary, today seconds, today summary, landing
    runs), the summaries as the plain dicts the endpoints serialise.
    """
    with app_session() as session:
        tenant = session.get(Tenant, tenant_id)
        zone, currency = ZoneInfo(tenant.timezone), tenant.currency

        def landing_once():
            try:
                return landing.landing_summary(
                    session, tenant_id=tenant_id, zone=zone, now=now, currency=currency
                )
            finally:
                session.rollback()

        def today_once():
            try:
                return landing.today_summary(session, tenant_id=tenant_id, zone=zone, now=now)
            finally:
                session.rollback()

        landing_seconds, summary, landing_runs = timed_median(landing_once, runs, budget)
        today_seconds, today, _ = timed_median(today_once, runs, budget)
    return landing_seconds, asdict(summary), today_seconds, asdict(today), landing_runs


def scalar(dsn: str, sql: str, *params: Any) -> Any:
    """The first column of the first row of ``sql``."""
    connection = psycopg2.connect(dsn)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        connection.commit()
        return row[0] if row else None
    finally:
        connection.close()


def count_events(dsn: str, tenant_id: int) -> int:
    return scalar(dsn, "SELECT count(*) FROM events WHERE tenant_id = %s", tenant_id)


def vacuum_analyze(dsn: str) -> None:
    """VACUUM (ANALYZE) events, so autovacuum does not start during the measurements."""
    connection = psycopg2.connect(dsn)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("VACUUM (ANALYZE) events")
    finally:
        connection.close()
