"""The conversion funnel: distinct sessions at each step between two local dates."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session
from typing_extensions import TypedDict  # pydantic reads no typing.TypedDict on 3.11

from ..catalogue import FUNNEL_STEPS
from ..models import Event
from ..rollups import DIRECT_SOURCE, type_scope
from ..timewindows import local_day
from . import store_rollups
from .common import Database, in_window
from .store_common import beside, local_bounds, report_settings, sessions_by, side_engine

FUNNEL_DAYS = 30

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
    """The funnel's local dates: ``end`` defaults to today, ``start`` to 30 days before
    ``end`` (the contract's "30 days ago")."""
    end = end or now.astimezone(zone).date()
    return start or end - timedelta(days=FUNNEL_DAYS), end


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
    start_date, end_date = local_bounds(days)
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
    report_settings(session)
    where = list(in_window(tenant_id, days[0].start, days[-1].end))
    if source == DIRECT_SOURCE:
        where.append((Event.source == source) | Event.source.is_(None))
    elif source is not None:
        where.append(Event.source == source)

    def sessions_at(conn: Database, steps: tuple[str, ...]) -> dict[str, int]:
        query = sessions_by(Event.event_type, where=[*where, Event.event_type.in_(steps)])
        return {step: count for step, count in conn.execute(query)}

    if side_engine(session) is None:
        sessions = sessions_at(session, FUNNEL_STEPS)
    else:  # page views are about half the events: counted beside the other steps
        page_views = beside(session, lambda conn: sessions_at(conn, FUNNEL_STEPS[:1]))
        sessions = sessions_at(session, FUNNEL_STEPS[1:]) | page_views()
    return Funnel(
        funnel=[FunnelStep(step=step, count=sessions.get(step, 0)) for step in FUNNEL_STEPS],
        start_date=start_date,
        end_date=end_date,
    )
