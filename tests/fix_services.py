"""Fixtures for PostgreSQL and Redis: a database and key prefixes of this run's own."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql
from redis import Redis
from rq import Queue

from atlas.contract import generate_encryption_key
from atlas.core.config import Settings, settings_from_mapping
from atlas.core.db import connect, ensure_database, migrate
from atlas.core.queue import batch_queue, redis_client

RUN_ID = os.environ["ATLAS_TEST_RUN_ID"]
PG_BASE_URL = os.environ.get("ATLAS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("ATLAS_TEST_REDIS", "redis://127.0.0.1:6379/0")
API_KEY = "test-api-key-" + RUN_ID + "-0123456789"


def database_url_for(name: str) -> str:
    return psycopg.conninfo.make_conninfo(PG_BASE_URL, dbname=name)


@contextmanager
def own_database(suffix: str = "", *, create: bool = True, migrated: bool = True) -> Iterator[str]:
    """The URL of a database of this run's own (``atlas_test_<run><suffix>``), dropped on exit.

    ``create=False`` leaves creating it to the code under test; ``migrated=False`` leaves it empty.
    """
    name = f"atlas_test_{RUN_ID}{suffix}"
    url = database_url_for(name)
    if create:
        ensure_database(url)
        if migrated:
            with connect(url) as conn:
                migrate(conn)
    try:
        yield url
    finally:
        with connect(PG_BASE_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A migrated database of this run's own, dropped at the end."""
    with own_database() as url:
        yield url


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    with connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    """Our own Redis key prefix; every key under it, and rq's, is deleted at the end."""
    prefix = f"atlastest{RUN_ID}"
    yield prefix
    with Redis.from_url(REDIS_URL) as client:
        for pattern in (f"{prefix}*", f"{os.environ['RQ_KEY_PREFIX']}*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i : i + 500])


@pytest.fixture(scope="session")
def redis(redis_prefix: str) -> Iterator[Redis]:
    with Redis.from_url(REDIS_URL) as client:
        yield client


@pytest.fixture
def open_queue() -> Iterator[Callable[[Settings], Queue]]:
    """``open_queue(settings)``: the batch queue of those settings on a client of its own, closed at teardown."""
    opened: list[Queue] = []

    def open_(settings: Settings) -> Queue:
        opened.append(batch_queue(redis_client(settings.redis_url), settings))
        return opened[-1]

    yield open_
    for queue in opened:
        queue.connection.close()


@pytest.fixture(scope="session")
def keys() -> dict[str, str]:
    """Payload keys of this run: the current one and a previous one still accepted."""
    return {"current": generate_encryption_key(), "previous": generate_encryption_key()}


@pytest.fixture(scope="session")
def server_config(database_url: str, redis_prefix: str, keys: dict[str, str]) -> dict[str, Any]:
    """The config.yaml mapping of the default test server."""
    return {
        "server": {
            "api_key": API_KEY,
            "encryption_key": keys["current"],
            "encryption_keys": [keys["previous"]],
            "forwarded_allow_ips": ["127.0.0.1"],  # the tests play the proxy from loopback
        },
        "database": {"url": database_url},
        "redis": {"url": REDIS_URL, "key_prefix": redis_prefix},
        "worker": {"retries": 2, "job_timeout": 10, "monitoring_interval": 5, "maintenance_interval": 5},
    }


@pytest.fixture(scope="session")
def make_settings(server_config: dict[str, Any]) -> Callable[..., Settings]:
    """Settings from the default config with sections merged over it; no environment."""

    def make(**sections: dict[str, Any]) -> Settings:
        merged = {name: dict(values) for name, values in server_config.items()}
        for name, values in sections.items():
            merged.setdefault(name, {}).update(values)
        return settings_from_mapping(merged, env={})

    return make


@pytest.fixture(scope="session")
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()
