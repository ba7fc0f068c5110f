"""Batches whose jobs exhausted their retries, parked in rq's failed registry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job


@dataclass(frozen=True)
class FailedBatch:
    batch_id: str
    machine_id: str
    logs: int
    enqueued_at: datetime | None
    ended_at: datetime | None
    error: str


def _summary(job: Job) -> FailedBatch:
    batch = job.args[0] if job.args else {}
    exc = (job.exc_info or "").strip().splitlines()
    return FailedBatch(
        batch_id=job.id,
        machine_id=str(batch.get("machine", {}).get("machine_id", "?")),
        logs=len(batch.get("logs", ())),
        enqueued_at=job.enqueued_at,
        ended_at=job.ended_at,
        error=exc[-1] if exc else "",
    )


def list_failed(queue: Queue) -> list[FailedBatch]:
    registry = queue.failed_job_registry
    found = []
    for job_id in registry.get_job_ids():
        try:
            found.append(_summary(Job.fetch(job_id, connection=queue.connection)))
        except NoSuchJobError:
            continue
    return found


def requeue_failed(queue: Queue, batch_ids: list[str] | None = None) -> int:
    """Put failed batches back on the queue (all of them when batch_ids is None)."""
    registry = queue.failed_job_registry
    ids = registry.get_job_ids() if batch_ids is None else batch_ids
    done = 0
    for job_id in ids:
        try:
            registry.requeue(job_id)
            done += 1
        except NoSuchJobError:
            continue
    return done
