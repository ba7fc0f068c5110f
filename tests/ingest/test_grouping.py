"""Ingest's grouping of accepted batches into rq jobs, against the real Redis.

Each test uses a queue of its own (its own key prefix), reads the jobs back from Redis and
checks which batches went together. Timing bounds are one-sided: a busy machine can only
make groups larger, never smaller, so the assertions hold under load.
"""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
from redis.exceptions import RedisError

from atlas.core.config import Settings, settings_from_mapping
from atlas.core.queue import batch_queue, enqueue_batches, payload_batch_ids, redis_client
from atlas.ingest.grouping import FULL_GROUP_BATCHES, MAX_PENDING_BATCHES, GroupingEnqueuer, QueueBusy

from ..worker.test_worker import queued


@pytest.fixture
def own_queue(server_config, settings: Settings):
    """Settings with a Redis prefix (so a queue) of this test's own, and that queue."""
    prefix = f"{settings.redis_key_prefix}-grouping-{uuid.uuid4().hex[:8]}"
    config = {**server_config, "redis": {**server_config["redis"], "key_prefix": prefix}}
    own = settings_from_mapping(config, env={})
    queue = batch_queue(redis_client(own.redis_url), own)
    yield own, queue
    queue.empty()
    queue.connection.close()


def job_sizes(queue) -> list[int]:
    """Batches per queued job, in queue order."""
    return [len(payload_batch_ids(job.args[0])) for job in queue.get_jobs()]


def test_an_idle_batch_goes_alone_and_a_burst_goes_as_one_group(own_queue) -> None:
    settings, queue = own_queue

    async def scenario() -> tuple[bool, list[bool]]:
        enqueuer = GroupingEnqueuer(lambda: queue, settings)
        alone = await enqueuer.submit(queued())
        burst = [enqueuer.submit(queued()) for _ in range(2 * FULL_GROUP_BATCHES)]
        return alone, list(await asyncio.gather(*burst))

    alone, burst = asyncio.run(scenario())
    assert alone
    assert all(burst)
    sizes = job_sizes(queue)
    assert sizes[0] == 1, sizes  # nothing waits when nothing was flushed lately
    assert sum(sizes[1:]) == 2 * FULL_GROUP_BATCHES
    assert len(sizes) <= 3, sizes  # the burst travels in one or two jobs, not 64


def test_a_lagging_worker_makes_groups_grow(own_queue) -> None:
    """More than BACKLOG_JOBS jobs waiting: batches trickling in are held up to 60 ms and travel together."""
    settings, queue = own_queue
    for _ in range(12):  # a backlog nobody drains
        enqueue_batches(queue, [queued()], settings)

    async def scenario() -> list[bool]:
        enqueuer = GroupingEnqueuer(lambda: queue, settings)
        waiting = []
        for _ in range(20):  # one batch every 5 ms for 100 ms: 20 ms flushes would make 5 or more jobs
            waiting.append(enqueuer.submit(queued()))
            await asyncio.sleep(0.005)
        return list(await asyncio.gather(*waiting))

    assert all(asyncio.run(scenario()))
    sizes = job_sizes(queue)[12:]
    assert sum(sizes) == 20
    assert len(sizes) <= 4, sizes


def test_too_many_pending_batches_are_refused_at_once(own_queue) -> None:
    """Redis slow or down holds the flusher; past MAX_PENDING_BATCHES waiting, a request gets QueueBusy (503),
    and every request let in learns that Redis failed: none is told its batch was queued."""
    settings, _ = own_queue
    dead = batch_queue(redis_client("redis://127.0.0.1:1/0"), settings)  # nothing listens on port 1
    held = threading.Event()

    def queue_when_released():  # the flusher's first step: held here, as by a Redis that does not answer
        held.wait(30)
        return dead

    async def scenario() -> tuple[int, list[object]]:
        enqueuer = GroupingEnqueuer(queue_when_released, settings)
        futures, refused = [], 0
        for _ in range(MAX_PENDING_BATCHES + 300):
            try:
                futures.append(enqueuer.submit(queued()))
            except QueueBusy:
                refused += 1
        held.set()
        return refused, list(await asyncio.gather(*futures, return_exceptions=True))

    try:
        refused, outcomes = asyncio.run(scenario())
    finally:
        dead.connection.close()
    assert refused == 300
    assert len(outcomes) == MAX_PENDING_BATCHES
    assert all(isinstance(o, RedisError) for o in outcomes), {type(o).__name__ for o in outcomes}
