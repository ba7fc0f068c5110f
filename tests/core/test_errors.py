"""The server error tree: real Redis and PostgreSQL failures map to it by class, and the docstring draws it."""

from __future__ import annotations

import re

import psycopg
import pytest
from psycopg_pool import ConnectionPool
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from atlas.core import errors
from atlas.core.db import connect
from atlas.core.errors import (
    DatabaseUnavailable,
    QueueUnavailable,
    SchemaMissing,
    ServerError,
    Unavailable,
    UnusableInput,
    store_error,
    store_failures,
)
from tests.fix_processes import free_port
from tests.fix_services import PG_BASE_URL


def raised(call) -> BaseException:
    with pytest.raises(store_failures()) as caught:
        call()
    return caught.value


def test_closed_redis_port_is_queue_unavailable() -> None:
    with Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)) as client:
        failure = raised(client.ping)
    mapped = store_error(failure)
    assert isinstance(mapped, QueueUnavailable)
    assert isinstance(mapped, Unavailable)
    assert (mapped.status, mapped.detail) == (503, "queue unavailable, retry later")
    assert str(mapped).startswith("ConnectionError: ")


def test_closed_postgresql_port_is_database_unavailable() -> None:
    url = psycopg.conninfo.make_conninfo(PG_BASE_URL, port=str(free_port()), password="sekrit-pw-123")
    mapped = store_error(raised(lambda: connect(url)))
    assert isinstance(mapped, DatabaseUnavailable)
    assert (mapped.status, mapped.detail) == (503, "database unavailable, retry later")
    assert "\n" not in str(mapped)
    assert "sekrit-pw-123" not in str(mapped)


def test_terminated_backend_is_database_unavailable(database_url: str) -> None:
    """SQLSTATE 57P01 (admin_shutdown): PostgreSQL ended the session, as it does when it stops."""
    with connect(database_url, autocommit=True) as victim, connect(database_url, autocommit=True) as admin:
        pid = victim.info.backend_pid
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        failure = raised(lambda: victim.execute("SELECT 1"))
    assert isinstance(store_error(failure), DatabaseUnavailable)


def test_exhausted_pool_is_database_unavailable(database_url: str) -> None:
    with ConnectionPool(database_url, min_size=1, max_size=1, timeout=0.2, open=True) as pool, pool.connection():
        failure = raised(lambda: pool.getconn())
    assert isinstance(store_error(failure), DatabaseUnavailable)


def test_sqlstates_that_are_not_outages(db: psycopg.Connection) -> None:
    """42P01 means migrate first, class 22 (data exception) a value the request carried, 42601 a bug of ours."""
    missing = raised(lambda: db.execute("SELECT * FROM no_such_table_anywhere"))
    assert missing.sqlstate == "42P01"
    assert isinstance(store_error(missing), SchemaMissing)
    out_of_range = raised(lambda: db.execute("SELECT %s::integer + 1", (2**31 - 1,)))
    assert out_of_range.sqlstate == "22003"  # type: ignore[attr-defined]
    nul = raised(lambda: db.execute("SELECT %s::text", ("a\x00b",)))
    for failure in (out_of_range, nul):
        mapped = store_error(failure)
        assert isinstance(mapped, UnusableInput)
        assert mapped.status == 400
    assert store_error(raised(lambda: db.execute("SELEC 1"))) is None
    assert store_error(ValueError("not a store error")) is None


def test_the_docstring_draws_the_tree() -> None:
    """Every class in the drawing exists with the parent drawn above it, and every ServerError is drawn."""
    drawn: dict[str, str] = {}
    parents: list[str] = []
    for line in (errors.__doc__ or "").splitlines():
        found = re.match(r"^    ([ │├└─]*?)(\w+)( \(\w+\))?\s{2,}", line)
        if not found or not found.group(2)[0].isupper():
            continue
        depth = len(found.group(1)) // 5
        parents[depth:] = [found.group(2)]
        drawn[found.group(2)] = parents[depth - 1] if depth else ""
    classes = {
        name: cls for name, cls in vars(errors).items() if isinstance(cls, type) and issubclass(cls, ServerError)
    }
    assert set(drawn) == set(classes)
    for name, parent in drawn.items():
        if parent:
            assert classes[name].__bases__[0] is classes[parent], name
