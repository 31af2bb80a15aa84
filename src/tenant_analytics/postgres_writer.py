"""PostgreSQL's hot write path: a batch of events and its rollups in one round trip.

The events go as one JSON text (``json_populate_recordset``), each kind of
rollup delta as another (``json_to_recordset``), in one string of statements
run in order: the events first, which concurrent batches insert side by side;
then the per-tenant advisory locks, so that each rollup update, the last-seen
one above all, reads what earlier batches committed; then a check that each
tenant's zone is still the one its day keys were computed in (it fails with
``ZONE_CHANGED`` when another process changed it); then the rollups, whose
hot counter rows are locked until COMMIT anyway. The SQL is fixed text,
prepared once per connection, so nothing is compiled or planned per batch.
``commit_batch`` sends BEGIN and COMMIT in the same string, and a lock timeout:
a tenant whose rollups are being rebuilt must not hold up every batch. A batch
with idempotency keys claims them first (``CLAIM_KEYS``), in the string that
begins the transaction, and sends the rest with COMMIT: two round trips.
``rollups.update_rollups`` is the portable equivalent (SQLite), and the tests
hold both to the raw-event queries.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError

from .models import EVENT_COLUMNS
from .rollups import ROLLUP_LOCK, RollupDelta

WRITE_BATCH = f"""
INSERT INTO events ({", ".join(EVENT_COLUMNS)})
SELECT {", ".join(EVENT_COLUMNS)} FROM json_populate_recordset(NULL::events, %(events)s::json);

SELECT pg_advisory_xact_lock({ROLLUP_LOCK}, tenant)
FROM (SELECT tenant FROM unnest(%(lock_tenants)s::int[]) AS tenant ORDER BY tenant) AS ordered;

SELECT rollup_zones_current(%(zone_tenants)s::int[], %(zones)s::text[]);

INSERT INTO daily_event_counts (tenant_id, day, event_type, events, value_sum, session_events)
SELECT * FROM json_to_recordset(%(counts)s::json) AS delta (
    tenant_id int, day date, event_type varchar, events bigint, value_sum numeric,
    session_events bigint)
ON CONFLICT (tenant_id, day, event_type) DO UPDATE
SET events = daily_event_counts.events + excluded.events,
    value_sum = daily_event_counts.value_sum + excluded.value_sum,
    session_events = daily_event_counts.session_events + excluded.session_events;

INSERT INTO daily_product_counts (tenant_id, day, event_type, product_slug, events, product_name)
SELECT * FROM json_to_recordset(%(products)s::json) AS delta (
    tenant_id int, day date, event_type varchar, product_slug varchar, events bigint,
    product_name varchar)
ON CONFLICT (tenant_id, day, event_type, product_slug) DO UPDATE
SET events = daily_product_counts.events + excluded.events,
    product_name = greatest(daily_product_counts.product_name, excluded.product_name);

INSERT INTO daily_revenue (tenant_id, day, currency, amount)
SELECT * FROM json_to_recordset(%(revenue)s::json) AS delta (
    tenant_id int, day date, currency varchar, amount numeric)
ON CONFLICT (tenant_id, day, currency) DO UPDATE
SET amount = daily_revenue.amount + excluded.amount;

WITH added AS (
    INSERT INTO daily_visitors (tenant_id, day, visitor_hash)
    SELECT * FROM json_to_recordset(%(members)s::json)
        AS delta (tenant_id int, day date, visitor_hash varchar)
    ON CONFLICT DO NOTHING
    RETURNING tenant_id, day
)
INSERT INTO daily_visitor_counts (tenant_id, day, visitors)
SELECT tenant_id, day, count(*) FROM added GROUP BY tenant_id, day
ON CONFLICT (tenant_id, day) DO UPDATE
SET visitors = daily_visitor_counts.visitors + excluded.visitors;

