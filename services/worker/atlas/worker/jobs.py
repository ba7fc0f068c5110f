"""Job functions the rq worker runs, and what a worker keeps between them. Each job must be safe to run twice.

A job is named in Redis by its dotted path (``atlas.core.queue.PERSIST_JOB``),
so it stays a module-level function; what it needs between jobs (settings, one
PostgreSQL connection, when partitions were last maintained) is a
``WorkerContext`` that the worker owns and lends to the job while it runs it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from atlas.contract import Key
from atlas.core import metrics
from atlas.core.config import Settings
from atlas.core.db import connect
from atlas.core.partitions import drop_expired, ensure_partitions
from atlas.core.queue import QUEUE_FORMAT, JobPayload, QueuedBatch, open_payload

from .store import persist_batches as store_batches

log = logging.getLogger("atlas.worker")

PARTITION_CHECK_SECONDS = 3600.0
"""How often a worker makes the days ahead and applies the retention (during rq's maintenance pass)."""

PARTITION_RETRY_SECONDS = 300.0
"""How soon a worker tries partition maintenance again after it failed."""


class UnstorableBatchError(Exception):
    """Some batches of a group could not be stored; the others were. Names the batch_ids."""


class NoWorkerError(RuntimeError):
    """A job function ran outside an Atlas worker, so it has no settings or connection to use."""


def _count(batches: list[QueuedBatch], stored: list[bool]) -> None:
    """Add what a transaction stored to this process's metrics (the worker's /metrics)."""
    metrics.BATCHES_PERSISTED.inc(sum(stored))
    metrics.BATCHES_ALREADY_STORED.inc(len(stored) - sum(stored))
    metrics.ROWS_PERSISTED.inc(sum(len(b["logs"]) for b, new in zip(batches, stored, strict=True) if new))


@dataclass
class WorkerContext:
    """What one worker keeps between jobs: its settings, its PostgreSQL connection, its partition check."""

    settings: Settings
    connection: psycopg.Connection | None = field(default=None, repr=False)
    partitions_checked_at: float | None = None
    """``time.monotonic()`` of the last partition maintenance (or when a failed one counts as done)."""
    jobs_done: int = 0
    """Jobs this worker finished, stored or failed (its pipeline report)."""
    last_job_at: datetime | None = None
    """When its last job finished, stored or failed."""
    last_stored_at: datetime | None = None
    """When a job of its last stored a batch not stored before."""

    @property
    def db_key(self) -> Key | None:
        """The current database key: logs are stored sealed under it; None stores them clear."""
        return self.settings.db_keyring.current

    def db(self) -> psycopg.Connection:
        """This worker's connection, reopened after it broke."""
        if self.connection is None or self.connection.closed or self.connection.broken:
            self.connection = connect(self.settings.database_url)
        return self.connection

    def close(self) -> None:
        """Close the connection (it reopens on the next job)."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def persist(self, payload: JobPayload) -> int:
        """Persist one queued group of batches (sealed under the database key when one is configured);
        returns how many were stored now. Any error propagates, for rq to retry the job."""
        try:
            count = self._persist(payload)
        finally:
            self.jobs_done += 1
            self.last_job_at = datetime.now(UTC)
        if count:
            self.last_stored_at = self.last_job_at
        return count

    def _persist(self, payload: JobPayload) -> int:
        keyring = self.settings.db_keyring
        if keyring and isinstance(payload, list):
            log.warning("A job arrived unsealed although this worker has a database key: does every ingest have it?")
        batches = open_payload(payload, keyring)
        for batch in batches:
            if batch.get("format") != QUEUE_FORMAT:
                raise ValueError(f"unknown queued batch format {batch.get('format')!r}")
        try:
            stored = store_batches(self.db(), batches, self.db_key)
        except psycopg.DataError:
            if len(batches) == 1:
                raise
            stored = self._one_by_one(batches)  # one bad batch must not hold back the others of its group
        except psycopg.OperationalError:
            self.close()
            raise
        else:
            _count(batches, stored)
        logs = sum(len(b["logs"]) for b, new in zip(batches, stored, strict=True) if new)
        log.info("Stored %d of %d batch(es), %d widget logs", sum(stored), len(batches), logs)
        return sum(stored)

    def _one_by_one(self, batches: list[QueuedBatch]) -> list[bool]:
        """Store each batch in its own transaction; raise, naming the failures, once all were tried."""
        stored, failed = [], []
        for batch in batches:
            try:
                new = store_batches(self.db(), [batch], self.db_key)[0]
            except psycopg.DataError as exc:
                failed.append(f"{batch['batch_id']} ({type(exc).__name__})")
                stored.append(False)
                continue
            _count([batch], [new])
            stored.append(new)
        if failed:
            log.error("Stored %d batch(es); could not store %s", sum(stored), ", ".join(failed))
            raise UnstorableBatchError(f"could not store batch(es) {', '.join(failed)}")
        return stored

    def maintain_partitions(self) -> None:
        """Create widget_logs' daily partitions ahead and drop expired ones, at most hourly per worker.

        Runs on its own autocommit connection and waits at most 2 s for a lock (a
        migration or a long DDL holding widget_logs), so batches are never held up
        for long; a failure is logged and tried again ``PARTITION_RETRY_SECONDS``
        later, never raised into the worker loop.
        """
        now = time.monotonic()
        checked = self.partitions_checked_at
        if checked is not None and now - checked < PARTITION_CHECK_SECONDS:
            return
        settings = self.settings
        try:
            with connect(settings.database_url, autocommit=True) as conn:
                conn.execute("SET lock_timeout = '2s'")
                created = ensure_partitions(conn, days_ahead=settings.partitions_ahead_days)
                dropped = drop_expired(conn, settings.retention_days)
        except psycopg.Error as exc:
            log.warning("Partition maintenance failed, trying again in 5 minutes: %s", type(exc).__name__)
            self.partitions_checked_at = now - PARTITION_CHECK_SECONDS + PARTITION_RETRY_SECONDS
            return
        self.partitions_checked_at = now
        if created:
            log.info("Created %d daily partition(s) of widget_logs, up to %s", len(created), created[-1])
        if dropped:
            days = settings.retention_days
            log.info("Dropped %d partition(s) older than %d days: %s", len(dropped), days, ", ".join(dropped))


_running: ContextVar[WorkerContext] = ContextVar("atlas_worker_context")
"""The context of the worker running the current job; set only by ``running``."""


@contextmanager
def running(context: WorkerContext) -> Iterator[WorkerContext]:
    """Lend ``context`` to the job functions called inside (the worker wraps each job in it)."""
    token = _running.set(context)
    try:
        yield context
    finally:
        _running.reset(token)


def persist_batches(payload: JobPayload) -> int:
    """The queued job (``PERSIST_JOB``): persist one group of batches with the running worker's context.

    Any error propagates, so rq retries the job with backoff and finally
    parks it in the failed registry, where ``atlas-server failed`` shows it.
    """
    try:
        context = _running.get()
    except LookupError:
        raise NoWorkerError("persist_batches runs inside an Atlas worker (atlas-server worker)") from None
    return context.persist(payload)
