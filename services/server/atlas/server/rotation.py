"""``atlas-server rotate-db-key``: move every stored batch under the current database key.

Two kinds of work, each done a chunk of batches per transaction, so ingest and
the workers go on meanwhile and an interruption loses nothing (a rerun picks up
what is left, because it selects by state, not by position):

* re-wrap: a batch whose data key is wrapped under an older database key gets
  it re-wrapped under the current one; its logs are not touched;
* encrypt: a batch stored in the clear (before ``db_encryption_key`` was set)
  gets a data key, and its logs' message and data are sealed in place.

When nothing is left under an older key, that key's id leaves ``db_key_ids``
and the key can be removed from ``server.db_encryption_keys``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from atlas.contract import Key, Keyring
from atlas.core.atrest import epoch_micros, new_data_key, seal_log, unwrap_data_key, wrap_data_key

MAX_PASSES = 5
"""Passes over the batches; a worker still sealing under an old key keeps adding work, so the count is bounded."""


@dataclass
class RotationWork:
    """Batches still to do: under an older key, and stored in the clear."""

    rewrap: int
    encrypt: int

    @property
    def total(self) -> int:
        return self.rewrap + self.encrypt


def remaining(conn: psycopg.Connection, current: Key) -> RotationWork:
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE dek_wrapped IS NOT NULL AND dek_kid <> %s),"
        " count(*) FILTER (WHERE dek_wrapped IS NULL) FROM batches",
        (current.kid,),
    ).fetchone()
    assert row is not None
    return RotationWork(int(row[0]), int(row[1]))


def rewrap_chunk(conn: psycopg.Connection, keyring: Keyring, current: Key, after: str, size: int) -> tuple[int, str]:
    """Re-wrap up to ``size`` batches after batch_id ``after``; returns (done, last batch_id seen)."""
    with conn.transaction():
        rows = conn.execute(
            "SELECT batch_id::text, dek_kid, dek_wrapped FROM batches"
            " WHERE batch_id > %s::uuid AND dek_wrapped IS NOT NULL AND dek_kid <> %s"
            " ORDER BY batch_id LIMIT %s FOR UPDATE",
            (after, current.kid, size),
        ).fetchall()
        if not rows:
            return 0, after
        updates = [
            (wrap_data_key(current, batch_id, unwrap_data_key(keyring, kid, batch_id, bytes(wrapped))), batch_id)
            for batch_id, kid, wrapped in rows
        ]
        conn.execute("INSERT INTO db_key_ids (kid) VALUES (%s) ON CONFLICT (kid) DO NOTHING", (current.kid,))
        with conn.cursor() as cur:
            cur.executemany(
                "UPDATE batches SET dek_wrapped = %s, dek_kid = %s WHERE batch_id = %s::uuid",
                [(wrapped, current.kid, batch_id) for wrapped, batch_id in updates],
            )
    return len(rows), rows[-1][0]


def encrypt_chunk(conn: psycopg.Connection, current: Key, after: str, size: int) -> tuple[int, str]:
    """Seal the logs of up to ``size`` clear batches after batch_id ``after``; returns (done, last batch_id)."""
    with conn.transaction():
        batches = conn.execute(
            "SELECT batch_id::text FROM batches WHERE batch_id > %s::uuid AND dek_wrapped IS NULL"
            " ORDER BY batch_id LIMIT %s FOR UPDATE",
            (after, size),
        ).fetchall()
        if not batches:
            return 0, after
        ids = [row[0] for row in batches]
        keys = {batch_id: new_data_key() for batch_id in ids}
        aeads = {batch_id: AESGCM(key) for batch_id, key in keys.items()}
        logs = conn.execute(
            'SELECT id, batch_id::text, machine_id, "timestamp", level, widget_type, message, data::text'
            " FROM widget_logs WHERE batch_id = ANY(%s::uuid[]) AND sealed IS NULL FOR UPDATE",
            (ids,),
        ).fetchall()
        sealed = [
            (
                seal_log(aeads[batch_id], batch_id, machine_id, epoch_micros(ts), level, widget_type, message, data),
                log_id,
                ts,
            )
            for log_id, batch_id, machine_id, ts, level, widget_type, message, data in logs
        ]
        conn.execute("INSERT INTO db_key_ids (kid) VALUES (%s) ON CONFLICT (kid) DO NOTHING", (current.kid,))
        with conn.cursor() as cur:
            cur.executemany(
                # the partition key too, so each update goes to one partition's index
                'UPDATE widget_logs SET sealed = %s, message = NULL, data = NULL WHERE id = %s AND "timestamp" = %s',
                sealed,
            )
            cur.executemany(
                "UPDATE batches SET dek_kid = %s, dek_wrapped = %s WHERE batch_id = %s::uuid",
                [(current.kid, wrap_data_key(current, b, keys[b]), b) for b in ids],
            )
    return len(ids), ids[-1]


def retire_unused_keys(conn: psycopg.Connection, current: Key) -> list[str]:
    """Drop from db_key_ids the older keys no batch uses any more; returns their ids.

    The table lock waits for any worker transaction that records a key id (it
    inserts into db_key_ids before committing its batches), so a batch a worker
    still seals under an old key is seen before that key is declared unused.
    """
    with conn.transaction():
        conn.execute("LOCK TABLE db_key_ids IN SHARE ROW EXCLUSIVE MODE")
        rows = conn.execute(
            "DELETE FROM db_key_ids d WHERE d.kid <> %s"
            " AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.dek_kid = d.kid) RETURNING kid",
            (current.kid,),
        ).fetchall()
    return [row[0] for row in rows]


def rotate(
    conn: psycopg.Connection,
    keyring: Keyring,
    *,
    chunk: int = 500,
    progress: Callable[[int], object] = lambda done: None,
) -> list[str]:
    """Do all the work left; ``progress`` is called with the batches done per chunk. Returns retired key ids."""
    current = keyring.current
    if current is None:
        raise ValueError("no current database key")
    conn.autocommit = True
    zero = "00000000-0000-0000-0000-000000000000"
    steps: tuple[Callable[[str], tuple[int, str]], ...] = (
        lambda after: rewrap_chunk(conn, keyring, current, after, chunk),
        lambda after: encrypt_chunk(conn, current, after, chunk),
    )
    for _ in range(MAX_PASSES):  # again while batches committed behind a pass's position are found
        found = 0
        for step in steps:
            after = zero
            while True:
                done, after = step(after)
                if not done:
                    break
                found += done
                progress(done)
        if not found:
            break
    return retire_unused_keys(conn, current)
