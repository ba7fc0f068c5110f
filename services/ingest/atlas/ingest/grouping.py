"""Accepted batches go to Redis in groups: one transaction and one rq job per group.

rq's bookkeeping costs several milliseconds of Redis round trips per job,
far more than storing a 15-log batch, so ingest hands the worker groups.
A request still gets its answer only after the transaction holding its
batch has committed: each waits on an asyncio future that the flusher
thread resolves, all of a group's in one hand-off to the event loop.

An idle server flushes a batch at once. Under load, flushes start at most
every ``MIN_FLUSH_INTERVAL`` seconds, and the batches that arrive meanwhile
form the next group: groups grow exactly when they pay off. While the
workers lag (more than ``BACKLOG_JOBS`` jobs waiting), the interval grows to
``BACKLOG_FLUSH_INTERVAL`` so that jobs grow and the workers catch up. A
group of ``FULL_GROUP_BATCHES`` goes at once. While fewer than
``MAX_GROUP_BATCHES`` wait, no batch waits longer than the interval plus one
Redis transaction; past ``MAX_PENDING_BATCHES`` waiting (Redis slow or down)
new requests are answered 503 at once.
"""

from __future__ import annotations

import asyncio
import logging
import queue as stdlib_queue
import threading
import time
from collections.abc import Callable

from rq import Queue

from atlas.core.config import Settings
from atlas.core.queue import QueuedBatch, enqueue_batches

log = logging.getLogger("atlas.ingest")

MAX_GROUP_BATCHES = 200
"""Most batches one group (one rq job) carries."""

MAX_GROUP_LOGS = 20_000
"""Most logs one group carries, bounding a job's size in Redis and the worker's transaction."""

MIN_FLUSH_INTERVAL = 0.02
"""Seconds between the starts of two flushes under load. Each rq job costs the worker
Redis round trips whatever its size, so a short wait for more batches a job buys the
worker several times its throughput. A batch waits only if it arrives less than the
interval after the previous flush began, and then at most for the rest of it."""

BACKLOG_JOBS = 8
"""Jobs waiting in the queue beyond which the workers are taken to lag behind ingest."""

BACKLOG_FLUSH_INTERVAL = 0.06
"""Seconds between flushes while the workers lag. A worker's cost per job is nearly fixed
(rq's round trips and a commit's fsync), so a lagging worker catches up only if jobs grow:
three times the interval, three times the batches a job. The queue's length is read after each flush, one LLEN."""

FULL_GROUP_BATCHES = 32
"""Batches pending at which a flush stops waiting for its interval: a job this size already
costs the worker little per batch, and a client with few connections is not held back."""

MAX_PENDING_BATCHES = 5 * MAX_GROUP_BATCHES
"""Batches waiting for the flusher beyond which a request is answered 503 at once (Redis slow or down)."""


class QueueBusy(Exception):
    """Too many batches already wait for Redis: answer 503, the agent retries later."""


Pending = tuple[QueuedBatch, asyncio.AbstractEventLoop, "asyncio.Future[bool]"]


class GroupingEnqueuer:
    """Collects batches from request handlers and enqueues them in groups from one thread."""

    def __init__(self, queue_factory: Callable[[], Queue], settings: Settings) -> None:
        self._queue_factory = queue_factory
        self._settings = settings
        self._pending: stdlib_queue.SimpleQueue[Pending] = stdlib_queue.SimpleQueue()
        self._full = threading.Condition()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, batch: QueuedBatch) -> asyncio.Future[bool]:
        """From the event loop: a future of True (queued) or False (duplicate); RedisError if Redis is down.

        Raises QueueBusy at once when MAX_PENDING_BATCHES already wait (Redis slow or down).
        """
        self._ensure_thread()
        if self._pending.qsize() >= MAX_PENDING_BATCHES:
            raise QueueBusy
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._pending.put((batch, loop, future))
        if self._pending.qsize() + 1 >= FULL_GROUP_BATCHES:  # +1: the flusher holds the group's first
            with self._full:
                self._full.notify()
        return future

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="atlas-enqueue", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        queue = self._queue_factory()
        last_flush, backlog = float("-inf"), 0
        while True:
            first = self._pending.get()
            interval = BACKLOG_FLUSH_INTERVAL if backlog > BACKLOG_JOBS else MIN_FLUSH_INTERVAL
            wait = last_flush + interval - time.monotonic()
            if wait > 0:  # a flush started less than the interval ago: let this group fill meanwhile
                self._fill(time.monotonic() + wait)
            group, logs = [first], len(first[0]["logs"])
            while len(group) < MAX_GROUP_BATCHES and logs < MAX_GROUP_LOGS:
                try:
                    item = self._pending.get_nowait()
                except stdlib_queue.Empty:
                    break
                group.append(item)
                logs += len(item[0]["logs"])
            last_flush = time.monotonic()
            if self._flush(queue, group):
                backlog = self._backlog(queue, backlog)

    def _fill(self, deadline: float) -> None:
        """Wait until ``deadline``, or until submit() says a full group is pending."""
        with self._full:
            while (remaining := deadline - time.monotonic()) > 0 and self._pending.qsize() + 1 < FULL_GROUP_BATCHES:
                self._full.wait(remaining)

    @staticmethod
    def _backlog(queue: Queue, previous: int) -> int:
        """Jobs waiting in the queue now (the previous figure if Redis does not answer)."""
        try:
            return queue.count
        except Exception:  # Redis trouble shows in the next flush, which answers 503s
            return previous

    def _flush(self, queue: Queue, group: list[Pending]) -> bool:
        """Enqueue a group and hand each request its result; False if Redis failed (each gets the error)."""
        try:
            batches = [batch for batch, _, _ in group]
            outcome: list[bool] | Exception = enqueue_batches(queue, batches, self._settings)
        except Exception as exc:  # every waiting request learns of it, nothing is lost silently
            outcome = exc
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bool], bool | BaseException]]] = {}
        for index, (_, loop, future) in enumerate(group):
            result = _own_copy(outcome) if isinstance(outcome, Exception) else outcome[index]
            by_loop.setdefault(loop, []).append((future, result))
        for loop, settled in by_loop.items():  # one wake-up of each event loop per group
            try:
                loop.call_soon_threadsafe(_settle, settled)
            except RuntimeError:  # that loop has closed (server shutting down): nobody waits any more
                log.warning("Event loop closed before %d enqueue result(s) could be delivered", len(settled))
        return not isinstance(outcome, Exception)


def _own_copy(exc: Exception) -> BaseException:
    """A fresh exception of the same kind per request: one instance raised in many tasks would chain
    every task's traceback (and its frames) onto it."""
    try:
        return type(exc)(*exc.args)
    except Exception:
        return RuntimeError(f"enqueue failed: {type(exc).__name__}")


def _settle(settled: list[tuple[asyncio.Future[bool], bool | BaseException]]) -> None:
    """In the event loop: hand each request its result (a cancelled request's future is skipped)."""
    for future, result in settled:
        if future.done():
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
