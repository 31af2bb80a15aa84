"""RFM: recency, frequency and monetary value of each signed-in buyer, and their segment."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal
from zoneinfo import ZoneInfo

from sqlalchemy import case, desc, func, select
from sqlalchemy.orm import Session
from typing_extensions import TypedDict  # pydantic reads no typing.TypedDict on 3.11

from ..catalogue import PURCHASE
from ..models import DEFAULT_CURRENCY, Event
from ..timewindows import lookback_days
from .common import in_window, money
from .store_common import by_code_point, local_bounds, of_type

RFM_DAYS = 90

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
    """Recency, frequency and monetary value of each signed-in buyer over the last 90 days
    (today and the 90 local days before it).

    Recency is whole local days from the last purchase to today; frequency the
    purchase events; monetary their revenue in ``currency`` (the tenant's, that of
    the VIP threshold; a purchase in another currency is not added in). Biggest
    spenders first (then by id, so pages do not overlap); only those of ``segment``
    when one is named, ``limit`` of them from ``offset``.
    """
    days = lookback_days(zone, now, RFM_DAYS)
    today = days[-1].date
    in_currency = func.coalesce(Event.currency, currency) == currency
    monetary = func.coalesce(func.sum(case((in_currency, Event.revenue))), 0).label("monetary")
    rows = session.execute(
        select(Event.user_id, func.max(Event.created_at), func.count(), monetary)
        .where(
            *in_window(tenant_id, days[0].start, days[-1].end),
            of_type(PURCHASE),
            Event.user_id.is_not(None),
        )
        .group_by(Event.user_id)
        .order_by(desc(monetary), by_code_point(session, Event.user_id))
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
                monetary=money(Decimal(spent)),
                segment=customer_segment,
                segmento=SEGMENT_LABELS[customer_segment],
            )
        )
    start_date, end_date = local_bounds(days)
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
