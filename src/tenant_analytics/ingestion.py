"""The one ingestion path every endpoint goes through.

validate (the handler, with its schema) -> resolve the tenant (tenancy) ->
enrich (here: visitor hash, user agent, referrer, timestamp) -> store (here,
through the group committer or in a transaction of its own).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, scoped_session

from .models import EVENT_COLUMNS, utcnow
from .partitions import make_partitions_first, month_of, partitions_known
from .postgres_writer import limit_lock_waits, lock_timed_out, zone_changed
from .privacy import REFERRER_MAX, USER_AGENT_MAX, truncate, visitor_hash
from .rollups import TenantInfo, TenantRef
from .storage import claim_keys, current_tenants, insert_events

EMPTY_ROW: dict[str, Any] = dict.fromkeys(EVENT_COLUMNS)


@dataclass(frozen=True)
class ClientInfo:
    """What the request tells about its sender. The IP is used for hashing only."""

    ip: str | None
    user_agent: str | None
    referrer: str | None


@dataclass(eq=False)  # compared by identity: two equal events are still two events
class NewEvent:
    """A validated event, before enrichment.

    ``extra`` holds further event columns (session_id, price, revenue, ...).
    An event with a ``dedupe_key`` is stored only if that key was not seen for
    the tenant within ``dedupe_window`` (``None``: ever).
    """

    event_type: str
    metadata: dict[str, Any] | None = None
    created_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    dedupe_key: str | None = None
    dedupe_window: timedelta | None = None


class CommitTimeout(TimeoutError):
    """The events waited too long and were withdrawn unwritten: the client may send them again."""


class TenantBusy(CommitTimeout):
    """The tenant's rollups stayed locked (a rebuild) past the lock timeout: nothing was written."""


class CommitUncertain(Exception):
    """A write failed where its COMMIT may already have reached the server: the events
    may or may not be stored, so they are not written again."""


# read_only_sql_transaction: a standby after a failover, or a primary set read-only.
READ_ONLY_STATE = "25006"


def is_read_only(error: BaseException) -> bool:
    """Whether the database refused ``error``'s write as read-only."""
    return isinstance(error, DBAPIError) and getattr(error.orig, "pgcode", None) == READ_ONLY_STATE


# in_failed_sql_transaction: the session's transaction was already aborted on the server.
IN_FAILED_TRANSACTION_STATE = "25P02"


def dropped_while_live(error: DBAPIError) -> bool:
    """Whether the server reported ``error`` on a live connection which the app then
    dropped all the same (database_errors.drop_connections_not_to_be_trusted marks them)."""
    return getattr(error, "dropped_while_live", False)


def reported_by_live_database(error: BaseException) -> bool:
    """True when the database itself reported ``error`` on a connection still there: the
    transaction aborted, nothing of it was committed (an ERROR in reply to COMMIT too:
    a commit that took effect never ends in one). A lost connection may have lost the
    reply to a COMMIT the server carried out; a read-only refusal wrote nothing, though
    its connection is dropped (see errors.register_error_handlers)."""
    if is_read_only(error):
        return True
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated and not dropped_while_live(error):
        return False
    if isinstance(error.orig, sqlite3.Error):  # a file on this host: no reply to lose
        return True
    return getattr(error.orig, "pgcode", None) is not None


def commit_or_uncertain(session: Session | scoped_session[Session]) -> None:
    """``session.commit()``; a failure that may have followed the server's commit (the
    connection lost meanwhile) is raised as CommitUncertain."""
    try:
        session.commit()
    except Exception as error:
        if reported_by_live_database(error):
            raise
        raise CommitUncertain("the commit's outcome is unknown") from error


@dataclass(frozen=True)
class IngestResult:
    stored: int
    duplicates: int


@dataclass(eq=False)
class IngestJob:
    """One request's events on their way to the database."""

    tenant: TenantInfo
    events: Sequence[NewEvent]
    client: ClientInfo
    hash_key: str


class Committer(Protocol):
    def submit(self, job: IngestJob) -> IngestResult: ...


def enrich(
    tenant: TenantRef, event: NewEvent, client: ClientInfo, *, hash_key: str, now: datetime
) -> dict[str, Any]:
    """The stored row for ``event``: tenant, type, metadata and the privacy-safe client data.

    Every row carries every column, so rows of different kinds insert together.
    """
    return _row(tenant.id, event, _client_columns(tenant.id, client, hash_key), now)


def _client_columns(tenant_id: int, client: ClientInfo, hash_key: str) -> dict[str, Any]:
    """What is stored of the client: the visitor hash, never the address, and trimmed headers."""
    return {
        "visitor_hash": visitor_hash(hash_key, tenant_id, client.ip, client.user_agent),
        "user_agent": truncate(client.user_agent, USER_AGENT_MAX),
        "referrer": truncate(client.referrer, REFERRER_MAX),
    }


