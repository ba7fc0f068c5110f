"""Persisting queued batches into PostgreSQL, exactly once.

One transaction per group of batches: claim their batch_ids in ``batches``
(its primary key makes a replayed batch a no-op), upsert their machines,
COPY the logs of the batches claimed now. A worker killed midway leaves
nothing behind, because PostgreSQL rolls the open transaction back when the
connection drops.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import psycopg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from atlas.contract import MACHINE_FIELDS, Key
from atlas.core.atrest import epoch_micros, new_data_key, seal_log, wrap_data_key
from atlas.core.queue import QueuedBatch

log = logging.getLogger("atlas.worker")

RECORD_KEY_ID = "INSERT INTO db_key_ids (kid) VALUES (%s) ON CONFLICT (kid) DO NOTHING"

CLAIM_AND_UPSERT = """/* atlas: claim batches */
WITH input AS (
    SELECT * FROM unnest(
        %(batch_id)s::uuid[], %(machine_id)s::text[], %(serial_number)s::text[], %(hostname)s::text[],
        %(model)s::text[], %(os_version)s::text[], %(agent_version)s::text[], %(created_at)s::timestamptz[],
        %(received_at)s::timestamptz[], %(log_count)s::int[], %(kid)s::text[], %(dek_wrapped)s::bytea[],
        %(protocol)s::smallint[]
    ) AS b(batch_id, machine_id, serial_number, hostname, model, os_version, agent_version, created_at,
           received_at, log_count, kid, dek_wrapped, protocol)
),
claimed AS (
    INSERT INTO batches (batch_id, machine_id, created_at, received_at, log_count, kid, dek_kid, dek_wrapped)
    SELECT batch_id, machine_id, created_at, received_at, log_count, kid, %(dek_kid)s, dek_wrapped FROM input
    ON CONFLICT (batch_id) DO NOTHING
    RETURNING batch_id
),
own AS (
    SELECT i.* FROM input i JOIN claimed USING (batch_id) LEFT JOIN machines m USING (machine_id)
    WHERE m.machine_id IS NULL OR m.serial_number = i.serial_number
),
seen AS (
    INSERT INTO machines (machine_id, serial_number, hostname, model, os_version, agent_version,
                          first_seen, last_seen, identity_at, protocol)
    SELECT DISTINCT ON (o.machine_id)
           o.machine_id, o.serial_number, o.hostname, o.model, o.os_version, o.agent_version,
           min(o.received_at) OVER w, max(o.received_at) OVER w, o.received_at, o.protocol
    FROM own o
    WINDOW w AS (PARTITION BY o.machine_id)
    ORDER BY o.machine_id, o.received_at DESC, o.batch_id DESC
    ON CONFLICT (machine_id) DO UPDATE SET
        hostname = CASE WHEN EXCLUDED.identity_at >= machines.identity_at
            THEN EXCLUDED.hostname ELSE machines.hostname END,
        model = CASE WHEN EXCLUDED.identity_at >= machines.identity_at
            THEN EXCLUDED.model ELSE machines.model END,
        os_version = CASE WHEN EXCLUDED.identity_at >= machines.identity_at
            THEN EXCLUDED.os_version ELSE machines.os_version END,
        agent_version = CASE WHEN EXCLUDED.identity_at >= machines.identity_at
            THEN EXCLUDED.agent_version ELSE machines.agent_version END,
        protocol = CASE WHEN EXCLUDED.identity_at >= machines.identity_at
            THEN EXCLUDED.protocol ELSE machines.protocol END,
        identity_at = GREATEST(machines.identity_at, EXCLUDED.identity_at),
        first_seen = LEAST(machines.first_seen, EXCLUDED.first_seen),
        last_seen = GREATEST(machines.last_seen, EXCLUDED.last_seen)
    WHERE machines.serial_number = EXCLUDED.serial_number  -- another worker's insert of the machine won
    RETURNING machine_id, serial_number
),
conflicts AS (
    INSERT INTO identity_conflicts (batch_id, machine_id, serial_number, hostname, received_at, log_count)
    SELECT i.batch_id, i.machine_id, i.serial_number, i.hostname, i.received_at, i.log_count
    FROM input i JOIN claimed USING (batch_id) LEFT JOIN seen s USING (machine_id)
        LEFT JOIN machines m USING (machine_id)
    WHERE i.serial_number IS DISTINCT FROM COALESCE(s.serial_number, m.serial_number)
    RETURNING batch_id
)
SELECT c.batch_id::text, x.batch_id IS NOT NULL FROM claimed c LEFT JOIN conflicts x USING (batch_id)
"""
"""Claim a group's batch_ids (the primary key makes a replayed batch a no-op) and upsert
each machine once, from its newest claimed batch by received time, in one statement and one
round trip. Identity is ordered by when ingest accepted a batch (``received_at``), never by
the ``created_at`` an agent chooses; so is ``protocol``, the contract it last spoke. A
machine's serial number is set by its first batch and never changes: a batch claiming the
machine_id with another serial changes nothing of it (not even ``last_seen``) and is
recorded in ``identity_conflicts``, its logs not stored. Machines are locked in machine_id
order, batches in batch_id order, so concurrent workers never deadlock. Returns the
batch_ids claimed now, each with whether it is a conflict."""

COPY_LOGS = (
    'COPY widget_logs (machine_id, serial_number, "timestamp", level, widget_type, message, data,'
    " batch_id, received_at) FROM STDIN"
)

COPY_SEALED_LOGS = (
    'COPY widget_logs (machine_id, serial_number, "timestamp", level, widget_type, sealed,'
    " batch_id, received_at) FROM STDIN"
)


def _sealed_rows(batch: QueuedBatch, data_key: bytes) -> Iterator[tuple[Any, ...]]:
    """A batch's COPY rows with message and data sealed under its data key."""
    aead = AESGCM(data_key)
    machine_id, serial = batch["machine"]["machine_id"], batch["machine"]["serial_number"]
    batch_id, received_at = batch["batch_id"], batch["received_at"]
    for timestamp, level, widget_type, message, data_json in batch["logs"]:
        micros = epoch_micros(datetime.fromisoformat(timestamp))
        sealed = seal_log(aead, batch_id, machine_id, micros, level, widget_type, message, data_json)
        yield (machine_id, serial, timestamp, level, widget_type, sealed, batch_id, received_at)


