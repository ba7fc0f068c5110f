"""The Redis queue between ingest and worker, on rq.

Ingest enqueues accepted batches in groups, one rq job per group (rq's
bookkeeping costs several milliseconds per job, far more than storing a
batch), and in the same Redis transaction sets a short-lived "accepted"
marker per batch, so a batch is never marked accepted without being queued,
nor queued twice while the marker lives. The worker's unique key on ``batches.batch_id`` is
what finally makes storage exactly-once; the marker only lets ingest answer
"duplicate" quickly.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NotRequired, TypedDict

from redis import Redis
from redis.exceptions import WatchError
from rq import Queue, Retry
from rq.exceptions import DeserializationError
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from atlas.contract import BatchContent, Key, Keyring, MachineFields

from .atrest import open_job, seal_job
from .config import Settings
from .errors import AtRestError, RefusedJobError

PERSIST_JOB = "atlas.worker.jobs.persist_batches"
"""Dotted path of the job function the worker runs for each group of batches."""

JOB_FUNCTIONS = frozenset({PERSIST_JOB})
"""The only functions a worker runs. Any other job is refused without being run."""

SERIALIZER = JSONSerializer
"""How rq writes job data to Redis: JSON, never pickle, so reading a job back runs no code."""

QUEUE_FORMAT = 1
"""Version of the job payload below, in case it ever has to change under a live queue."""


class QueuedBatch(TypedDict):
    """A validated batch as the job payload: plain JSON types.

    ``logs`` rows are ``[timestamp ISO 8601, level, widget_type, message, data JSON]``.
    """

    format: int
    batch_id: str
    created_at: str
    received_at: str
    kid: str | None
    machine: MachineFields
    logs: list[tuple[str, str, str, str, str]]
    protocol: NotRequired[int]
    """The wire contract the batch came in (1 or 2); absent in jobs queued before it was kept: 1."""


class SealedGroup(TypedDict):
    """A job's batches sealed under the database key, as the job payload when one is configured.

    Redis (and its append-only file) then holds no log content in the clear;
    the batch_ids stay readable for ``atlas-server failed`` and are bound to
    the ciphertext.
    """

    kid: str
    batch_ids: list[str]
    sealed: str  # base64 of nonce + AES-256-GCM ciphertext + tag of the batches' JSON


JobPayload = list[QueuedBatch] | SealedGroup
"""The one argument of a persist job: the batches, sealed when a database key is configured."""


def job_payload(group: list[QueuedBatch], key: Key | None) -> JobPayload:
    """The batches as they go into Redis: sealed under ``key``, or as they are without one."""
    if key is None:
        return group
    batch_ids = [b["batch_id"] for b in group]
    sealed = seal_job(key, batch_ids, json.dumps(group, separators=(",", ":")).encode())
    return {"kid": key.kid, "batch_ids": batch_ids, "sealed": base64.b64encode(sealed).decode("ascii")}


def payload_batch_ids(payload: object) -> list[str]:
    """The batch_ids of a job payload, read without opening it; [] for an unexpected payload."""
    if isinstance(payload, dict) and isinstance(payload.get("batch_ids"), list):
        return [str(b) for b in payload["batch_ids"]]
    if isinstance(payload, list):
        return [str(b.get("batch_id")) for b in payload if isinstance(b, dict)]
    return []


def open_payload(payload: object, keyring: Keyring) -> list[QueuedBatch]:
    """The batches of a job payload: as they are if unsealed, else opened under ``keyring``.

    AtRestError if sealed under a key not in ``keyring``, or altered.
    """
    if isinstance(payload, list):
        return payload
    if not isinstance(payload, dict) or set(payload) != {"kid", "batch_ids", "sealed"}:
        raise AtRestError("a queued job's payload is neither batches nor a sealed group")
    kid, batch_ids = payload["kid"], payload["batch_ids"]
    if not isinstance(kid, str) or not isinstance(batch_ids, list) or not all(isinstance(b, str) for b in batch_ids):
        raise AtRestError("a sealed queued job has a malformed kid or batch_ids")
    try:
        sealed = base64.b64decode(payload["sealed"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise AtRestError("a sealed queued job is not base64") from None
    batches: list[QueuedBatch] = json.loads(open_job(keyring, kid, batch_ids, sealed))
    return batches


def queued_batch(
    content: BatchContent,
    *,
    batch_id: str,
    created_at: datetime,
    received_at: datetime,
    kid: str | None,
    protocol: int = 1,
) -> QueuedBatch:
    """Flatten a validated batch into the job payload."""
    return {
        "format": QUEUE_FORMAT,
        "batch_id": batch_id.lower(),
        "created_at": created_at.astimezone(UTC).isoformat(),
        "received_at": received_at.astimezone(UTC).isoformat(),
        "kid": kid,
        "machine": content.machine.model_dump(),  # type: ignore[typeddict-item]
        "logs": [
            (log.timestamp.astimezone(UTC).isoformat(), log.level, log.widget_type, log.message, log.data_json)
            for log in content.logs
        ],
        "protocol": protocol,
    }


class TolerantExecutionRegistry(ExecutionRegistry):
    """A job's executions, skipping those that expired with a killed worker."""

    def get_executions(self, start: int = 0, end: int = -1) -> list[Execution]:
        found = []
        for execution_id in self.get_execution_ids(start, end):
            try:
                found.append(Execution.fetch(id=execution_id, job_id=self.job_id, connection=self.connection))
            except ValueError:  # its hash expired: the worker running it died
                continue
        return found


