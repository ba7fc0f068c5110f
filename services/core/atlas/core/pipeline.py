"""The pipeline's own reports (ingest -> Redis -> worker -> PostgreSQL), kept in PostgreSQL for the dashboard.

The dashboard has no Redis connection (only ingest and the workers reach
Redis), so the workers bring what Redis knows to PostgreSQL: every
``server.pipeline_report_seconds`` each worker rewrites its row of
``pipeline_heartbeats`` with the queue's depth, its failed and retrying jobs
and how long its oldest job has waited, and copies the reports ingest
processes leave in Redis (batches accepted, the newest) into rows of their
own. A worker that stops, or is paused, stops rewriting its row; a worker
stuck on a job keeps its row fresh while its last job ages and the queue's
oldest job waits longer.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from redis import Redis
from redis.typing import EncodableT, FieldT
from rq import Queue
from rq.utils import str_to_date

from .config import Settings

KEEP_ROWS_SECONDS = 86400
"""Rows of processes silent this long are deleted (each worker start is a new row)."""


@dataclass(frozen=True)
class QueueSnapshot:
    """What Redis says of the batch queue at one moment."""

    depth: int
    failed: int
    retrying: int
    oldest_queued_at: datetime | None


def queue_snapshot(queue: Queue) -> QueueSnapshot:
    """The queue's depth, failed and retrying jobs, and when its oldest waiting job was queued (4 commands)."""
    with queue.connection.pipeline(transaction=False) as pipe:
        pipe.llen(queue.key)
        pipe.zcard(queue.failed_job_registry.key)
        pipe.zcard(queue.scheduled_job_registry.key)
        pipe.lindex(queue.key, 0)  # rq appends at the tail and takes from the head: the head waited longest
        depth, failed, retrying, head = pipe.execute()
    oldest = None
    if head is not None:
        job_id = head.decode() if isinstance(head, bytes) else str(head)
        enqueued = queue.connection.hget(queue.job_class.key_for(job_id), "enqueued_at")
        if enqueued:
            try:
                oldest = str_to_date(enqueued).replace(tzinfo=UTC)
            except ValueError:
                oldest = None
    return QueueSnapshot(int(depth), int(failed), int(retrying), oldest)


@dataclass(frozen=True)
class Heartbeat:
    """One row of ``pipeline_heartbeats``: a worker's or an ingest process's last report."""

    role: str
    name: str
    host: str
    pid: int
    started_at: datetime
    last_seen: datetime
    last_job_at: datetime | None = None
    jobs_done: int = 0
    last_stored_at: datetime | None = None
    batches_accepted: int = 0
    last_accepted_at: datetime | None = None
    queue_depth: int | None = None
    failed_jobs: int | None = None
    retrying_jobs: int | None = None
    oldest_queued_at: datetime | None = None


COLUMNS = tuple(f.name for f in fields(Heartbeat))


