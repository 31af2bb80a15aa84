"""Landing-page dashboard figures, computed from the raw events table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import Numeric, cast, func, select
from sqlalchemy.orm import Session

from ..catalogue import EVENT_KINDS, REVENUE_KINDS, Kind, types_of
from ..models import DEFAULT_CURRENCY, Event
from ..timewindows import Day, last_days
from .common import day_index, in_window, money, ratio_half_up


@dataclass
class DayVisitors:
    """A local day (YYYY-MM-DD in the tenant's time zone) and its distinct visitors."""

    date: str
    visitors: int


@dataclass
class LandingSummary:
    """The landing page's figures: today and the 7 local days ending today (the week).

    Taps, scans, page views, conversions and ``revenue`` (per currency paid in) cover
    the week; ``avg_time_on_page`` is in whole seconds.
    """

    visitors_today: int
    visitors_week: int
    whatsapp_clicks: int
    call_clicks: int
    currency_toggles: int
    qr_scans: int
    avg_time_on_page: int
    last_7_days: list[DayVisitors]
    maps_clicks: int
    conversions: int
    revenue: dict[str, float]
    page_views: int


@dataclass
class TodaySummary:
    """Today, the local day: the document's four figures, call taps and which day it is
    (our own: an owner across the world from the shop reads the shop's day)."""

    date: str  # ISO 8601, the tenant's local date
    visitors_today: int
    whatsapp_clicks: int
    qr_scans: int
    products_viewed: int
    call_clicks: int


def count_visitors_by_day(session: Session, *, tenant_id: int, days: list[Day]) -> list[int]:
    """Distinct visitor hashes for each day of ``days`` (contiguous, oldest first)."""
    index = day_index(days)
    rows = session.execute(
        select(index.label("day"), func.count(func.distinct(Event.visitor_hash)))
        .where(*in_window(tenant_id, days[0].start, days[-1].end))
        .group_by(index)
    ).all()
    counts = [0] * len(days)
    for index, visitors in rows:
        counts[index] = visitors
    return counts


def count_visitors(session: Session, *, tenant_id: int, start: datetime, end: datetime) -> int:
    """Distinct visitor hashes in [start, end)."""
    return (
        session.scalar(
            select(func.count(func.distinct(Event.visitor_hash))).where(
                *in_window(tenant_id, start, end)
            )
        )
        or 0
    )


def count_by_kind(
    session: Session, *, tenant_id: int, start: datetime, end: datetime
) -> dict[Kind, int]:
    """Event counts in [start, end), summed over every type that means the same kind."""
    rows = session.execute(
        select(Event.event_type, func.count())
        .where(*in_window(tenant_id, start, end))
        .group_by(Event.event_type)
    ).all()
    counts: dict[Kind, int] = dict.fromkeys(Kind, 0)
    for event_type, count in rows:
        kind = EVENT_KINDS.get(event_type)
        if kind is not None:
            counts[kind] += count
    return counts


def average_time_on_page(
    session: Session, *, tenant_id: int, start: datetime, end: datetime
) -> int:
    """Mean ``metadata.seconds`` of time-on-page events in [start, end), whole seconds.

    Summed as exact decimals, as the rollups keep it (a float sum of 1.661, 4.495 and
    1.344 is 7.500000000000001, whose mean rounds up where the exact 2.5 rounds to 2).
    """
    seconds = func.coalesce(cast(Event.metadata_["seconds"].as_string(), Numeric), 0)
    total, count = session.execute(
        select(func.sum(seconds), func.count()).where(
            *in_window(tenant_id, start, end),
            Event.event_type.in_(types_of(Kind.TIME_ON_PAGE)),
        )
    ).one()
    return int(ratio_half_up(total, count)) if count else 0


def revenue_by_currency(
    session: Session, *, tenant_id: int, start: datetime, end: datetime, default_currency: str
) -> dict[str, float]:
    """Revenue of conversion and purchase events in [start, end), per currency."""
    currency = func.coalesce(Event.currency, default_currency)
    rows = session.execute(
        select(currency, func.sum(Event.revenue))
        .where(
            *in_window(tenant_id, start, end),
            Event.event_type.in_(types_of(*REVENUE_KINDS)),
            Event.revenue.is_not(None),
        )
        .group_by(currency)
    ).all()
    return {code: money(total) for code, total in rows}


def landing_summary(
    session: Session,
    *,
    tenant_id: int,
    zone: ZoneInfo,
    now: datetime,
    currency: str = DEFAULT_CURRENCY,
) -> LandingSummary:
    """The landing dashboard: visitors today/this week and 7-day counters, in local days."""
    days = last_days(zone, now, 7)
    start, end = days[0].start, days[-1].end
    per_day = count_visitors_by_day(session, tenant_id=tenant_id, days=days)
    counts = count_by_kind(session, tenant_id=tenant_id, start=start, end=end)
    return LandingSummary(
        visitors_today=per_day[-1],
        visitors_week=count_visitors(session, tenant_id=tenant_id, start=start, end=end),
        whatsapp_clicks=counts[Kind.WHATSAPP_TAP],
        call_clicks=counts[Kind.CALL],
        currency_toggles=counts[Kind.CURRENCY_TOGGLE],
        qr_scans=counts[Kind.QR_SCAN],
        avg_time_on_page=average_time_on_page(session, tenant_id=tenant_id, start=start, end=end),
        last_7_days=[
            DayVisitors(day.date.isoformat(), visitors)
            for day, visitors in zip(days, per_day, strict=True)
        ],
        maps_clicks=counts[Kind.MAPS],
        conversions=sum(counts[kind] for kind in REVENUE_KINDS),
        revenue=revenue_by_currency(
            session, tenant_id=tenant_id, start=start, end=end, default_currency=currency
        ),
        page_views=counts[Kind.VIEW],
    )


def today_summary(
    session: Session, *, tenant_id: int, zone: ZoneInfo, now: datetime
) -> TodaySummary:
    """Today's quick summary in the tenant's local day."""
    (today,) = last_days(zone, now, 1)
    counts = count_by_kind(session, tenant_id=tenant_id, start=today.start, end=today.end)
    return TodaySummary(
        date=today.date.isoformat(),
        visitors_today=count_visitors(
            session, tenant_id=tenant_id, start=today.start, end=today.end
        ),
        whatsapp_clicks=counts[Kind.WHATSAPP_TAP],
        qr_scans=counts[Kind.QR_SCAN],
        products_viewed=counts[Kind.PRODUCT_CLICK],
        call_clicks=counts[Kind.CALL],
    )
