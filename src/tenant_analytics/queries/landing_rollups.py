"""The landing dashboard read from the rollup tables: a few dozen rows at any scale.

Same figures as ``queries.landing`` (which reads the raw events and stays the
reference): the tests and the benchmark check that both agree.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from ..catalogue import EVENT_KINDS, REVENUE_KINDS, Kind
from ..models import (
    DEFAULT_CURRENCY,
    DailyEventCount,
    DailyRevenue,
    DailyVisitor,
    DailyVisitorCount,
    LastSeenCount,
)
from ..timewindows import last_days
from .common import in_days, money, ratio_half_up
from .landing import DayVisitors, LandingSummary, TodaySummary

# Visitors seen after today looked up one by one up to this many (about 2 ms per 10 at
# 200,000 a week); beyond, the week's daily visitor sets are counted (about 90 ms).
LOOKUP_MAX = 100


def _kind_totals(
    session: Session, *, tenant_id: int, first: date, last: date
) -> tuple[dict[Kind, int], dict[Kind, float]]:
    """Event counts and summed values per kind over the local days [first, last]."""
    rows = session.execute(
        select(
            DailyEventCount.event_type,
            func.sum(DailyEventCount.events),
            func.sum(DailyEventCount.value_sum),
        )
        .where(
            *in_days(DailyEventCount, tenant_id, first, last),
        )
        .group_by(DailyEventCount.event_type)
    ).all()
    counts: dict[Kind, int] = dict.fromkeys(Kind, 0)
    values: dict[Kind, float] = dict.fromkeys(Kind, 0.0)
    for event_type, events, value in rows:
        kind = EVENT_KINDS.get(event_type)
        if kind is not None:
            counts[kind] += int(events)
            values[kind] += float(value or 0)
    return counts, values


def _visitors_by_day(
    session: Session, *, tenant_id: int, first: date, last: date
) -> dict[date, int]:
    rows = session.execute(
        select(DailyVisitorCount.day, DailyVisitorCount.visitors).where(
            *in_days(DailyVisitorCount, tenant_id, first, last),
        )
    ).all()
    return {day: int(visitors) for day, visitors in rows}


def count_recent_visitors(session: Session, *, tenant_id: int, first: date, last: date) -> int:
    """Distinct visitors seen in the local days [first, last], the last being today.

    Those whose latest visit falls in them, from the last-seen counts. Visitors also
    seen after ``last`` (a host whose clock runs ahead wrote a visit past midnight)
    have their latest day past the window: a few are looked up in the window's daily
    visitor sets; more, and the sets are counted whole (bounded by the week's size).
    """
    in_window, later = session.execute(
        select(
            func.sum(case((LastSeenCount.day <= last, LastSeenCount.visitors), else_=0)),
            func.sum(case((LastSeenCount.day > last, LastSeenCount.visitors), else_=0)),
        ).where(LastSeenCount.tenant_id == tenant_id, LastSeenCount.day >= first)
    ).one()
    if not later:
        return int(in_window or 0)
    window_days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    distinct_in_window = select(func.count(func.distinct(DailyVisitor.visitor_hash))).where(
        DailyVisitor.tenant_id == tenant_id,
        DailyVisitor.day.in_(window_days),  # with a hash: an index probe per day
    )
    if later > LOOKUP_MAX:
        return session.scalar(distinct_in_window) or 0
    seen_later = select(DailyVisitor.visitor_hash).where(
        DailyVisitor.tenant_id == tenant_id, DailyVisitor.day > last
    )
    hashes = session.scalars(seen_later.distinct()).all()
    also = session.scalar(distinct_in_window.where(DailyVisitor.visitor_hash.in_(hashes)))
    return int(in_window or 0) + (also or 0)


def _revenue(session: Session, *, tenant_id: int, first: date, last: date) -> dict[str, float]:
    rows = session.execute(
        select(DailyRevenue.currency, func.sum(DailyRevenue.amount))
        .where(
            *in_days(DailyRevenue, tenant_id, first, last),
        )
        .group_by(DailyRevenue.currency)
    ).all()
    return {currency: money(amount) for currency, amount in rows}


def landing_summary(
    session: Session,
    *,
    tenant_id: int,
    zone: ZoneInfo,
    now: datetime,
    currency: str = DEFAULT_CURRENCY,
) -> LandingSummary:
    """The landing dashboard over the last 7 local days, from rollups.

    ``currency`` keeps the raw query's signature (queries/landing.py), where it stands
    in for events stored without one; the rollups keep the currency each event was
    written with (the tenant's at the time), so it is not needed here.
    """
    days = [day.date for day in last_days(zone, now, 7)]
    window = {"tenant_id": tenant_id, "first": days[0], "last": days[-1]}
    per_day = _visitors_by_day(session, **window)
    counts, values = _kind_totals(session, **window)
    timed = counts[Kind.TIME_ON_PAGE]
    return LandingSummary(
        visitors_today=per_day.get(days[-1], 0),
        visitors_week=count_recent_visitors(session, **window),
        whatsapp_clicks=counts[Kind.WHATSAPP_TAP],
        call_clicks=counts[Kind.CALL],
        currency_toggles=counts[Kind.CURRENCY_TOGGLE],
        qr_scans=counts[Kind.QR_SCAN],
        avg_time_on_page=int(ratio_half_up(values[Kind.TIME_ON_PAGE], timed)) if timed else 0,
        last_7_days=[DayVisitors(day.isoformat(), per_day.get(day, 0)) for day in days],
        maps_clicks=counts[Kind.MAPS],
        conversions=sum(counts[kind] for kind in REVENUE_KINDS),
        revenue=_revenue(session, **window),
        page_views=counts[Kind.VIEW],
    )


def today_summary(
    session: Session, *, tenant_id: int, zone: ZoneInfo, now: datetime
) -> TodaySummary:
    """Today's summary (local day), from rollups."""
    today = now.astimezone(zone).date()
    window = {"tenant_id": tenant_id, "first": today, "last": today}
    counts, _ = _kind_totals(session, **window)
    return TodaySummary(
        date=today.isoformat(),
        visitors_today=_visitors_by_day(session, **window).get(today, 0),
        whatsapp_clicks=counts[Kind.WHATSAPP_TAP],
        qr_scans=counts[Kind.QR_SCAN],
        products_viewed=counts[Kind.PRODUCT_CLICK],
        call_clicks=counts[Kind.CALL],
    )