def persist_batches(conn: psycopg.Connection, batches: list[QueuedBatch], db_key: Key | None = None) -> list[bool]:
    """Store a group of batches in one transaction; per batch, False if it was already stored, or if it
    claims a machine_id with another serial number (an identity conflict: recorded, its logs not stored).

    With ``db_key`` (the current database key), each batch gets a new data key,
    wrapped under ``db_key`` in its ``batches`` row, and its logs' message and
    data are stored sealed under it (``atlas.core.atrest``).
    """
    first: dict[str, int] = {}
    for index, b in enumerate(batches):
        first.setdefault(b["batch_id"], index)  # the first of a repeated batch_id is the one stored
    ordered = sorted((batches[i] for i in first.values()), key=lambda b: b["batch_id"])  # one lock order
    data_keys = {b["batch_id"]: new_data_key() for b in ordered} if db_key else {}
    wrapped = [wrap_data_key(db_key, b["batch_id"], data_keys[b["batch_id"]]) for b in ordered] if db_key else None
    machines: list[Mapping[str, object]] = [b["machine"] for b in ordered]
    params: dict[str, Any] = {
        "batch_id": [b["batch_id"] for b in ordered],
        **{col: [m[col] for m in machines] for col in MACHINE_FIELDS},
        "created_at": [b["created_at"] for b in ordered],
        "received_at": [b["received_at"] for b in ordered],
        "log_count": [len(b["logs"]) for b in ordered],
        "kid": [b["kid"] for b in ordered],
        "protocol": [b.get("protocol", 1) for b in ordered],
        "dek_kid": db_key.kid if db_key else None,
        "dek_wrapped": wrapped or [None] * len(ordered),
    }
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(CLAIM_AND_UPSERT, params)
        answers = cur.fetchall()
        claimed = {batch_id for batch_id, conflict in answers if not conflict}
        conflicts = {batch_id for batch_id, conflict in answers if conflict}
        for b in ordered:
            if b["batch_id"] in conflicts:
                log.warning(
                    "Batch %s claims machine_id %r with serial number %r, not the machine's own: its %d logs are"
                    " not stored (recorded in identity_conflicts)",
                    b["batch_id"],
                    b["machine"]["machine_id"],
                    b["machine"]["serial_number"],
                    len(b["logs"]),
                )
        fresh = [b for b in ordered if b["batch_id"] in claimed]
        if fresh:
            if db_key:
                cur.execute(RECORD_KEY_ID, (db_key.kid,))
                with cur.copy(COPY_SEALED_LOGS) as copy:
                    for b in fresh:
                        for row in _sealed_rows(b, data_keys[b["batch_id"]]):
                            copy.write_row(row)
            else:
                _copy_clear(cur, fresh)
    return [b["batch_id"] in claimed and first[b["batch_id"]] == i for i, b in enumerate(batches)]


def _copy_clear(cur: psycopg.Cursor, fresh: list[QueuedBatch]) -> None:
    with cur.copy(COPY_LOGS) as copy:
        for b in fresh:
            machine_id, serial = b["machine"]["machine_id"], b["machine"]["serial_number"]
            batch_id, received_at = b["batch_id"], b["received_at"]
            for timestamp, level, widget_type, message, data_json in b["logs"]:
                copy.write_row(
                    (
                        machine_id,
                        serial,
                        timestamp,
                        level,
                        widget_type,
                        message,
                        data_json,
                        batch_id,
                        received_at,
                    )
                )


def persist_batch(conn: psycopg.Connection, batch: QueuedBatch, db_key: Key | None = None) -> bool:
    """Store one batch atomically. Returns False when it was already stored."""
    return persist_batches(conn, [batch], db_key)[0]
