"""Running the rq worker: no fork per job, fast recovery of abandoned jobs."""

from __future__ import annotations

from rq import SimpleWorker

from atlas.server.config import Settings
from atlas.server.queue import batch_queue, redis_client


class BatchWorker(SimpleWorker):
    """Runs jobs in its own process, keeping one PostgreSQL connection.

    rq's default worker forks a child per job: safe for arbitrary code, but
    a fork and a new database connection per batch costs far more than the
    batch. Our job is a short transaction, so in-process is the right trade.
    """


def build_worker(settings: Settings, *, name: str | None = None) -> BatchWorker:
    connection = redis_client(settings.redis_url)
    queue = batch_queue(connection, settings)
    return BatchWorker(
        [queue],
        connection=connection,
        name=name,
        job_monitoring_interval=settings.job_monitoring_interval,
        maintenance_interval=settings.maintenance_interval,
    )


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None) -> bool:
    """Work until stopped (or, with burst, until the queue is empty)."""
    worker = build_worker(settings, name=name)
    return worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
