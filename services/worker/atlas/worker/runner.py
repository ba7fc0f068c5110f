"""Running the rq worker: no fork per job, fast recovery of abandoned jobs, and its /metrics."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any

from redis.client import Pipeline
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.job_lifecycle import format_exc_info
from rq.utils import now

from atlas.core import metrics
from atlas.core.config import Settings
from atlas.core.errors import ConfigError, RefusedJobError
from atlas.core.queue import SERIALIZER, BatchJob, batch_queue, payload_batch_ids, redis_client, refusal

from .jobs import WorkerContext, running
from .report import PipelineReporter

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger("atlas.worker")

WORKER_TTL = 30
"""Seconds a worker's registration lives between heartbeats. rq blocks on the
queue for this minus 15 seconds, so it also bounds how long an idle worker
goes without its maintenance (which brings back jobs of dead workers)."""


class BatchWorker(SimpleWorker):
    """Runs jobs in its own process, keeping one PostgreSQL connection in its ``context``.

    rq's default worker forks a child per job: safe for arbitrary code, but
    a fork and a new database connection per batch costs far more than the
    batch. Our job is a short transaction, so in-process is the right trade.

    A job of a worker killed mid-batch stays in rq's started registry until
    ``job_timeout`` + 120 s have passed; the next maintenance pass of any
    worker then retries it. With the defaults that is within about 3 minutes.

    Only Atlas job functions run (see ``refusal``): any other job, such as one
    written to Redis by someone else, goes to the failed registry unrun.
    """

    def __init__(self, *args: Any, context: WorkerContext, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context = context  # lent to each job it runs

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        reason = refusal(job)
        if reason is None:
            with running(self.context):
                return super().perform_job(job, queue, execution)
        self.refuse_job(job, queue, execution, reason)
        return False

    def refuse_job(self, job: Job, queue: Queue, execution: Execution, reason: str) -> None:
        """Fail a job without running, importing or retrying anything of it."""
        log.warning("Refused job %s: %s", job.id, reason)
        job.retries_left = None
        job.started_at = job.ended_at = now()
        self.handle_job_failure(
            job,
            queue=queue,
            started_job_registry=queue.started_job_registry,
            exc_string=f"{RefusedJobError.__name__}: {reason}",
            execution=execution,
        )

    def handle_exception(self, job: Job, *exc_info: type[BaseException] | BaseException | TracebackType | None) -> None:
        """rq's error line for a failed attempt, naming the batch_ids instead of the job's arguments.

        rq passes the arguments (the batches, clear without a database key) as
        log extras, which the JSON log format writes out.
        """
        reason = refusal(job)
        extra: dict[str, Any] = {"queue": job.origin, "job_id": job.id}
        if reason is None:
            extra["batch_ids"] = payload_batch_ids(job.args[0])
        self.log.error(
            "Worker %s: job %s: exception raised while executing\n%s",
            self.name,
            job.id,
            format_exc_info(exc_info),
            extra=extra,
        )

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        """rq's heartbeat (three commands), sent as one pipeline when rq gives none.

        rq beats before every dequeue and around every job; on its own each of its
        three commands is a Redis round trip, a sizeable share of a job's cost.
        """
        if pipeline is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            return
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(timeout, pipeline=pipe)
            pipe.execute()

    def run_maintenance_tasks(self) -> None:
        """rq's maintenance, then widget_logs' partitions: days ahead made, expired ones dropped (hourly)."""
        super().run_maintenance_tasks()  # type: ignore[no-untyped-call]  # rq leaves it unannotated
        self.context.maintain_partitions()


def build_worker(settings: Settings, *, name: str | None = None) -> BatchWorker:
    """A worker on the batch queue with a context of its own; close its ``context`` and ``connection`` after."""
    connection = redis_client(settings.redis_url)
    queue = batch_queue(connection, settings)
    return BatchWorker(
        [queue],
        connection=connection,
        name=name,
        job_monitoring_interval=settings.worker_monitoring_interval,
        maintenance_interval=settings.worker_maintenance_interval,
        worker_ttl=WORKER_TTL,
        job_class=BatchJob,
        serializer=SERIALIZER,
        context=WorkerContext(settings),
    )


def start_metrics(settings: Settings) -> WSGIServer | None:
    """Serve this process's ``/metrics`` on ``worker.metrics_port`` from a thread; None when it is 0 (off).

    The worker has no web app, so prometheus_client's own small HTTP server
    answers: rows and batches stored by this process, and the queue gauges read
    from Redis. Each worker process needs a port of its own.
    """
    if not settings.worker_metrics_port:
        return None
    registry = metrics.service_registry(settings, queue=True)
    try:
        server = metrics.start_metrics_server(settings.worker_metrics_port, settings.worker_metrics_host, registry)
    except OSError as exc:  # the port is taken (another worker?) or the address is not ours: one line, no traceback
        raise ConfigError(
            f"worker.metrics_port: cannot listen on {settings.worker_metrics_host}:{settings.worker_metrics_port}"
            f" ({exc.strerror or exc})"
        ) from None
    log.info("Serving metrics on http://%s:%d/metrics", settings.worker_metrics_host, settings.worker_metrics_port)
    return server


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None) -> bool:
    """Work until stopped (or, with burst, until the queue is empty), reporting to ``pipeline_heartbeats``."""
    worker = build_worker(settings, name=name)
    server = start_metrics(settings)
    reporter = PipelineReporter(settings, worker.context, worker.name)
    reporter.start()
    try:
        return worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
    finally:
        reporter.stop()
        if server is not None:
            server.shutdown()
            server.server_close()
        worker.context.close()
        worker.connection.close()
