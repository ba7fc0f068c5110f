"""Batches whose jobs exhausted their retries, parked in rq's failed registry."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

from atlas.contract import Keyring

from .errors import AtRestError
from .queue import open_payload, payload_batch_ids, refusal


@dataclass(frozen=True)
class FailedBatch:
    """One batch of a failed job (a job carries one or more batches).

    ``machine_id`` is ``?`` and ``logs`` 0 when the job is sealed under a database key not configured here.
    """

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


def _batch_ids(job: Job) -> list[str]:
    """The batch_ids of an Atlas job; none for a job the worker refused (not ours, or unreadable)."""
    return [] if refusal(job) is not None else payload_batch_ids(job.args[0])


def _batches(job: Job, keyring: Keyring) -> list[tuple[str, str, int]]:
    """(batch_id, machine_id, logs) of each batch of an Atlas job."""
    payload = job.args[0]
    try:
        batches = open_payload(payload, keyring)
    except AtRestError:
        return [(batch_id, "?", 0) for batch_id in payload_batch_ids(payload)]
    return [
        (str(b.get("batch_id", "?")), str(b.get("machine", {}).get("machine_id", "?")), len(b.get("logs", ())))
        for b in batches
        if isinstance(b, dict)
    ]


def list_failed(queue: Queue, keyring: Keyring | None = None) -> list[FailedBatch]:
    """Each batch of each failed job; a refused job (no batch of ours) is one row with batch_id ``-``.

    ``keyring`` (the database keys) opens sealed jobs to show their machine and log count.
    """
    found = []
    for job in _failed_jobs(queue):
        reason = refusal(job)
        if reason is not None:
            found.append(FailedBatch(job.id, "-", "-", 0, job.ended_at, f"refused, never run: {reason}"))
            continue
        exc = (job.exc_info or "").strip().splitlines()
        for batch_id, machine_id, logs in _batches(job, keyring or Keyring()):
            found.append(FailedBatch(job.id, batch_id, machine_id, logs, job.ended_at, exc[-1] if exc else ""))
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
        ids = _batch_ids(job)
        if not ids:
            continue
        if wanted is not None and not (set(ids) & wanted or job.id in wanted):
            continue
        try:
            registry.requeue(job.id)
        except NoSuchJobError:
            continue
        count += len(ids)
    return count
