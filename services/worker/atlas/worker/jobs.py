"""Job functions the rq worker runs. Each must be safe to run twice."""

from __future__ import annotations

import logging
import time

import psycopg

from atlas.contract import Key
from atlas.core import metrics
from atlas.core.config import Settings, get_settings
from atlas.core.db import connect
from atlas.core.partitions import drop_expired, ensure_partitions
from atlas.core.queue import QUEUE_FORMAT, JobPayload, QueuedBatch, open_payload

from .store import persist_batches as store_batches

log = logging.getLogger("atlas.worker")

_connection: psycopg.Connection | None = None
_database_url: str | None = None
_settings: Settings | None = None


def use_settings(settings: Settings) -> None:
    """Point this process's jobs at these settings: database and database key (the worker calls it)."""
    global _settings
    _settings = settings
    use_database(settings.database_url)


def _db_key() -> Key | None:
    """The current database key: logs are stored sealed under it; None stores them clear."""
    return (_settings or get_settings()).db_keyring.current


def use_database(url: str) -> None:
    """Point this process's jobs at ``url`` (the worker calls it at start-up)."""
    global _database_url, _connection
    if url != _database_url and _connection is not None:
        _connection.close()
        _connection = None
    _database_url = url


def close_database() -> None:
    """Close this process's connection (it reopens on the next job)."""
    global _connection
    if _connection is not None:
        _connection.close()
        _connection = None


def _db() -> psycopg.Connection:
    """This worker process's connection, reopened after it broke."""
    global _connection
    if _connection is None or _connection.closed or _connection.broken:
        _connection = connect(_database_url or get_settings().database_url)
    return _connection


def _count(batches: list[QueuedBatch], stored: list[bool]) -> None:
    """Add what a transaction stored to this process's metrics (the worker's /metrics)."""
    metrics.BATCHES_PERSISTED.inc(sum(stored))
    metrics.BATCHES_ALREADY_STORED.inc(len(stored) - sum(stored))
    metrics.ROWS_PERSISTED.inc(sum(len(b["logs"]) for b, new in zip(batches, stored, strict=True) if new))


PARTITION_CHECK_SECONDS = 3600.0
"""How often a worker makes the days ahead and applies the retention (during rq's maintenance pass)."""

_partitions_checked_at: float | None = None


def maintain_partitions() -> None:
    """Create widget_logs' daily partitions ahead and drop expired ones, at most hourly per process.

    Runs on its own autocommit connection and waits at most 2 s for a lock (a
    migration or a long DDL holding widget_logs), so batches are never held up
    for long; a failure is logged and tried again 5 minutes later, never raised
    into the worker loop.
    """
    global _partitions_checked_at
    now = time.monotonic()
    if _partitions_checked_at is not None and now - _partitions_checked_at < PARTITION_CHECK_SECONDS:
        return
    settings = _settings or get_settings()
    try:
        with connect(_database_url or settings.database_url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '2s'")
            created = ensure_partitions(conn, days_ahead=settings.partitions_ahead_days)
            dropped = drop_expired(conn, settings.retention_days)
    except psycopg.Error as exc:
        log.warning("Partition maintenance failed, trying again in 5 minutes: %s", type(exc).__name__)
        _partitions_checked_at = now - PARTITION_CHECK_SECONDS + 300
        return
    _partitions_checked_at = now
    if created:
        log.info("Created %d daily partition(s) of widget_logs, up to %s", len(created), created[-1])
    if dropped:
        days = settings.retention_days
        log.info("Dropped %d partition(s) older than %d days: %s", len(dropped), days, ", ".join(dropped))


class UnstorableBatchError(Exception):
    """Some batches of a group could not be stored; the others were. Names the batch_ids."""


def _one_by_one(batches: list[QueuedBatch]) -> list[bool]:
    """Store each batch in its own transaction; raise, naming the failures, once all were tried."""
    stored, failed = [], []
    for batch in batches:
        try:
            new = store_batches(_db(), [batch], _db_key())[0]
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


def persist_batches(payload: JobPayload) -> int:
    """Persist one queued group of batches (sealed under the database key when one is configured);
    returns how many were stored now.

    Any error propagates, so rq retries the job with backoff and finally
    parks it in the failed registry, where ``atlas-server failed`` shows it.
    """
    keyring = (_settings or get_settings()).db_keyring
    if keyring and isinstance(payload, list):
        log.warning("A job arrived unsealed although this worker has a database key: does every ingest have it?")
    batches = open_payload(payload, keyring)
    for batch in batches:
        if batch.get("format") != QUEUE_FORMAT:
            raise ValueError(f"unknown queued batch format {batch.get('format')!r}")
    try:
        stored = store_batches(_db(), batches, _db_key())
    except psycopg.DataError:
        if len(batches) == 1:
            raise
        stored = _one_by_one(batches)  # one bad batch must not hold back the others of its group
    except psycopg.OperationalError:
        global _connection
        if _connection is not None:
            _connection.close()
        _connection = None
        raise
    else:
        _count(batches, stored)
    logs = sum(len(b["logs"]) for b, new in zip(batches, stored, strict=True) if new)
    log.info("Stored %d of %d batch(es), %d widget logs", sum(stored), len(batches), logs)
    return sum(stored)
