"""The agent's local store: SQLite, crash-safe, encrypted at rest, bounded by age and size.

Each log's message and data are sealed with AES-256-GCM under a key of its
own, HKDF-SHA256 of the configured key over a random 32-byte salt kept in the
row (rows written before the salt column have none and were sealed under the
configured key itself; they stay readable). The columns exports filter on
(time, level, widget type) stay clear and are bound into the associated data,
so moving a sealed body to another row fails to decrypt. A batch is sealed once, its exact request body kept, and
re-sent byte for byte until the server has it: a crash at any point loses
nothing and the server's batch_id makes a re-send harmless. SQLite runs in
WAL mode with synchronous=FULL, so a committed write survives power loss.

    StoreError               the store cannot do what was asked
     └── StoreKeyError       rows were sealed with a key that is not configured
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag

from atlas.contract import LOG_MAX_BEFORE_BATCH, SALT_BYTES, STORE_RECORD_KEY_INFO, Keyring

STORE_AAD_LABEL = "atlas-agent-store/v1"
"""First line of a stored log's associated data."""

DEFAULT_MAX_AGE_DAYS = 7
DEFAULT_MAX_BYTES = 200 * 1024 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp    TEXT NOT NULL,
    level        TEXT NOT NULL,
    widget_type  TEXT NOT NULL,
    kid          TEXT,
    body         BLOB NOT NULL,
    size         INTEGER NOT NULL,
    batch_id     TEXT,
    salt         BLOB
);
CREATE INDEX IF NOT EXISTS logs_unbatched ON logs (id) WHERE batch_id IS NULL;
CREATE INDEX IF NOT EXISTS logs_type_time ON logs (widget_type, timestamp);
CREATE TABLE IF NOT EXISTS batches (
    batch_id         TEXT PRIMARY KEY,
    created_at       TEXT NOT NULL,
    log_count        INTEGER NOT NULL,
    body             BLOB NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending',
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL DEFAULT 0,
    last_error       TEXT,
    sent_at          TEXT
);
CREATE INDEX IF NOT EXISTS batches_due ON batches (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

NONCE_BYTES = 12


class StoreError(Exception):
    """The store cannot do what was asked."""


class StoreKeyError(StoreError):
    """Rows were sealed with a key that is not configured, or the key is wrong."""


@dataclass(frozen=True)
class StoredLog:
    id: int
    timestamp: str
    level: str
    widget_type: str
    message: str
    data: dict[str, Any]
    batch_id: str | None


@dataclass(frozen=True)
class PendingBatch:
    batch_id: str
    body: bytes
    log_count: int
    attempts: int


def _within_span(rows: list[tuple[Any, ...]]) -> int:
    """How many of ``rows`` (their second column a timestamp) span at most LOG_MAX_BEFORE_BATCH; at least 1."""
    low = high = datetime.fromisoformat(rows[0][1])
    for count, row in enumerate(rows[1:], 1):
        moment = datetime.fromisoformat(row[1])
        low, high = min(low, moment), max(high, moment)
        if high - low > LOG_MAX_BEFORE_BATCH:
            return count
    return len(rows)


LOG_FRAME_BYTES = 128
"""What one log adds to a batch's JSON beyond its stored body: its keys, timestamp, level and type."""


def _within_bytes(rows: list[tuple[Any, ...]], max_bytes: int) -> int:
    """How many of ``rows`` (their sixth column the stored body) fit in ``max_bytes`` of batch; at least 1."""
    total = 0
    for count, row in enumerate(rows):
        total += len(row[5]) + LOG_FRAME_BYTES
        if total > max_bytes and count:
            return count
    return len(rows)


def _aad(timestamp: str, level: str, widget_type: str) -> bytes:
    return "\n".join((STORE_AAD_LABEL, timestamp, level, widget_type)).encode("utf-8")


def _migrate(conn: sqlite3.Connection) -> None:
    """Add the ``salt`` column to a store made before it; its rows keep NULL (sealed under the key itself)."""
    conn.execute("BEGIN IMMEDIATE")  # two processes opening an old store at once: one adds the column
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(logs)")}
        if "salt" not in columns:
            conn.execute("ALTER TABLE logs ADD COLUMN salt BLOB")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class LocalStore:
    """One SQLite file in the agent's data folder; safe to use from several threads."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        keyring: Keyring,
        *,
        max_age_days: int = DEFAULT_MAX_AGE_DAYS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.keyring = keyring
        self.max_age_days = max_age_days
        self.max_bytes = max_bytes
        with closing(self._connect()) as conn, conn:
            conn.executescript(SCHEMA)
            _migrate(conn)
        os.chmod(self.path, 0o600)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    # --- writing -----------------------------------------------------------------------------

    def add(self, *, timestamp: str, level: str, widget_type: str, message: str, data: dict[str, Any]) -> int:
        """Store one log, sealed under the current key (plain JSON only when no key is configured)."""
        plain = json.dumps({"message": message, "data": data}, ensure_ascii=False, separators=(",", ":")).encode()
        key = self.keyring.current
        salt: bytes | None = None
        if key is None:
            kid, body = None, plain
        else:
            salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
            sealed = key.derive_aead(salt, STORE_RECORD_KEY_INFO).encrypt(
                nonce, plain, _aad(timestamp, level, widget_type)
            )
            kid, body = key.kid, nonce + sealed
        with closing(self._connect()) as conn, conn:
            cur = conn.execute(
                "INSERT INTO logs (timestamp, level, widget_type, kid, body, size, salt) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (timestamp, level, widget_type, kid, body, len(body) + len(salt or b""), salt),
            )
            return int(cur.lastrowid or 0)

    def seal_batch(self, seal: Any, *, max_logs: int, max_bytes: int) -> PendingBatch | None:
        """Take up to ``max_logs`` unbatched logs, about ``max_bytes`` of plaintext, into one pending batch.

        The batch spans at most ``LOG_MAX_BEFORE_BATCH`` of log time (a spool of logs older than that, say
        after the Mac slept for days or the fleet server was configured late, goes in several batches), so
        ``seal`` can date it within the contract's window of every log it carries.
        ``seal(logs: list[dict]) -> (batch_id, created_at, body bytes)`` builds the
        request body; logs and batch are written in one transaction.
        """
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(
                    "SELECT id, timestamp, level, widget_type, kid, body, salt FROM logs WHERE batch_id IS NULL"
                    " ORDER BY id LIMIT ?",
                    (max_logs,),
                ).fetchall()
                if not rows:
                    conn.execute("ROLLBACK")
                    return None
                rows = rows[: _within_span(rows)]
                rows = rows[: _within_bytes(rows, max_bytes)]
                logs = [self._decode(row) for row in rows]
                batch_id, created_at, body = seal(
                    [
                        {
                            "timestamp": lg.timestamp,
                            "level": lg.level,
                            "widget_type": lg.widget_type,
                            "message": lg.message,
                            "data": lg.data,
                        }
                        for lg in logs
                    ]
                )
                conn.execute(
                    "INSERT INTO batches (batch_id, created_at, log_count, body) VALUES (?, ?, ?, ?)",
                    (batch_id, created_at, len(rows), body),
                )
                conn.executemany("UPDATE logs SET batch_id = ? WHERE id = ?", [(batch_id, row[0]) for row in rows])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return PendingBatch(batch_id, body, len(rows), 0)

    def due_batches(self, now: float | None = None) -> list[PendingBatch]:
        """Pending batches, oldest first, up to the first one still waiting out its backoff.

        A batch never goes before an older pending one, so a spool drains in order, and the
        oldest batch's jittered backoff holds back the whole spool, not just that batch.
        """
        now = time.time() if now is None else now
        due = []
        with closing(self._connect()) as conn:
            for r in conn.execute(
                "SELECT batch_id, body, log_count, attempts, next_attempt_at FROM batches"
                " WHERE state = 'pending' ORDER BY created_at, rowid"
            ):
                if r[4] > now:
                    break
                due.append(PendingBatch(r[0], bytes(r[1]), r[2], r[3]))
        return due

    def next_attempt_at(self) -> float | None:
        """When the oldest pending batch may be sent (time.time() scale), or None with nothing pending."""
        with closing(self._connect()) as conn:
            row = conn.execute(
                "SELECT next_attempt_at FROM batches WHERE state = 'pending' ORDER BY created_at, rowid LIMIT 1"
            ).fetchone()
        return None if row is None else float(row[0])

    def mark_sent(self, batch_id: str) -> None:
        with closing(self._connect()) as conn, conn:
            conn.execute(
                "UPDATE batches SET state = 'sent', sent_at = ?, last_error = NULL WHERE batch_id = ?",
                (datetime.now(UTC).isoformat(), batch_id),
            )

    def mark_retry(self, batch_id: str, *, delay: float, error: str) -> None:
        with closing(self._connect()) as conn, conn:
            conn.execute(
                "UPDATE batches SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE batch_id = ?",
                (time.time() + delay, error[:500], batch_id),
            )

    def quarantine(self, batch_id: str, reason: str) -> None:
        """Park a batch the server refused for good; it is kept, with the reason, for an operator."""
        with closing(self._connect()) as conn, conn:
            conn.execute(
                "UPDATE batches SET state = 'quarantined', attempts = attempts + 1, last_error = ? WHERE batch_id = ?",
                (reason[:500], batch_id),
            )

    def pending_bodies(self) -> list[tuple[str, bytes]]:
        """(batch_id, body) of every pending batch, oldest first."""
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT batch_id, body FROM batches WHERE state = 'pending' ORDER BY created_at, rowid"
            ).fetchall()
        return [(r[0], bytes(r[1])) for r in rows]

    def unseal(self, batch_ids: list[str]) -> int:
        """Put the logs of these pending batches back among the unbatched ones and forget the batches, in one
        transaction: for batches sealed to a credential the server no longer takes (a Mac enrolled again).
        Returns how many logs are unbatched again."""
        with closing(self._connect()) as conn, conn:
            count = 0
            for batch_id in batch_ids:
                if conn.execute("DELETE FROM batches WHERE batch_id = ? AND state = 'pending'", (batch_id,)).rowcount:
                    count += conn.execute("UPDATE logs SET batch_id = NULL WHERE batch_id = ?", (batch_id,)).rowcount
            return count

    def requeue_quarantined(self) -> int:
        """Make quarantined batches pending again (after an operator fixed, say, the API key)."""
        with closing(self._connect()) as conn, conn:
            cur = conn.execute(
                "UPDATE batches SET state = 'pending', attempts = 0, next_attempt_at = 0 WHERE state = 'quarantined'"
            )
            return cur.rowcount

    # --- limits ------------------------------------------------------------------------------

    def enforce_limits(self, now: datetime | None = None) -> dict[str, int]:
        """Drop logs older than max_age_days, then the oldest until under max_bytes.

        A log in a sealed, unsent batch goes with its whole batch: the batch's body carries
        every one of its logs, so sending the rest would deliver logs counted as dropped.
        Returns (and adds to the counters) how many logs were dropped before the
        server had them ("dropped_unsent") and how many delivered logs aged out.
        """
        now = now or datetime.now(UTC)
        cutoff = datetime.fromtimestamp(now.timestamp() - self.max_age_days * 86400, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        dropped = {"dropped_unsent": 0, "expired_sent": 0}
        select = (
            "SELECT l.id, l.size, COALESCE(b.state, 'unbatched'), l.batch_id, length(b.body) FROM logs l"
            " LEFT JOIN batches b ON b.batch_id = l.batch_id"
        )
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                victims: dict[int, str] = {}  # log id -> its batch's state

                def take(row: tuple[Any, ...]) -> int:
                    """Mark a log (with its whole batch, if sealed and unsent) as a victim; bytes freed."""
                    log_id, size, state, batch_id, body_size = row
                    if log_id in victims:
                        return 0
                    if state in ("sent", "unbatched"):
                        victims[log_id] = state
                        return int(size)
                    freed = int(body_size)
                    for other_id, other_size in conn.execute(
                        "SELECT id, size FROM logs WHERE batch_id = ?", (batch_id,)
                    ).fetchall():
                        victims[other_id] = state
                        freed += other_size
                    return freed

                total = (
                    conn.execute("SELECT COALESCE(SUM(size), 0) FROM logs").fetchone()[0]
                    + conn.execute(
                        "SELECT COALESCE(SUM(length(body)), 0) FROM batches WHERE state != 'sent'"
                    ).fetchone()[0]
                )
                for row in conn.execute(select + " WHERE l.timestamp < ? ORDER BY l.id", (cutoff,)):
                    total -= take(row)
                if total > self.max_bytes:
                    for row in conn.execute(select + " ORDER BY l.id"):
                        if total <= self.max_bytes:
                            break
                        total -= take(row)
                for state in victims.values():
                    dropped["expired_sent" if state == "sent" else "dropped_unsent"] += 1
                conn.executemany("DELETE FROM logs WHERE id = ?", [(v,) for v in victims])
                # A pending batch none of whose logs remain was dropped too: never send it.
                conn.execute(
                    "DELETE FROM batches WHERE state != 'sent'"
                    " AND NOT EXISTS (SELECT 1 FROM logs WHERE logs.batch_id = batches.batch_id)"
                )
                conn.execute("DELETE FROM batches WHERE state = 'sent' AND sent_at < ?", (cutoff,))
                for name, value in dropped.items():
                    conn.execute(
                        "INSERT INTO counters (name, value) VALUES (?, ?)"
                        " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                        (name, value),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return dropped

    # --- reading -----------------------------------------------------------------------------

    def _decode(self, row: tuple[Any, ...]) -> StoredLog:
        """A row (id, timestamp, level, widget_type, kid, body, salt[, batch_id]) decrypted."""
        log_id, timestamp, level, widget_type, kid, body, salt = row[:7]
        batch_id = row[7] if len(row) > 7 else None
        if kid is None:
            plain = bytes(body)
        else:
            key = self.keyring.get(kid)
            if key is None:
                raise StoreKeyError(f"log {log_id} was encrypted with key id {kid}, which is not configured")
            body = bytes(body)
            if not any(body[:NONCE_BYTES]):
                raise StoreKeyError(f"log {log_id} has an all-zero nonce, which this store never writes: refused")
            if salt is None:  # written before per-record keys
                aead = self.keyring.aead(kid) or key.aead()
            elif len(salt) != SALT_BYTES or not any(salt):
                raise StoreKeyError(f"log {log_id} has a malformed salt: the store was altered")
            else:
                aead = key.derive_aead(bytes(salt), STORE_RECORD_KEY_INFO)
            try:
                plain = aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], _aad(timestamp, level, widget_type))
            except InvalidTag:
                raise StoreKeyError(f"log {log_id} does not decrypt with key id {kid}: the store was altered") from None
        content = json.loads(plain)
        return StoredLog(log_id, timestamp, level, widget_type, content["message"], content["data"], batch_id)

    def iter_logs(
        self, *, widget_type: str | None = None, since: str | None = None, until: str | None = None
    ) -> Iterator[StoredLog]:
        """Logs in id order, decrypted; filters on the clear columns."""
        clauses, params = [], []
        if widget_type:
            clauses.append("widget_type = ?")
            params.append(widget_type)
        if since:
            clauses.append("timestamp >= ?")
            params.append(since)
        if until:
            clauses.append("timestamp < ?")
            params.append(until)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with closing(self._connect()) as conn:
            cursor = conn.execute(
                "SELECT id, timestamp, level, widget_type, kid, body, salt, batch_id FROM logs"  # noqa: S608
                + where  # built from the constant clauses above; values are bound
                + " ORDER BY id",
                params,
            )
            for row in cursor:
                yield self._decode(row)

    def status(self) -> dict[str, Any]:
        """Counts an operator wants: logs waiting, batches by state, drops, the last send."""
        with closing(self._connect()) as conn:
            states = dict(conn.execute("SELECT state, count(*) FROM batches GROUP BY state").fetchall())
            return {
                "unbatched_logs": conn.execute("SELECT count(*) FROM logs WHERE batch_id IS NULL").fetchone()[0],
                "pending_batches": states.get("pending", 0),
                "sent_batches": states.get("sent", 0),
                "quarantined_batches": states.get("quarantined", 0),
                "last_sent_at": conn.execute("SELECT max(sent_at) FROM batches").fetchone()[0],
                "last_error": next(
                    iter(
                        conn.execute(
                            "SELECT last_error FROM batches WHERE state != 'sent' AND last_error IS NOT NULL"
                            " ORDER BY rowid DESC LIMIT 1"
                        ).fetchone()
                        or (None,)
                    )
                ),
                "counters": dict(conn.execute("SELECT name, value FROM counters").fetchall()),
            }
