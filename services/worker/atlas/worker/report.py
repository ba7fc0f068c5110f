"""The worker's pipeline report: its row of ``pipeline_heartbeats``, rewritten from a thread of its own.

Every ``server.pipeline_report_seconds`` the thread reads the queue from Redis
(depth, failed and retrying jobs, the oldest job's wait) and what ingest
processes reported there, and writes it all to PostgreSQL with this worker's
jobs done and its last job, for the dashboard (which cannot reach Redis). A
paused or killed worker stops writing; one stuck on a job keeps writing while
its last job ages. A failure to report is logged and never stops the worker.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

import psycopg
from redis.exceptions import RedisError

from atlas.core.config import Settings
from atlas.core.db import connect
from atlas.core.pipeline import queue_snapshot, read_ingest_reports, write_ingest_beats, write_worker_beat
from atlas.core.queue import batch_queue, redis_client

from .jobs import WorkerContext

log = logging.getLogger("atlas.worker")


class PipelineReporter:
    """Reports one worker (``name``, its ``context``) until ``stop``; ``report`` sends one report now."""

    def __init__(self, settings: Settings, context: WorkerContext, name: str) -> None:
        self.settings = settings
        self.context = context
        self.name = name
        self.started_at = datetime.now(UTC)
        self.queue = batch_queue(redis_client(settings.redis_url), settings)
        self._conn: psycopg.Connection | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="atlas-pipeline-report", daemon=True)
        self._failing = ""

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        if self._conn is not None:
            self._conn.close()
        self.queue.connection.close()

    def _run(self) -> None:
        while True:
            self.report()
            if self._stop.wait(self.settings.pipeline_report_seconds):
                return

    def report(self) -> None:
        """Write this worker's row (and ingest's) once; a failure is logged once until reports work again."""
        interval = self.settings.pipeline_report_seconds
        snapshot, ingests = None, []
        try:
            snapshot = queue_snapshot(self.queue)
            since = datetime.now(UTC) - timedelta(seconds=4 * interval + 60)
            ingests = read_ingest_reports(self.queue.connection, self.settings, since)
        except RedisError as exc:
            self._failed(f"Redis: {type(exc).__name__}")
        context = self.context
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = connect(self.settings.database_url, autocommit=True)
            write_worker_beat(
                self._conn,
                name=self.name,
                started_at=self.started_at,
                last_job_at=context.last_job_at,
                jobs_done=context.jobs_done,
                last_stored_at=context.last_stored_at,
                queue=snapshot,
            )
            write_ingest_beats(self._conn, ingests)
        except psycopg.Error as exc:
            self._failed(f"PostgreSQL: {type(exc).__name__}")
            return
        if snapshot is not None and self._failing:
            log.info("Pipeline report written again")
            self._failing = ""

    def _failed(self, reason: str) -> None:
        if reason != self._failing:
            log.warning("Could not write the pipeline report (%s); trying again", reason)
            self._failing = reason