def _row(tenant_id: int, event: NewEvent, client: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {
        **EMPTY_ROW,
        "tenant_id": tenant_id,
        "event_type": event.event_type,
        "metadata": event.metadata,
        "created_at": event.created_at or now,
        **client,
        **event.extra,
    }


def write_jobs(
    session: Session, jobs: Sequence[IngestJob], now: datetime | None = None
) -> list[IngestResult]:
    """Drop duplicates, enrich and insert every job's events in the caller's transaction,
    those without a time at ``now``."""
    now = now or utcnow()
    first_of_key = first_of_each_key(jobs)
    claimed = _claim_dedupe_keys(session, first_of_key, now)
    rows, results = rows_kept(jobs, {id(first_of_key[key]) for key in claimed}, now)
    insert_events(session, rows, tenants_of(jobs))
    return results


def first_of_each_key(jobs: Sequence[IngestJob]) -> dict[tuple[int, str], NewEvent]:
    """(tenant id, key) -> the first of ``jobs``' events with that key in that tenant:
    the one stored if the key is claimed; the others repeat it."""
    first_of_key: dict[tuple[int, str], NewEvent] = {}
    for job in jobs:
        for event in job.events:
            if event.dedupe_key is not None:
                first_of_key.setdefault((job.tenant.id, event.dedupe_key), event)
    return first_of_key


def rows_kept(
    jobs: Sequence[IngestJob], claimed_events: set[int], now: datetime
) -> tuple[list[dict[str, Any]], list[IngestResult]]:
    """The enriched rows of the events without a key or in ``claimed_events`` (their
    ``id()``s), and each job's result."""
    rows: list[dict[str, Any]] = []
    results = []
    for job in jobs:
        kept = [e for e in job.events if e.dedupe_key is None or id(e) in claimed_events]
        rows.extend(_enriched(job, kept, now))
        results.append(IngestResult(stored=len(kept), duplicates=len(job.events) - len(kept)))
    return rows, results


def months_written(jobs: Sequence[IngestJob], now: datetime) -> set[date]:
    """The months whose partitions ``jobs``' events go to, those without a time at ``now``
    (the same ``now`` their rows get: a month begun between the two would be made late)."""
    return {month_of(event.created_at or now) for job in jobs for event in job.events}


def tenants_of(jobs: Sequence[IngestJob]) -> dict[int, TenantInfo]:
    return {job.tenant.id: job.tenant for job in jobs}


def _enriched(job: IngestJob, events: Sequence[NewEvent], now: datetime) -> list[dict[str, Any]]:
    """``enrich`` for each of a job's events, with the client's columns worked out once."""
    client = _client_columns(job.tenant.id, job.client, job.hash_key)
    return [_row(job.tenant.id, event, client, now) for event in events]


def ingest(
    session: Session | scoped_session[Session],
    tenant: TenantRef,
    events: Sequence[NewEvent],
    client: ClientInfo,
    *,
    hash_key: str,
    lock_timeout: float,
    committer: Committer | None = None,
    forget_tenants: Callable[[], None] = lambda: None,
) -> IngestResult:
    """Store ``events`` for ``tenant``; return once they are committed.

    With a ``committer`` (group commit) the events share a transaction with
    other requests in flight; without one they are written and committed here,
    waiting for a lock (a rebuild holds its tenant's rollups) at most
    ``lock_timeout`` seconds on PostgreSQL. ``forget_tenants`` empties the
    process's tenant cache when it proved stale (a zone changed meanwhile).
    """
    job = IngestJob(TenantInfo.of(tenant), events, client, hash_key)
    if committer is not None:
        # End this request's read-only transaction while it waits, giving its connection
        # back: the committer needs one, and a pool held by waiting requests starves it.
        if not isinstance(session, scoped_session) or session.registry.has():
            session.rollback()  # (a request that never used the database has no session)
        return committer.submit(job)
    try:
        return _write_alone(session, job, lock_timeout)
    except DBAPIError as error:
        if not zone_changed(error):
            raise
    # Another process changed the tenant's zone since this one cached it: once more, in
    # the zone as it is now, and no more stale cached zones for the next requests.
    if tenant_now := current_tenants(session, [job.tenant.id]).get(job.tenant.id):
        job.tenant = TenantInfo.of(tenant_now)
    forget_tenants()
    return _write_alone(session, job, lock_timeout)


def _write_alone(
    session: Session | scoped_session[Session], job: IngestJob, lock_timeout: float
) -> IngestResult:
    """``job`` in a transaction of its own, which waits for a lock ``lock_timeout`` at most:
    else a tenant being rebuilt would hold a pooled connection for each of its requests."""
    try:
        engine, now = session.get_bind(), utcnow()
        months = months_written([job], now)
        if engine.dialect.name == "postgresql" and not partitions_known(engine, months):
            session.rollback()  # its connection back to the pool while another makes them
            with engine.connect() as connection:
                make_partitions_first(connection, months, lock_timeout=lock_timeout)
        limit_lock_waits(session.connection(), lock_timeout)
        (result,) = write_jobs(session, [job], now)
        commit_or_uncertain(session)
        return result
    except Exception as error:
        session.rollback()
        if isinstance(error, DBAPIError) and lock_timed_out(error):
            raise TenantBusy("waited too long for a database lock") from error
        raise


def _claim_dedupe_keys(
    session: Session, first_of_key: dict[tuple[int, str], NewEvent], now: datetime
) -> list[tuple[int, str]]:
    """The keys this transaction claimed: one statement for every job's keys of a window,
    not one per request."""
    by_window: dict[timedelta | None, list[tuple[int, str]]] = {}
    for key, event in first_of_key.items():
        by_window.setdefault(event.dedupe_window, []).append(key)
    claimed: list[tuple[int, str]] = []
    for window, keys in by_window.items():
        claimed.extend(claim_keys(session, keys, now=now, window=window))
    return claimed
