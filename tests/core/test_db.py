"""ensure_database: creates a missing database, and passes any other refusal on unchanged."""

from __future__ import annotations

import socket
import time

import psycopg
import pytest

from atlas.core.db import connect, ensure_database
from tests.fix_processes import free_port
from tests.fix_services import PG_BASE_URL, own_database


def test_creates_a_missing_database_once() -> None:
    with own_database("_ensure", create=False) as url:
        assert ensure_database(url) is True
        with connect(url) as conn:
            assert conn.execute("SELECT current_database()").fetchone()[0].endswith("_ensure")  # type: ignore[index]
        assert ensure_database(url) is False


def test_an_unreachable_server_raises_its_own_error() -> None:
    url = psycopg.conninfo.make_conninfo(PG_BASE_URL, port=str(free_port()), dbname="atlas_nowhere")
    with pytest.raises(psycopg.OperationalError, match="Connection refused"):
        ensure_database(url)


def test_a_refused_role_is_not_taken_for_a_missing_database() -> None:
    """The server answers, the database exists, the role does not: the first error, nothing created."""
    url = psycopg.conninfo.make_conninfo(PG_BASE_URL, user="atlas_no_such_role")
    with pytest.raises(psycopg.OperationalError, match="atlas_no_such_role"):
        ensure_database(url)


def test_a_server_that_never_answers_is_waited_for_once() -> None:
    """A listening socket that never speaks: one connect timeout (2 s), not a second one for ``postgres``."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/atlas_nowhere?connect_timeout=2"
        started = time.monotonic()
        with pytest.raises(psycopg.errors.ConnectionTimeout):
            ensure_database(url)
    assert time.monotonic() - started < 3.5
