"""Rollup tables, kept in step with ``events`` inside the same transaction.

Per batch of events: counters per (tenant, local day, type) and per (tenant,
day, type, product), revenue per (tenant, day, currency), the visitor set of
each day with its size, each visitor's last-seen day with a histogram of those
days, and the same last-seen histogram for sessions in each of their scopes.
The landing dashboard and the store reports then read a handful of rows
instead of millions of events.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import Date, bindparam, case, delete, select, text, tuple_
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from .catalogue import REVENUE_KINDS, STORE_TYPES, Kind, types_of
from .models import (
    DailyEventCount,
    DailyProductCount,
    DailyRevenue,
    DailyVisitor,
    DailyVisitorCount,
    Event,
    LastSeenCount,
    SessionLastSeen,
    SessionLastSeenCount,
    Tenant,
    VisitorLastSeen,
    dialect_insert,
)
from .timewindows import postgres_zone, tenant_zone

TIME_TYPES = frozenset(types_of(Kind.TIME_ON_PAGE))
REVENUE_TYPES = frozenset(types_of(*REVENUE_KINDS))
ROLLUP_MODELS = (
    DailyEventCount,
    DailyRevenue,
    DailyVisitor,
    DailyVisitorCount,
    VisitorLastSeen,
    LastSeenCount,
    DailyProductCount,
    SessionLastSeen,
    SessionLastSeenCount,
)
# What a NULL source counts as in the session scopes (and in the store reports).
DIRECT_SOURCE = "direct"
ALL_SESSIONS = "all"
# Not sessions but a mark, in session_last_seen_counts: the local day a purge forgot the
# sessions of (see forget_purged_days), until the next purge marks its own day.
SESSIONS_FORGOTTEN = "forgotten"


def source_scope(source: str) -> str:
    """The scope of the sessions with events from ``source`` (NULL counts as DIRECT_SOURCE)."""
    return f"source={source}"


def type_scope(event_type: str, source: str | None = None) -> str:
    """The scope of the sessions with events of ``event_type`` (from ``source`` if given).

    Only store types have these scopes (SESSION_TYPES). Types never hold "&", so no
    two (type, source) pairs share a scope.
    """
    return f"type={event_type}" if source is None else f"type={event_type}&source={source}"


# The types whose sessions are counted per type: the store's. Landing events carry
# a session only when the client sent one, and no report shows their per-type
# figures, so per-type scopes for them would cost two more rows per event for nothing.
SESSION_TYPES = frozenset(STORE_TYPES)


# A row key, not a column: True when the event's session id was made for it alone
# (event_builders.track_event: a store event sent without one). Such a session is
# never seen again, so its last-seen day is the event's day for good: it is counted
# in the histogram without a row of its own in session_last_seen, which keeps those
# events as cheap to write as the ones without a session.
NEW_SESSION = "new_session"


def session_scopes(event_type: str, source: str | None) -> tuple[str, ...]:
    """Every scope an event with a session counts its session in."""
    group = DIRECT_SOURCE if source is None else source
    if event_type not in SESSION_TYPES:
        return ALL_SESSIONS, source_scope(group)
    return (
        ALL_SESSIONS,
        source_scope(group),
        type_scope(event_type),
        type_scope(event_type, group),
    )


class TenantFields(Protocol):
    """The tenant fields rollups need: the zone of its days and its default currency."""

    @property
    def timezone(self) -> str: ...
    @property
    def currency(self) -> str: ...


class TenantRef(TenantFields, Protocol):
    """What the write path needs of a tenant: a ``Tenant`` or a plain ``TenantInfo``."""

    @property
    def id(self) -> int: ...


@dataclass(frozen=True)
class TenantInfo:
    """A plain copy of a tenant's write-path fields, safe to hand to another thread."""

    id: int
    timezone: str
    currency: str

    @classmethod
    def of(cls, tenant: TenantRef) -> TenantInfo:
        if isinstance(tenant, TenantInfo):
            return tenant
        return cls(tenant.id, tenant.timezone, tenant.currency)


