"""Accepted batches go to Redis in groups: one transaction and one rq job per group.

rq's bookkeeping costs several milliseconds of Redis round trips per job,
far more than storing a 15-log batch, so ingest hands the worker groups.
A request still gets its answer only after the transaction holding its
batch has committed: each waits on a future that the flusher thread
resolves. Nothing is delayed on purpose: an idle server flushes a batch at
once, and under load batches pile up while the previous flush is in flight,
so groups grow exactly when they pay off.
"""

from __future__ import annotations

import logging
import queue as stdlib_queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

from rq import Queue

from atlas.server.config import Settings
from atlas.server.queue import QueuedBatch, enqueue_batches

log = logging.getLogger("atlas.ingest")

MAX_GROUP_BATCHES = 200
"""Most batches one group (one rq job) carries."""

MAX_GROUP_LOGS = 20_000
"""Most logs one group carries, bounding a job's size in Redis and the worker's transaction."""


class GroupingEnqueuer:
    """Collects batches from request handlers and enqueues them in groups from one thread."""

    def __init__(self, queue_factory: Callable[[], Queue], settings: Settings) -> None:
        self._queue_factory = queue_factory
        self._settings = settings
        self._pending: stdlib_queue.SimpleQueue[tuple[QueuedBatch, Future[bool]]] = stdlib_queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, batch: QueuedBatch) -> Future[bool]:
        """Future of True (queued) or False (duplicate); it raises RedisError if Redis is down."""
        self._ensure_thread()
        future: Future[bool] = Future()
        self._pending.put((batch, future))
        return future

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="atlas-enqueue", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        queue = self._queue_factory()
        while True:
            group = [self._pending.get()]
            logs = len(group[0][0]["logs"])
            while len(group) < MAX_GROUP_BATCHES and logs < MAX_GROUP_LOGS:
                try:
                    item = self._pending.get_nowait()
                except stdlib_queue.Empty:
                    break
                group.append(item)
                logs += len(item[0]["logs"])
            self._flush(queue, group)

    def _flush(self, queue: Queue, group: list[tuple[QueuedBatch, Future[bool]]]) -> None:
        try:
            results = enqueue_batches(queue, [batch for batch, _ in group], self._settings)
        except Exception as exc:  # every waiting request learns of it, nothing is lost silently
            for _, future in group:
                future.set_exception(exc)
            return
        for (_, future), queued in zip(group, results, strict=True):
            future.set_result(queued)
