"""Store report figures read from the rollup tables: a few hundred rows at any scale.

``store_dashboard``, ``store_funnel`` and ``store_alerts`` shape them into the
reports. Their raw-event passes stay the reference, and the tests hold both to the
same figures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import date

from sqlalchemy import and_, case, func, or_, select

from ..models import DailyEventCount, DailyProductCount, SessionLastSeenCount
from ..rollups import SESSIONS_FORGOTTEN
from .common import Database, in_days


def events_per_day(
    conn: Database, *, tenant_id: int, first: date, last: date, types: Iterable[str]
) -> dict[date, Counter[str]]:
    """Events of each of ``types`` per local day in [first, last] (days without any left out)."""
    rows = conn.execute(
        select(DailyEventCount.day, DailyEventCount.event_type, DailyEventCount.events).where(
            *in_days(DailyEventCount, tenant_id, first, last),
            DailyEventCount.event_type.in_(list(types)),
        )
    )
    per_day: dict[date, Counter[str]] = {}
    for day, event_type, events in rows:
        per_day.setdefault(day, Counter())[event_type] += int(events)
    return per_day


def events_per_product(
    conn: Database, *, tenant_id: int, first: date, last: date, types: Iterable[str]
) -> list[tuple[str, str, int, str | None]]:
    """``(slug, type, events, greatest product name)`` over the local days [first, last]."""
    return [
        (slug, event_type, int(events), name)
        for slug, event_type, events, name in conn.execute(
            select(
                DailyProductCount.product_slug,
                DailyProductCount.event_type,
                func.sum(DailyProductCount.events),
                func.max(DailyProductCount.product_name),
            )
            .where(
                *in_days(DailyProductCount, tenant_id, first, last),
                DailyProductCount.event_type.in_(list(types)),
            )
            .group_by(DailyProductCount.product_slug, DailyProductCount.event_type)
        )
    ]


def maybe_popular_unbought(
    conn: Database,
    *,
    tenant_id: int,
    first: date,
    last: date,
    whole_days: tuple[date, date] | None,
    viewed: str,
    bought: tuple[str, ...],
    more_than: int,
) -> list[str]:
    """Products that may have had more than ``more_than`` viewing sessions and no purchase
    in a window: more ``viewed`` events than that over the local days [first, last] that
    overlap the window, and no event of a ``bought`` type on the days wholly inside it
    (``whole_days``, first and last). A superset: the raw events decide.
    """
    is_view = DailyProductCount.event_type == viewed
    views = func.sum(case((is_view, DailyProductCount.events), else_=0))
    conditions = [views > more_than]
    if whole_days is not None:
        bought_inside = and_(
            DailyProductCount.event_type.in_(bought),
            DailyProductCount.day >= whole_days[0],
            DailyProductCount.day <= whole_days[1],
        )
        conditions.append(func.sum(case((bought_inside, DailyProductCount.events), else_=0)) == 0)
    return list(
        conn.scalars(
            select(DailyProductCount.product_slug)
            .where(
                *in_days(DailyProductCount, tenant_id, first, last),
                DailyProductCount.event_type.in_((viewed, *bought)),
            )
            .group_by(DailyProductCount.product_slug)
            .having(*conditions)
            .order_by(DailyProductCount.product_slug)
        )
    )


def session_events(conn: Database, *, tenant_id: int, first: date, last: date) -> int:
    """Events with a session over the local days [first, last]."""
    total = conn.scalar(
        select(func.sum(DailyEventCount.session_events)).where(
            *in_days(DailyEventCount, tenant_id, first, last),
        )
    )
    return int(total or 0)


def session_counts(
    conn: Database,
    *,
    tenant_id: int,
    first: date,
    last: date,
    scopes: Iterable[str] = (),
    prefix: str | None = None,
) -> dict[str, int] | None:
    """Distinct sessions with events in the local days [first, last], per scope.

    The scopes are ``scopes`` and every scope starting with ``prefix``; one that
    had no session in those days is left out. A session counts in [first, last]
    when its last-seen day is on or after ``first``, which holds only while no
    session of these scopes was seen after ``last`` (a later event, or a window
    ending before today), and while ``first`` is past any day a purge forgot the
    sessions of (:func:`sessions_forgotten_on`): else None, and the caller counts
    the raw events.
    """
    forgotten = sessions_forgotten_on(conn, tenant_id=tenant_id)
    if forgotten is not None and first <= forgotten:
        return None
    table = SessionLastSeenCount
    matches = table.scope.in_(list(scopes))
    if prefix is not None:
        matches = or_(matches, table.scope.startswith(prefix, autoescape=True))
    rows = conn.execute(
        select(
            table.scope,
            func.sum(case((table.day <= last, table.sessions), else_=0)),
            func.sum(case((table.day > last, table.sessions), else_=0)),
        )
        .where(table.tenant_id == tenant_id, table.day >= first, matches)
        .group_by(table.scope)
    ).all()
    if any(later for _, _, later in rows):
        return None
    return {scope: int(sessions) for scope, sessions, _ in rows if sessions}


def sessions_forgotten_on(conn: Database, *, tenant_id: int) -> date | None:
    """The local day a purge cut through, while its sessions are forgotten; else None.

    A purge forgets the session ids of the day its cutoff falls in, those of the day's
    kept hours too, and marks the day (``rollups.forget_purged_days``): a window
    reaching it would miss the sessions last seen there. A rebuild keeps the mark (it
    may have run between the purge's batches); the next purge moves it to its own day.
    """
    return conn.scalar(
        select(func.max(SessionLastSeenCount.day)).where(
            SessionLastSeenCount.tenant_id == tenant_id,
            SessionLastSeenCount.scope == SESSIONS_FORGOTTEN,
        )
    )