WITH incoming AS (
    SELECT * FROM json_to_recordset(%(latest)s::json)
        AS incoming (tenant_id int, visitor_hash varchar, last_day date)
), previous AS (
    SELECT seen.tenant_id, seen.visitor_hash, seen.last_day
    FROM visitor_last_seen AS seen JOIN incoming USING (tenant_id, visitor_hash)
), moved AS (
    INSERT INTO visitor_last_seen (tenant_id, visitor_hash, last_day)
    SELECT * FROM incoming
    ON CONFLICT (tenant_id, visitor_hash) DO UPDATE SET last_day = excluded.last_day
    WHERE visitor_last_seen.last_day < excluded.last_day
    RETURNING tenant_id, visitor_hash, last_day
), shifts AS (
    SELECT tenant_id, last_day AS day, 1 AS visitors FROM moved
    UNION ALL
    SELECT previous.tenant_id, previous.last_day, -1
    FROM moved JOIN previous USING (tenant_id, visitor_hash)
)
INSERT INTO last_seen_counts (tenant_id, day, visitors)
SELECT tenant_id, day, sum(visitors) FROM shifts
GROUP BY tenant_id, day HAVING sum(visitors) <> 0
ON CONFLICT (tenant_id, day) DO UPDATE
SET visitors = last_seen_counts.visitors + excluded.visitors;

WITH incoming AS (
    SELECT * FROM json_to_recordset(%(sessions)s::json)
        AS incoming (tenant_id int, scope varchar, session_id varchar, last_day date)
), previous AS (
    -- One primary-key lookup per incoming row (LIMIT keeps the subquery from being
    -- turned into a join), whatever the generic plan thinks of the table's size.
    SELECT incoming.tenant_id, incoming.scope, incoming.session_id, seen.last_day
    FROM incoming CROSS JOIN LATERAL (
        SELECT last_day FROM session_last_seen AS seen
        WHERE seen.tenant_id = incoming.tenant_id AND seen.scope = incoming.scope
          AND seen.session_id = incoming.session_id
        LIMIT 1
    ) AS seen
), moved AS (
    INSERT INTO session_last_seen (tenant_id, scope, session_id, last_day)
    SELECT * FROM incoming
    ON CONFLICT (tenant_id, scope, session_id) DO UPDATE SET last_day = excluded.last_day
    WHERE session_last_seen.last_day < excluded.last_day
    RETURNING tenant_id, scope, session_id, last_day
), shifts AS (
    SELECT tenant_id, scope, last_day AS day, 1 AS sessions FROM moved
    UNION ALL
    SELECT previous.tenant_id, previous.scope, previous.last_day, -1
    FROM moved JOIN previous USING (tenant_id, scope, session_id)
)
INSERT INTO session_last_seen_counts (tenant_id, scope, day, sessions)
SELECT tenant_id, scope, day, sum(sessions) FROM shifts
GROUP BY tenant_id, scope, day HAVING sum(sessions) <> 0
ON CONFLICT (tenant_id, scope, day) DO UPDATE
SET sessions = session_last_seen_counts.sessions + excluded.sessions;

INSERT INTO session_last_seen_counts (tenant_id, scope, day, sessions)
SELECT * FROM json_to_recordset(%(new_sessions)s::json)
    AS delta (tenant_id int, scope varchar, day date, sessions bigint)
ON CONFLICT (tenant_id, scope, day) DO UPDATE
SET sessions = session_last_seen_counts.sessions + excluded.sessions;
"""

# Each key's row is new, or last seen before its window (``claimable_before``: tenant ->
# key -> time, null: never claimed again); the others were claimed by an earlier
# transaction. In key order, so two batches never each wait for a key the other holds.
# A conflicting key finds its window in the jsonb object (a binary search), not by
# scanning the incoming rows: that made a resent batch of 500 keys take 13 ms, of 2,000
# 165. ``storage.claim_keys`` is the portable equivalent.
CLAIM_KEYS = """
INSERT INTO dedupe_keys AS seen (tenant_id, key, seen_at)
SELECT tenant_id, key, seen_at
FROM json_to_recordset(%(claims)s::json)
    AS incoming (tenant_id int, key varchar, seen_at timestamptz)