def refusal(job: Job) -> str | None:
    """Why a worker must not run this job, or None for an Atlas job.

    Anyone who can write to Redis can write a job; only a call of an Atlas job
    function with one positional argument, no instance, callback or webhook runs.
    Reads the job's data (JSON) and imports nothing.
    """
    try:
        func_name, instance, args, kwargs = job.func_name, job.instance, job.args, job.kwargs
    except DeserializationError:
        return "job data is not JSON (pickled, or corrupt)"
    if func_name not in JOB_FUNCTIONS:
        return f"{str(func_name)[:80]!r} is not an Atlas job function"
    if instance is not None or kwargs or not isinstance(args, list | tuple) or len(args) != 1:
        return f"unexpected call of {func_name}: an instance, keyword arguments or not one argument"
    if job._success_callback_name or job._failure_callback_name or job._stopped_callback_name or job.webhooks:
        return "the job asks for callbacks or webhooks, which Atlas never sets"
    return None


class BatchJob(Job):
    """rq's Job for Atlas: runs only Atlas job functions, and tolerates expired executions.

    ``func`` resolves only names in JOB_FUNCTIONS, and callbacks and webhooks
    are never resolved or sent, whatever a job hash in Redis says: so no path
    of rq's (worker, registry cleanup) imports or calls anything else.

    In rq 3.0.0, once a job abandoned by a killed worker has been retried and
    succeeds, deleting it (``result_ttl=0``) fetches every execution it ever
    had; the dead worker's has expired, ``Execution.fetch`` raises
    ValueError, and the job is reported failed although it succeeded.
    """

    @property
    def func(self) -> Callable[..., Any]:
        reason = refusal(self)
        if reason is not None:
            raise RefusedJobError(reason)
        func: Callable[..., Any] = super().func
        return func

    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def send_webhooks(self, status: str | JobStatus, *, exc_string: str | None = None) -> None:
        return None

    @property
    def execution_registry(self) -> ExecutionRegistry:
        return TolerantExecutionRegistry(self.id, connection=self.connection)


def redis_client(url: str) -> Redis:
    """A Redis client that fails fast instead of hanging when Redis is down."""
    return Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30)


def batch_queue(connection: Redis, settings: Settings) -> Queue:
    return Queue(
        settings.queue_name,
        connection=connection,
        default_timeout=settings.worker_job_timeout,
        job_class=BatchJob,
        serializer=SERIALIZER,
    )


def accepted_marker(settings: Settings, batch_id: str) -> str:
    return f"{settings.redis_key_prefix}:accepted:{batch_id.lower()}"


def retry_policy(settings: Settings) -> Retry:
    """Back off through ``job_retry_intervals``, starting with the first.

    rq pairs the *last* intervals with the last retries, so the list is cut to
    the number of retries; past its end the last interval repeats.
    """
    count = settings.worker_retries
    intervals = list(settings.job_retry_intervals[:count])
    intervals += [intervals[-1]] * (count - len(intervals))
    return Retry(max=count, interval=intervals)


MAX_WATCH_RETRIES = 5
"""Times a group is re-checked when a concurrent accept of one of its batch_ids interferes."""


def enqueue_batches(queue: Queue, batches: list[QueuedBatch], settings: Settings) -> list[bool]:
    """Queue the batches not accepted within the duplicate window, as one rq job.

    Returns, per batch, True if queued now, False for a duplicate (accepted
    before, or earlier in this same list). Markers and the job are written in
    one MULTI/EXEC under WATCH of every marker, so a batch is never marked
    without being queued, and of two concurrent accepts of one batch exactly
    one queues it. Raises redis errors when Redis is unreachable.
    """
    markers = [accepted_marker(settings, b["batch_id"]) for b in batches]
    ttl = int(settings.duplicate_window.total_seconds())
    with queue.connection.pipeline() as pipe:
        for _ in range(MAX_WATCH_RETRIES):
            try:
                pipe.watch(*markers)  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.watch unannotated
                seen = set()
                for marker, value in zip(markers, pipe.mget(markers), strict=True):
                    if value is not None:
                        seen.add(marker)
                fresh = []
                for index, marker in enumerate(markers):
                    if marker not in seen:
                        seen.add(marker)
                        fresh.append(index)
                if not fresh:
                    pipe.unwatch()
                    return [False] * len(batches)
                pipe.multi()
                for index in fresh:
                    pipe.set(markers[index], b"1", ex=ttl)
                group = [batches[i] for i in fresh]
                logs = sum(len(b["logs"]) for b in group)
                job = queue.create_job(
                    PERSIST_JOB,
                    args=(job_payload(group, settings.db_keyring.current),),
                    timeout=settings.worker_job_timeout,
                    result_ttl=0,
                    failure_ttl=-1,
                    retry=retry_policy(settings),
                    description=f"persist {len(group)} batch(es), {logs} logs: {group[0]['batch_id']}...",
                )
                queue.enqueue_job(job, pipeline=pipe)
                pipe.execute()
            except WatchError:
                continue
            queued = set(fresh)
            return [i in queued for i in range(len(batches))]
    # Still contended after several tries: someone keeps accepting these very batch_ids.
    # Answering duplicate is safe only for those marked; re-check one by one.
    return [enqueue_batches(queue, [b], settings)[0] for b in batches]


def enqueue_batch(queue: Queue, batch: QueuedBatch, settings: Settings) -> bool:
    """Queue one batch unless it is a duplicate; see enqueue_batches."""
    return enqueue_batches(queue, [batch], settings)[0]
