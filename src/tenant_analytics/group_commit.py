"""Group commit: requests in flight share one transaction, and each returns after it commits.

A request hands its ``IngestJob`` to the process's committer and waits. The
committer (a thread; a greenlet under gunicorn's gevent worker, which patches
``threading``) takes every job queued so far, writes them in one
transaction (one multi-row INSERT, one round of rollup upserts, one COMMIT)
and wakes each request with its own result. While it commits, the next jobs
queue up, so batches grow with load; nothing is acknowledged before it is
durable. If the database refuses a batch, its jobs are retried one by one so
that one bad event fails only its own request; if the batch may have been
committed (the connection was lost), its jobs fail rather than risk being
stored twice.
"""

from __future__ import annotations

import copy
import os
import queue
import select
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from flask import Flask
from gevent.monkey import get_original
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from . import postgres_writer
from .extensions import db
from .ingestion import (
    CommitTimeout,
    CommitUncertain,
    IngestJob,
    IngestResult,
    TenantBusy,
    commit_or_uncertain,
    first_of_each_key,
    is_read_only,
    months_written,
    reported_by_live_database,
    rows_kept,
    tenants_of,
    write_jobs,
)
from .logs import get_logger
from .models import utcnow
from .partitions import make_partitions_first, partitions_known
from .rollups import RollupDelta, TenantInfo, aggregate
from .storage import current_tenants

log = get_logger(__name__)

SWITCH_INTERVAL = 0.0005  # seconds
# How long a tenant found with its rollups locked (being rebuilt) has its events refused
# at once, before the committer tries its lock again (a try, never waited on).
BUSY_RECHECK_SECONDS = 0.5
# After a pause this long the committer checks the connections it kept are still open.
IDLE_CHECK_SECONDS = 1.0
# A request still waiting this long checks that the committer is there to answer it.
RESTART_CHECK_SECONDS = 1.0
# A request waits this long for its events to be taken into a batch, then this long more
# while its batch is written: a server's graceful stop must outlast both (Makefile).
QUEUE_TIMEOUT_SECONDS = 30.0
WRITE_TIMEOUT_SECONDS = 60.0
_CLAIMS = threading.Lock()  # guards _Pending.state


@dataclass(eq=False)
class _Pending:
    job: IngestJob
    result: IngestResult | None = None
    error: BaseException | None = None
    # Held until the job is settled: cheaper to make than a threading.Event.
    settled: threading.Lock = field(default_factory=threading.Lock)
    state: str = "queued"  # then "claimed" by the committer or "withdrawn" by the waiter
    done: bool = False  # settled, by whoever claimed it

    def __post_init__(self) -> None:
        self.settled.acquire()

    def move(self, to: str) -> bool:
        """Leave the queued state for ``to``; False if the other side got there first."""
        with _CLAIMS:
            if self.state != "queued":
                return False
            self.state = to
            return True

    def settle(self, result: IngestResult | None, error: BaseException | None = None) -> None:
        self.result, self.error, self.done = result, error, True
        self.settled.release()


def _rolled_back(error: Exception) -> bool:
    """True when ``error`` surely ended the batch's transaction without a commit.

    So it is for an error raised before anything reached the database (connecting
    included), and for an error the database reported on a connection that is still
    there: the transaction aborted at that statement (a string of statements stops at
    its first error), so COMMIT never took effect. A lost connection may have come
    after the server committed.
    """
    if isinstance(error, CommitUncertain):
        return False
    if not isinstance(error, DBAPIError):
        return True
    if error.statement is None and not error.connection_invalidated:
        return True  # raised before a statement was sent: connecting, say
    return reported_by_live_database(error)


# The system's poll, not gevent's patched one (which yields to its hub twice a call):
# polling without waiting never blocks, and poll, unlike select, takes any descriptor.
_poll = get_original("select", "poll")
_READABLE = select.POLLIN | select.POLLERR | select.POLLHUP


def _has_unread_data(connection: Connection) -> bool:
    """Whether the server sent anything the client has not read, or closed the socket
    (PostgreSQL's, polled without waiting). A driver connection already closed counts
    as ended; one without a socket to poll (SQLite's) as not."""
    driver = connection.connection.dbapi_connection
    if getattr(driver, "closed", False):
        return True
    fileno = getattr(driver, "fileno", None)
    if fileno is None:
        return False
    poller = _poll()
    poller.register(fileno(), _READABLE)
    return bool(poller.poll(0))


