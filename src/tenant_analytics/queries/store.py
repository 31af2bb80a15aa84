"""Store reports: dashboard stats, conversion funnel, RFM segments and smart alerts.

Every figure is an aggregation in the database over one tenant's events; only
per-day, per-product, per-source or per-customer rows come back to Python to be
shaped.

A report reads up to a million events per window, so it reads the window a few
times at most and keeps every aggregate hashable:

- one pass counts the events of each (local day, type, product), from which the
  timelines, the per-type totals and the per-product counts all follow
  (:func:`event_tally`);
- distinct sessions are counted as distinct (session, key) pairs grouped again by
  key (:func:`_sessions_by`) rather than with COUNT(DISTINCT ...), which PostgreSQL
  evaluates by sorting each group;
- the session-wide figures (sessions, events per session, traffic sources) come
  from one row per session (:func:`session_sources`). That pass, the slowest,
  runs on a second connection beside the report's other queries (:func:`_beside`).

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

from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import (
    Any,
    Literal,
    NotRequired,
    TypeVar,
    cast,
)
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    QueuePool,
    Select,
    case,
    desc,
    func,
    literal,
    select,
    union_all,
)
from sqlalchemy.orm import Session
from typing_extensions import TypedDict  # pydantic reads no typing.TypedDict on 3.11

from ..catalogue import (
    ADD_TO_CART,
    ADDRESS_ERROR,
    BEGIN_CHECKOUT,
    CHECKOUT_ERROR,
    CHECKOUT_STARTED,
    FUNNEL_STEPS,
    ORDER_COMPLETED,
    PAYMENT_CONFIRMATION_ERROR,
    PAYMENT_ERROR,
    PAYMENT_INFO_ENTERED,
    PRODUCT_VIEW,
    PURCHASE,
    WHATSAPP_CART_CLICK,
    WHATSAPP_PURCHASE,
)
from ..models import DEFAULT_CURRENCY, Event, Product
from ..rollups import ALL_SESSIONS, DIRECT_SOURCE, source_scope, type_scope
from ..timewindows import Day, days_overlapping, last_days, local_day
from . import store_rollups
from .common import Database, day_index, in_window, ratio_half_up

Mode = Literal["total", "unique"]
MODES: tuple[Mode, ...] = ("total", "unique")

COUNTED_STEPS = (PRODUCT_VIEW, ADD_TO_CART, BEGIN_CHECKOUT, PURCHASE)
PAYMENT_STEPS = (CHECKOUT_STARTED, PAYMENT_INFO_ENTERED, ORDER_COMPLETED)
TIMELINE_TYPES = COUNTED_STEPS + PAYMENT_STEPS
COUNTED_ERRORS = (PAYMENT_ERROR, CHECKOUT_ERROR, PAYMENT_CONFIRMATION_ERROR)
TIMELINE_ERRORS = (*COUNTED_ERRORS, ADDRESS_ERROR)
WHATSAPP_TYPES = (WHATSAPP_CART_CLICK, WHATSAPP_PURCHASE)
PRODUCT_TYPES = (PRODUCT_VIEW, ADD_TO_CART, PURCHASE)  # the per-product figures
DASHBOARD_TYPES = TIMELINE_TYPES + TIMELINE_ERRORS + WHATSAPP_TYPES  # counted per day

DASHBOARD_DAYS = 7
RETENTION_DAYS = 90
FUNNEL_DAYS = 30
RFM_DAYS = 90
TOP_PRODUCTS = 5
PERFORMANCE_PRODUCTS = 10
WHATSAPP_SESSIONS_LISTED = 10
# Sources come from the public snippet: a flood of made-up ones must not grow the report
# without bound. A shop has a handful; the ones with most sessions are listed.
TRAFFIC_SOURCES_LISTED = 50
# PostgreSQL settings for the transaction of a report (see _report_settings).
REPORT_SETTINGS = {
    # Memory for each sort, and twice that for each hash (hash_mem_multiplier): room
    # to hash the ~250,000 sessions of a million events without spilling to disk,
    # where the server default (4MB) spills past ~20,000.
    "work_mem": "32MB",
}
# Run a report's session-wide pass on a second connection, beside its other queries
# (PostgreSQL only, see _beside); False runs every query on the caller's session.
SIDE_BY_SIDE = True

T = TypeVar("T")

# Who did something: the signed-in user when known, else the browser session.
IDENTIFIER = func.coalesce(Event.user_id, Event.session_id)
CENT = Decimal("0.01")


# -- shared helpers -----------------------------------------------------------------


def _percent(part: int, whole: int) -> float:
    """``part`` as a percentage of ``whole``, one decimal (half-up); 0 when ``whole`` is 0."""
    return float(ratio_half_up(part * 100, whole, 1)) if whole else 0.0


def _money(amount: Decimal | None) -> float:
    """Money for JSON: a float rounded half-up to cents; NULL is 0."""
    return float((amount or Decimal(0)).quantize(CENT, rounding=ROUND_HALF_UP))


def _dialect(conn: Database) -> str:
    return (conn if isinstance(conn, Connection) else conn.get_bind()).dialect.name


def _report_settings(conn: Database, *, side_by_side: bool = False) -> None:
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
        _report_settings(connection, side_by_side=True)
        return task(connection)


def _side_engine(session: Session) -> Engine | None:
    """The engine to run a pass beside ``session``'s queries on, or None to run it in turn.

    A pass beside takes a second pooled connection: only on PostgreSQL, with the
    session bound to an engine whose pool has an idle connection.
    """
    bind = session.get_bind()
    if not (SIDE_BY_SIDE and isinstance(bind, Engine) and bind.dialect.name == "postgresql"):
        return None
    pool = bind.pool
    return bind if isinstance(pool, QueuePool) and pool.checkedout() < pool.size() else None


def _beside(session: Session, task: Callable[[Database], T]) -> Callable[[], T]:
    """Start ``task`` on a connection of its own; return a function that waits for its result.

    A report's heaviest pass (one hash over every event of the window) then runs on
    one core while the report's other queries run on another. Without a
    :func:`_side_engine`, ``task`` runs at once on ``session``. Either way each
    statement sees the rows committed when it started (READ COMMITTED), as before;
    only rows the caller's own transaction has written and not committed stay out of
    a pass run beside it.
    """
    engine = _side_engine(session)
    if engine is None:
        result = task(session)
        return lambda: result
    _report_settings(session, side_by_side=True)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="report-pass")
    future = executor.submit(_on_own_connection, engine, task)
    executor.shutdown(wait=False)  # the thread ends with the task
    return future.result


def _is(event_type: str) -> ColumnElement[bool]:
    return Event.event_type == event_type


def _flag(condition: ColumnElement[bool]) -> ColumnElement[int]:
    """1 when ``condition`` holds for a row, else 0 (``max`` of it: for any row of a group)."""
    return case((condition, 1), else_=0)


def _sessions_by(*keys: ColumnElement[Any], where: Iterable[ColumnElement[bool]]) -> Select[Any]:
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


def _ranked(counts: dict[str, int], limit: int | None) -> list[tuple[str, int]]:
    """The ``limit`` largest counts, ties by key (code point order, as SQL's C collation)."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]


def _local_bounds(days: list[Day]) -> tuple[str, str]:
    """First and last instant of ``days`` as local ISO strings (to the second)."""
    return f"{days[0].date.isoformat()}T00:00:00", f"{days[-1].date.isoformat()}T23:59:59"


# -- dashboard building blocks --------------------------------------------------------


class SlugCount(TypedDict):
    """A product (by slug) and its count: units sold, or views (events or sessions)."""

    slug: str
    count: int


class DayCount(TypedDict):
    """A local day (YYYY-MM-DD in the tenant's time zone) and its count of sales."""

    date: str
    count: int


class ProductPerformance(TypedDict):
    """One product's week. ``conversion_rate`` is purchases over views in percent; in
    mode=total purchases are units bought, so it can pass 100. In mode=unique views and
    purchases are sessions, and ``purchases_units`` (only then) the units bought."""

    slug: str
    name: str
    views: int
    add_to_cart: int
    purchases: int
    conversion_rate: float
    purchases_units: NotRequired[int]  # mode=unique only: units bought


class StepCounts(TypedDict):
    """Events (mode=total) or distinct sessions (mode=unique) at each step of the week."""

    product_view: int
    add_to_cart: int
    begin_checkout: int
    purchase: int


class ConversionRates(TypedDict):
    """Percent, one decimal: each step's count over the step before's, 0 when that is 0.

    Counts of events in mode=total, so a rate can pass 100 (two purchases after one
    checkout); of sessions in mode=unique.
    """

    visit_to_cart: float
    cart_to_checkout: float
    checkout_to_purchase: float


class ErrorCounts(TypedDict):
    payment_error: int
    checkout_error: int
    payment_confirmation_error: int


class EventsDay(TypedDict):
    """One local day (YYYY-MM-DD in the tenant's time zone) of the store's steps."""

    date: str
    product_view: int
    add_to_cart: int
    begin_checkout: int
    purchase: int
    checkout_started: int
    payment_info_entered: int
    order_completed: int


class ErrorsDay(TypedDict):
    """One local day (YYYY-MM-DD in the tenant's time zone) of error events."""

    date: str
    payment_error: int
    checkout_error: int
    payment_confirmation_error: int
    address_error: int


class SessionStats(TypedDict):
    unique_sessions: int
    avg_events_per_session: float
    sessions_with_purchase: int


class RetentionMetrics(TypedDict):
    repurchase_rate: float
    recurrent_customers: int
    total_unique_buyers: int
    period_days: int


class SourceSessions(TypedDict):
    source: str
    sessions: int


@dataclass(frozen=True)
class Abandonment:
    """Checkout identifiers in a window, and how many of them never purchased."""

    checkouts: int
    abandoned: int

    @property
    def rate(self) -> float:
        return _percent(self.abandoned, self.checkouts)


@dataclass(frozen=True)
class EventTally:
    """Events of each type per local day, and of each product type per product."""

    per_day: list[Counter[str]]
    per_product: dict[str, Counter[str]]  # slug -> PRODUCT_TYPES -> events
    names: dict[str, str]  # slug -> max(product_name) over its PRODUCT_TYPES events

    def total(self, event_type: str) -> int:
        return sum(day[event_type] for day in self.per_day)


def event_tally(
    conn: Database, *, tenant_id: int, days: list[Day], types: tuple[str, ...]
) -> EventTally:
    """Count the events of ``types`` over ``days`` (contiguous, oldest first) in one pass.

    One row per (day, type, product) comes back: a few thousand at most.
    """
    index = day_index(days)
    rows = conn.execute(
        select(
            index,
            Event.event_type,
            Event.product_slug,
            func.count(),
            func.max(Event.product_name),
        )
        .where(*in_window(tenant_id, days[0].start, days[-1].end), Event.event_type.in_(types))
        .group_by(index, Event.event_type, Event.product_slug)
    ).all()
    per_day: list[Counter[str]] = [Counter() for _ in days]
    per_product: dict[str, Counter[str]] = {}
    names: dict[str, str] = {}
    for position, event_type, slug, events, name in rows:
        per_day[position][event_type] += events
        if slug is None or event_type not in PRODUCT_TYPES:
            continue
        per_product.setdefault(slug, Counter())[event_type] += events
        if name is not None and (slug not in names or name > names[slug]):
            names[slug] = name
    return EventTally(per_day, per_product, names)


def rolled_up_tally(
    conn: Database, *, tenant_id: int, days: list[Day], types: tuple[str, ...]
) -> EventTally:
    """:func:`event_tally`'s figures from the daily rollups (days keyed in the tenant's zone)."""
    first, last = days[0].date, days[-1].date
    counts = store_rollups.events_per_day(
        conn, tenant_id=tenant_id, first=first, last=last, types=types
    )
    per_day = [counts.get(day.date, Counter()) for day in days]
    per_product: dict[str, Counter[str]] = {}
    names: dict[str, str] = {}
    product_types = [t for t in types if t in PRODUCT_TYPES]
    for slug, event_type, events, name in store_rollups.events_per_product(
        conn, tenant_id=tenant_id, first=first, last=last, types=product_types
    ):
        per_product.setdefault(slug, Counter())[event_type] += events
        if name is not None and (slug not in names or name > names[slug]):
            names[slug] = name
    return EventTally(per_day, per_product, names)


@dataclass(frozen=True)
class SessionTally:
    """Distinct sessions of each type per local day and over all the days."""

    per_day: list[Counter[str]]
    total: Counter[str]


def session_tally(
    conn: Database, *, tenant_id: int, days: list[Day], types: tuple[str, ...]
) -> SessionTally:
    """Distinct sessions with events of each of ``types``, per day of ``days`` and overall.

    One pass collects the distinct (type, day, session) triples; both figures are
    counted from them.
    """
    index = day_index(days)
    triples = (  # grouped session first and NULL sessions left to the counts: see _sessions_by
        select(Event.event_type, index.label("day"), Event.session_id)
        .where(*in_window(tenant_id, days[0].start, days[-1].end), Event.event_type.in_(types))
        .group_by(Event.session_id, Event.event_type, index)
        .cte("triples")
    )
    per_day = select(
        triples.c.event_type, triples.c.day, func.count(triples.c.session_id)
    ).group_by(triples.c.event_type, triples.c.day)
    pairs = (
        select(triples.c.event_type, triples.c.session_id)
        .group_by(triples.c.event_type, triples.c.session_id)
        .subquery()
    )
    overall = select(pairs.c.event_type, literal(-1), func.count(pairs.c.session_id)).group_by(
        pairs.c.event_type
    )
    tally = SessionTally([Counter() for _ in days], Counter())
    for event_type, position, sessions in conn.execute(union_all(per_day, overall)):
        if position < 0:
            tally.total[event_type] = sessions
        else:
            tally.per_day[position][event_type] = sessions
    return tally


def sessions_per_type(
    conn: Database, *, tenant_id: int, start: datetime, end: datetime, types: tuple[str, ...]
) -> Counter[str]:
    """Distinct sessions with events of each of ``types`` in [start, end)."""
    rows = conn.execute(
        _sessions_by(
            Event.event_type, where=[*in_window(tenant_id, start, end), Event.event_type.in_(types)]
        )
    )
    return Counter({event_type: count for event_type, count in rows})


def product_sessions(
    conn: Database, *, tenant_id: int, start: datetime, end: datetime
) -> dict[str, Counter[str]]:
    """Distinct sessions per product and PRODUCT_TYPES type in [start, end)."""
    rows = conn.execute(
        _sessions_by(
            Event.product_slug,
            Event.event_type,
            # Products are the non-NULL slugs; the NULL one is dropped below rather than
            # here, for the estimate (see _sessions_by).
            where=[*in_window(tenant_id, start, end), Event.event_type.in_(PRODUCT_TYPES)],
        )
    )
    sessions: dict[str, Counter[str]] = {}
    for slug, event_type, count in rows:
        if slug is not None:
            sessions.setdefault(slug, Counter())[event_type] = count
    return sessions


@dataclass(frozen=True)
class ProductSales:
    """Purchase events in a window: units per product, and orders and revenue per currency."""

    units: dict[str, int]  # slug -> units (a purchase without quantity is one unit)
    orders: Counter[str]  # currency -> purchases (one without a currency: the tenant's)
    revenue: dict[str, Decimal]  # currency -> revenue; NULL revenue counts as 0


def product_sales(
    conn: Database, *, tenant_id: int, start: datetime, end: datetime, currency: str
) -> ProductSales:
    """Units sold per product, and orders and revenue per currency, in [start, end).

    A purchase stored without a currency is in ``currency``, the tenant's.
    """
    paid_in = func.coalesce(Event.currency, currency)
    rows = conn.execute(
        select(
            Event.product_slug,
            paid_in,
            func.sum(func.coalesce(Event.quantity, 1)),
            func.count(),
            func.sum(Event.revenue),
        )
        .where(*in_window(tenant_id, start, end), _is(PURCHASE))
        .group_by(Event.product_slug, paid_in)
    ).all()
    units: Counter[str] = Counter()
    orders: Counter[str] = Counter()
    revenue: dict[str, Decimal] = {}
    for slug, code, sold, purchases, amount in rows:
        if slug is not None:
            units[slug] += sold
        orders[code] += purchases
        if amount is not None:
            revenue[code] = revenue.get(code, Decimal(0)) + amount
    return ProductSales(dict(units), orders, revenue)


def abandonment(conn: Database, *, tenant_id: int, start: datetime, end: datetime) -> Abandonment:
    """Identifiers with a begin_checkout in [start, end), and those with no purchase there.

    A checkout is bought by a purchase of its identifier or of its session: a shop that
    names its customer (``user_id``) on the purchase only, as RFM asks, has checked out
    as a session and bought as a user, which is one identifier that did buy.
    """
    purchases = (*in_window(tenant_id, start, end), _is(PURCHASE))
    # Joined, not IN (...): a hash join spills to disk where a hashed IN list that outgrew
    # its memory would be searched again for every checkout.
    buyers = select(IDENTIFIER.label("identifier")).where(*purchases).distinct().subquery()
    buying_sessions = (
        select(Event.session_id).where(*purchases, Event.session_id.is_not(None)).distinct()
    ).subquery()
    bought = buyers.c.identifier.is_not(None) | buying_sessions.c.session_id.is_not(None)
    identifiers = (
        select(func.max(_flag(bought)).label("bought"))
        .select_from(Event)
        .outerjoin(buyers, buyers.c.identifier == IDENTIFIER)
        .outerjoin(buying_sessions, buying_sessions.c.session_id == Event.session_id)
        .where(*in_window(tenant_id, start, end), _is(BEGIN_CHECKOUT), IDENTIFIER.is_not(None))
        .group_by(IDENTIFIER)
        .subquery()
    )
    checkouts, abandoned = conn.execute(
        select(func.count(), func.count(case((identifiers.c.bought == 0, 1))))
    ).one()
    return Abandonment(checkouts, abandoned)


@dataclass(frozen=True)
class SessionSources:
    """Distinct sessions, the events they hold, and the sessions of each traffic source."""

    sessions: int
    events: int
    sources: list[SourceSessions]  # most sessions first, ties by source

    @property
    def stats(self) -> tuple[int, float]:
        """Distinct sessions and events per session (one decimal)."""
        average = float(ratio_half_up(self.events, self.sessions, 1)) if self.sessions else 0.0
        return self.sessions, average


def session_sources(
    conn: Database, *, tenant_id: int, start: datetime, end: datetime
) -> SessionSources:
    """Sessions with events in [start, end), their events, and distinct sessions per source.

    A session counts for every source its events carry; a NULL source is reported as
    ``direct``. One row per session is summed up by its sources: the smallest and the
    largest, and whether some events had none. Only a session with two or more
    different sources needs its sources listed; then :func:`traffic_sources` does that.
    """
    per_session = (
        select(
            func.count().label("events"),
            func.count(Event.source).label("with_source"),
            func.min(Event.source).label("lowest"),
            func.max(Event.source).label("highest"),
        )
        .where(*in_window(tenant_id, start, end), Event.session_id.is_not(None))
        .group_by(Event.session_id)
        .subquery()
    )
    source = func.coalesce(per_session.c.lowest, DIRECT_SOURCE)
    some_direct = _flag(per_session.c.with_source < per_session.c.events)
    several = _flag(per_session.c.lowest != per_session.c.highest)
    rows = conn.execute(
        select(source, some_direct, several, func.count(), func.sum(per_session.c.events)).group_by(
            source, some_direct, several
        )
    ).all()
    sessions = sum(count for *_, count, _ in rows)
    events = sum(int(total) for *_, total in rows)
    if any(has_several for _, _, has_several, _, _ in rows):
        sources = traffic_sources(conn, tenant_id=tenant_id, start=start, end=end)
        return SessionSources(sessions, events, sources)
    counts: Counter[str] = Counter()
    for name, has_direct, _, count, _ in rows:
        counts[name] += count
        if has_direct and name != DIRECT_SOURCE:
            counts[DIRECT_SOURCE] += count
    sources = [SourceSessions(source=name, sessions=count) for name, count in _ranked(counts, None)]
    return SessionSources(sessions, events, sources)


def traffic_sources(
    conn: Database, *, tenant_id: int, start: datetime, end: datetime
) -> list[SourceSessions]:
    """Distinct sessions per source (NULL reported as ``direct``), most first."""
    source = func.coalesce(Event.source, DIRECT_SOURCE)
    query = _sessions_by(
        source, where=[*in_window(tenant_id, start, end), Event.session_id.is_not(None)]
    ).subquery()
    # Ranked here, not by ORDER BY: ties go by code point whatever the database's collation,
    # as the rollups' sources are ranked.
    counts = {name: count for name, count in conn.execute(select(query.c.key0, query.c.sessions))}
    return [SourceSessions(source=name, sessions=count) for name, count in _ranked(counts, None)]


@dataclass(frozen=True)
class RolledUpSessions:
    """Session figures of a window from the rollups: what :func:`session_sources` and
    :func:`sessions_per_type` count from the raw events."""

    visits: SessionSources
    per_type: Counter[str]


def rolled_up_sessions(
    conn: Database, *, tenant_id: int, days: list[Day], types: tuple[str, ...]
) -> RolledUpSessions | None:
    """Sessions, their events and sources, and sessions per type of ``types`` over ``days``.

    None when the rollups cannot tell (see ``store_rollups.session_counts``).
    """
    first, last = days[0].date, days[-1].date
    sources_prefix = source_scope("")
    counts = store_rollups.session_counts(
        conn,
        tenant_id=tenant_id,
        first=first,
        last=last,
        scopes=[ALL_SESSIONS, *(type_scope(t) for t in types)],
        prefix=sources_prefix,
    )
    if counts is None:
        return None
    per_source = {
        scope.removeprefix(sources_prefix): sessions
        for scope, sessions in counts.items()
        if scope.startswith(sources_prefix)
    }
    events = store_rollups.session_events(conn, tenant_id=tenant_id, first=first, last=last)
    visits = SessionSources(
        counts.get(ALL_SESSIONS, 0),
        events,
        [SourceSessions(source=name, sessions=n) for name, n in _ranked(per_source, None)],
    )
    return RolledUpSessions(visits, Counter({t: counts.get(type_scope(t), 0) for t in types}))


def retention_metrics(
    conn: Database, *, tenant_id: int, zone: ZoneInfo, now: datetime
) -> RetentionMetrics:
    """Buyers over the 90 local days ending today, and those who bought at least twice.

    A buyer is an identifier (user, else session) with a purchase event.
    """
    days = last_days(zone, now, RETENTION_DAYS)
    buyers = (
        select(func.count().label("purchases"))
        .where(*in_window(tenant_id, days[0].start, days[-1].end), _is(PURCHASE))
        .where(IDENTIFIER.is_not(None))
        .group_by(IDENTIFIER)
        .subquery()
    )
    total, recurrent = conn.execute(
        select(func.count(), func.count(case((buyers.c.purchases >= 2, 1))))
    ).one()
    return RetentionMetrics(
        repurchase_rate=_percent(recurrent, total),
        recurrent_customers=recurrent,
        total_unique_buyers=total,
        period_days=RETENTION_DAYS,
    )


def recent_whatsapp_sessions(
    conn: Database,
    *,
    tenant_id: int,
    start: datetime,
    end: datetime,
    limit: int = WHATSAPP_SESSIONS_LISTED,
) -> list[str]:
    """Sessions that clicked the WhatsApp button in [start, end), latest click first."""
    last_click = func.max(Event.created_at).label("last_click")
    return list(
        conn.scalars(
            select(Event.session_id)
            .add_columns(last_click)
            .where(
                *in_window(tenant_id, start, end),
                _is(WHATSAPP_CART_CLICK),
                Event.session_id.is_not(None),
            )
            .group_by(Event.session_id)
            .order_by(desc(last_click), Event.session_id)
            .limit(limit)
        )
    )


# -- the dashboard ------------------------------------------------------------------


class DashboardStats(TypedDict):
    """The store's week: the 7 local days ending today in the tenant's time zone.

    Money in ``currency`` (the tenant's) but for ``revenue_by_currency``; rates in
    percent; ``retention_metrics`` over 90 days.
    """

    mode: Mode
    total_sales: int
    total_revenue: float  # in ``currency``, the tenant's
    average_order_value: float  # of the sales in ``currency``
    currency: str
    revenue_by_currency: dict[str, float]  # every currency paid in, the tenant's too
    top_products: list[SlugCount]
    top_viewed_products: list[SlugCount]
    sales_by_day: list[DayCount]
    events_timeline: list[EventsDay]
    abandonment_rate: float
    event_counts: StepCounts
    conversion_rates: ConversionRates
    checkout_started_count: int
    payment_info_entered_count: int
    order_completed_count: int
    conversion_checkout_to_payment: float
    conversion_payment_to_order: float
    error_counts: ErrorCounts
    product_performance: list[ProductPerformance]
    errors_timeline: list[ErrorsDay]
    session_stats: SessionStats
    retention_metrics: RetentionMetrics
    traffic_sources: list[SourceSessions]
    whatsapp_sessions: int
    whatsapp_purchases: int
    whatsapp_sessions_list: list[str]


def _timeline(
    days: list[Day], per_day: list[Counter[str]], types: tuple[str, ...]
) -> list[dict[str, Any]]:
    return [
        {"date": day.date.isoformat(), **{t: counts[t] for t in types}}
        for day, counts in zip(days, per_day, strict=True)
    ]


def _product_performance(
    events: EventTally,
    sessions: dict[str, Counter[str]] | None,
    sales: ProductSales,
    limit: int = PERFORMANCE_PRODUCTS,
) -> list[ProductPerformance]:
    """Views, add-to-carts and purchases per product, most viewed first.

    ``sessions`` is None in ``total`` mode: events and purchased units are counted.
    In ``unique`` mode distinct sessions are, and ``purchases_units`` is added.
    ``conversion_rate`` is purchases / views.
    """
    counts = events.per_product if sessions is None else sessions
    views = {slug: counts.get(slug, Counter())[PRODUCT_VIEW] for slug in events.per_product}
    products = []
    for slug, view_count in _ranked(views, limit):
        units = sales.units.get(slug, 0)
        purchases = units if sessions is None else counts.get(slug, Counter())[PURCHASE]
        product = ProductPerformance(
            slug=slug,
            name=events.names.get(slug) or slug,
            views=view_count,
            add_to_cart=counts.get(slug, Counter())[ADD_TO_CART],
            purchases=purchases,
            conversion_rate=_percent(purchases, view_count),
        )
        if sessions is not None:
            product["purchases_units"] = units
        products.append(product)
    return products


def dashboard_stats(
    session: Session,
    *,
    tenant_id: int,
    zone: ZoneInfo,
    now: datetime,
    mode: Mode = "total",
    currency: str = DEFAULT_CURRENCY,
    use_rollups: bool = True,
) -> DashboardStats:
    """Every store KPI over the 7 local days ending today (retention: 90 days).

    ``mode`` switches the funnel counts (event_counts and the conversion rates,
    events_timeline, top_viewed_products, product_performance) from events to
    distinct sessions. Sales, revenue, the payment steps and errors stay event totals.
    Money is never summed across currencies: ``total_revenue`` and
    ``average_order_value`` are of the sales in ``currency`` (the tenant's), and
    ``revenue_by_currency`` lists each currency paid in.
    ``use_rollups=False`` counts everything from the raw events (the reference).
    """
    _report_settings(session)
    days = last_days(zone, now, DASHBOARD_DAYS)
    window = {"tenant_id": tenant_id, "start": days[0].start, "end": days[-1].end}
    unique = mode == "unique"
    session_types = (PURCHASE, *WHATSAPP_TYPES)
    rolled = (
        rolled_up_sessions(session, tenant_id=tenant_id, days=days, types=session_types)
        if use_rollups
        else None
    )

    def session_passes(conn: Database) -> tuple[SessionSources, dict[str, Counter[str]] | None]:
        # the slowest queries (every event of the window hashed by session): run beside the rest
        by_product = product_sessions(conn, **window) if unique else None
        return rolled.visits if rolled else session_sources(conn, **window), by_product

    # With the rollups, only unique mode's per-product sessions are left to run beside.
    side = None if rolled and not unique else _beside(session, session_passes)
    tally = rolled_up_tally if use_rollups else event_tally
    events = tally(session, tenant_id=tenant_id, days=days, types=DASHBOARD_TYPES)
    if unique:
        by_day = session_tally(
            session, tenant_id=tenant_id, days=days, types=TIMELINE_TYPES + WHATSAPP_TYPES
        )
        per_day, sessions = by_day.per_day, by_day.total
    else:
        per_day = events.per_day
        sessions = (
            rolled.per_type if rolled else sessions_per_type(session, **window, types=session_types)
        )
    steps = {step: sessions[step] if unique else events.total(step) for step in COUNTED_STEPS}
    sales = events.total(PURCHASE)
    sold = product_sales(session, **window, currency=currency)
    revenue = sold.revenue.get(currency, Decimal(0))
    started, paid, completed = (events.total(step) for step in PAYMENT_STEPS)
    abandoned = abandonment(session, **window)
    retention = retention_metrics(session, tenant_id=tenant_id, zone=zone, now=now)
    whatsapp_list = recent_whatsapp_sessions(session, **window)
    visits, by_product = side() if side else (rolled.visits, None)
    viewed = {
        slug: (counts if by_product is None else by_product.get(slug, Counter()))[PRODUCT_VIEW]
        for slug, counts in events.per_product.items()
        if counts[PRODUCT_VIEW]
    }
    unique_sessions, per_session = visits.stats
    return DashboardStats(
        mode=mode,
        total_sales=sales,
        total_revenue=_money(revenue),
        average_order_value=_money(revenue / sold.orders[currency])
        if sold.orders[currency]
        else 0.0,
        currency=currency,
        revenue_by_currency={
            code: _money(amount)
            for code, amount in sorted((sold.revenue | {currency: revenue}).items())
        },
        top_products=[
            SlugCount(slug=slug, count=count) for slug, count in _ranked(sold.units, TOP_PRODUCTS)
        ],
        top_viewed_products=[
            SlugCount(slug=slug, count=count) for slug, count in _ranked(viewed, TOP_PRODUCTS)
        ],
        sales_by_day=[
            DayCount(date=day.date.isoformat(), count=counts[PURCHASE])
            for day, counts in zip(days, events.per_day, strict=True)
        ],
        events_timeline=cast(list[EventsDay], _timeline(days, per_day, TIMELINE_TYPES)),
        abandonment_rate=abandoned.rate,
        event_counts=cast(StepCounts, steps),
        conversion_rates=ConversionRates(
            visit_to_cart=_percent(steps[ADD_TO_CART], steps[PRODUCT_VIEW]),
            cart_to_checkout=_percent(steps[BEGIN_CHECKOUT], steps[ADD_TO_CART]),
            checkout_to_purchase=_percent(steps[PURCHASE], steps[BEGIN_CHECKOUT]),
        ),
        checkout_started_count=started,
        payment_info_entered_count=paid,
        order_completed_count=completed,
        conversion_checkout_to_payment=_percent(paid, started),
        conversion_payment_to_order=_percent(completed, paid),
        error_counts=cast(ErrorCounts, {error: events.total(error) for error in COUNTED_ERRORS}),
        product_performance=_product_performance(events, by_product, sold),
        errors_timeline=cast(list[ErrorsDay], _timeline(days, events.per_day, TIMELINE_ERRORS)),
        session_stats=SessionStats(
            unique_sessions=unique_sessions,
            avg_events_per_session=per_session,
            sessions_with_purchase=sessions[PURCHASE],
        ),
        retention_metrics=retention,
        traffic_sources=visits.sources[:TRAFFIC_SOURCES_LISTED],
        whatsapp_sessions=sessions[WHATSAPP_CART_CLICK],
        whatsapp_purchases=sessions[WHATSAPP_PURCHASE],
        whatsapp_sessions_list=whatsapp_list,
    )


# -- funnel -------------------------------------------------------------------------


FunnelStepName = Literal["page_view", "product_view", "add_to_cart", "begin_checkout", "purchase"]


class FunnelStep(TypedDict):
    step: FunnelStepName  # catalogue.FUNNEL_STEPS, in that order
    count: int


class Funnel(TypedDict):
    """Distinct sessions at each step. ``start_date`` and ``end_date`` are the window's
    first and last moments in the tenant's time zone (hence no UTC offset)."""

    funnel: list[FunnelStep]
    start_date: str
    end_date: str


def funnel_dates(
    zone: ZoneInfo, now: datetime, start: date | None, end: date | None
) -> tuple[date, date]:
    """The funnel's local dates: ``end`` defaults to today, ``start`` to 29 days before ``end``."""
    end = end or now.astimezone(zone).date()
    return start or end - timedelta(days=FUNNEL_DAYS - 1), end


def conversion_funnel(
    session: Session,
    *,
    tenant_id: int,
    zone: ZoneInfo,
    start: date,
    end: date,
    source: str | None = None,
    use_rollups: bool = True,
) -> Funnel:
    """Distinct sessions reaching each funnel step between two local dates, both inclusive.

    ``source`` keeps one traffic source; ``direct`` also matches events with no source,
    as the dashboard reports those as direct. From the rollups when they can tell
    (``store_rollups.session_counts``), else (or with ``use_rollups=False``) from
    the raw events.
    """
    days = [local_day(start, zone), local_day(end, zone)]
    start_date, end_date = _local_bounds(days)
    if use_rollups:
        scopes = {type_scope(step, source): step for step in FUNNEL_STEPS}
        counts = store_rollups.session_counts(
            session, tenant_id=tenant_id, first=start, last=end, scopes=scopes
        )
        if counts is not None:
            return Funnel(
                funnel=[
                    FunnelStep(step=step, count=counts.get(scope, 0))
                    for scope, step in scopes.items()
                ],
                start_date=start_date,
                end_date=end_date,
            )
    _report_settings(session)
    where = list(in_window(tenant_id, days[0].start, days[-1].end))
    if source == DIRECT_SOURCE:
        where.append((Event.source == source) | Event.source.is_(None))
    elif source is not None:
        where.append(Event.source == source)

    def sessions_at(conn: Database, steps: tuple[str, ...]) -> dict[str, int]:
        query = _sessions_by(Event.event_type, where=[*where, Event.event_type.in_(steps)])
        return {step: count for step, count in conn.execute(query)}

    if _side_engine(session) is None:
        sessions = sessions_at(session, FUNNEL_STEPS)
    else:  # page views are about half the events: counted beside the other steps
        page_views = _beside(session, lambda conn: sessions_at(conn, FUNNEL_STEPS[:1]))
        sessions = sessions_at(session, FUNNEL_STEPS[1:]) | page_views()
    return Funnel(
        funnel=[FunnelStep(step=step, count=sessions.get(step, 0)) for step in FUNNEL_STEPS],
        start_date=start_date,
        end_date=end_date,
    )


# -- RFM ----------------------------------------------------------------------------

Segment = Literal["VIP", "Loyal", "At Risk", "Lost"]
Segmento = Literal["VIP", "Leal", "En riesgo", "Perdido"]
SEGMENT_LABELS: dict[Segment, Segmento] = {
    "VIP": "VIP",
    "Loyal": "Leal",
    "At Risk": "En riesgo",
    "Lost": "Perdido",
}
VIP_MAX_RECENCY = 7
VIP_MIN_FREQUENCY = 2
LOYAL_MAX_RECENCY = 30
AT_RISK_MAX_RECENCY = 60
RFM_PAGE_MAX = 1000  # customers per answer; ``offset`` pages through the rest


class RfmCustomer(TypedDict):
    """A customer: ``visitor_id`` is the shop's ``user_id``; ``recency`` in days since the
    last purchase, ``frequency`` purchases, ``monetary`` spent in the report's currency."""

    visitor_id: str
    recency: int
    frequency: int
    monetary: float
    segment: Segment
    segmento: Segmento


class RfmReport(TypedDict):
    """One page of customers (by ``user_id``) over 90 days of purchases, biggest spenders
    first. ``start_date`` and ``end_date`` are local to the tenant, as the funnel's."""

    rfm: list[RfmCustomer]  # one page of them
    start_date: str
    end_date: str
    currency: str  # of every monetary figure
    segments: dict[str, int]  # customers in each segment, all of them
    total: int  # customers listed over all pages (of ``segment`` when one is asked)
    offset: int
    limit: int
    next_offset: int | None  # None on the last page


def rfm_segment(recency: int, frequency: int, monetary: Decimal, vip_threshold: Decimal) -> Segment:
    """The first segment whose rule holds: VIP, Loyal, At Risk, else Lost."""
    if recency <= VIP_MAX_RECENCY and frequency >= VIP_MIN_FREQUENCY and monetary >= vip_threshold:
        return "VIP"
    if recency <= LOYAL_MAX_RECENCY and frequency >= 1:
        return "Loyal"
    if recency <= AT_RISK_MAX_RECENCY:
        return "At Risk"
    return "Lost"


def rfm_segments(
    session: Session,
    *,
    tenant_id: int,
    zone: ZoneInfo,
    now: datetime,
    vip_threshold: Decimal,
    currency: str = DEFAULT_CURRENCY,
    segment: str | None = None,
    offset: int = 0,
    limit: int = RFM_PAGE_MAX,
) -> RfmReport:
    """Recency, frequency and monetary value of each signed-in buyer over 90 local days.

    Recency is whole local days from the last purchase to today; frequency the
    purchase events; monetary their revenue in ``currency`` (the tenant's, that of
    the VIP threshold; a purchase in another currency is not added in). Biggest
    spenders first (then by id, so pages do not overlap); only those of ``segment``
    when one is named, ``limit`` of them from ``offset``.
    """
    days = last_days(zone, now, RFM_DAYS)
    today = days[-1].date
    in_currency = func.coalesce(Event.currency, currency) == currency
    monetary = func.coalesce(func.sum(case((in_currency, Event.revenue))), 0).label("monetary")
    rows = session.execute(
        select(Event.user_id, func.max(Event.created_at), func.count(), monetary)
        .where(
            *in_window(tenant_id, days[0].start, days[-1].end),
            _is(PURCHASE),
            Event.user_id.is_not(None),
        )
        .group_by(Event.user_id)
        .order_by(desc(monetary), Event.user_id)
    ).all()
    customers = []
    segments = dict.fromkeys(SEGMENT_LABELS, 0)
    for user_id, last_purchase, frequency, spent in rows:
        recency = (today - last_purchase.astimezone(zone).date()).days
        customer_segment = rfm_segment(recency, frequency, Decimal(spent), vip_threshold)
        segments[customer_segment] += 1
        if segment is not None and customer_segment != segment:
            continue
        customers.append(
            RfmCustomer(
                visitor_id=user_id,
                recency=recency,
                frequency=frequency,
                monetary=_money(Decimal(spent)),
                segment=customer_segment,
                segmento=SEGMENT_LABELS[customer_segment],
            )
        )
    start_date, end_date = _local_bounds(days)
    end = offset + limit
    return RfmReport(
        rfm=customers[offset:end],
        start_date=start_date,
        end_date=end_date,
        currency=currency,
        segments=segments,
        total=len(customers),
        offset=offset,
        limit=limit,
        next_offset=end if limit and end < len(customers) else None,
    )


# -- smart alerts -------------------------------------------------------------------

ABANDONMENT_WINDOW = timedelta(hours=24)
ABANDONMENT_MIN_CHECKOUTS = 3
ABANDONMENT_MAX_RATE = 70.0
POPULAR_WINDOW = timedelta(days=7)
POPULAR_VIEWS_ABOVE = 10  # distinct viewing sessions
PAYMENT_ERRORS_WINDOW = timedelta(hours=1)
CARTS_WINDOW = timedelta(hours=6)
CARTS_MIN_SESSIONS = 5
STUCK_WINDOW = timedelta(hours=24)
STUCK_EVENTS_ABOVE = 15


AlertType = Literal[
    "high_abandonment",
    "popular_no_conversion",
    "payment_errors",
    "carts_abandoned",
    "stuck_sessions",
    "all_clear",
]


class Alert(TypedDict):
    """``timestamp``: when the alerts were computed (UTC, ISO 8601)."""

    type: AlertType
    message: str
    severity: Literal["critical", "warning", "info"]
    timestamp: str


def unconverted_popular_products(
    conn: Database, *, tenant_id: int, zone: ZoneInfo, start: datetime, end: datetime
) -> list[tuple[str, int]]:
    """Products viewed in more than POPULAR_VIEWS_ABOVE sessions, unbought, in [start, end).

    The rollups name the products that may qualify (viewed often enough on the local
    days overlapping the window, bought on none of the days wholly inside it); the raw
    events decide for those alone, and are not read at all when none may: a store's
    popular products sell, and their views are most of its events.
    """
    days = days_overlapping(zone, start, end)
    inside = [day.date for day in days if start <= day.start and day.end <= end]
    candidates = store_rollups.maybe_popular_unbought(
        conn,
        tenant_id=tenant_id,
        first=days[0].date,
        last=days[-1].date,
        whole_days=(inside[0], inside[-1]) if inside else None,
        viewed=PRODUCT_VIEW,
        bought=PURCHASE,
        more_than=POPULAR_VIEWS_ABOVE,
    )
    if not candidates:
        return []
    purchased = select(Event.product_slug).where(
        *in_window(tenant_id, start, end), _is(PURCHASE), Event.product_slug.in_(candidates)
    )
    views = _sessions_by(
        Event.product_slug,
        where=[
            *in_window(tenant_id, start, end),
            _is(PRODUCT_VIEW),
            Event.product_slug.in_(candidates),
            Event.product_slug.not_in(purchased),
        ],
    ).subquery()
    rows = conn.execute(
        select(views.c.key0, views.c.sessions)
        .where(views.c.sessions > POPULAR_VIEWS_ABOVE)
        .order_by(desc(views.c.sessions), views.c.key0)
    ).all()
    return [(slug, count) for slug, count in rows]


def carts_without_checkout(
    conn: Database, *, tenant_id: int, start: datetime, end: datetime
) -> int:
    """Sessions that added to the cart in [start, end) but started no checkout there."""
    checkouts = select(Event.session_id).where(
        *in_window(tenant_id, start, end),
        Event.event_type.in_((BEGIN_CHECKOUT, CHECKOUT_STARTED)),
        Event.session_id.is_not(None),
    )
    return (
        conn.scalar(
            select(func.count(func.distinct(Event.session_id))).where(
                *in_window(tenant_id, start, end),
                _is(ADD_TO_CART),
                Event.session_id.not_in(checkouts),
            )
        )
        or 0
    )


def stuck_sessions(conn: Database, *, tenant_id: int, start: datetime, end: datetime) -> int:
    """Sessions with more than 15 events and no purchase in [start, end)."""
    stuck = (
        select(Event.session_id)
        .where(*in_window(tenant_id, start, end), Event.session_id.is_not(None))
        .group_by(Event.session_id)
        .having(func.count() > STUCK_EVENTS_ABOVE, func.count(case((_is(PURCHASE), 1))) == 0)
        .subquery()
    )
    return conn.scalar(select(func.count()).select_from(stuck)) or 0


Finding = tuple[str, str, str]  # (type, severity, message)


def _high_abandonment(
    session: Session, tenant_id: int, zone: ZoneInfo, now: datetime
) -> list[Finding]:
    checkout = abandonment(session, tenant_id=tenant_id, start=now - ABANDONMENT_WINDOW, end=now)
    if checkout.checkouts < ABANDONMENT_MIN_CHECKOUTS or checkout.rate <= ABANDONMENT_MAX_RATE:
        return []
    message = (
        f"{checkout.rate}% of checkouts in the last 24 hours ended without a purchase "
        f"({checkout.abandoned} of {checkout.checkouts})."
    )
    return [("high_abandonment", "critical", message)]


def _popular_no_conversion(
    session: Session, tenant_id: int, zone: ZoneInfo, now: datetime
) -> list[Finding]:
    products = unconverted_popular_products(
        session, tenant_id=tenant_id, zone=zone, start=now - POPULAR_WINDOW, end=now
    )
    names = product_names_by_slug(
        session, tenant_id=tenant_id, slugs=[slug for slug, _ in products]
    )
    return [
        (
            "popular_no_conversion",
            "warning",
            f"{_named(slug, names)}: viewed in {views} sessions in the last 7 days "
            "and never bought.",
        )
        for slug, views in products
    ]


def product_names_by_slug(conn: Database, *, tenant_id: int, slugs: list[str]) -> dict[str, str]:
    """The names the owner gave these product slugs in the catalogue (those it has)."""
    if not slugs:
        return {}
    rows = conn.execute(
        select(Product.slug, Product.name).where(
            Product.tenant_id == tenant_id, Product.slug.in_(slugs)
        )
    )
    return {slug: name for slug, name in rows}


def _named(slug: str, names: dict[str, str]) -> str:
    """The catalogue name with the slug ("Pan dulce (pan-dulce)"), else the slug alone."""
    return f"{names[slug]} ({slug})" if slug in names else slug


def _payment_errors(
    session: Session, tenant_id: int, zone: ZoneInfo, now: datetime
) -> list[Finding]:
    errors = session.scalar(
        select(func.count()).where(
            *in_window(tenant_id, now - PAYMENT_ERRORS_WINDOW, now), _is(PAYMENT_ERROR)
        )
    )
    if not errors:
        return []
    return [("payment_errors", "critical", f"Payment errors in the last hour: {errors}.")]


def _carts_abandoned(
    session: Session, tenant_id: int, zone: ZoneInfo, now: datetime
) -> list[Finding]:
    carts = carts_without_checkout(session, tenant_id=tenant_id, start=now - CARTS_WINDOW, end=now)
    if carts < CARTS_MIN_SESSIONS:
        return []
    message = f"{carts} sessions added to the cart in the last 6 hours without starting checkout."
    return [("carts_abandoned", "warning", message)]


def _stuck_sessions(
    session: Session, tenant_id: int, zone: ZoneInfo, now: datetime
) -> list[Finding]:
    stuck = stuck_sessions(session, tenant_id=tenant_id, start=now - STUCK_WINDOW, end=now)
    if not stuck:
        return []
    message = (
        f"Sessions with more than {STUCK_EVENTS_ABOVE} events and no purchase "
        f"in the last 24 hours: {stuck}."
    )
    return [("stuck_sessions", "info", message)]


ALERT_RULES = (
    _high_abandonment,
    _popular_no_conversion,
    _payment_errors,
    _carts_abandoned,
    _stuck_sessions,
)


def smart_alerts(session: Session, *, tenant_id: int, zone: ZoneInfo, now: datetime) -> list[Alert]:
    """The five alert rules over rolling windows [now - span, now); ``all_clear`` if none fires.

    ``zone`` is the tenant's, whose local days key the rollups some rules start from.
    """
    _report_settings(session)
    stamp = now.astimezone(UTC).isoformat()
    findings = [finding for rule in ALERT_RULES for finding in rule(session, tenant_id, zone, now)]
    findings = findings or [("all_clear", "info", "No issues detected.")]
    return [
        Alert(type=kind, severity=severity, message=message, timestamp=stamp)
        for kind, severity, message in findings
    ]
