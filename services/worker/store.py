"""Persisting queued batches into PostgreSQL, exactly once.

One transaction per group of batches: claim their batch_ids in ``batches``
(its primary key makes a replayed batch a no-op), upsert their machines,
COPY the logs of the batches claimed now. A worker killed midway leaves
nothing behind, because PostgreSQL rolls the open transaction back when the
connection drops.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import psycopg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from atlas.contract import Key
from atlas.server.atrest import epoch_micros, new_data_key, seal_log, wrap_data_key
from atlas.server.queue import QueuedBatch

CLAIM_BATCHES = """
INSERT INTO batches (batch_id, machine_id, created_at, received_at, log_count, kid, dek_kid, dek_wrapped)
SELECT * FROM unnest(%s::uuid[], %s::text[], %s::timestamptz[], %s::timestamptz[], %s::int[], %s::text[],
                     %s::text[], %s::bytea[])
ON CONFLICT (batch_id) DO NOTHING
RETURNING batch_id::text
"""

RECORD_KEY_ID = "INSERT INTO db_key_ids (kid) VALUES (%s) ON CONFLICT (kid) DO NOTHING"

IDENTITY_COLUMNS = ("serial_number", "hostname", "model", "os_version", "agent_version")

UPSERT_MACHINE = (
    """
INSERT INTO machines (machine_id, serial_number, hostname, model, os_version, agent_version,
                      first_seen, last_seen, identity_at)
VALUES (%(machine_id)s, %(serial_number)s, %(hostname)s, %(model)s, %(os_version)s, %(agent_version)s,
        %(received_at)s, %(received_at)s, %(created_at)s)
ON CONFLICT (machine_id) DO UPDATE SET
"""
    + ",\n".join(
        f"    {col} = CASE WHEN EXCLUDED.identity_at >= machines.identity_at"
        f" THEN EXCLUDED.{col} ELSE machines.{col} END"
        for col in IDENTITY_COLUMNS
    )
    + """,
    identity_at = GREATEST(machines.identity_at, EXCLUDED.identity_at),
    first_seen = LEAST(machines.first_seen, EXCLUDED.first_seen),
    last_seen = GREATEST(machines.last_seen, EXCLUDED.last_seen)
"""
)

COPY_LOGS = (
    'COPY widget_logs (machine_id, serial_number, "timestamp", level, widget_type, message, data,'
    " batch_id, received_at) FROM STDIN"
)

COPY_SEALED_LOGS = (
    'COPY widget_logs (machine_id, serial_number, "timestamp", level, widget_type, sealed,'
    " batch_id, received_at) FROM STDIN"
)


def _sealed_rows(batch: QueuedBatch, data_key: bytes) -> Iterator[tuple]:
    """A batch's COPY rows with message and data sealed under its data key."""
    aead = AESGCM(data_key)
    machine_id, serial = batch["machine"]["machine_id"], batch["machine"]["serial_number"]
    batch_id, received_at = batch["batch_id"], batch["received_at"]
    for timestamp, level, widget_type, message, data_json in batch["logs"]:
        micros = epoch_micros(datetime.fromisoformat(timestamp))
        sealed = seal_log(aead, batch_id, machine_id, micros, level, widget_type, message, data_json)
        yield (machine_id, serial, timestamp, level, widget_type, sealed, batch_id, received_at)


def persist_batches(conn: psycopg.Connection, batches: list[QueuedBatch], db_key: Key | None = None) -> list[bool]:
    """Store a group of batches in one transaction; per batch, False if it was already stored.

    With ``db_key`` (the current database key), each batch gets a new data key,
    wrapped under ``db_key`` in its ``batches`` row, and its logs' message and
    data are stored sealed under it (``atlas.server.atrest``).
    """
    first: dict[str, int] = {}
    for index, b in enumerate(batches):
        first.setdefault(b["batch_id"], index)  # the first of a repeated batch_id is the one stored
    ordered = sorted((batches[i] for i in first.values()), key=lambda b: b["batch_id"])  # one lock order
    data_keys = {b["batch_id"]: new_data_key() for b in ordered} if db_key else {}
    wrapped = [wrap_data_key(db_key, b["batch_id"], data_keys[b["batch_id"]]) for b in ordered] if db_key else None
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            CLAIM_BATCHES,
            [
                [b["batch_id"] for b in ordered],
                [b["machine"]["machine_id"] for b in ordered],
                [b["created_at"] for b in ordered],
                [b["received_at"] for b in ordered],
                [len(b["logs"]) for b in ordered],
                [b["kid"] for b in ordered],
                [db_key.kid if db_key else None] * len(ordered),
                wrapped or [None] * len(ordered),
            ],
        )
        claimed = {row[0] for row in cur.fetchall()}
        fresh = [b for b in ordered if b["batch_id"] in claimed]
        if fresh:
            cur.executemany(
                UPSERT_MACHINE,
                [
                    {**b["machine"], "created_at": b["created_at"], "received_at": b["received_at"]}
                    for b in sorted(fresh, key=lambda b: b["machine"]["machine_id"])
                ],
            )
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