# pg_advisory_xact_lock(ROLLUP_LOCK, tenant_id) serializes one tenant's rollup updates.
ROLLUP_LOCK = 7_411
LOCK_ROLLUPS = text("SELECT pg_advisory_xact_lock(:lock, :tenant)")


def _lock_rollups(session: Session, tenant_id: int) -> None:
    """Hold the tenant's rollup lock until the transaction ends (PostgreSQL only)."""
    session.execute(LOCK_ROLLUPS, {"lock": ROLLUP_LOCK, "tenant": tenant_id})


def hold_rollups(session: Session, tenant_id: int) -> None:
    """Writers of the tenant's events wait until this transaction ends (PostgreSQL: its
    rollup lock; on SQLite the transaction's first write takes the database's lock)."""
    if session.get_bind().dialect.name == "postgresql":
        _lock_rollups(session, tenant_id)


def _add_to(
    session: Session,
    model: Any,
    rows: list[dict[str, Any]],
    *columns: str,
    greatest: tuple[str, ...] = (),
) -> None:
    """Upsert ``rows`` into a counter table, adding ``columns`` to what is there.

    ``greatest`` columns keep the greater of the two values, NULL being the least.
    """
    if not rows:
        return
    table = model.__table__
    statement = dialect_insert(session)(table).values(rows)
    new = statement.excluded
    changes = {c: table.c[c] + new[c] for c in columns}
    for c in greatest:
        old = table.c[c]
        changes[c] = case((old.is_(None), new[c]), (new[c] > old, new[c]), else_=old)
    statement = statement.on_conflict_do_update(
        index_elements=[c.name for c in table.primary_key.columns], set_=changes
    )
    session.execute(statement)


@dataclass
class RollupDelta:
    """What a batch of events adds to the rollups, aggregated in Python, sorted by key."""

    # (tenant, day, type, events, value, events with a session)
    counts: list[tuple[int, date, str, int, Decimal, int]] = field(default_factory=list)
    # (tenant, day, type, product slug, events, greatest product name)
    products: list[tuple[int, date, str, str, int, str | None]] = field(default_factory=list)
    revenue: list[tuple[int, date, str, Decimal]] = field(default_factory=list)
    members: list[tuple[int, date, str]] = field(default_factory=list)  # (tenant, day, visitor)
    latest: list[tuple[int, str, date]] = field(default_factory=list)  # (tenant, visitor, day)
    # (tenant, scope, session, day)
    sessions: list[tuple[int, str, str, date]] = field(default_factory=list)
    # (tenant, scope, day, sessions): NEW_SESSION sessions, straight into the histogram
    new_sessions: list[tuple[int, str, date, int]] = field(default_factory=list)
    # (tenant, zone name): the zone each tenant's day keys above are in
    zones: list[tuple[int, str]] = field(default_factory=list)


