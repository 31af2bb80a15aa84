"""Group commit: requests in flight share one transaction, and each returns after it commits.

A request thread hands its ``IngestJob`` to the process's committer and waits.
The committer thread takes every job queued so far, writes them in one
transaction (one multi-row INSERT, one round of rollup upserts, one COMMIT)
and wakes each request with its own result. While it commits, the next jobs
queue up, so batches grow with load; nothing is acknowledged before it is
durable. If a batch fails, its jobs are retried one by one so that one bad
event fails only its own request.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from flask import Flask

from .extensions import db
from .ingestion import IngestJob, IngestResult, write_jobs

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Pending:
    job: IngestJob
    done: threading.Event = field(default_factory=threading.Event)
    result: IngestResult | None = None
    error: BaseException | None = None


class GroupCommitter:
    """One per app and process; its thread starts on first use (after any fork)."""

    def __init__(self, app: Flask, *, max_events: int = 5000, timeout: float = 30.0) -> None:
        self.app = app
        self.max_events = max_events
        self.timeout = timeout
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._owner_pid: int | None = None

    def submit(self, job: IngestJob) -> IngestResult:
        """Queue ``job`` and block until its batch has committed (or failed)."""
        self._ensure_thread()
        pending = _Pending(job)
        self._queue.put(pending)
        if not pending.done.wait(self.timeout):
            raise TimeoutError("the event batch did not commit in time")
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _ensure_thread(self) -> None:
        if self._owner_pid == os.getpid():
            return
        with self._lock:
            if self._owner_pid != os.getpid():
                self._queue = queue.SimpleQueue()  # a forked child starts afresh
                threading.Thread(target=self._run, name="group-commit", daemon=True).start()
                self._owner_pid = os.getpid()

    def _run(self) -> None:
        with self.app.app_context():
            while True:
                batch = self._next_batch()
                self._commit(batch)
                if len(batch) > 1:
                    log.debug("group commit of %d jobs", len(batch))

    def _next_batch(self) -> list[_Pending]:
        batch = [self._queue.get()]
        events = len(batch[0].job.events)
        while events < self.max_events:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            batch.append(pending)
            events += len(pending.job.events)
        return batch

    def _commit(self, batch: Sequence[_Pending]) -> None:
        try:
            results = self._write([p.job for p in batch])
        except Exception as error:
            if len(batch) == 1:
                batch[0].error = error
                batch[0].done.set()
                return
            for pending in batch:  # find the culprit: each job on its own
                self._commit([pending])
            return
        for pending, result in zip(batch, results, strict=True):
            pending.result = result
            pending.done.set()

    @staticmethod
    def _write(jobs: list[IngestJob]) -> list[IngestResult]:
        try:
            results = write_jobs(db.session, jobs)
            db.session.commit()
            return results
        except BaseException:
            db.session.rollback()
            raise
        finally:
            db.session.remove()