def process_name(role: str) -> str:
    """A name for this process's row: host, pid and a few random characters (pids are reused)."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def write_worker_beat(
    conn: psycopg.Connection,
    *,
    name: str,
    started_at: datetime,
    last_job_at: datetime | None,
    jobs_done: int,
    last_stored_at: datetime | None,
    queue: QueueSnapshot | None,
) -> None:
    """Upsert this worker's row (``last_seen`` is PostgreSQL's now) and delete rows silent for a day."""
    conn.execute(
        """
        INSERT INTO pipeline_heartbeats (role, name, host, pid, started_at, last_seen, last_job_at, jobs_done,
            last_stored_at, queue_depth, failed_jobs, retrying_jobs, oldest_queued_at)
        VALUES ('worker', %(name)s, %(host)s, %(pid)s, %(started_at)s, now(), %(last_job_at)s, %(jobs_done)s,
            %(last_stored_at)s, %(depth)s, %(failed)s, %(retrying)s, %(oldest)s)
        ON CONFLICT (role, name) DO UPDATE SET last_seen = now(), last_job_at = EXCLUDED.last_job_at,
            jobs_done = EXCLUDED.jobs_done, last_stored_at = EXCLUDED.last_stored_at,
            queue_depth = EXCLUDED.queue_depth, failed_jobs = EXCLUDED.failed_jobs,
            retrying_jobs = EXCLUDED.retrying_jobs, oldest_queued_at = EXCLUDED.oldest_queued_at
        """,
        {
            "name": name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": started_at,
            "last_job_at": last_job_at,
            "jobs_done": jobs_done,
            "last_stored_at": last_stored_at,
            "depth": queue.depth if queue else None,
            "failed": queue.failed if queue else None,
            "retrying": queue.retrying if queue else None,
            "oldest": queue.oldest_queued_at if queue else None,
        },
    )
    conn.execute(
        "DELETE FROM pipeline_heartbeats WHERE last_seen < now() - make_interval(secs => %s)", (KEEP_ROWS_SECONDS,)
    )


def write_ingest_beats(conn: psycopg.Connection, beats: list[Heartbeat]) -> None:
    """Upsert the rows of ingest processes, as read from their reports in Redis."""
    for beat in beats:
        conn.execute(
            """
            INSERT INTO pipeline_heartbeats (role, name, host, pid, started_at, last_seen, batches_accepted,
                last_accepted_at)
            VALUES ('ingest', %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (role, name) DO UPDATE SET last_seen = EXCLUDED.last_seen,
                batches_accepted = EXCLUDED.batches_accepted, last_accepted_at = EXCLUDED.last_accepted_at
            WHERE pipeline_heartbeats.last_seen <= EXCLUDED.last_seen
            """,
            (
                beat.name,
                beat.host,
                beat.pid,
                beat.started_at,
                beat.last_seen,
                beat.batches_accepted,
                beat.last_accepted_at,
            ),
        )


def load_beats(conn: psycopg.Connection) -> tuple[datetime, list[Heartbeat], datetime | None]:
    """PostgreSQL's now, every row of ``pipeline_heartbeats``, and the received time of the newest stored batch.

    The newest stored batch is read from ``machines.last_seen`` (one row per Mac, a small table).
    """
    with conn.cursor(row_factory=dict_row) as cur:
        columns = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
        cur.execute(sql.SQL("SELECT {} FROM pipeline_heartbeats ORDER BY last_seen DESC").format(columns))
        rows: list[dict[str, Any]] = cur.fetchall()
        cur.execute("SELECT now() AS now, (SELECT max(last_seen) FROM machines) AS newest")
        found = cur.fetchone()
    assert found is not None
    return found["now"], [Heartbeat(**row) for row in rows], found["newest"]


# --- ingest's reports, left in Redis for the workers ------------------------------------------


def ingest_index_key(settings: Settings) -> str:
    """A sorted set of ingest report names, scored by the time of their report."""
    return f"{settings.redis_key_prefix}:pipeline:ingests"


def ingest_report_key(settings: Settings, name: str) -> str:
    return f"{settings.redis_key_prefix}:pipeline:ingest:{name}"


def report_ingest(redis: Redis, settings: Settings, beat: Heartbeat) -> None:
    """Leave one ingest process's report in Redis (one round trip); it expires after a day."""
    values: dict[FieldT, EncodableT] = {
        "host": beat.host,
        "pid": str(beat.pid),
        "started_at": beat.started_at.isoformat(),
        "last_seen": beat.last_seen.isoformat(),
        "batches_accepted": str(beat.batches_accepted),
        "last_accepted_at": beat.last_accepted_at.isoformat() if beat.last_accepted_at else "",
    }
    key = ingest_report_key(settings, beat.name)
    with redis.pipeline(transaction=False) as pipe:
        pipe.hset(key, mapping=values)
        pipe.expire(key, KEEP_ROWS_SECONDS)
        pipe.zadd(ingest_index_key(settings), {beat.name: beat.last_seen.timestamp()})
        pipe.zremrangebyscore(ingest_index_key(settings), "-inf", beat.last_seen.timestamp() - KEEP_ROWS_SECONDS)
        pipe.execute()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_ingest_reports(redis: Redis, settings: Settings, since: datetime) -> list[Heartbeat]:
    """The reports ingest processes left in Redis at or after ``since``."""
    names = [_text(n) for n in redis.zrangebyscore(ingest_index_key(settings), since.timestamp(), "+inf")]
    if not names:
        return []
    with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(ingest_report_key(settings, name))
        reports = pipe.execute()
    beats = []
    for name, report in zip(names, reports, strict=True):
        values = {_text(k): _text(v) for k, v in report.items()}
        try:
            beats.append(
                Heartbeat(
                    role="ingest",
                    name=name,
                    host=values["host"],
                    pid=int(values["pid"]),
                    started_at=datetime.fromisoformat(values["started_at"]),
                    last_seen=datetime.fromisoformat(values["last_seen"]),
                    batches_accepted=int(values["batches_accepted"]),
                    last_accepted_at=datetime.fromisoformat(values["last_accepted_at"])
                    if values.get("last_accepted_at")
                    else None,
                )
            )
        except (KeyError, ValueError):  # expired meanwhile, or not written by us
            continue
    return beats