ORDER BY tenant_id, key
ON CONFLICT (tenant_id, key) DO UPDATE SET seen_at = excluded.seen_at
WHERE seen.seen_at
    < (%(claimable_before)s::jsonb -> excluded.tenant_id::text ->> excluded.key)::timestamptz
RETURNING tenant_id, key
"""

# SET LOCAL: the limit ends with the transaction, never follows the connection to the pool.
SET_LOCK_TIMEOUT = "SET LOCAL lock_timeout = %(lock_timeout)s"
LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock wait that ran out
ZONE_CHANGED = "TZ001"  # raised by rollup_zones_current (migration 0007)
LOCKED_TENANTS = f"""
SELECT tenant FROM unnest(%(tenants)s::int[]) AS tenant
WHERE NOT pg_try_advisory_xact_lock({ROLLUP_LOCK}, tenant)
"""

_PARAMETER = re.compile(r"%\((\w+)\)s::(\w+\[\]|jsonb|json)")
_PREPARED = "tenant_analytics_write_"


@dataclass(frozen=True)
class _Statement:
    """One statement of ``WRITE_BATCH``, prepared once per connection and then executed.

    ``gate`` is its first parameter: when that is empty (no rows, no tenant) the
    statement has nothing to do and the batch leaves it out.
    """

    prepare: str
    execute: str
    gate: str


def _prepared(script: str, name: str) -> list[_Statement]:
    """``script``'s statements as PREPAREs (once per connection) and the EXECUTEs that run them.

    Prepared, PostgreSQL plans each statement once per connection instead of once per batch.
    """
    statements = []
    for number, statement in enumerate(part.strip() for part in script.split(";")):
        if not statement:
            continue
        arguments: list[tuple[str, str]] = []

        def positional(match: re.Match[str], arguments: list = arguments) -> str:
            arguments.append((match[1], match[2]))
            return f"${len(arguments)}"

        body = _PARAMETER.sub(positional, statement)
        types = ", ".join(kind for _, kind in arguments)
        values = ", ".join(f"%({name})s::{kind}" for name, kind in arguments)
        statements.append(
            _Statement(
                prepare=f"PREPARE {_PREPARED}{name}{number} ({types}) AS {body}",
                execute=f"EXECUTE {_PREPARED}{name}{number} ({values})",
                gate=arguments[0][0],
            )
        )
    return statements


STATEMENTS = _prepared(WRITE_BATCH, "batch_")
(CLAIM,) = _prepared(CLAIM_KEYS, "claim_")
# A PREPARE is not undone by a rollback: after one that failed half-way (a lock wait ran
# out) those before it stay, and would collide with the next attempt. DEALLOCATE first.
PREPARE_BATCH = ";\n".join(
    ["DEALLOCATE ALL", *(statement.prepare for statement in (*STATEMENTS, CLAIM))]
)


def _executes(params: Mapping[str, Any]) -> str:
    """The EXECUTEs of the statements that have rows to work on, in order."""
    return ";\n".join(s.execute for s in STATEMENTS if params[s.gate])


def _json_text(value: Any) -> str:
    """``value`` as JSON text; dates, times and decimals as their ISO or plain strings.

    orjson writes a batch of 8 events in 3 µs where the standard library takes 40. It
    refuses integers beyond 64 bits, which event metadata may carry and PostgreSQL's
    json takes; such a batch goes through the standard library instead.
    """
    try:
        return orjson.dumps(value, default=str).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, default=str)


def _records(rows: Sequence[tuple[Any, ...]], names: Sequence[str]) -> str | None:
    """Tuples as one JSON array of objects keyed by ``names``; None when there are none.

    One text parameter: psycopg2 adapts a list element by element, an object and a
    cast each. For a batch of 8 events that took 164 µs, one JSON text per kind 16.
    """
    if not rows:
        return None
    return _json_text([dict(zip(names, row, strict=True)) for row in rows])


def batch_parameters(rows: Sequence[Mapping[str, Any]], delta: RollupDelta) -> dict[str, Any]:
    """What the EXECUTEs take: event ``rows`` and each part of their rollup ``delta`` as JSON."""
    return {
        "lock_tenants": sorted({row["tenant_id"] for row in rows}),
        "zone_tenants": [tenant_id for tenant_id, _ in delta.zones],
        "zones": [zone for _, zone in delta.zones],
        # One JSON text for all the events: PostgreSQL parses it far faster than an
        # array expression per column.
        "events": _json_text([{name: row[name] for name in EVENT_COLUMNS} for row in rows]),
        "counts": _records(
            delta.counts,
            ("tenant_id", "day", "event_type", "events", "value_sum", "session_events"),
        ),
        "products": _records(
            delta.products,
            ("tenant_id", "day", "event_type", "product_slug", "events", "product_name"),
        ),
        "revenue": _records(delta.revenue, ("tenant_id", "day", "currency", "amount")),
        "members": _records(delta.members, ("tenant_id", "day", "visitor_hash")),
        "latest": _records(delta.latest, ("tenant_id", "visitor_hash", "last_day")),
        "sessions": _records(delta.sessions, ("tenant_id", "scope", "session_id", "last_day")),
        "new_sessions": _records(delta.new_sessions, ("tenant_id", "scope", "day", "sessions")),
    }


def write_batch(
    connection: Connection, rows: Sequence[Mapping[str, Any]], delta: RollupDelta
) -> None:
    """Insert event ``rows`` and add ``delta`` to the rollups, in the caller's transaction."""
    _prepare_once(connection)
    params = batch_parameters(rows, delta)
    connection.exec_driver_sql(_executes(params), params)


