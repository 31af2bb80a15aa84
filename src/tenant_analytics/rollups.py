"""Rollup tables, kept in step with ``events`` inside the same transaction.

Per batch of events: counters per (tenant, local day, type), revenue per
(tenant, day, currency), the visitor set of each day with its size, and each
visitor's last-seen day with a histogram of those days. The landing
dashboard then reads a handful of rows instead of millions of events.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import delete, select, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .catalogue import Kind, types_of
from .models import (
    DailyEventCount,
    DailyRevenue,
    DailyVisitor,
    DailyVisitorCount,
    LastSeenCount,
    Tenant,
    VisitorLastSeen,
)
from .timewindows import tenant_zone

TIME_TYPES = frozenset(types_of(Kind.TIME_ON_PAGE))
REVENUE_TYPES = frozenset(types_of(Kind.CONVERSION, Kind.PURCHASE))
ROLLUP_MODELS = (
    DailyEventCount,
    DailyRevenue,
    DailyVisitor,
    DailyVisitorCount,
    VisitorLastSeen,
    LastSeenCount,
)


class TenantFields(Protocol):
    """The tenant fields rollups need: the zone of its days and its default currency."""

    @property
    def timezone(self) -> str: ...
    @property
    def currency(self) -> str: ...


# pg_advisory_xact_lock(ROLLUP_LOCK, tenant_id) serializes one tenant's rollup updates.
ROLLUP_LOCK = 7_411


def _insert(session: Session):
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _add_to(session: Session, model: Any, rows: list[dict[str, Any]], *columns: str) -> None:
    """Upsert ``rows`` into a counter table, adding ``columns`` to what is there."""
    if not rows:
        return
    table = model.__table__
    statement = _insert(session)(table).values(rows)
    statement = statement.on_conflict_do_update(
        index_elements=[c.name for c in table.primary_key.columns],
        set_={c: table.c[c] + statement.excluded[c] for c in columns},
    )
    session.execute(statement)


@dataclass
class RollupDelta:
    """What a batch of events adds to the rollups, aggregated in Python, sorted by key."""

    counts: list[tuple[int, date, str, int, Decimal]] = field(default_factory=list)
    revenue: list[tuple[int, date, str, Decimal]] = field(default_factory=list)
    members: list[tuple[int, date, str]] = field(default_factory=list)  # (tenant, day, visitor)
    latest: list[tuple[int, str, date]] = field(default_factory=list)  # (tenant, visitor, day)


def aggregate(
    rows: Sequence[Mapping[str, Any]], tenants: Mapping[int, TenantFields]
) -> RollupDelta:
    """Group event ``rows`` by tenant and local day, the way the rollup tables count them."""
    zones = {tenant_id: tenant_zone(t.timezone) for tenant_id, t in tenants.items()}
    counts: dict[tuple[int, date, str], list[Any]] = defaultdict(lambda: [0, Decimal(0)])
    revenue: dict[tuple[int, date, str], Decimal] = defaultdict(Decimal)
    seen: dict[tuple[int, str], set[date]] = defaultdict(set)
    for row in rows:
        tenant_id, event_type = row["tenant_id"], row["event_type"]
        day = row["created_at"].astimezone(zones[tenant_id]).date()
        counter = counts[(tenant_id, day, event_type)]
        counter[0] += 1
        if event_type in TIME_TYPES:
            counter[1] += Decimal(str((row.get("metadata") or {}).get("seconds", 0)))
        if event_type in REVENUE_TYPES and row.get("revenue") is not None:
            currency = row.get("currency") or tenants[tenant_id].currency
            revenue[(tenant_id, day, currency)] += Decimal(row["revenue"])
        if row.get("visitor_hash"):
            seen[(tenant_id, row["visitor_hash"])].add(day)
    return RollupDelta(
        counts=[(t, d, e, n, v) for (t, d, e), (n, v) in sorted(counts.items())],
        revenue=[(t, d, c, a) for (t, d, c), a in sorted(revenue.items())],
        members=sorted((t, d, h) for (t, h), days in seen.items() for d in days),
        latest=[(t, h, max(days)) for (t, h), days in sorted(seen.items())],
    )


def update_rollups(
    session: Session, rows: Sequence[Mapping[str, Any]], tenants: Mapping[int, TenantFields]
) -> None:
    """Add freshly inserted event ``rows`` to the rollups (same transaction), portably.

    PostgreSQL's hot path does the same in one round trip (``postgres_writer``).
    """
    delta = aggregate(rows, tenants)
    if session.get_bind().dialect.name == "postgresql":
        for tenant_id in sorted(tenants):  # one order everywhere: no deadlocks
            session.execute(
                text("SELECT pg_advisory_xact_lock(:lock, :tenant)"),
                {"lock": ROLLUP_LOCK, "tenant": tenant_id},
            )
    _add_to(
        session,
        DailyEventCount,
        [
            {"tenant_id": t, "day": d, "event_type": e, "events": n, "value_sum": v}
            for t, d, e, n, v in delta.counts
        ],
        "events",
        "value_sum",
    )
    _add_to(
        session,
        DailyRevenue,
        [{"tenant_id": t, "day": d, "currency": c, "amount": a} for t, d, c, a in delta.revenue],
        "amount",
    )
    _count_daily_visitors(session, delta.members)
    _move_last_seen(session, {(t, h): d for t, h, d in delta.latest})


def _count_daily_visitors(session: Session, members: list[tuple[int, date, str]]) -> None:
    """Add visitors to each day's set; count the ones that were not in it yet."""
    if not members:
        return
    table = DailyVisitor.__table__
    statement = (
        _insert(session)(table)
        .values([{"tenant_id": t, "day": d, "visitor_hash": h} for t, d, h in members])
        .on_conflict_do_nothing()
        .returning(table.c.tenant_id, table.c.day)
    )
    new = Counter(tuple(row) for row in session.execute(statement))
    _add_to(
        session,
        DailyVisitorCount,
        [{"tenant_id": t, "day": d, "visitors": n} for (t, d), n in sorted(new.items())],
        "visitors",
    )