def aggregate(
    rows: Sequence[Mapping[str, Any]], tenants: Mapping[int, TenantFields]
) -> RollupDelta:
    """Group event ``rows`` by tenant and local day, the way the rollup tables count them."""
    zones = {tenant_id: tenant_zone(t.timezone) for tenant_id, t in tenants.items()}
    counts: dict[tuple[int, date, str], list[Any]] = defaultdict(lambda: [0, Decimal(0), 0])
    products: dict[tuple[int, date, str, str], list[Any]] = defaultdict(lambda: [0, None])
    revenue: dict[tuple[int, date, str], Decimal] = defaultdict(Decimal)
    seen: dict[tuple[int, str], set[date]] = defaultdict(set)
    sessions: dict[tuple[int, str, str], date] = {}
    new_sessions: Counter[tuple[int, str, date]] = Counter()
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
        if slug := row.get("product_slug"):
            product = products[(tenant_id, day, event_type, slug)]
            product[0] += 1
            name = row.get("product_name")
            if name is not None and (product[1] is None or name > product[1]):
                product[1] = name
        if session_id := row.get("session_id"):
            counter[2] += 1
            scopes = session_scopes(event_type, row.get("source"))
            if row.get(NEW_SESSION):
                new_sessions.update((tenant_id, scope, day) for scope in scopes)
                continue
            for scope in scopes:
                key = (tenant_id, scope, session_id)
                if key not in sessions or sessions[key] < day:
                    sessions[key] = day
    return RollupDelta(
        counts=[(t, d, e, n, v, s) for (t, d, e), (n, v, s) in sorted(counts.items())],
        products=[(t, d, e, p, n, name) for (t, d, e, p), (n, name) in sorted(products.items())],
        revenue=[(t, d, c, a) for (t, d, c), a in sorted(revenue.items())],
        members=sorted((t, d, h) for (t, h), days in seen.items() for d in days),
        latest=[(t, h, max(days)) for (t, h), days in sorted(seen.items())],
        sessions=[(t, scope, s, d) for (t, scope, s), d in sorted(sessions.items())],
        new_sessions=[(t, scope, d, n) for (t, scope, d), n in sorted(new_sessions.items())],
        zones=[(t, tenants[t].timezone) for t in sorted({row["tenant_id"] for row in rows})],
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
            _lock_rollups(session, tenant_id)
    _add_to(
        session,
        DailyEventCount,
        [
            {
                "tenant_id": t,
                "day": d,
                "event_type": e,
                "events": n,
                "value_sum": v,
                "session_events": s,
            }
            for t, d, e, n, v, s in delta.counts
        ],
        "events",
        "value_sum",
        "session_events",
    )
    _add_to(
        session,
        DailyProductCount,
        [
            {
                "tenant_id": t,
                "day": d,
                "event_type": e,
                "product_slug": p,
                "events": n,
                "product_name": name,
            }
            for t, d, e, p, n, name in delta.products
        ],
        "events",
        greatest=("product_name",),
    )
    _add_to(
        session,
        DailyRevenue,
        [{"tenant_id": t, "day": d, "currency": c, "amount": a} for t, d, c, a in delta.revenue],
        "amount",
    )
    _count_daily_visitors(session, delta.members)
    _move_last_seen(
        session, {(t, h): d for t, h, d in delta.latest}, VisitorLastSeen, LastSeenCount
    )
    _move_last_seen(
        session,
        {(t, scope, s): d for t, scope, s, d in delta.sessions},
        SessionLastSeen,
        SessionLastSeenCount,
    )
    _add_to(
        session,
        SessionLastSeenCount,
        [
            {"tenant_id": t, "scope": scope, "day": d, "sessions": n}
            for t, scope, d, n in delta.new_sessions
        ],
        "sessions",
    )


def _count_daily_visitors(session: Session, members: list[tuple[int, date, str]]) -> None:
    """Add visitors to each day's set; count the ones that were not in it yet."""
    if not members:
        return
    table = DailyVisitor.__table__
    statement = (
        dialect_insert(session)(table)
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


def _move_last_seen(
    session: Session, latest: Mapping[tuple[Any, ...], date], seen_model: Any, count_model: Any
) -> None:
    """Advance each key's last-seen day and shift the histogram of those days to match.

    ``seen_model``'s primary key is the key (tenant first, the visitor or session
    last) and it has a ``last_day``; ``count_model``'s primary key is the key
    without its last part, then ``day``, and its one other column is the count.
    """
    if not latest:
        return
    seen = seen_model.__table__
    key_columns = list(seen.primary_key.columns)
    (counted,) = (c.name for c in count_model.__table__.c if not c.primary_key)
    keys = sorted(latest)
    previous: dict[tuple[Any, ...], date] = {}
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        previous.update(
            (tuple(row[:-1]), row[-1])
            for row in session.execute(
                select(*key_columns, seen.c.last_day).where(tuple_(*key_columns).in_(chunk))
            )
        )
    moved, delta = [], Counter()
    for key in keys:
        day, before = latest[key], previous.get(key)
        if before is not None and day <= before:
            continue
        row = {c.name: value for c, value in zip(key_columns, key, strict=True)}
        moved.append({**row, "last_day": day})
        delta[(*key[:-1], day)] += 1
        if before is not None:
            delta[(*key[:-1], before)] -= 1
    if moved:
        statement = dialect_insert(session)(seen).values(moved)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=key_columns, set_={"last_day": statement.excluded.last_day}
            )
        )
    group_names = [c.name for c in key_columns[:-1]]
    _add_to(
        session,
        count_model,
        [
            {**dict(zip(group_names, group[:-1], strict=True)), "day": group[-1], counted: n}
            for group, n in sorted(delta.items())
            if n
        ],
        counted,
    )


