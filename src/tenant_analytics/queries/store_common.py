"""What the store reports share: how they read a window of up to a million events.

Every figure is an aggregation in the database over one tenant's events; only
per-day, per-product, per-source or per-customer rows come back to Python to be
shaped. A report reads the window a few times at most and keeps every aggregate
hashable:

- one pass counts the events of each (local day, type, product), from which the
  timelines, the per-type totals and the per-product counts all follow
  (``store_dashboard.event_tally``);
- distinct sessions are counted as distinct (session, key) pairs grouped again by
  key (:func:`sessions_by`) rather than with COUNT(DISTINCT ...), which PostgreSQL
  evaluates by sorting each group;
- the session-wide figures (sessions, events per session, traffic sources) come
  from one row per session (``store_dashboard.session_sources``). That pass, the
  slowest, runs on a second connection beside the report's other queries
  (:func:`beside`).

On PostgreSQL the ``ix_events_tenant_created_covering`` index (migration 0004)
holds the columns these passes read, so they scan the index alone, and each report
gives its hashes REPORT_SETTINGS' memory.

The dashboard and the funnel read the heaviest of these figures from the rollups
instead (``queries.store_rollups``, migration 0005): the event tally, and the
distinct sessions of a window after which no session was seen. The raw
passes remain for the rest, for windows the rollups cannot answer, and as the
reference the tests compare the rollups with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection, Engine, QueuePool, Select, case, func, select
from sqlalchemy.orm import Session

from ..catalogue import PURCHASE, WHATSAPP_PURCHASE
from ..models import Event
from ..timewindows import Day
from .common import Database, ratio_half_up

# PostgreSQL settings for the transaction of a report (see report_settings).
REPORT_SETTINGS = {
    # Memory for each sort, and twice that for each hash (hash_mem_multiplier): room
    # to hash the ~250,000 sessions of a million events without spilling to disk,
    # where the server default (4MB) spills past ~20,000.
    "work_mem": "32MB",
}
# Run a report's session-wide pass on a second connection, beside its other queries
# (PostgreSQL only, see beside); False runs every query on the caller's session.
SIDE_BY_SIDE = True

T = TypeVar("T")

# Who did something: the signed-in user when known, else the browser session.
IDENTIFIER = func.coalesce(Event.user_id, Event.session_id)


def percent(part: int, whole: int) -> float:
    """``part`` as a percentage of ``whole``, one decimal (half-up); 0 when ``whole`` is 0."""
    return float(ratio_half_up(part * 100, whole, 1)) if whole else 0.0


def _dialect(conn: Database) -> str:
    return (conn if isinstance(conn, Connection) else conn.get_bind()).dialect.name


def by_code_point(conn: Database, text: ColumnElement[Any]) -> ColumnElement[Any]:
    """``text`` ordered by code point whatever the database's collation (ties in a
    report rank the same after a move to a server with a linguistic one). SQLite's
    default, BINARY, is that order already."""
    return text.collate("C") if _dialect(conn) == "postgresql" else text


def report_settings(conn: Database, *, side_by_side: bool = False) -> None:
    """On PostgreSQL, apply REPORT_SETTINGS for the rest of the transaction.

    ``side_by_side``: a second connection works beside this one, so leave the other
    cores to it rather than to parallel workers.
    """
    if _dialect(conn) != "postgresql":
        return
    settings = dict(REPORT_SETTINGS)
    if side_by_side:
        settings["max_parallel_workers_per_gather"] = "0"
    conn.execute(select(*(func.set_config(name, value, True) for name, value in settings.items())))


def _on_own_connection(engine: Engine, task: Callable[[Database], T]) -> T:
    with engine.connect() as connection:
        report_settings(connection, side_by_side=True)
        return task(connection)


def side_engine(session: Session) -> Engine | None:
    """The engine to run a pass beside ``session``'s queries on, or None to run it in turn.

    A pass beside takes a second pooled connection: only on PostgreSQL, with the
    session bound to an engine whose pool has an idle connection.
    """
    bind = session.get_bind()
    if not (SIDE_BY_SIDE and isinstance(bind, Engine) and bind.dialect.name == "postgresql"):
        return None
    pool = bind.pool
    return bind if isinstance(pool, QueuePool) and pool.checkedout() < pool.size() else None


def beside(session: Session, task: Callable[[Database], T]) -> Callable[[], T]:
    """Start ``task`` on a connection of its own; return a function that waits for its result.

    A report's heaviest pass (one hash over every event of the window) then runs on
    one core while the report's other queries run on another. Without a
    :func:`side_engine`, ``task`` runs at once on ``session``. Either way each
    statement sees the rows committed when it started (READ COMMITTED), as before;
    only rows the caller's own transaction has written and not committed stay out of
    a pass run beside it.
    """
    engine = side_engine(session)
    if engine is None:
        result = task(session)
        return lambda: result
    report_settings(session, side_by_side=True)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="report-pass")
    future = executor.submit(_on_own_connection, engine, task)
    executor.shutdown(wait=False)  # the thread ends with the task
    return future.result


def of_type(event_type: str) -> ColumnElement[bool]:
    return Event.event_type == event_type


# What ends a checkout, a session's shopping or a product's views in a sale, to the
# abandonment rate and the alerts: a purchase, or a sale confirmed over WhatsApp (only
# the first is revenue, as the documents define it).
SALE_TYPES = (PURCHASE, WHATSAPP_PURCHASE)


def is_a_sale() -> ColumnElement[bool]:
    """The event is a purchase or a WhatsApp purchase (``SALE_TYPES``)."""
    return Event.event_type.in_(SALE_TYPES)


def flag(condition: ColumnElement[bool]) -> ColumnElement[int]:
    """1 when ``condition`` holds for a row, else 0 (``max`` of it: for any row of a group)."""
    return case((condition, 1), else_=0)


def sessions_by(*keys: ColumnElement[Any], where: Iterable[ColumnElement[bool]]) -> Select[Any]:
    """``(*keys, sessions)``: distinct non-NULL sessions per ``keys`` among the rows ``where``.

    The figure of ``COUNT(DISTINCT session_id) ... GROUP BY keys``, computed as the
    distinct (session, keys) pairs counted per keys: two hash aggregates, where
    PostgreSQL would sort every group for the COUNT(DISTINCT). Keys whose rows all
    lack a session come out with 0.

    PostgreSQL estimates a store tenant's rows of a type from the mix of the whole
    table, where landing tenants have none: it expects a few thousand rows where there
    are hundreds of thousands, and would sort those. So the pairs are grouped session
    first (sorted so, they would not come out grouped by ``keys``), and NULL sessions
    are left out by the count rather than by ``where``, which keeps the estimate
    nearer the truth: with both, PostgreSQL hashes.
    """
    names = [f"key{position}" for position in range(len(keys))]
    pairs = (
        select(
            *(key.label(name) for key, name in zip(keys, names, strict=True)),
            Event.session_id.label("session"),
        )
        .where(*where)
        .group_by(Event.session_id, *keys)
        .subquery()
    )
    columns = [pairs.c[name] for name in names]
    return select(*columns, func.count(pairs.c.session).label("sessions")).group_by(*columns)


def ranked(counts: dict[str, int], limit: int | None) -> list[tuple[str, int]]:
    """The ``limit`` largest counts, ties by key (code point order, as SQL's C collation)."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]


def local_bounds(days: list[Day]) -> tuple[str, str]:
    """First and last instant of ``days`` as local ISO strings (to the second)."""
    return f"{days[0].date.isoformat()}T00:00:00", f"{days[-1].date.isoformat()}T23:59:59"