def commit_batch(
    autocommit_connection: Connection,
    rows: Sequence[Mapping[str, Any]],
    delta: RollupDelta,
    *,
    lock_timeout: float,
) -> None:
    """BEGIN, ``write_batch``'s statements and COMMIT, in one round trip.

    ``autocommit_connection`` has the AUTOCOMMIT isolation level, so the driver sends
    no BEGIN of its own. No lock is waited for longer than ``lock_timeout`` seconds.
    Returns once COMMIT is done. After an error the transaction is rolled back where
    the connection still answers, so the rollup locks it took are free before anyone
    looks for locked tenants; then the connection is invalidated (closed for good), so
    no one else gets it from the pool half-way through.
    """
    with _ended_on_error(autocommit_connection):
        _prepare_once(autocommit_connection)
        _write_and_commit(autocommit_connection, _begin(lock_timeout), rows, delta)


KeyWindows = Mapping[tuple[int, str], timedelta | None]  # (tenant id, key) -> its window
Claimed = set[tuple[int, str]]


def commit_keyed_batch(
    autocommit_connection: Connection,
    keys: KeyWindows,
    now: datetime,
    batch_of: Callable[[Claimed], tuple[Sequence[Mapping[str, Any]], RollupDelta]],
    *,
    lock_timeout: float,
) -> None:
    """``commit_batch`` for a batch with idempotency keys, in two round trips: BEGIN and
    the claim of ``keys`` as seen at ``now``; then the statements for what ``batch_of``
    makes of the keys claimed (its event rows and their rollup delta), and COMMIT.

    A key already claimed by a transaction not yet committed waits for it (so a
    duplicate is never written twice), at most ``lock_timeout`` seconds.
    """
    with _ended_on_error(autocommit_connection):
        _prepare_once(autocommit_connection)
        begin, params = _begin(lock_timeout)
        claimed = autocommit_connection.exec_driver_sql(
            f"{begin};\n{CLAIM.execute}", {**params, **_claims(keys, now)}
        )
        rows, delta = batch_of({(tenant_id, key) for tenant_id, key in claimed})
        _write_and_commit(autocommit_connection, ("", {}), rows, delta)


def _claims(keys: KeyWindows, now: datetime) -> dict[str, str]:
    """CLAIM_KEYS' parameters: the rows to insert, and when each key may be claimed again."""
    claimable_before: dict[str, dict[str, datetime | None]] = {}  # JSON's keys are text
    for (tenant_id, key), window in keys.items():
        before = None if window is None else now - window
        claimable_before.setdefault(str(tenant_id), {})[key] = before
    return {
        "claims": _json_text(
            [{"tenant_id": tenant_id, "key": key, "seen_at": now} for tenant_id, key in keys]
        ),
        "claimable_before": _json_text(claimable_before),
    }