# Rows a purge deletes per transaction: the tenant's writers wait for its rollup lock
# no longer than one such batch takes.
FORGET_BATCH = 5000
# A visitor's (session's) last-seen row before the count it is in: a writer that finds
# the row moves the visitor out of that count, so the count must still be there.
LAST_SEEN_FIRST = (
    VisitorLastSeen,
    SessionLastSeen,
    *(model for model in ROLLUP_MODELS if model not in (VisitorLastSeen, SessionLastSeen)),
)


# Rows that name a visitor or a session, and the last-seen counts that must count exactly
# those rows: a purge forgets them of the local day at its cutoff too, part of which it
# dropped, so that no hash or session id outlives the events it came from.
NAMING_VISITORS = (
    VisitorLastSeen,
    SessionLastSeen,
    DailyVisitor,
    LastSeenCount,
    SessionLastSeenCount,
)


def mark_days_to_be_purged(session: Session, gone: datetime) -> list[tuple[int, date]]:
    """Before a purge deletes the events before ``gone``: mark each tenant's local day of
    it, so that until ``forget_purged_days`` reaches the tenant (one after another, each
    waiting for its rollup lock), a report whose window reaches the purged days counts
    the events left, not the sessions its rollups still name there. Returns the marks
    made, for ``unmark_days`` should the purge drop nothing."""
    tenants = session.execute(select(Tenant.id, Tenant.timezone).order_by(Tenant.id)).all()
    session.commit()
    postgres = session.get_bind().dialect.name == "postgresql"
    marked = []
    for tenant_id, zone_name in tenants:
        day = gone.astimezone(tenant_zone(zone_name)).date()
        if _mark_sessions_forgotten(session, tenant_id, day, postgres=postgres):
            marked.append((tenant_id, day))
    return marked


def unmark_days(session: Session, marked: list[tuple[int, date]]) -> None:
    """Take ``mark_days_to_be_purged``'s marks away: the purge dropped nothing."""
    postgres = session.get_bind().dialect.name == "postgresql"
    for tenant_id, day in marked:
        _unmark_sessions_forgotten(session, tenant_id, day, postgres=postgres)


