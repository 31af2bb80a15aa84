"""The store dashboard: every KPI of the week, and the passes it is counted from.

How the passes read the window is told in ``store_common``; the alerts reuse
:func:`abandonment`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, NotRequired, cast
from zoneinfo import ZoneInfo

from sqlalchemy import case, desc, func, literal, select, union_all
from sqlalchemy.orm import Session
from typing_extensions import TypedDict  # pydantic reads no typing.TypedDict on 3.11

from ..catalogue import (
    ADD_TO_CART,
    ADDRESS_ERROR,
    BEGIN_CHECKOUT,
    CHECKOUT_ERROR,
    CHECKOUT_STARTED,
    ORDER_COMPLETED,
    PAYMENT_CONFIRMATION_ERROR,
    PAYMENT_ERROR,
    PAYMENT_INFO_ENTERED,
    PRODUCT_VIEW,
    PURCHASE,
    WHATSAPP_CART_CLICK,
    WHATSAPP_PURCHASE,
)
from ..models import DEFAULT_CURRENCY, Event
from ..rollups import ALL_SESSIONS, DIRECT_SOURCE, source_scope, type_scope
from ..timewindows import Day, last_days, lookback_days
from . import store_rollups
from .common import Database, day_index, in_window, money, ratio_half_up
from .store_common import (
    IDENTIFIER,
    beside,
    by_code_point,
    flag,
    is_a_sale,
    of_type,
    percent,
    ranked,
    report_settings,
    sessions_by,
)

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
TOP_PRODUCTS = 5
PERFORMANCE_PRODUCTS = 10
WHATSAPP_SESSIONS_LISTED = 10
# Sources come from the public snippet: a flood of made-up ones must not grow the report
# without bound. A shop has a handful; the ones with most sessions are listed.
TRAFFIC_SOURCES_LISTED = 50


# -- building blocks ----------------------------------------------------------------


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
        return percent(self.abandoned, self.checkouts)


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
    triples = (  # grouped session first and NULL sessions left to the counts: see sessions_by
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
        sessions_by(
            Event.event_type, where=[*in_window(tenant_id, start, end), Event.event_type.in_(types)]
        )
    )
    return Counter({event_type: count for event_type, count in rows})


def product_sessions(
    conn: Database, *, tenant_id: int, start: datetime, end: datetime
) -> dict[str, Counter[str]]:
    """Distinct sessions per product and PRODUCT_TYPES type in [start, end)."""
    rows = conn.execute(
        sessions_by(
            Event.product_slug,
            Event.event_type,
            # Products are the non-NULL slugs; the NULL one is dropped below rather than
            # here, for the estimate (see sessions_by).
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
        .where(*in_window(tenant_id, start, end), of_type(PURCHASE))
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
    """Identifiers with a begin_checkout in [start, end), and those with no sale there.

    A checkout is bought by a purchase of its identifier or of its session: a shop that
    names its customer (``user_id``) on the purchase only, as RFM asks, has checked out
    as a session and bought as a user, which is one identifier that did buy. A sale
    confirmed over WhatsApp (``whatsapp_purchase``) ends a checkout as well: a shop that
    closes its orders there abandons none of them.
    """
    purchases = (*in_window(tenant_id, start, end), is_a_sale())
    # Joined, not IN (...): a hash join spills to disk where a hashed IN list that outgrew
    # its memory would be searched again for every checkout.
    buyers = select(IDENTIFIER.label("identifier")).where(*purchases).distinct().subquery()
    buying_sessions = (
        select(Event.session_id).where(*purchases, Event.session_id.is_not(None)).distinct()
    ).subquery()
    bought = buyers.c.identifier.is_not(None) | buying_sessions.c.session_id.is_not(None)
    identifiers = (
        select(func.max(flag(bought)).label("bought"))
        .select_from(Event)
        .outerjoin(buyers, buyers.c.identifier == IDENTIFIER)
        .outerjoin(buying_sessions, buying_sessions.c.session_id == Event.session_id)
        .where(*in_window(tenant_id, start, end), of_type(BEGIN_CHECKOUT), IDENTIFIER.is_not(None))
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
    some_direct = flag(per_session.c.with_source < per_session.c.events)
    several = flag(per_session.c.lowest != per_session.c.highest)
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
    sources = [SourceSessions(source=name, sessions=count) for name, count in ranked(counts, None)]
    return SessionSources(sessions, events, sources)


def traffic_sources(
    conn: Database, *, tenant_id: int, start: datetime, end: datetime
) -> list[SourceSessions]:
    """Distinct sessions per source (NULL reported as ``direct``), most first."""
    source = func.coalesce(Event.source, DIRECT_SOURCE)
    query = sessions_by(
        source, where=[*in_window(tenant_id, start, end), Event.session_id.is_not(None)]
    ).subquery()
    # Ranked here, not by ORDER BY: ties go by code point whatever the database's collation,
    # as the rollups' sources are ranked.
    counts = {name: count for name, count in conn.execute(select(query.c.key0, query.c.sessions))}
    return [SourceSessions(source=name, sessions=count) for name, count in ranked(counts, None)]


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
        [SourceSessions(source=name, sessions=n) for name, n in ranked(per_source, None)],
    )
    return RolledUpSessions(visits, Counter({t: counts.get(type_scope(t), 0) for t in types}))


def retention_metrics(
    conn: Database, *, tenant_id: int, zone: ZoneInfo, now: datetime
) -> RetentionMetrics:
    """Buyers over the last 90 days (today and the 90 local days before it), and those
    who bought at least twice.

    A buyer is an identifier (user, else session) with a purchase event.
    """
    days = lookback_days(zone, now, RETENTION_DAYS)
    buyers = (
        select(func.count().label("purchases"))
        .where(*in_window(tenant_id, days[0].start, days[-1].end), of_type(PURCHASE))
        .where(IDENTIFIER.is_not(None))
        .group_by(IDENTIFIER)
        .subquery()
    )
    total, recurrent = conn.execute(
        select(func.count(), func.count(case((buyers.c.purchases >= 2, 1))))
    ).one()
    return RetentionMetrics(
        repurchase_rate=percent(recurrent, total),
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
                of_type(WHATSAPP_CART_CLICK),
                Event.session_id.is_not(None),
            )
            .group_by(Event.session_id)
            .order_by(desc(last_click), by_code_point(conn, Event.session_id))
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
    for slug, view_count in ranked(views, limit):
        units = sales.units.get(slug, 0)
        purchases = units if sessions is None else counts.get(slug, Counter())[PURCHASE]
        product = ProductPerformance(
            slug=slug,
            name=events.names.get(slug) or slug,
            views=view_count,
            add_to_cart=counts.get(slug, Counter())[ADD_TO_CART],
            purchases=purchases,
            conversion_rate=percent(purchases, view_count),
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
    report_settings(session)
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
    side = None if rolled and not unique else beside(session, session_passes)
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
        total_revenue=money(revenue),
        average_order_value=money(revenue / sold.orders[currency])
        if sold.orders[currency]
        else 0.0,
        currency=currency,
        revenue_by_currency={
            code: money(amount)
            for code, amount in sorted((sold.revenue | {currency: revenue}).items())
        },
        top_products=[
            SlugCount(slug=slug, count=count) for slug, count in ranked(sold.units, TOP_PRODUCTS)
        ],
        top_viewed_products=[
            SlugCount(slug=slug, count=count) for slug, count in ranked(viewed, TOP_PRODUCTS)
        ],
        sales_by_day=[
            DayCount(date=day.date.isoformat(), count=counts[PURCHASE])
            for day, counts in zip(days, events.per_day, strict=True)
        ],
        events_timeline=cast(list[EventsDay], _timeline(days, per_day, TIMELINE_TYPES)),
        abandonment_rate=abandoned.rate,
        event_counts=cast(StepCounts, steps),
        conversion_rates=ConversionRates(
            visit_to_cart=percent(steps[ADD_TO_CART], steps[PRODUCT_VIEW]),
            cart_to_checkout=percent(steps[BEGIN_CHECKOUT], steps[ADD_TO_CART]),
            checkout_to_purchase=percent(steps[PURCHASE], steps[BEGIN_CHECKOUT]),
        ),
        checkout_started_count=started,
        payment_info_entered_count=paid,
        order_completed_count=completed,
        conversion_checkout_to_payment=percent(paid, started),
        conversion_payment_to_order=percent(completed, paid),
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
