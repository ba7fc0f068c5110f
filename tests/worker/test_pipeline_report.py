"""The worker's pipeline report: what Redis knows (the queue, ingest's reports) brought to PostgreSQL."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

from atlas.core.pipeline import Heartbeat, report_ingest
from atlas.core.queue import enqueue_batch
from atlas.worker.report import PipelineReporter
from atlas.worker.runner import build_worker

from .test_worker import queued

COLUMNS = "queue_depth, failed_jobs, oldest_queued_at, jobs_done, last_job_at, last_stored_at, last_seen"


def row(db, role: str, name: str):
    return db.execute(
        f"SELECT {COLUMNS}, batches_accepted, last_accepted_at FROM pipeline_heartbeats"  # noqa: S608
        " WHERE role = %s AND name = %s",
        (role, name),
    ).fetchone()


def test_the_worker_reports_the_queue_its_jobs_and_ingest(make_settings, redis_prefix, open_queue, db):
    settings = make_settings(
        redis={"key_prefix": f"{redis_prefix}report{uuid.uuid4().hex[:6]}"}, server={"pipeline_report_seconds": 1}
    )
    queue = open_queue(settings)
    before = datetime.now(UTC)
    for _ in range(2):
        assert enqueue_batch(queue, queued(), settings)
    ingest_name = f"ingest-test-{uuid.uuid4().hex[:6]}"
    accepted_at = before - timedelta(seconds=1)
    report_ingest(
        queue.connection,
        settings,
        Heartbeat(
            "ingest",
            ingest_name,
            "ingest-host",
            4321,
            before - timedelta(hours=1),
            before,
            batches_accepted=2,
            last_accepted_at=accepted_at,
        ),
    )
    worker = build_worker(settings)
    reporter = PipelineReporter(settings, worker.context, worker.name)
    try:
        reporter.report()
        depth, failed, oldest, jobs, last_job, last_stored, _, _, _ = row(db, "worker", worker.name)
        assert (depth, failed, jobs, last_job, last_stored) == (2, 0, 0, None, None)
        assert before - timedelta(seconds=1) <= oldest <= datetime.now(UTC)
        assert row(db, "ingest", ingest_name)[-2:] == (2, accepted_at)

        assert worker.work(burst=True, logging_level="WARNING")
        reporter.report()
        depth, failed, oldest, jobs, last_job, last_stored, seen, _, _ = row(db, "worker", worker.name)
        assert (depth, failed, oldest, jobs) == (0, 0, None, 2)
        assert last_job is not None
        assert last_stored is not None
        assert last_job >= before

        reporter.start()  # from its thread, every second
        deadline = time.monotonic() + 10
        while row(db, "worker", worker.name)[-3] <= seen:
            assert time.monotonic() < deadline, "the report thread wrote nothing"
            time.sleep(0.2)
    finally:
        reporter.stop()
        worker.context.close()
        worker.connection.close()