def _move_last_seen(session: Session, latest: Mapping[tuple[int, str], date]) -> None:
    """Advance each visitor's last-seen day and shift the histogram to match."""
    if not latest:
        return
    keys = sorted(latest)
    previous: dict[tuple[int, str], date] = {}
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        previous.update(
            ((t, h), d)
            for t, h, d in session.execute(
                select(
                    VisitorLastSeen.tenant_id,
                    VisitorLastSeen.visitor_hash,
                    VisitorLastSeen.last_day,
                ).where(tuple_(VisitorLastSeen.tenant_id, VisitorLastSeen.visitor_hash).in_(chunk))
            )
        )
    moved, delta = [], Counter()
    for key in keys:
        day, before = latest[key], previous.get(key)
        if before is not None and day <= before:
            continue
        moved.append({"tenant_id": key[0], "visitor_hash": key[1], "last_day": day})
        delta[(key[0], day)] += 1
        if before is not None:
            delta[(key[0], before)] -= 1
    if moved:
        table = VisitorLastSeen.__table__
        statement = _insert(session)(table).values(moved)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=[table.c.tenant_id, table.c.visitor_hash],
                set_={"last_day": statement.excluded.last_day},
            )
        )
    _add_to(
        session,
        LastSeenCount,
        [{"tenant_id": t, "day": d, "visitors": n} for (t, d), n in sorted(delta.items()) if n],
        "visitors",
    )


def clear_rollups(session: Session, tenant_id: int) -> None:
    for model in ROLLUP_MODELS:
        session.execute(delete(model).where(model.tenant_id == tenant_id))


# Rebuilding from raw events in SQL (PostgreSQL); day keys in the tenant's zone.
REBUILD_SQL = (
    """
    INSERT INTO daily_event_counts (tenant_id, day, event_type, events, value_sum)
    SELECT tenant_id, (created_at AT TIME ZONE :zone)::date, event_type, count(*),
           coalesce(sum(CASE WHEN event_type = ANY(:time_types)
                             THEN (metadata ->> 'seconds')::numeric END), 0)
    FROM events WHERE tenant_id = :tenant GROUP BY 1, 2, 3
    """,
    """
    INSERT INTO daily_revenue (tenant_id, day, currency, amount)
    SELECT tenant_id, (created_at AT TIME ZONE :zone)::date, coalesce(currency, :currency),
           sum(revenue)
    FROM events
    WHERE tenant_id = :tenant AND event_type = ANY(:revenue_types) AND revenue IS NOT NULL
    GROUP BY 1, 2, 3
    """,
    """
    INSERT INTO daily_visitors (tenant_id, day, visitor_hash)
    SELECT DISTINCT tenant_id, (created_at AT TIME ZONE :zone)::date, visitor_hash
    FROM events WHERE tenant_id = :tenant AND visitor_hash IS NOT NULL
    """,
    """
    INSERT INTO daily_visitor_counts (tenant_id, day, visitors)
    SELECT tenant_id, day, count(*) FROM daily_visitors WHERE tenant_id = :tenant GROUP BY 1, 2
    """,
    """
    INSERT INTO visitor_last_seen (tenant_id, visitor_hash, last_day)
    SELECT tenant_id, visitor_hash, max(day) FROM daily_visitors
    WHERE tenant_id = :tenant GROUP BY 1, 2
    """,
    """
    INSERT INTO last_seen_counts (tenant_id, day, visitors)
    SELECT tenant_id, last_day, count(*) FROM visitor_last_seen
    WHERE tenant_id = :tenant GROUP BY 1, 2
    """,
)


def rebuild_rollups(session: Session, tenant: Tenant, *, chunk: int = 5000) -> None:
    """Recompute a tenant's rollups from its raw events (after a bulk load or a zone change)."""
    from .models import Event

    clear_rollups(session, tenant.id)
    if session.get_bind().dialect.name == "postgresql":
        params = {
            "tenant": tenant.id,
            "zone": tenant_zone(tenant.timezone).key,
            "currency": tenant.currency,
            "time_types": sorted(TIME_TYPES),
            "revenue_types": sorted(REVENUE_TYPES),
        }
        for statement in REBUILD_SQL:
            session.execute(text(statement), params)
        return
    columns = (
        "tenant_id",
        "created_at",
        "event_type",
        "metadata",
        "revenue",
        "currency",
        "visitor_hash",
    )
    table = Event.__table__
    result = session.execute(
        select(*(table.c[name] for name in columns)).where(table.c.tenant_id == tenant.id)
    )
    while batch := result.fetchmany(chunk):
        update_rollups(
            session, [dict(zip(columns, row, strict=True)) for row in batch], {tenant.id: tenant}
        )
