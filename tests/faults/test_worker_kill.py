"""Workers SIGKILLed at random moments mid-load: every batch answered 202 is stored once, none lost."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime

import pytest

from atlas.contract import validate_content
from atlas.core.db import connect
from atlas.core.queue import queued_batch
from atlas.worker.store import persist_batch

from .. import batches
from ..fix_services import API_KEY, REDIS_URL, own_database
from .harness import (
    DRAIN_SECONDS,
    LOGS_PER_BATCH,
    Agents,
    QueueState,
    assert_clean,
    count,
    queue_state,
    scenario_config,
    settle,
    tally,
)

KILLS = 4


@pytest.mark.slow
def test_workers_killed_repeatedly_under_load(tmp_path, server_config, keys, start_ingest, worker_pool, redis_prefix):
    """Two workers; four times, at a random moment, one of them is SIGKILLed as soon as it runs a job,
    and a new one started in its place.

    A killed worker's open transaction is rolled back by PostgreSQL; its job
    stays in rq's started registry until the execution expires
    (``job_timeout + 60`` s), then a worker's maintenance retries it. A group committed just before the kill is a no-op
    the second time (the unique batch_id).
    """
    rng = random.Random()
    with own_database("_fault_kill") as database_url:
        config = scenario_config(
            server_config, database_url=database_url, redis_url=REDIS_URL, prefix=f"{redis_prefix}-fkill"
        )
        pool = worker_pool(config)
        ingest = start_ingest(config)
        with Agents(ingest.url, API_KEY, keys["current"]) as agents:
            for _ in range(KILLS):
                time.sleep(rng.uniform(0.3, 1.2))
                pool.kill_and_restart(rng.randrange(len(pool.workers)))
            time.sleep(1.0)
            assert agents.stop(finish_within=30), "an agent never got its last batch answered"
        time.sleep(2.0)  # the living workers finish what is queued in milliseconds: what stays is orphaned
        orphaned = queue_state(config)
        waited, state = settle(config, database_url, agents, timeout=DRAIN_SECONDS)
        result = tally(
            f"worker SIGKILL x{KILLS} mid-load (2 workers)",
            database_url,
            agents,
            state,
            note=f"{pool.mid_job_kills} of {pool.kills} kills mid-job, leaving"
            f" {orphaned.started + orphaned.intermediate} job(s) orphaned; drained {waited:.0f}s after load",
        )
        assert pool.kills == KILLS
        assert pool.mid_job_kills >= 1, "no kill landed while a worker ran a job"
        assert_clean(result, agents, state, pool.logs())


def test_count_sees_lost_short_and_duplicated_batches(database_url, db):
    """The tally's counting itself: a missing batch, a batch short of a log, a log stored twice."""
    agents = Agents("http://127.0.0.1:9", API_KEY, "", count=2)  # never started: only its log is used
    whole, short, doubled, missing = (str(uuid.uuid4()) for _ in range(4))
    for machine_id, batch_id in (
        (agents.machines[0], whole),
        (agents.machines[0], short),
        (agents.machines[1], doubled),
    ):
        content = batches.content(LOGS_PER_BATCH, machine_id)
        if batch_id == short:
            content["logs"].pop()  # a batch that lost a log on the way would look like this
        now = datetime.now(UTC)
        batch = queued_batch(validate_content(content), batch_id=batch_id, created_at=now, received_at=now, kid=None)
        with connect(database_url) as conn:
            persist_batch(conn, batch)
    db.execute(
        "INSERT INTO widget_logs (machine_id, serial_number, timestamp, level, widget_type, message, data,"
        " batch_id, received_at) SELECT machine_id, serial_number, timestamp, level, widget_type, message, data,"
        " batch_id, received_at FROM widget_logs WHERE batch_id = %s LIMIT 1",
        (doubled,),
    )
    for batch_id in (whole, short, doubled, missing):
        agents.log.sent[batch_id] = 202
        agents.log.attempted.add(batch_id)
    result = count("self-check", database_url, agents, QueueState(0, 0, 0, 0, 0))
    assert (result.sent, result.stored, result.duplicated, result.lost) == (4, 3, 1, 2)
