"""Fault-injection suite: shared reporting, and the services the server-side scenarios break."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import OwnRedis, PrivatePostgres, WorkerPool, shipped_redis_args
from .report import TALLIES, table


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not TALLIES:
        return
    terminalreporter.section("fault scenarios: batches sent, stored, duplicated, lost")
    for line in table(TALLIES):
        terminalreporter.write_line(line)


@pytest.fixture
def worker_pool(tmp_path: Path) -> Iterator[Callable[..., WorkerPool]]:
    """Start a pool of ``atlas-server worker`` processes for a config; every pool is stopped at the end."""
    pools: list[WorkerPool] = []

    def start(config: dict[str, Any], size: int = 2) -> WorkerPool:
        pool = WorkerPool(config, tmp_path, size=size)
        pools.append(pool)
        return pool

    yield start
    for pool in pools:
        pool.close()


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server of the test's own, run with the arguments shipped in docker-compose.yml (append-only file)."""
    redis = OwnRedis(tmp_path, shipped_redis_args())
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of the test's own, started; stopped and deleted at the end."""
    cluster = PrivatePostgres()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