def forget_purged_days(session: Session, gone: datetime) -> int:
    """Delete each tenant's rollups of the local days that ended by ``gone`` (every event
    before it was purged), and the visitor and session rows of the day it falls in;
    return how many rows. That day's counts stay until a rebuild recounts them.

    In batches of FORGET_BATCH rows, each its own transaction under the tenant's rollup
    lock: its writers move a returning visitor's last-seen day within these same rows,
    and wait for the lock at most WRITE_LOCK_TIMEOUT_MS.
    """
    tenants = session.execute(select(Tenant.id, Tenant.timezone).order_by(Tenant.id)).all()
    session.commit()
    postgres = session.get_bind().dialect.name == "postgresql"
    # Rows by their physical address: a TID scan on PostgreSQL, rowids on SQLite.
    rows = "ctid = ANY(ARRAY({}))" if postgres else "rowid IN ({})"
    deleted = 0
    for tenant_id, zone_name in tenants:
        local = gone.astimezone(tenant_zone(zone_name))
        partly_purged = local.time() != time.min
        # Marked first: a purge stopped halfway has forgotten some of the day's sessions.
        if partly_purged:
            _mark_sessions_forgotten(session, tenant_id, local.date(), postgres=postgres)
        for model in LAST_SEEN_FIRST:
            day = local.date()
            if partly_purged and model in NAMING_VISITORS:
                day += timedelta(days=1)
            column = "last_day" if model in (VisitorLastSeen, SessionLastSeen) else "day"
            table = model.__tablename__
            row = "ctid" if postgres else "rowid"
            # The mark of this purge's day is kept; those of earlier purges go.
            spared = (
                " AND NOT (scope = :mark AND day = :marked)"
                if model is SessionLastSeenCount
                else ""
            )
            chosen = (
                f"SELECT {row} FROM {table}"
                f" WHERE tenant_id = :tenant AND {column} < :day{spared} LIMIT :batch"
            )
            batch = text(f"DELETE FROM {table} WHERE {rows.format(chosen)}").bindparams(
                bindparam("day", type_=Date)
            )
            if spared:
                batch = batch.bindparams(
                    bindparam("mark", SESSIONS_FORGOTTEN),
                    bindparam("marked", local.date(), type_=Date),
                )
            while True:
                if postgres:
                    _lock_rollups(session, tenant_id)
                result = session.execute(
                    batch, {"tenant": tenant_id, "day": day, "batch": FORGET_BATCH}
                )
                session.commit()
                deleted += result.rowcount
                if result.rowcount < FORGET_BATCH:
                    break
        if not partly_purged:  # its rollups name no session of the purged days now
            _unmark_sessions_forgotten(session, tenant_id, local.date(), postgres=postgres)
    return deleted


def _mark_sessions_forgotten(
    session: Session, tenant_id: int, day: date, *, postgres: bool
) -> bool:
    """Mark ``day`` as one whose sessions the rollups no longer name (its kept hours'
    included): the reports count a window reaching it from the events. False when the
    mark was there already, or the tenant is gone (deleted since it was listed)."""
    if postgres:
        _lock_rollups(session, tenant_id)
    mark = {"tenant_id": tenant_id, "scope": SESSIONS_FORGOTTEN, "day": day, "sessions": 0}
    insert = dialect_insert(session)(SessionLastSeenCount).values(**mark)
    try:
        made = session.execute(insert.on_conflict_do_nothing()).rowcount == 1
        session.commit()
    except IntegrityError:  # its tenant's row is gone: nothing of it to purge either
        session.rollback()
        return False
    return made


def _unmark_sessions_forgotten(
    session: Session, tenant_id: int, day: date, *, postgres: bool
) -> None:
    """Take away ``mark_days_to_be_purged``'s mark of a day the purge did not cut."""
    if postgres:
        _lock_rollups(session, tenant_id)
    session.execute(
        delete(SessionLastSeenCount).where(
            SessionLastSeenCount.tenant_id == tenant_id,
            SessionLastSeenCount.scope == SESSIONS_FORGOTTEN,
            SessionLastSeenCount.day == day,
        )
    )
    session.commit()


def clear_rollups(session: Session, tenant_id: int) -> None:
    """Delete the tenant's rollups but a purge's mark: a rebuild that ran between a
    purge's batches recounted sessions the purge then forgot (its next purge replaces
    the mark; until then a window reaching the day counts from the events, as exact)."""
    for model in ROLLUP_MODELS:
        rows = delete(model).where(model.tenant_id == tenant_id)
        if model is SessionLastSeenCount:
            rows = rows.where(SessionLastSeenCount.scope != SESSIONS_FORGOTTEN)
        session.execute(rows)


