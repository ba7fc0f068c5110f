"""PostgreSQL restarted under load: jobs that failed meanwhile are retried and every batch is stored once."""

from __future__ import annotations

import time

import pytest
import yaml

from ..fix_services import API_KEY, REDIS_URL
from .harness import Agents, assert_clean, scenario_config, settle, tally

DOWN_SECONDS = 2.0


@pytest.mark.slow
def test_postgres_restarted_under_load(
    private_postgres, tmp_path, server_config, keys, start_ingest, worker_pool, redis_prefix
):
    """A cluster of the test's own is stopped under load, once ``-m fast`` (sessions terminated, clean
    shutdown) and once ``-m immediate`` (no shutdown checkpoint: crash recovery at the next start).

    Ingest needs only Redis, so it keeps answering 202; the worker's jobs fail
    while PostgreSQL is away and rq retries them (worker.retries 8, the default
    backoff 2 s, 5 s, 15 s ...) until they persist.
    """
    config = scenario_config(
        server_config, database_url=private_postgres.url, redis_url=REDIS_URL, prefix=f"{redis_prefix}-fpg"
    )
    config_path = tmp_path / "migrate.yaml"
    config_path.write_text(yaml.safe_dump(config))
    private_postgres.migrate(config_path)
    pool = worker_pool(config)
    ingest = start_ingest(config)
    with Agents(ingest.url, API_KEY, keys["current"]) as agents:
        for mode in ("fast", "immediate"):
            time.sleep(1.5)
            private_postgres.stop(mode)
            time.sleep(DOWN_SECONDS)
            private_postgres.start()
        time.sleep(1.5)
        assert agents.stop(finish_within=30), "an agent never got its last batch answered"
    waited, state = settle(config, private_postgres.url, agents, timeout=90)
    retries = pool.count_in_logs("scheduled for retry")
    result = tally(
        "postgres stop -m fast, -m immediate under load",
        private_postgres.url,
        agents,
        state,
        note=f"{retries} job attempts failed and were retried; drained {waited:.0f}s after load",
    )
    assert retries > 0, "no job met the outage: the fault was not exercised"
    assert_clean(result, agents, state, pool.logs() + private_postgres.logs()[-3000:])
