"""Job functions the rq worker runs. Each must be safe to run twice."""

from __future__ import annotations

import logging

import psycopg

from atlas.server.config import get_settings
from atlas.server.db import connect
from atlas.server.queue import QUEUE_FORMAT, QueuedBatch

from .store import persist_batch as store_batch

log = logging.getLogger("atlas.worker")

_connection: psycopg.Connection | None = None
_database_url: str | None = None


def use_database(url: str) -> None:
    """Point this process's jobs at ``url`` (the worker calls it at start-up)."""
    global _database_url, _connection
    if url != _database_url and _connection is not None:
        _connection.close()
        _connection = None
    _database_url = url


def _db() -> psycopg.Connection:
    """This worker process's connection, reopened after it broke."""
    global _connection
    if _connection is None or _connection.closed or _connection.broken:
        _connection = connect(_database_url or get_settings().database_url)
    return _connection


def persist_batch(batch: QueuedBatch) -> bool:
    """Persist one queued batch; returns False if it was already stored.

    Any error propagates, so rq retries the job with backoff and finally
    parks it in the failed registry, where ``atlas-server failed`` shows it.
    """
    if batch.get("format") != QUEUE_FORMAT:
        raise ValueError(f"unknown queued batch format {batch.get('format')!r}")
    try:
        stored = store_batch(_db(), batch)
    except psycopg.OperationalError:
        global _connection
        if _connection is not None:
            _connection.close()
        _connection = None
        raise
    if stored:
        log.info("Stored batch %s: %d widget logs", batch["batch_id"], len(batch["logs"]))
    else:
        log.info("Batch %s was already stored; nothing written", batch["batch_id"])
    return stored