# Rebuilding from raw events in SQL (PostgreSQL); day keys in the tenant's zone. The
# big rollups are inserted sorted, so their primary keys fill a few pages at a time
# rather than pages all over the index: half the time at millions of rows.
REBUILD_SQL = (
    # The visitor and session rollups come from one scan of the events into their
    # distinct visits (local day, visitor, session, session type, source): a fifth of
    # a landing page's events, half of a store's. CREATE TABLE AS may scan in
    # parallel, INSERT ... SELECT never does. Dropped at the end, on commit if not.
    """
    CREATE TEMPORARY TABLE rebuild_visits ON COMMIT DROP AS
    SELECT (created_at AT TIME ZONE :zone)::date AS day, visitor_hash, session_id,
           CASE WHEN event_type = ANY(:session_types) THEN event_type END AS session_type,
           coalesce(source, :direct) AS source
    FROM events
    WHERE tenant_id = :tenant AND (visitor_hash IS NOT NULL OR session_id IS NOT NULL)
    GROUP BY 1, 2, 3, 4, 5
    """,
    # Autovacuum never analyzes a temporary table: the planner sizes the hashes below.
    "ANALYZE rebuild_visits",
    """
    INSERT INTO daily_event_counts
        (tenant_id, day, event_type, events, value_sum, session_events)
    SELECT tenant_id, (created_at AT TIME ZONE :zone)::date, event_type, count(*),
           coalesce(sum(CASE WHEN event_type = ANY(:time_types)
                             THEN (metadata ->> 'seconds')::numeric END), 0),
           count(session_id)
    FROM events WHERE tenant_id = :tenant GROUP BY 1, 2, 3
    """,
    """
    INSERT INTO daily_product_counts
        (tenant_id, day, event_type, product_slug, events, product_name)
    SELECT tenant_id, (created_at AT TIME ZONE :zone)::date, event_type, product_slug, count(*),
           max(product_name)
    FROM events WHERE tenant_id = :tenant AND product_slug IS NOT NULL GROUP BY 1, 2, 3, 4
    """,
    # The scopes of rollups.session_scopes, built in SQL (a NULL session type has no
    # type scopes). Sorted by session, each scope's part of the key still fills in
    # order, and the sort takes less than by scope first.
    """
    INSERT INTO session_last_seen (tenant_id, scope, session_id, last_day)
    SELECT :tenant, scope, session_id, max(last_day)
    FROM (
        SELECT session_id, session_type, source, max(day) AS last_day
        FROM rebuild_visits WHERE session_id IS NOT NULL
        GROUP BY 1, 2, 3
    ) AS per_type
    CROSS JOIN LATERAL (
        VALUES (:all_sessions), ('source=' || source), ('type=' || session_type),
               ('type=' || session_type || '&source=' || source)
    ) AS scopes (scope)
    WHERE scope IS NOT NULL
    GROUP BY session_id, scope
    ORDER BY session_id, scope
    """,
    """
    INSERT INTO session_last_seen_counts (tenant_id, scope, day, sessions)
    SELECT tenant_id, scope, last_day, count(*) FROM session_last_seen
    WHERE tenant_id = :tenant GROUP BY 1, 2, 3
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
    SELECT DISTINCT :tenant, day, visitor_hash
    FROM rebuild_visits WHERE visitor_hash IS NOT NULL
    ORDER BY day, visitor_hash
    """,
    """
    INSERT INTO daily_visitor_counts (tenant_id, day, visitors)
    SELECT tenant_id, day, count(*) FROM daily_visitors WHERE tenant_id = :tenant GROUP BY 1, 2
    """,
    """
    INSERT INTO visitor_last_seen (tenant_id, visitor_hash, last_day)
    SELECT tenant_id, visitor_hash, max(day) FROM daily_visitors
    WHERE tenant_id = :tenant GROUP BY 1, 2 ORDER BY 1, 2
    """,
    """
    INSERT INTO last_seen_counts (tenant_id, day, visitors)
    SELECT tenant_id, last_day, count(*) FROM visitor_last_seen
    WHERE tenant_id = :tenant GROUP BY 1, 2
    """,
    # Gone now, so another rebuild in the same transaction can make its own.
    "DROP TABLE rebuild_visits",
)
# Memory for each sort and (twice it) each hash of a rebuild, for the rest of its
# transaction: 10 million landing events make ~1.8 million visits, hashed in ~350MB;
# with 64MB they spill to disk and take twice as long.
REBUILD_WORK_MEM = "256MB"


