"""Writing events: the storage end of the one ingestion path."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from . import postgres_writer
from .models import DedupeKey, Event, IdSequence, Tenant, dialect_insert
from .partitions import ensure_partitions_cached, month_of
from .rollups import TenantFields, aggregate, update_rollups

TenantRow = Row[tuple[int, str, str]]  # id, timezone, currency


def allocate_ids(session: Session, name: str, count: int) -> range:
    """Reserve ``count`` ids from a named counter (SQLite only).

    The UPDATE takes SQLite's write lock at once, so concurrent writers are
    serialized and never receive the same id.
    """
    result = session.execute(
        update(IdSequence)
        .where(IdSequence.name == name)
        .values(last_value=IdSequence.last_value + count)
        .returning(IdSequence.last_value)
    ).scalar()
    if result is None:
        session.execute(insert(IdSequence).values(name=name, last_value=count))
        result = count
    return range(result - count + 1, result + 1)


def insert_events(
    session: Session,
    rows: Sequence[dict[str, Any]],
    tenants: Mapping[int, TenantFields] | None = None,
) -> None:
    """Insert event rows (column name -> value) and their rollups in the caller's transaction.

    ``tenants`` (id -> zone and currency, for day keys) is loaded when not given; SQLite
    reads it anyway, under its write lock.
    """
    if not rows:
        return
    tenant_ids = {row["tenant_id"] for row in rows}
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        ensure_partitions_cached(session, {month_of(row["created_at"]) for row in rows})
        tenants = tenants or current_tenants(session, tenant_ids)
        # The batch checks the zones under the tenants' rollup locks (ZONE_CHANGED).
        postgres_writer.write_batch(connection, rows, aggregate(rows, tenants))
        return
    ids = allocate_ids(session, "events", len(rows))
    rows = [{**row, "id": event_id} for row, event_id in zip(rows, ids, strict=True)]
    session.execute(insert(Event.__table__), rows)
    # Read under SQLite's write lock (taken above), which a change of zone needs as well:
    # the zones as they are now, not as some process cached them.
    update_rollups(session, rows, current_tenants(session, tenant_ids))


def current_tenants(
    connection: Connection | Session, tenant_ids: Iterable[int]
) -> dict[int, TenantRow]:
    """The rollup fields (id, timezone, currency) of ``tenant_ids`` as stored now."""
    columns = select(Tenant.id, Tenant.timezone, Tenant.currency)
    rows = connection.execute(columns.where(Tenant.id.in_(sorted(tenant_ids))))
    return {row.id: row for row in rows}


def claim_keys(
    session: Session,
    keys: Sequence[tuple[int, str]],
    *,
    now: datetime,
    window: timedelta | None,
) -> list[tuple[int, str]]:
    """Record ``keys`` (tenant id, key) as seen; return those that were new (or last seen
    before the window).

    One upsert on the (tenant_id, key) primary key, whatever the tenants: of two
    concurrent transactions claiming the same key, the second waits for the first and
    then finds it taken, so a duplicate is never written twice. Claimed in key order,
    so two such transactions do not each wait for a key the other holds.
    """
    if not keys:
        return []
    table = DedupeKey.__table__
    upsert = dialect_insert(session)(table).values(
        [{"tenant_id": tenant_id, "key": key, "seen_at": now} for tenant_id, key in sorted(keys)]
    )
    conflict = [table.c.tenant_id, table.c.key]
    if window is None:
        statement = upsert.on_conflict_do_nothing(index_elements=conflict)
    else:
        statement = upsert.on_conflict_do_update(
            index_elements=conflict,
            set_={"seen_at": upsert.excluded.seen_at},
            where=table.c.seen_at < now - window,
        )
    claimed = session.execute(statement.returning(table.c.tenant_id, table.c.key))
    return [(tenant_id, key) for tenant_id, key in claimed]


def delete_dedupe_keys(session: Session, *, prefix: str, seen_before: datetime) -> int:
    """Delete the keys starting with ``prefix`` last seen before ``seen_before``; return how many.

    One transaction per tenant, each committed here: a range of the primary key, so
    no transaction grows with the whole table (``seen_at`` has no index, which every
    claim would have to update).
    """
    table = DedupeKey.__table__
    tenants = session.scalars(select(table.c.tenant_id).distinct()).all()
    session.commit()
    deleted = 0
    for tenant_id in tenants:
        result = session.execute(
            delete(table).where(
                table.c.tenant_id == tenant_id,
                table.c.key.startswith(prefix, autoescape=True),
                table.c.seen_at < seen_before,
            )
        )
        session.commit()
        deleted += result.rowcount
    return deleted