class GroupCommitter:
    """One per app and process; its thread starts on first use (after any fork)."""

    def __init__(
        self,
        app: Flask,
        *,
        lock_timeout: float,
        max_events: int = 5000,
        timeout: float = QUEUE_TIMEOUT_SECONDS,
        write_timeout: float = WRITE_TIMEOUT_SECONDS,
    ) -> None:
        self.app = app
        self.max_events = max_events
        self.timeout = timeout  # for a job to be taken into a batch
        # then for its batch's write: a database that stopped answering (frozen, a
        # network that drops packets) must not hold the request for ever
        self.write_timeout = write_timeout
        # PostgreSQL: the longest a batch waits for a lock. A tenant's rollup lock is held
        # for milliseconds by a batch, but by a rebuild for its whole transaction.
        self.lock_timeout = lock_timeout
        self.busy_recheck = BUSY_RECHECK_SECONDS
        # Tenants found locked -> when they were; only the committer's thread uses it.
        self._busy: dict[int, float] = {}
        # None in the queue asks the committer to stop (``close``).
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._owner_pid: int | None = None
        self._thread: threading.Thread | None = None
        self._connection: Connection | None = None
        self._autocommit: Connection | None = None
        self._idle_since = time.monotonic()

    def submit(self, job: IngestJob) -> IngestResult:
        """Queue ``job`` and block until its batch has committed (or failed)."""
        self._ensure_thread()
        pending = _Pending(job)
        self._queue.put(pending)
        if not self._wait_for(pending):
            if pending.move("withdrawn"):
                raise CommitTimeout("the database did not take the events in time")
            # Already being written: wait for that outcome, though not for ever.
            if not pending.settled.acquire(timeout=self.write_timeout):
                raise CommitUncertain(
                    f"the database had not finished the write after {self.write_timeout:g} s"
                )
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _wait_for(self, pending: _Pending) -> bool:
        """Whether ``pending`` was settled within ``timeout``. Every second of waiting, a
        committer that ended meanwhile (see ``_commit_settling``) is started again: a job
        it left in the queue is then written, not left to time out."""
        deadline = time.monotonic() + self.timeout
        wait = min(RESTART_CHECK_SECONDS, self.timeout)
        while not pending.settled.acquire(timeout=wait):
            wait = min(RESTART_CHECK_SECONDS, deadline - time.monotonic())
            if wait <= 0:
                return False
            self._restart_if_stopped()
        return True

    def _ensure_thread(self) -> None:
        thread = self._thread
        if self._owner_pid == os.getpid() and thread is not None and thread.is_alive():
            return
        with self._lock:
            thread = self._thread
            alive = thread is not None and thread.is_alive()
            if self._owner_pid == os.getpid():
                if not alive:
                    self._start_again()
                return
            if thread is not None and alive:
                thread.join()  # a closed committer finishing its batch: never two
            self._queue = queue.SimpleQueue()  # after a fork or close(): afresh
            self._start(self._queue)

    def _restart_if_stopped(self) -> None:
        """Start the committer of this process again if it ended (not after ``close``)."""
        with self._lock:
            thread = self._thread
            if self._owner_pid == os.getpid() and thread is not None and not thread.is_alive():
                self._start_again()

    def _start_again(self) -> None:
        # Ended by what no batch may raise (see _commit_settling): the jobs queued since
        # stay in the queue, for the new committer.
        log.error("the group committer had stopped; starting it again")
        self._start(self._queue)

    def _start(self, jobs: queue.SimpleQueue[_Pending | None]) -> None:
        # Request threads are CPU-bound; after each database round trip the
        # committer must win the GIL back in well under the default 5 ms.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._thread = threading.Thread(
            target=self._run, args=(jobs,), name="group-commit", daemon=True
        )
        self._thread.start()
        self._owner_pid = os.getpid()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, stop the committer and close its connections.

        For an app that is done with (a test's, a worker's at exit): the committer
        otherwise keeps its connections for the life of the process. A ``submit``
        meanwhile waits until the old committer is gone, then starts a new one (never
        two at once: they would share the connections); a job that landed behind the
        stop is refused (503, nothing written).
        """
        with self._lock:  # _ensure_thread waits on it: no new committer before this one ends
            thread, jobs = self._thread, self._queue
            if thread is None or self._owner_pid != os.getpid():
                return
            self._owner_pid = None  # a submit from now on waits here, then starts a new one
            jobs.put(None)
            thread.join(timeout)
            if thread.is_alive():  # still writing: _ensure_thread waits for it to end
                log.warning("the group committer did not stop within %s s", timeout)
                return
            self._thread = None
        self._refuse_left_behind(jobs)

    @staticmethod
    def _refuse_left_behind(jobs: queue.SimpleQueue[_Pending | None]) -> None:
        """Settle the jobs queued behind the stop: the committer that read them is gone."""
        while True:
            try:
                pending = jobs.get_nowait()
            except queue.Empty:
                return
            if pending is not None and pending.move("claimed"):
                pending.settle(None, CommitTimeout("the committer stopped; send them again"))

    def _run(self, jobs: queue.SimpleQueue[_Pending | None]) -> None:
        with self.app.app_context():
            try:
                while True:
                    batch, stop = self._next_batch(jobs)
                    if batch:
                        self._commit_settling(batch)
                        self._idle_since = time.monotonic()
                    if stop:
                        return
            finally:
                # Closed for good, not returned to the pool: they carry this committer's
                # settings (lock_timeout) and prepared statements.
                for name in ("_connection", "_autocommit"):
                    self._discard(name)

    def _commit_settling(self, batch: Sequence[_Pending]) -> None:
        """``_commit`` the batch; whatever escapes it (no error should) settles the jobs it
        left waiting as may-have-been-stored, and the next batch starts on new connections.
        The committer outlives any one batch: its waiters would wait for good otherwise."""
        try:
            if time.monotonic() - self._idle_since > IDLE_CHECK_SECONDS:
                self._drop_closed_connections()
            else:
                self._drop_connections_the_server_ended()
            self._commit(batch)
        except BaseException as error:
            log.exception("group commit failed unexpectedly")
            for pending in batch:
                if not pending.done:
                    uncertain = CommitUncertain("the batch may or may not have been committed")
                    uncertain.__cause__ = error
                    pending.settle(None, uncertain)
            for name in ("_connection", "_autocommit"):
                self._discard(name)
            if not isinstance(error, Exception):
                raise  # the thread is being stopped (GreenletExit, SystemExit)

    def _drop_closed_connections(self) -> None:
        """Check the connections kept between batches with a round trip, and drop those the
        server closed while idle (a restart, idle_session_timeout, a proxy's timeout): the
        batch would fail on them as may-have-been-stored, though nothing of it was sent."""
        for name in ("_connection", "_autocommit"):
            connection: Connection | None = getattr(self, name)
            if connection is None:
                continue
            if connection.closed or connection.invalidated:  # an error's, not yet replaced
                self._discard(name)
                continue
            try:
                connection.exec_driver_sql("SELECT 1")
                connection.rollback()  # (the autocommit one has nothing to end)
            except Exception:
                self._discard(name)

    def _drop_connections_the_server_ended(self) -> None:
        """Between busy batches, without a round trip: drop a kept connection whose socket
        has something to read. Every answer was read by the end of the last batch, so that
        is the server's notice that it ended the session (a restart, pg_terminate_backend),
        or its close; a batch sent on it would fail as may-have-been-stored."""
        for name in ("_connection", "_autocommit"):
            connection: Connection | None = getattr(self, name)
            if connection is None:
                continue
            try:
                ended = connection.closed or connection.invalidated or _has_unread_data(connection)
            except Exception:  # a socket that cannot be asked about is not worth keeping
                ended = True
            if ended:
                self._discard(name)

    def _discard(self, name: str) -> None:
        """Close the kept connection ``name`` for good (its server session ends with it)."""
        connection: Connection | None = getattr(self, name)
        setattr(self, name, None)
        if connection is None:
            return
        try:
            if not connection.closed and not connection.invalidated:
                connection.invalidate()
            connection.close()
        except Exception:
            log.warning("a connection of the group committer did not close", exc_info=True)

    def _next_batch(self, jobs: queue.SimpleQueue[_Pending | None]) -> tuple[list[_Pending], bool]:
        """Every job queued now (at least one, unless asked to stop), skipping those their
        requests withdrew; and whether ``close`` asked the committer to stop."""
        batch: list[_Pending] = []
        events = 0
        while not batch or events < self.max_events:
            try:
                pending = jobs.get() if not batch else jobs.get_nowait()
            except queue.Empty:
                break
            if pending is None:
                return batch, True
            if pending.move("claimed"):
                batch.append(pending)
                events += len(pending.job.events)
        return batch, False

    def _commit(
        self, batch: Sequence[_Pending], *, look_for_locked: bool = True, recount: bool = True
    ) -> None:
        batch = self._without_busy_tenants(batch)
        if not batch:
            return
        try:
            results = self._write([p.job for p in batch])
        except Exception as error:
            if postgres_writer.lock_timed_out(error):
                self._without_locked_tenants(batch, look_for_locked)
            elif postgres_writer.zone_changed(error):
                self._in_current_zones(batch, recount)
            else:
                self._fail(batch, error)
            return
        for pending, result in zip(batch, results, strict=True):
            pending.settle(result)

    def _fail(self, batch: Sequence[_Pending], error: Exception) -> None:
        """Settle a failed batch's jobs, writing again only what surely was not written."""
        if not _rolled_back(error):
            for pending in batch:  # one exception each: every waiter raises its own
                uncertain = CommitUncertain("the batch may or may not have been committed")
                uncertain.__cause__ = error
                pending.settle(None, uncertain)
        elif len(batch) == 1:
            batch[0].settle(None, error)
        elif is_read_only(error):  # every job's refusal: each alone would reconnect to hear it
            for pending in batch:
                pending.settle(None, copy.copy(error))  # one each, as above
        else:
            for pending in batch:  # find the culprit: each job on its own
                self._commit([pending])

    def _without_locked_tenants(self, batch: Sequence[_Pending], look_for_locked: bool) -> None:
        """After a lock wait ran out: fail the jobs of tenants whose rollups are locked (being
        rebuilt), and write the others together, rather than each waiting out the timeout."""
        if not look_for_locked:  # a second wait ran out with no rollup lock held: give up
            log.warning("a lock wait ran out twice, no tenant's rollups locked: events refused")
            for pending in batch:
                pending.settle(None, CommitTimeout("waited too long for a database lock"))
            return
        locked = self._locked_tenants({pending.job.tenant.id for pending in batch})
        if locked:
            log.warning("rollups of tenants %s locked: their events refused", sorted(locked))
        self._busy.update(dict.fromkeys(locked, time.monotonic()))
        for pending in batch:
            if pending.job.tenant.id in locked:
                pending.settle(None, TenantBusy("the tenant's rollups are locked"))
        rest = [pending for pending in batch if pending.job.tenant.id not in locked]
        if rest:
            # With nothing found locked (the wait was for another lock) once more, no more.
            self._commit(rest, look_for_locked=bool(locked))

    def _without_busy_tenants(self, batch: Sequence[_Pending]) -> list[_Pending]:
        """Refuse at once the jobs of tenants found locked a moment ago.

        A rebuild holds a tenant's rollups for up to a minute; were its jobs written with
        every batch, each batch would wait out the lock timeout first, and every other
        tenant's events with it. Once ``busy_recheck`` has passed, one cheap query tells
        whether the tenant is still locked (it tries the lock, in autocommit: never waits).
        """
        if not self._busy:
            return list(batch)
        now = time.monotonic()
        known_busy = {pending.job.tenant.id for pending in batch} & self._busy.keys()
        due = {t for t in known_busy if now - self._busy[t] >= self.busy_recheck}
        if due:
            still = self._locked_tenants(due)
            for tenant_id in due:
                if tenant_id in still:
                    self._busy[tenant_id] = now
                else:
                    del self._busy[tenant_id]
        kept = []
        for pending in batch:
            if pending.job.tenant.id in self._busy:
                pending.settle(None, TenantBusy("the tenant's rollups are locked"))
            else:
                kept.append(pending)
        return kept

    def _in_current_zones(self, batch: Sequence[_Pending], recount: bool) -> None:
        """A tenant's time zone changed in another process since this one cached it: write
        the batch again (once) with the zones as they are now, and forget the cache."""
        if not recount:
            tenant_ids = sorted({pending.job.tenant.id for pending in batch})
            if len(tenant_ids) > 1:
                # Changed again meanwhile (an owner changing zones in a row): each tenant's
                # jobs apart, so that only its own are refused, not the other tenants'.
                for tenant_id in tenant_ids:
                    self._commit([p for p in batch if p.job.tenant.id == tenant_id])
                return
            for pending in batch:
                pending.settle(None, CommitTimeout("the tenant's time zone changed meanwhile"))
            return
        try:
            connection = self._autocommit_connection()
            current = current_tenants(connection, {pending.job.tenant.id for pending in batch})
            connection.commit()  # SQLAlchemy's own bookkeeping: nothing is sent
        except Exception as error:
            self._fail(batch, error)
            return
        for pending in batch:
            if tenant := current.get(pending.job.tenant.id):
                pending.job.tenant = TenantInfo.of(tenant)
        self.app.extensions["active_tenants"].forget()
        self._commit(batch, recount=False)

    def _locked_tenants(self, tenant_ids: set[int]) -> set[int]:
        """Those of ``tenant_ids`` whose rollup lock is held now; all if that cannot be told."""
        try:
            return postgres_writer.locked_tenants(self._autocommit_connection(), tenant_ids)
        except Exception:
            log.exception("could not tell which tenants' rollups are locked")
            return tenant_ids

    def _write(self, jobs: list[IngestJob]) -> list[IngestResult]:
        """One transaction on the committer's own connection, kept between batches."""
        postgres = db.engine.dialect.name == "postgresql"
        now = utcnow()
        if postgres:
            months = months_written(jobs, now)
            if not partitions_known(db.engine, months):
                self._make_partitions(months)
            if partitions_known(db.engine, months):
                results = self._commit_at_once(jobs, now)
                self._database_answered()
                return results
        session = Session(bind=self._transaction_connection())
        try:
            results = write_jobs(session, jobs, now)
            commit_or_uncertain(session)
            self._database_answered()
            return results
        except BaseException:
            session.rollback()
            if self._connection.invalidated:
                self._connection.close()  # reconnect on the next batch
            raise
        finally:
            session.close()

    def _transaction_connection(self) -> Connection:
        """The committer's connection for ordinary transactions, kept between batches."""
        if self._connection is None or self._connection.closed:
            connection = db.engine.connect()
            if connection.dialect.name == "postgresql":  # once, not a round trip per batch
                try:
                    postgres_writer.set_lock_timeout_for_good(connection, self.lock_timeout)
                except BaseException:
                    connection.close()  # not kept half set up: the next batch connects anew
                    raise
            self._connection = connection
        return self._connection

    def _make_partitions(self, months: set[date]) -> None:
        """The batch's new months' partitions, committed before the batch's transaction."""
        connection = self._transaction_connection()
        try:
            make_partitions_first(connection, months)
        except BaseException:
            if connection.invalidated:
                connection.close()  # reconnect on the next batch
            raise

    def _database_answered(self) -> None:
        """A batch committed on the connections kept between batches, which the pool's
        checkouts (where an outage's end is noticed) do not see again."""
        self.app.extensions["outage_lines"].answered()

    def _commit_at_once(self, jobs: list[IngestJob], now: datetime) -> list[IngestResult]:
        """The common case on PostgreSQL: every partition there.

        Then the batch goes on a second connection of the committer's own, in autocommit
        mode: with its BEGIN and COMMIT in one round trip, or in two when it has keys to
        claim first (every snippet event has).
        """
        tenants = tenants_of(jobs)
        first_of_key = first_of_each_key(jobs)
        if not first_of_key:
            rows, results = rows_kept(jobs, set(), now)
            postgres_writer.commit_batch(
                self._autocommit_connection(),
                rows,
                aggregate(rows, tenants),
                lock_timeout=self.lock_timeout,
            )
            return results
        results: list[IngestResult] = []

        def batch_of(claimed: set[tuple[int, str]]) -> tuple[list[dict[str, Any]], RollupDelta]:
            rows, kept = rows_kept(jobs, {id(first_of_key[key]) for key in claimed}, now)
            results.extend(kept)
            return rows, aggregate(rows, tenants)

        postgres_writer.commit_keyed_batch(
            self._autocommit_connection(),
            {key: event.dedupe_window for key, event in first_of_key.items()},
            now,
            batch_of,
            lock_timeout=self.lock_timeout,
        )
        return results

    def _autocommit_connection(self) -> Connection:
        """The committer's autocommit connection; a new one after an error closed the last."""
        if self._autocommit is not None and self._autocommit.invalidated:
            self._autocommit.close()
            self._autocommit = None  # closed is not invalidated: never hand it out again
        if self._autocommit is None:
            connection = db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                # For every statement, the PREPAREs too: they lock the tables they name.
                if connection.dialect.name == "postgresql":
                    postgres_writer.set_lock_timeout_for_good(connection, self.lock_timeout)
            except BaseException:
                connection.close()
                raise
            self._autocommit = connection
        return self._autocommit