def lock_rollups_within(session: Session, tenant_id: int, seconds: float) -> bool:
    """Take the tenant's rollup lock for the rest of the transaction, waiting at most
    ``seconds``: each write holds it for the milliseconds of its commit, a rebuild for
    as long as the rebuild takes. False when it is still held then. (PostgreSQL's; on
    SQLite a rebuild takes the database's write lock, and this is True.)"""
    if session.get_bind().dialect.name != "postgresql":
        return True
    from .postgres_writer import lock_timed_out, lock_timeout_setting  # they build on this

    wait = lock_timeout_setting(seconds)
    previous = session.scalar(text("SELECT current_setting('lock_timeout')"))
    try:
        with session.begin_nested():  # a wait that runs out leaves the transaction usable
            session.execute(text("SELECT set_config('lock_timeout', :wait, true)"), {"wait": wait})
            _lock_rollups(session, tenant_id)
    except OperationalError as exc:
        if lock_timed_out(exc):
            return False
        raise
    # The rebuild that follows waits for its locks as the transaction would have.
    session.execute(
        text("SELECT set_config('lock_timeout', :previous, true)"), {"previous": previous}
    )
    return True


def rebuild_rollups(session: Session, tenant_id: int, *, chunk: int = 5000) -> None:
    """Recompute a tenant's rollups from its raw events (after a bulk load or a zone change).

    The tenant's zone and currency are read once the rebuild holds the tenant's
    rollups, since a zone change may have committed while it waited (a rebuild in a
    stale zone would leave every day shifted).
    """
    hold_rollups(session, tenant_id)  # writers of this tenant's events wait for the commit
    clear_rollups(session, tenant_id)  # on SQLite, takes the database's write lock
    zone, currency = session.execute(
        select(Tenant.timezone, Tenant.currency).where(Tenant.id == tenant_id)
    ).one()
    tenant = TenantInfo(tenant_id, zone, currency)
    if session.get_bind().dialect.name == "postgresql":
        # AT TIME ZONE reads a zone name as an abbreviation first, in the server's set:
        # postgres_zone knows the default one (in 'Australia', EST is +10:00).
        session.execute(
            text(
                "SELECT set_config('work_mem', :work_mem, true),"
                " set_config('timezone_abbreviations', 'Default', true)"
            ),
            {"work_mem": REBUILD_WORK_MEM},
        )
        params = {
            "tenant": tenant.id,
            "zone": postgres_zone(tenant_zone(tenant.timezone)),
            "currency": tenant.currency,
            "time_types": sorted(TIME_TYPES),
            "revenue_types": sorted(REVENUE_TYPES),
            "direct": DIRECT_SOURCE,
            "all_sessions": ALL_SESSIONS,
            "session_types": sorted(SESSION_TYPES),
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
        "session_id",
        "source",
        "product_slug",
        "product_name",
    )
    table = Event.__table__
    result = session.execute(
        select(*(table.c[name] for name in columns)).where(table.c.tenant_id == tenant.id)
    )
    while batch := result.fetchmany(chunk):
        update_rollups(
            session, [dict(zip(columns, row, strict=True)) for row in batch], {tenant.id: tenant}
        )
