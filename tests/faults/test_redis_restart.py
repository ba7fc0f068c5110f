"""Redis restarted under load: 503 while it is down, and every batch answered 202 is stored once."""

from __future__ import annotations

import time

import pytest

from ..fix_services import API_KEY, own_database
from .harness import (
    DRAIN_SECONDS,
    Agents,
    OwnRedis,
    WorkerPool,
    assert_clean,
    queue_state,
    scenario_config,
    settle,
    tally,
    wait_for,
)

DOWN_SECONDS = 1.5
LOAD_SECONDS = 1.5


def restart(redis: OwnRedis, stop: str) -> None:
    """Stop Redis (SHUTDOWN, which flushes the append-only file, or SIGKILL), leave it down a moment, start it."""
    redis.shutdown() if stop == "shutdown" else redis.kill()
    time.sleep(DOWN_SECONDS)
    redis.start()


@pytest.mark.slow
def test_redis_restarted_under_load(aof_redis, server_config, keys, start_ingest, worker_pool, redis_prefix):
    """Redis of the test's own, run as shipped (append-only file on, ``--appendfsync always``), is
    restarted under load four times, on the same files.

    First with the workers running (SHUTDOWN, then SIGKILL): workers that lose
    Redis mid-job exit and are started again (as ``restart: unless-stopped``
    does), and rq's maintenance retries their jobs once the executions expire
    (about a minute). Then with the workers paused, so that accepted batches
    wait in Redis, the case the append-only file is for (SIGKILL, then
    SHUTDOWN); without it those batches would be gone. Throughout, ingest must
    answer 503 while Redis is away and never a 202 it cannot keep.
    """
    with own_database("_fault_redis") as database_url:
        config = scenario_config(
            server_config, database_url=database_url, redis_url=aof_redis.url, prefix=f"{redis_prefix}-fredis"
        )
        pool: WorkerPool = worker_pool(config)
        ingest = start_ingest(config)
        backlog = []
        with Agents(ingest.url, API_KEY, keys["current"]) as agents:
            for stop in ("shutdown", "sigkill"):
                time.sleep(LOAD_SECONDS)
                restart(aof_redis, stop)
            pool.pause()
            for stop in ("sigkill", "shutdown"):
                time.sleep(LOAD_SECONDS)
                # agents back off after the 503s of the last restart: wait (bounded) until a job waits
                wait_for(lambda: queue_state(config).queued > 0, timeout=3 * LOAD_SECONDS)
                backlog.append(queue_state(config).queued)
                restart(aof_redis, stop)
            time.sleep(LOAD_SECONDS)
            pool.resume()
            assert agents.stop(finish_within=30), "an agent never got its last batch answered"
        waited, state = settle(config, database_url, agents, timeout=DRAIN_SECONDS)
        result = tally(
            "redis restarted x4 (2 with a backlog)",
            database_url,
            agents,
            state,
            note=f"redis-server {' '.join(aof_redis.args)} (as shipped); {backlog} jobs waiting in Redis at the"
            f" restarts with workers paused; workers restarted {pool.restarts}x; drained {waited:.0f}s after load",
        )
        assert agents.log.statuses["503"] > 0, "no 503 while Redis was down: the fault was not exercised"
        assert min(backlog) > 0, "no batch was waiting in Redis when it stopped: the fault was not exercised"
        assert_clean(result, agents, state, pool.logs())
