"""Batches whose jobs exhausted their retries, parked in rq's failed registry."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

from .queue import refusal


@dataclass(frozen=True)
class FailedBatch:
    """One batch of a failed job (a job carries one or more batches)."""

    job_id: str
    batch_id: str
    machine_id: str
    logs: int
    ended_at: datetime | None
    error: str


def _failed_jobs(queue: Queue) -> Iterator[Job]:
    for job_id in queue.failed_job_registry.get_job_ids():
        try:
            yield queue.job_class.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
        except NoSuchJobError:
            continue


def _batches(job: Job) -> list[dict]:
    """The batches of an Atlas job; none for a job the worker refused (not ours, or unreadable)."""
    if refusal(job) is not None:
        return []
    group = job.args[0]
    group = group if isinstance(group, list) else [group]
    return [b for b in group if isinstance(b, dict)]


def list_failed(queue: Queue) -> list[FailedBatch]:
    """Each batch of each failed job; a refused job (no batch of ours) is one row with batch_id ``-``."""
    found = []
    for job in _failed_jobs(queue):
        exc = (job.exc_info or "").strip().splitlines()
        reason = refusal(job)
        if reason is not None:
            found.append(FailedBatch(job.id, "-", "-", 0, job.ended_at, f"refused, never run: {reason}"))
            continue
        for batch in _batches(job):
            found.append(
                FailedBatch(
                    job_id=job.id,
                    batch_id=str(batch.get("batch_id", "?")),
                    machine_id=str(batch.get("machine", {}).get("machine_id", "?")),
                    logs=len(batch.get("logs", ())),
                    ended_at=job.ended_at,
                    error=exc[-1] if exc else "",
                )
            )
    return found


def requeue_failed(queue: Queue, batch_ids: list[str] | None = None) -> int:
    """Put failed jobs back on the queue: all of them, or those holding any of ``batch_ids``.

    Returns the number of batches requeued. Requeueing is safe even for a batch
    that was stored meanwhile: the worker writes nothing twice. Jobs the worker
    refused stay where they are: it would only refuse them again.
    """
    wanted = None if batch_ids is None else {b.lower() for b in batch_ids}
    registry = queue.failed_job_registry
    count = 0
    for job in list(_failed_jobs(queue)):
        batches = _batches(job)
        if not batches:
            continue
        if wanted is not None and not ({str(b.get("batch_id")) for b in batches} & wanted or job.id in wanted):
            continue
        try:
            registry.requeue(job.id)
        except NoSuchJobError:
            continue
        count += len(batches)
    return count
