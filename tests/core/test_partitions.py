"""widget_logs partitioned by day: the migration from an existing table, days made ahead, retention by DROP."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import yaml

from atlas.core.db import applied_versions, connect, migrate
from atlas.core.partitions import DEFAULT_PARTITION, drop_expired, ensure_partitions, list_partitions
from atlas.core.schema import MIGRATIONS

from ..fix_processes import BIN, service_env
from ..fix_services import own_database

INSERT = (
    'INSERT INTO widget_logs (machine_id, serial_number, "timestamp", level, widget_type, message, data, batch_id,'
    " received_at) VALUES ('m1', 'C02PART', %s, 'INFO', 'wifi', %s, '{}', %s, now())"
)


@pytest.fixture
def fresh_url() -> Iterator[str]:
    """A database of this test's own, with no migration applied."""
    with own_database(f"_part_{uuid.uuid4().hex[:6]}", migrated=False) as url:
        yield url


def rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute('SELECT id, "timestamp", message FROM widget_logs ORDER BY id').fetchall()


def test_migration_keeps_every_existing_row_and_its_id(fresh_url: str) -> None:
    now = datetime.now(UTC)
    with connect(fresh_url, autocommit=True) as conn:
        applied_versions(conn)  # creates schema_migrations
        for migration in MIGRATIONS[:3]:  # a server as it was before partitioning, holding logs
            conn.execute(migration.sql)
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", migration[:2])
        stamps = [now + timedelta(days=d, hours=h) for d in (-40, -2, 0, 1, 3, 20, 400) for h in (0, 5)]
        for i, stamp in enumerate(stamps):
            conn.execute(INSERT, (stamp, f"log {i}", uuid.uuid4()))
        before = rows(conn)
        applied = migrate(conn)
        assert [m.version for m in applied] == [m.version for m in MIGRATIONS[3:]]  # 4, then any later ones
        assert rows(conn) == before  # same rows, same ids
        where = dict(conn.execute("SELECT message, tableoid::regclass::text FROM widget_logs").fetchall())
        tomorrow = (now + timedelta(days=1)).strftime("%Y%m%d")
        assert where["log 0"] == "widget_logs_before"  # 40 days ago
        assert where["log 4"] == "widget_logs_before"  # today
        assert where["log 6"] == f"widget_logs_p{tomorrow}" or where["log 7"] == f"widget_logs_p{tomorrow}"
        assert where["log 12"] == DEFAULT_PARTITION  # next year: no day's partition yet
        conn.execute(INSERT, (now, "after", uuid.uuid4()))
        assert conn.execute("SELECT id FROM widget_logs WHERE message = 'after'").fetchone()[0] > before[-1][0]
        names = [p.name for p in list_partitions(conn)]
        assert names[0] == "widget_logs_before"
        assert names[-1] == DEFAULT_PARTITION
        assert len([n for n in names if n.startswith("widget_logs_p")]) == 14


def test_days_are_made_ahead_once_and_stray_rows_move_in(fresh_url: str) -> None:
    with connect(fresh_url, autocommit=True) as conn:
        migrate(conn)
        assert ensure_partitions(conn) in ([], [f"widget_logs_p{(datetime.now(UTC) + timedelta(days=15)):%Y%m%d}"])
        assert ensure_partitions(conn) == []
        later = datetime.now(UTC) + timedelta(days=30)
        stray = later - timedelta(days=2)
        conn.execute(INSERT, (stray, "stray", uuid.uuid4()))  # beyond the days made: kept in the default partition
        assert (
            conn.execute("SELECT tableoid::regclass::text FROM widget_logs WHERE message = 'stray'").fetchone()[0]
            == DEFAULT_PARTITION
        )
        errors: list[BaseException] = []

        def make() -> None:
            try:
                with connect(fresh_url, autocommit=True) as other:
                    ensure_partitions(other, now=later)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=make) for _ in range(3)]  # workers doing it at the same time
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        home = conn.execute("SELECT tableoid::regclass::text FROM widget_logs WHERE message = 'stray'").fetchone()[0]
        assert home == f"widget_logs_p{stray:%Y%m%d}"
        assert conn.execute("SELECT count(*) FROM widget_logs_default").fetchone()[0] == 0


def test_retention_drops_whole_old_partitions_only(fresh_url: str) -> None:
    now = datetime.now(UTC)
    with connect(fresh_url, autocommit=True) as conn:
        migrate(conn)
        for days in (1, 5, 9):
            batch_id = uuid.uuid4()
            conn.execute(INSERT, (now + timedelta(days=days), f"in {days} days", batch_id))
            conn.execute(
                "INSERT INTO batches (batch_id, machine_id, created_at, received_at, log_count)"
                " VALUES (%s, 'm1', now(), now(), 1)",
                (batch_id,),
            )
        conn.execute(INSERT, (now - timedelta(days=3000), "ancient clock", uuid.uuid4()))
        conn.execute(INSERT, (now + timedelta(days=400), "clock far ahead", uuid.uuid4()))  # the default partition
        batches_before = conn.execute("SELECT count(*) FROM batches").fetchone()[0]
        assert batches_before == 3
        # Seen from 12 days on, keeping 5 days: the partitions of days up to 7 days from now go, whole.
        dropped = drop_expired(conn, retention_days=5, now=now + timedelta(days=12))
        assert "widget_logs_before" in dropped
        assert f"widget_logs_p{now + timedelta(days=1):%Y%m%d}" in dropped
        left = [m for (m,) in conn.execute("SELECT message FROM widget_logs ORDER BY id")]
        assert left == ["in 9 days", "clock far ahead"]  # the ancient row went with widget_logs_before
        cutoff = (now + timedelta(days=7)).replace(hour=0, minute=0, second=0, microsecond=0)
        for partition in list_partitions(conn):
            assert partition.upper is None or partition.upper > cutoff
        assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] == batches_before
        assert drop_expired(conn, retention_days=0, now=now + timedelta(days=100)) == []  # 0: keep everything
        drop_expired(conn, retention_days=5, now=now + timedelta(days=500))
        gone = conn.execute("SELECT count(*) FROM widget_logs WHERE message = 'clock far ahead'").fetchone()[0]
        assert gone == 0  # old rows of the default partition go too, row by row


def test_partitions_command(fresh_url: str, tmp_path) -> None:
    config = tmp_path / "partitions.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": fresh_url, "retention_days": 30}}))
    out = subprocess.run(
        [BIN / "atlas-server", "migrate", "--config", config], capture_output=True, text=True, env=service_env()
    )
    assert out.returncode == 0, out.stderr
    listed = subprocess.run(
        [BIN / "atlas-server", "partitions", "--config", config], capture_output=True, text=True, env=service_env()
    )
    assert listed.returncode == 0, listed.stderr
    assert "widget_logs_before" in listed.stdout
    assert DEFAULT_PARTITION in listed.stdout
    assert "retention 30 days" in listed.stdout
