"""Store reports: dashboard stats, conversion funnel, RFM segments and smart alerts.

Every figure is an aggregation in the database over one tenant's events; only
per-day, per-product or per-customer rows come back to Python to be shaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal, NotRequired, TypedDict
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, case, desc, func, select
from sqlalchemy.orm import Session

from ..models import Event
from ..timewindows import Day, last_days, local_day
from .common import day_index, in_window

Mode = Literal["total", "unique"]
MODES: tuple[Mode, ...] = ("total", "unique")

PAGE_VIEW = "page_view"
PRODUCT_VIEW = "product_view"
ADD_TO_CART = "add_to_cart"
BEGIN_CHECKOUT = "begin_checkout"
PURCHASE = "purchase"
CHECKOUT_STARTED = "checkout_started"
PAYMENT_INFO_ENTERED = "payment_info_entered"
ORDER_COMPLETED = "order_completed"
PAYMENT_ERROR = "payment_error"
CHECKOUT_ERROR = "checkout_error"
PAYMENT_CONFIRMATION_ERROR = "payment_confirmation_error"
ADDRESS_ERROR = "address_error"
WHATSAPP_CART_CLICK = "whatsapp_cart_click"
WHATSAPP_PURCHASE = "whatsapp_purchase"

FUNNEL_STEPS = (PAGE_VIEW, PRODUCT_VIEW, ADD_TO_CART, BEGIN_CHECKOUT, PURCHASE)
COUNTED_STEPS = (PRODUCT_VIEW, ADD_TO_CART, BEGIN_CHECKOUT, PURCHASE)
PAYMENT_STEPS = (CHECKOUT_STARTED, PAYMENT_INFO_ENTERED, ORDER_COMPLETED)
TIMELINE_TYPES = COUNTED_STEPS + PAYMENT_STEPS
COUNTED_ERRORS = (PAYMENT_ERROR, CHECKOUT_ERROR, PAYMENT_CONFIRMATION_ERROR)
TIMELINE_ERRORS = (*COUNTED_ERRORS, ADDRESS_ERROR)
WHATSAPP_TYPES = (WHATSAPP_CART_CLICK, WHATSAPP_PURCHASE)

DASHBOARD_DAYS = 7
RETENTION_DAYS = 90
FUNNEL_DAYS = 30
RFM_DAYS = 90
TOP_PRODUCTS = 5
PERFORMANCE_PRODUCTS = 10
WHATSAPP_SESSIONS_LISTED = 10
DIRECT_SOURCE = "direct"  # what a NULL source is reported as

# Who did something: the signed-in user when known, else the browser session.
IDENTIFIER = func.coalesce(Event.user_id, Event.session_id)
CENT = Decimal("0.01")


# -- shared helpers -----------------------------------------------------------------


def _percent(part: float, whole: float) -> float:
    """``part`` as a percentage of ``whole``, one decimal; 0 when ``whole`` is 0."""
    return round(part * 100 / whole, 1) if whole else 0.0


def _money(amount: Decimal | None) -> float:
    """Money for JSON: a float rounded half-up to cents; NULL is 0."""
    return float((amount or Decimal(0)).quantize(CENT, rounding=ROUND_HALF_UP))


def _is(event_type: str) -> ColumnElement[bool]:
    return Event.event_type == event_type


def _sessions_where(condition: ColumnElement[bool]) -> ColumnElement[int]:
    """Distinct session ids among the rows where ``condition`` holds."""
    return func.count(func.distinct(case((condition, Event.session_id))))


def _events_where(condition: ColumnElement[bool]) -> ColumnElement[int]:
    """How many rows ``condition`` holds for."""
    return func.count(case((condition, 1)))


def _local_bounds(days: list[Day]) -> tuple[str, str]:
    """First and last instant of ``days`` as local ISO strings (to the second)."""
    return f"{days[0].date.isoformat()}T00:00:00", f"{days[-1].date.isoformat()}T23:59:59"


# -- dashboard building blocks --------------------------------------------------------


@dataclass(frozen=True)
class TypeCount:
    """How often an event type occurred, and in how many distinct sessions."""

    events: int = 0
    sessions: int = 0

    def of(self, mode: Mode) -> int:
        return self.sessions if mode == "unique" else self.events


class SlugCount(TypedDict):
    slug: str
    count: int


class DayCount(TypedDict):
    date: str
    count: int


class ProductPerformance(TypedDict):
    slug: str
    name: str
    views: int
    add_to_cart: int
    purchases: int
    conversion_rate: float
    purchases_units: NotRequired[int]  # mode=unique only


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


def count_by_type(
    session: Session, *, tenant_id: int, start: datetime, end: datetime, types: tuple[str, ...]
) -> dict[str, TypeCount]:
    """Events and distinct sessions of each of ``types`` in [start, end); missing types are 0."""
    rows = session.execute(
        select(Event.event_type, func.count(), func.count(func.distinct(Event.session_id)))
        .where(*in_window(tenant_id, start, end), Event.event_type.in_(types))
        .group_by(Event.event_type)
    ).all()
    counts = dict.fromkeys(types, TypeCount())
    for event_type, events, sessions in rows:
        counts[event_type] = TypeCount(events, sessions)
    return counts


def count_by_type_and_day(
    session: Session, *, tenant_id: int, days: list[Day], types: tuple[str, ...]
) -> list[dict[str, TypeCount]]:
    """:func:`count_by_type` for each of ``days`` (contiguous, oldest first)."""
    index = day_index(days)
    rows = session.execute(
        select(
            index,
            Event.event_type,
            func.count(),
            func.count(func.distinct(Event.session_id)),
        )
        .where(*in_window(tenant_id, days[0].start, days[-1].end), Event.event_type.in_(types))
        .group_by(index, Event.event_type)
    ).all()
    per_day = [dict.fromkeys(types, TypeCount()) for _ in days]
    for position, event_type, events, sessions in rows:
        per_day[position][event_type] = TypeCount(events, sessions)
    return per_day


def purchase_revenue(
    session: Session, *, tenant_id: int, start: datetime, end: datetime
) -> Decimal:
    """Sum of the ``revenue`` of purchase events in [start, end); NULL counts as 0."""
    total = session.scalar(
        select(func.sum(Event.revenue)).where(*in_window(tenant_id, start, end), _is(PURCHASE))
    )
    return total or Decimal(0)


def top_products(
    session: Session, *, tenant_id: int, start: datetime, end: datetime, limit: int = TOP_PRODUCTS
) -> list[SlugCount]:
    """Products by units sold (a purchase without quantity is one unit), most first."""
    units = func.sum(func.coalesce(Event.quantity, 1)).label("units")
    rows = session.execute(
        select(Event.product_slug, units)
        .where(
            *in_window(tenant_id, start, end),
            _is(PURCHASE),
            Event.product_slug.is_not(None),
        )
        .group_by(Event.product_slug)
        .order_by(desc(units), Event.product_slug)
        .limit(limit)
    ).all()
    return [SlugCount(slug=slug, count=count) for slug, count in rows]


def top_viewed_products(
    session: Session,
    *,
    tenant_id: int,
    start: datetime,
    end: datetime,
    mode: Mode,
    limit: int = TOP_PRODUCTS,
) -> list[SlugCount]:
    """Products by product views (distinct sessions in ``unique`` mode), most first."""
    views = (
        func.count(func.distinct(Event.session_id)) if mode == "unique" else func.count()
    ).label("views")
    rows = session.execute(
        select(Event.product_slug, views)
        .where(
            *in_window(tenant_id, start, end),
            _is(PRODUCT_VIEW),
            Event.product_slug.is_not(None),
        )
        .group_by(Event.product_slug)
        .order_by(desc(views), Event.product_slug)
        .limit(limit)
    ).all()
    return [SlugCount(slug=slug, count=count) for slug, count in rows]


def abandonment(session: Session, *, tenant_id: int, start: datetime, end: datetime) -> Abandonment:
    """Identifiers with a begin_checkout in [start, end), and those with no purchase there."""
    purchasers = select(IDENTIFIER).where(
        *in_window(tenant_id, start, end), _is(PURCHASE), IDENTIFIER.is_not(None)
    )
    checkouts, abandoned = session.execute(
        select(
            func.count(func.distinct(IDENTIFIER)),
            func.count(func.distinct(case((IDENTIFIER.not_in(purchasers), IDENTIFIER)))),
        ).where(*in_window(tenant_id, start, end), _is(BEGIN_CHECKOUT))
    ).one()
    return Abandonment(checkouts, abandoned)


def product_performance(
    session: Session,
    *,
    tenant_id: int,
    start: datetime,
    end: datetime,
    mode: Mode,
    limit: int = PERFORMANCE_PRODUCTS,
) -> list[ProductPerformance]:
    """Views, add-to-carts and purchases per product, most viewed first.

    ``total`` counts events and purchased units; ``unique`` counts distinct
    sessions and adds ``purchases_units``. ``conversion_rate`` is purchases / views.
    """
    unique = mode == "unique"
    units = func.coalesce(func.sum(case((_is(PURCHASE), func.coalesce(Event.quantity, 1)))), 0)
    count = _sessions_where if unique else _events_where
    views = count(_is(PRODUCT_VIEW)).label("views")
    rows = session.execute(
        select(
            Event.product_slug,
            func.max(Event.product_name),
            views,
            count(_is(ADD_TO_CART)),
            _sessions_where(_is(PURCHASE)),
            units,
        )
        .where(
            *in_window(tenant_id, start, end),
            Event.event_type.in_((PRODUCT_VIEW, ADD_TO_CART, PURCHASE)),
            Event.product_slug.is_not(None),
        )
        .group_by(Event.product_slug)
        .order_by(desc(views), Event.product_slug)
        .limit(limit)
    ).all()
    products = []
    for slug, name, view_count, adds, purchase_sessions, purchased_units in rows:
        purchases = purchase_sessions if unique else purchased_units
        product = ProductPerformance(
            slug=slug,
            name=name or slug,
            views=view_count,
            add_to_cart=adds,
            purchases=purchases,
            conversion_rate=_percent(purchases, view_count),
        )
        if unique:
            product["purchases_units"] = purchased_units
        products.append(product)
    return products


def session_stats(
    session: Session, *, tenant_id: int, start: datetime, end: datetime
) -> SessionStats:
    """Distinct sessions, events per session and sessions with a purchase in [start, end)."""
    sessions, events, buyers = session.execute(
        select(
            func.count(func.distinct(Event.session_id)),
            func.count(Event.session_id),
            _sessions_where(_is(PURCHASE)),
        ).where(*in_window(tenant_id, start, end))
    ).one()
    return SessionStats(
        unique_sessions=sessions,
        avg_events_per_session=round(events / sessions, 1) if sessions else 0.0,
        sessions_with_purchase=buyers,
    )


def retention_metrics(
    session: Session, *, tenant_id: int, zone: ZoneInfo, now: datetime
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
    total, recurrent = session.execute(
        select(func.count(), func.count(case((buyers.c.purchases >= 2, 1))))
    ).one()
    return RetentionMetrics(
        repurchase_rate=_percent(recurrent, total),
        recurrent_customers=recurrent,
        total_unique_buyers=total,
        period_days=RETENTION_DAYS,
    )


def traffic_sources(
    session: Session, *, tenant_id: int, start: datetime, end: datetime
) -> list[SourceSessions]:
    """Distinct sessions per source (NULL reported as ``direct``), most first."""
    source = func.coalesce(Event.source, DIRECT_SOURCE).label("source")
    sessions = func.count(func.distinct(Event.session_id)).label("sessions")
    rows = session.execute(
        select(source, sessions)
        .where(*in_window(tenant_id, start, end), Event.session_id.is_not(None))
        .group_by(source)
        .order_by(desc(sessions), source)
    ).all()
    return [SourceSessions(source=name, sessions=count) for name, count in rows]


def recent_whatsapp_sessions(
    session: Session,
    *,
    tenant_id: int,
    start: datetime,
    end: datetime,
    limit: int = WHATSAPP_SESSIONS_LISTED,
) -> list[str]:
    """Sessions that clicked the WhatsApp button in [start, end), latest click first."""
    last_click = func.max(Event.created_at).label("last_click")
    return list(
        session.scalars(
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
    mode: Mode
    total_sales: int
    total_revenue: float
    average_order_value: float
    top_products: list[SlugCount]
    top_viewed_products: list[SlugCount]
    sales_by_day: list[DayCount]
    events_timeline: list[dict[str, Any]]
    abandonment_rate: float
    event_counts: dict[str, int]
    conversion_rates: dict[str, float]
    checkout_started_count: int
    payment_info_entered_count: int
    order_completed_count: int
    conversion_checkout_to_payment: float
    conversion_payment_to_order: float
    error_counts: dict[str, int]
    product_performance: list[ProductPerformance]
    errors_timeline: list[dict[str, Any]]
    session_stats: SessionStats
    retention_metrics: RetentionMetrics
    traffic_sources: list[SourceSessions]
    whatsapp_sessions: int
    whatsapp_purchases: int
    whatsapp_sessions_list: list[str]


def _timeline(
    days: list[Day], per_day: list[dict[str, TypeCount]], types: tuple[str, ...], mode: Mode
) -> list[dict[str, Any]]:
    return [
        {"date": day.date.isoformat(), **{t: counts[t].of(mode) for t in types}}
        for day, counts in zip(days, per_day, strict=True)
    ]


def dashboard_stats(
    session: Session, *, tenant_id: int, zone: ZoneInfo, now: datetime, mode: Mode = "total"
) -> DashboardStats:
    """Every store KPI over the 7 local days ending today (retention: 90 days).

    ``mode`` switches the funnel counts (event_counts and the conversion rates,
    events_timeline, top_viewed_products, product_performance) from events to
    distinct sessions. Sales, revenue, the payment steps and errors stay event totals.
    """
    days = last_days(zone, now, DASHBOARD_DAYS)
    window = {"tenant_id": tenant_id, "start": days[0].start, "end": days[-1].end}
    counts = count_by_type(
        session, **window, types=COUNTED_STEPS + PAYMENT_STEPS + COUNTED_ERRORS + WHATSAPP_TYPES
    )
    per_day = count_by_type_and_day(
        session, tenant_id=tenant_id, days=days, types=TIMELINE_TYPES + TIMELINE_ERRORS
    )
    steps = {step: counts[step].of(mode) for step in COUNTED_STEPS}
    sales = counts[PURCHASE].events
    revenue = purchase_revenue(session, **window)
    started, paid, completed = (counts[step].events for step in PAYMENT_STEPS)
    return DashboardStats(
        mode=mode,
        total_sales=sales,
        total_revenue=_money(revenue),
        average_order_value=_money(revenue / sales) if sales else 0.0,
        top_products=top_products(session, **window),
        top_viewed_products=top_viewed_products(session, **window, mode=mode),
        sales_by_day=[
            DayCount(date=day.date.isoformat(), count=counts_of_day[PURCHASE].events)
            for day, counts_of_day in zip(days, per_day, strict=True)
        ],
        events_timeline=_timeline(days, per_day, TIMELINE_TYPES, mode),
        abandonment_rate=abandonment(session, **window).rate,
        event_counts=steps,
        conversion_rates={
            "visit_to_cart": _percent(steps[ADD_TO_CART], steps[PRODUCT_VIEW]),
            "cart_to_checkout": _percent(steps[BEGIN_CHECKOUT], steps[ADD_TO_CART]),
            "checkout_to_purchase": _percent(steps[PURCHASE], steps[BEGIN_CHECKOUT]),
        },
        checkout_started_count=started,
        payment_info_entered_count=paid,
        order_completed_count=completed,
        conversion_checkout_to_payment=_percent(paid, started),
        conversion_payment_to_order=_percent(completed, paid),
        error_counts={error: counts[error].events for error in COUNTED_ERRORS},
        product_performance=product_performance(session, **window, mode=mode),
        errors_timeline=_timeline(days, per_day, TIMELINE_ERRORS, "total"),
        session_stats=session_stats(session, **window),
        retention_metrics=retention_metrics(session, tenant_id=tenant_id, zone=zone, now=now),
        traffic_sources=traffic_sources(session, **window),
        whatsapp_sessions=counts[WHATSAPP_CART_CLICK].sessions,
        whatsapp_purchases=counts[WHATSAPP_PURCHASE].sessions,
        whatsapp_sessions_list=recent_whatsapp_sessions(session, **window),
    )


# -- funnel -------------------------------------------------------------------------


class FunnelStep(TypedDict):
    step: str
    count: int


class Funnel(TypedDict):
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
) -> Funnel:
    """Distinct sessions reaching each funnel step between two local dates, both inclusive.

    ``source`` keeps one traffic source; ``direct`` also matches events with no source,
    as the dashboard reports those as direct.
    """
    days = [local_day(start, zone), local_day(end, zone)]
    where = [
        *in_window(tenant_id, days[0].start, days[-1].end),
        Event.event_type.in_(FUNNEL_STEPS),
    ]
    if source == DIRECT_SOURCE:
        where.append((Event.source == source) | Event.source.is_(None))
    elif source is not None:
        where.append(Event.source == source)
    rows = session.execute(
        select(Event.event_type, func.count(func.distinct(Event.session_id)))
        .where(*where)
        .group_by(Event.event_type)
    ).all()
    sessions = dict(rows)
    start_date, end_date = _local_bounds(days)
    return Funnel(
        funnel=[FunnelStep(step=step, count=sessions.get(step, 0)) for step in FUNNEL_STEPS],
        start_date=start_date,
        end_date=end_date,
    )


# -- RFM ----------------------------------------------------------------------------

SEGMENT_LABELS = {"VIP": "VIP", "Loyal": "Leal", "At Risk": "En riesgo", "Lost": "Perdido"}
VIP_MAX_RECENCY = 7
VIP_MIN_FREQUENCY = 2
LOYAL_MAX_RECENCY = 30
AT_RISK_MAX_RECENCY = 60


class RfmCustomer(TypedDict):
    visitor_id: str
    recency: int
    frequency: int
    monetary: float
    segment: str
    segmento: str


class RfmReport(TypedDict):
    rfm: list[RfmCustomer]
    start_date: str
    end_date: str


def rfm_segment(recency: int, frequency: int, monetary: Decimal, vip_threshold: Decimal) -> str:
    """The first segment whose rule holds: VIP, Loyal, At Risk, else Lost."""
    if recency <= VIP_MAX_RECENCY and frequency >= VIP_MIN_FREQUENCY and monetary >= vip_threshold:
        return "VIP"
    if recency <= LOYAL_MAX_RECENCY and frequency >= 1:
        return "Loyal"
    if recency <= AT_RISK_MAX_RECENCY:
        return "At Risk"
    return "Lost"


def rfm_segments(
    session: Session, *, tenant_id: int, zone: ZoneInfo, now: datetime, vip_threshold: Decimal
) -> RfmReport:
    """Recency, frequency and monetary value of each signed-in buyer over 90 local days.

    Recency is whole local days from the last purchase to today; frequency the
    purchase events; monetary their revenue. Biggest spenders first.
    """
    days = last_days(zone, now, RFM_DAYS)
    today = days[-1].date
    monetary = func.coalesce(func.sum(Event.revenue), 0).label("monetary")
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
    for user_id, last_purchase, frequency, spent in rows:
        recency = (today - last_purchase.astimezone(zone).date()).days
        segment = rfm_segment(recency, frequency, Decimal(spent), vip_threshold)
        customers.append(
            RfmCustomer(
                visitor_id=user_id,
                recency=recency,
                frequency=frequency,
                monetary=_money(Decimal(spent)),
                segment=segment,
                segmento=SEGMENT_LABELS[segment],
            )
        )
    start_date, end_date = _local_bounds(days)
    return RfmReport(rfm=customers, start_date=start_date, end_date=end_date)


# -- smart alerts -------------------------------------------------------------------

ABANDONMENT_WINDOW = timedelta(hours=24)
ABANDONMENT_MIN_CHECKOUTS = 3
ABANDONMENT_MAX_RATE = 70.0
POPULAR_WINDOW = timedelta(days=7)
POPULAR_MIN_VIEWS = 10  # more than this many distinct sessions
PAYMENT_ERRORS_WINDOW = timedelta(hours=1)
CARTS_WINDOW = timedelta(hours=6)
CARTS_MIN_SESSIONS = 5
STUCK_WINDOW = timedelta(hours=24)
STUCK_MIN_EVENTS = 15  # more than this many events


class Alert(TypedDict):
    type: str
    message: str
    severity: str  # critical, warning or info
    timestamp: str


def unconverted_popular_products(
    session: Session, *, tenant_id: int, start: datetime, end: datetime
) -> list[tuple[str, int]]:
    """Products with more than 10 distinct viewing sessions and no purchase in [start, end)."""
    views = _sessions_where(_is(PRODUCT_VIEW)).label("views")
    rows = session.execute(
        select(Event.product_slug, views)
        .where(
            *in_window(tenant_id, start, end),
            Event.event_type.in_((PRODUCT_VIEW, PURCHASE)),
            Event.product_slug.is_not(None),
        )
        .group_by(Event.product_slug)
        .having(views > POPULAR_MIN_VIEWS, _events_where(_is(PURCHASE)) == 0)
        .order_by(desc(views), Event.product_slug)
    ).all()
    return [(slug, count) for slug, count in rows]


def carts_without_checkout(
    session: Session, *, tenant_id: int, start: datetime, end: datetime
) -> int:
    """Sessions that added to the cart in [start, end) but started no checkout there."""
    checkouts = select(Event.session_id).where(
        *in_window(tenant_id, start, end),
        Event.event_type.in_((BEGIN_CHECKOUT, CHECKOUT_STARTED)),
        Event.session_id.is_not(None),
    )
    return (
        session.scalar(
            select(func.count(func.distinct(Event.session_id))).where(
                *in_window(tenant_id, start, end),
                _is(ADD_TO_CART),
                Event.session_id.not_in(checkouts),
            )
        )
        or 0
    )


def stuck_sessions(session: Session, *, tenant_id: int, start: datetime, end: datetime) -> int:
    """Sessions with more than 15 events and no purchase in [start, end)."""
    stuck = (
        select(Event.session_id)
        .where(*in_window(tenant_id, start, end), Event.session_id.is_not(None))
        .group_by(Event.session_id)
        .having(func.count() > STUCK_MIN_EVENTS, _events_where(_is(PURCHASE)) == 0)
        .subquery()
    )
    return session.scalar(select(func.count()).select_from(stuck)) or 0


Finding = tuple[str, str, str]  # (type, severity, message)


def _high_abandonment(session: Session, tenant_id: int, now: datetime) -> list[Finding]:
    checkout = abandonment(session, tenant_id=tenant_id, start=now - ABANDONMENT_WINDOW, end=now)
    if checkout.checkouts < ABANDONMENT_MIN_CHECKOUTS or checkout.rate <= ABANDONMENT_MAX_RATE:
        return []
    message = (
        f"{checkout.rate}% of checkouts in the last 24 hours ended without a purchase "
        f"({checkout.abandoned} of {checkout.checkouts})."
    )
    return [("high_abandonment", "critical", message)]


def _popular_no_conversion(session: Session, tenant_id: int, now: datetime) -> list[Finding]:
    products = unconverted_popular_products(
        session, tenant_id=tenant_id, start=now - POPULAR_WINDOW, end=now
    )
    return [
        (
            "popular_no_conversion",
            "warning",
            f"{slug}: viewed in {views} sessions in the last 7 days and never bought.",
        )
        for slug, views in products
    ]


def _payment_errors(session: Session, tenant_id: int, now: datetime) -> list[Finding]:
    errors = count_by_type(
        session,
        tenant_id=tenant_id,
        start=now - PAYMENT_ERRORS_WINDOW,
        end=now,
        types=(PAYMENT_ERROR,),
    )[PAYMENT_ERROR].events
    if not errors:
        return []
    return [("payment_errors", "critical", f"Payment errors in the last hour: {errors}.")]


def _carts_abandoned(session: Session, tenant_id: int, now: datetime) -> list[Finding]:
    carts = carts_without_checkout(session, tenant_id=tenant_id, start=now - CARTS_WINDOW, end=now)
    if carts < CARTS_MIN_SESSIONS:
        return []
    message = f"{carts} sessions added to the cart in the last 6 hours without starting checkout."
    return [("carts_abandoned", "warning", message)]


def _stuck_sessions(session: Session, tenant_id: int, now: datetime) -> list[Finding]:
    stuck = stuck_sessions(session, tenant_id=tenant_id, start=now - STUCK_WINDOW, end=now)
    if not stuck:
        return []
    message = (
        f"Sessions with more than {STUCK_MIN_EVENTS} events and no purchase "
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


def smart_alerts(session: Session, *, tenant_id: int, now: datetime) -> list[Alert]:
    """The five alert rules over rolling windows [now - span, now); ``all_clear`` if none fires."""
    stamp = now.astimezone(UTC).isoformat()
    findings = [finding for rule in ALERT_RULES for finding in rule(session, tenant_id, now)]
    findings = findings or [("all_clear", "info", "No issues detected.")]
    return [
        Alert(type=kind, severity=severity, message=message, timestamp=stamp)
        for kind, severity, message in findings
    ]
