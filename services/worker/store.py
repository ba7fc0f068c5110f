"""Persisting a queued batch into PostgreSQL, exactly once.

One transaction per batch: claim the batch_id in ``batches`` (its primary
key makes a replay a no-op), upsert the machine, COPY the logs. A worker
killed midway leaves nothing behind, because PostgreSQL rolls the open
transaction back when the connection drops.
"""

from __future__ import annotations

import psycopg

from atlas.server.queue import QueuedBatch

CLAIM_BATCH = """
INSERT INTO batches (batch_id, machine_id, created_at, received_at, log_count, kid)
VALUES (%(batch_id)s, %(machine_id)s, %(created_at)s, %(received_at)s, %(log_count)s, %(kid)s)
ON CONFLICT (batch_id) DO NOTHING
RETURNING batch_id
"""

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


def persist_batch(conn: psycopg.Connection, batch: QueuedBatch) -> bool:
    """Store one batch atomically. Returns False when it was already stored."""
    machine = batch["machine"]
    params = {
        **machine,
        "batch_id": batch["batch_id"],
        "created_at": batch["created_at"],
        "received_at": batch["received_at"],
        "log_count": len(batch["logs"]),
        "kid": batch["kid"],
    }
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(CLAIM_BATCH, params)
        if cur.fetchone() is None:
            return False
        cur.execute(UPSERT_MACHINE, params)
        machine_id, serial = machine["machine_id"], machine["serial_number"]
        batch_id, received_at = batch["batch_id"], batch["received_at"]
        with cur.copy(COPY_LOGS) as copy:
            for timestamp, level, widget_type, message, data_json in batch["logs"]:
                copy.write_row(
                    (machine_id, serial, timestamp, level, widget_type, message, data_json, batch_id, received_at)
                )
    return True