def _begin(lock_timeout: float) -> tuple[str, dict[str, Any]]:
    """The statements that begin a batch's transaction, and their parameters."""
    return f"BEGIN;\n{SET_LOCK_TIMEOUT}", {"lock_timeout": lock_timeout_setting(lock_timeout)}


def _write_and_commit(
    autocommit_connection: Connection,
    opening: tuple[str, dict[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    delta: RollupDelta,
) -> None:
    """``opening``'s statements, those that write ``rows`` and ``delta``, and COMMIT, in
    one string."""
    sql, params = opening
    statements = [sql] if sql else []
    if rows:
        params = {**params, **batch_parameters(rows, delta)}
        statements.append(_executes(params))
    autocommit_connection.exec_driver_sql(";\n".join([*statements, "COMMIT"]), params)
    autocommit_connection.commit()  # SQLAlchemy's own bookkeeping: nothing is sent


@contextmanager
def _ended_on_error(autocommit_connection: Connection) -> Iterator[None]:
    """After an error, roll back where the connection still answers (freeing the locks
    the transaction took at once) and invalidate it."""
    try:
        yield
    except BaseException:
        _roll_back_if_alive(autocommit_connection)
        autocommit_connection.invalidate()
        raise


def _roll_back_if_alive(connection: Connection) -> None:
    """ROLLBACK on the raw connection, if it still answers (closing frees locks only later)."""
    if connection.invalidated:
        return
    try:
        cursor = connection.connection.driver_connection.cursor()
        cursor.execute("ROLLBACK")
        cursor.close()
    except Exception:  # the connection is gone: the server ends the transaction itself
        pass


def limit_lock_waits(connection: Connection, seconds: float) -> None:
    """On PostgreSQL, wait no longer than ``seconds`` for any lock until ``connection``'s
    transaction ends."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(
            SET_LOCK_TIMEOUT, {"lock_timeout": lock_timeout_setting(seconds)}
        )


def set_lock_timeout_for_good(connection: Connection, seconds: float) -> None:
    """Wait no longer than ``seconds`` for any lock, in every later transaction of
    ``connection`` (one that only its owner ever uses: the setting stays with it)."""
    connection.exec_driver_sql(
        "SET lock_timeout = %(lock_timeout)s", {"lock_timeout": lock_timeout_setting(seconds)}
    )
    connection.commit()


def lock_timeout_setting(seconds: float) -> str:
    """``seconds`` as a lock_timeout value."""
    return f"{max(1, round(seconds * 1000))}ms"  # 0 would mean no limit at all


def lock_timed_out(error: BaseException) -> bool:
    """True for the error of a lock wait that outlasted ``lock_timeout`` (nothing committed)."""
    return isinstance(error, OperationalError) and (
        getattr(error.orig, "pgcode", None) == LOCK_NOT_AVAILABLE
    )


def zone_changed(error: BaseException) -> bool:
    """True when a batch was refused because a tenant's time zone is no longer the one
    its day keys were computed in (nothing committed: count them again)."""
    return isinstance(error, DBAPIError) and getattr(error.orig, "pgcode", None) == ZONE_CHANGED


def locked_tenants(autocommit_connection: Connection, tenant_ids: Iterable[int]) -> set[int]:
    """Those of ``tenant_ids`` whose rollup lock another transaction holds right now.

    In autocommit mode the locks this check takes go as soon as its statement ends.
    """
    locked = autocommit_connection.exec_driver_sql(
        LOCKED_TENANTS, {"tenants": sorted(tenant_ids)}
    ).scalars()
    found = set(locked)
    autocommit_connection.commit()  # SQLAlchemy's own bookkeeping: nothing is sent
    return found


def _prepare_once(connection: Connection) -> None:
    info = connection.connection.info  # lives as long as this database session
    if not info.get(_PREPARED):
        connection.exec_driver_sql(PREPARE_BATCH)
        info[_PREPARED] = True
