"""The worker persists each batch atomically and exactly once, whatever fails."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from psycopg import sql
from rq.job import Job

from atlas.contract import validate_content
from atlas.core.config import Settings, settings_from_mapping
from atlas.core.queue import enqueue_batch, queued_batch
from atlas.worker.store import persist_batch, persist_batches

from .. import batches
from ..fix_processes import BIN, service_env
from ..fix_services import database_url_for


def queued(content: dict | None = None, *, created_at: datetime | None = None, received_at: datetime | None = None):
    body = content or batches.content(3)
    return queued_batch(
        validate_content(body),
        batch_id=str(uuid.uuid4()),
        created_at=created_at or datetime.now(UTC),
        received_at=received_at or datetime.now(UTC),
        kid="0123456789abcdef",
    )


def count(db, table: str, batch_id: str) -> int:
    return db.execute(f"SELECT count(*) FROM {table} WHERE batch_id = %s", (batch_id,)).fetchone()[0]  # noqa: S608


def test_persisting_twice_writes_once(db, database_url):
    batch = queued()
    from atlas.core.db import connect

    with connect(database_url) as conn:
        assert persist_batch(conn, batch) is True
        assert persist_batch(conn, batch) is False
    assert count(db, "widget_logs", batch["batch_id"]) == 3
    assert count(db, "batches", batch["batch_id"]) == 1


def test_a_batch_received_earlier_does_not_overwrite_newer_identity(db, database_url):
    """Identity follows when ingest accepted a batch (a job retried late), not the created_at an agent chose."""
    from atlas.core.db import connect

    machine_id = f"mac-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    newer = batches.content(1, machine_id)
    newer["machine"]["os_version"] = "macOS 15.5"
    older = batches.content(1, machine_id)
    older["machine"]["os_version"] = "macOS 14.4"
    with connect(database_url) as conn:
        persist_batch(conn, queued(newer, created_at=now - timedelta(hours=2), received_at=now))
        persist_batch(conn, queued(older, created_at=now, received_at=now - timedelta(hours=2)))
    row = db.execute("SELECT os_version, first_seen <= last_seen FROM machines WHERE machine_id = %s", (machine_id,))
    assert row.fetchone() == ("macOS 15.5", True)


def test_concurrent_workers_on_the_same_batch_store_it_once(database_url, db):
    """Two workers racing on one batch: the unique batch_id makes the second a no-op."""
    from atlas.core.db import connect

    batch = queued(batches.content(50))
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        with connect(database_url) as conn:
            barrier.wait()
            results.append(persist_batch(conn, batch))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
    assert count(db, "widget_logs", batch["batch_id"]) == 50


def start_worker(config_path, name: str) -> subprocess.Popen:
    """A worker in a process group of its own (it forks rq's scheduler), as a container would hold it."""
    return subprocess.Popen(
        [BIN / "atlas-server", "worker", "--config", config_path, "--name", name],
        env=service_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_for(predicate, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


@pytest.mark.slow
def test_worker_killed_mid_batch_loses_nothing(
    tmp_path, server_config, settings: Settings, database_url, db, open_queue
):
    """SIGKILL while the batch's transaction is open: after restart its rows are there exactly once.

    A lock on widget_logs holds the worker inside its transaction (batch claimed,
    machine upserted, COPY waiting) so the kill lands mid-batch for certain.
    """
    import yaml

    prefix = f"{settings.redis_key_prefix}-kill"  # a queue of its own: no other test's job in the way
    config = {**server_config, "redis": {**server_config["redis"], "key_prefix": prefix}}
    config_path = tmp_path / "worker.yaml"
    config_path.write_text(yaml.safe_dump(config))
    settings = settings_from_mapping(config, env={})
    queue = open_queue(settings)
    batch = queued(batches.content(20))
    assert enqueue_batch(queue, batch, settings)

    from atlas.core.db import connect

    locker = connect(database_url)
    locker.execute("LOCK TABLE widget_logs IN ACCESS EXCLUSIVE MODE")
    worker = start_worker(config_path, f"victim-{uuid.uuid4().hex[:6]}")
    try:
        in_transaction = wait_for(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND query LIKE 'COPY widget_logs%%'"
                ).fetchone()[0]
                > 0
            ),
            timeout=30,
        )
        assert in_transaction, "worker never reached the COPY"
        [started] = queue.started_job_registry.get_job_ids()
        assert [b["batch_id"] for b in queue.fetch_job(started).args[0]] == [batch["batch_id"]]
        os.killpg(worker.pid, signal.SIGKILL)  # the worker and its scheduler, as when a container dies
        worker.wait(10)
    finally:
        locker.rollback()
        locker.close()
        if worker.poll() is None:  # the test failed before the kill: leave no worker behind
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
    assert count(db, "batches", batch["batch_id"]) == 0  # rolled back: nothing half-written

    survivor = start_worker(config_path, f"survivor-{uuid.uuid4().hex[:6]}")
    try:
        assert wait_for(lambda: count(db, "batches", batch["batch_id"]) == 1, timeout=240, interval=2), (
            "abandoned job did not come back within 4 minutes"
        )
        assert wait_for(lambda: not Job.exists(started, connection=queue.connection), timeout=20), (
            "the recovered job did not finish cleanly",
            queue.failed_job_registry.get_job_ids(),
        )
    finally:
        os.killpg(survivor.pid, signal.SIGTERM)
        survivor.wait(20)
    assert count(db, "widget_logs", batch["batch_id"]) == 20


def test_unstorable_batch_is_retried_then_parked_and_requeued(
    tmp_path, server_config, make_settings, drain, db, open_queue
):
    """PostgreSQL unreachable: the job retries, lands in the failed registry, and
    `atlas-server failed --requeue-all` brings it back once the database is there."""
    import yaml

    broken = make_settings(
        database={"url": database_url_for("atlas_no_such_db_" + uuid.uuid4().hex[:6])},
        worker={"retries": 1},
    )
    broken = Settings(**{**broken.__dict__, "job_retry_intervals": (0,)})
    queue = open_queue(broken)
    batch = queued(batches.content(2))
    assert enqueue_batch(queue, batch, broken)
    drain(broken)  # first attempt fails, retry queued at once (interval 0)
    drain(broken)  # second attempt fails: out of retries
    [failed_job] = queue.failed_job_registry.get_job_ids()
    assert [b["batch_id"] for b in queue.fetch_job(failed_job).args[0]] == [batch["batch_id"]]
    assert count(db, "batches", batch["batch_id"]) == 0

    config_path = tmp_path / "ops.yaml"
    config_path.write_text(yaml.safe_dump(server_config))
    listed = subprocess.run(
        [BIN / "atlas-server", "failed", "--config", config_path],
        env=service_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert batch["batch_id"] in listed.stdout
    assert "does not exist" in listed.stdout or "OperationalError" in listed.stdout
    requeued = subprocess.run(
        [BIN / "atlas-server", "failed", "--config", config_path, "--requeue-all"],
        env=service_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Requeued" in requeued.stdout
    drain()
    assert count(db, "widget_logs", batch["batch_id"]) == 2
    assert queue.failed_job_registry.get_job_ids() == []


def test_a_group_stores_only_what_is_new(db, database_url):
    """A group mixing stored and new batches, and one batch_id twice: each new batch once."""
    from atlas.core.db import connect

    old, new_a, new_b = queued(), queued(batches.content(4)), queued(batches.content(2))
    with connect(database_url) as conn:
        assert persist_batch(conn, old) is True
        assert persist_batches(conn, [new_a, old, new_b, new_a]) == [True, False, True, False]
    assert count(db, "widget_logs", new_a["batch_id"]) == 4
    assert count(db, "widget_logs", new_b["batch_id"]) == 2
    assert count(db, "widget_logs", old["batch_id"]) == 3


def test_one_unstorable_batch_does_not_hold_back_its_group(settings: Settings, db):
    """A value PostgreSQL refuses must not fail the whole group: the others are stored."""
    from atlas.worker import jobs

    good, bad = queued(batches.content(2)), queued(batches.content(2))
    bad["logs"][0] = ("0001-01-01T00:00:00+23:59", *bad["logs"][0][1:])  # bypasses ingest's validation
    context = jobs.WorkerContext(settings)  # no database key: the job takes the batches unsealed
    try:
        with jobs.running(context), pytest.raises(jobs.UnstorableBatchError, match=bad["batch_id"]):
            jobs.persist_batches([good, bad])
    finally:
        context.close()
    assert count(db, "widget_logs", good["batch_id"]) == 2
    assert count(db, "batches", bad["batch_id"]) == 0


def test_the_job_function_outside_a_worker_names_what_is_missing():
    """Called with no worker running it, the job has no settings or connection: it says so, storing nothing."""
    from atlas.worker import jobs

    with pytest.raises(jobs.NoWorkerError, match="inside an Atlas worker"):
        jobs.persist_batches([queued()])


def test_each_worker_in_a_process_keeps_its_own_settings(make_settings, open_queue, db):
    """A worker built after another (here with a database key) does not change what the first one does."""
    from atlas.contract import Key, generate_encryption_key
    from atlas.worker.runner import build_worker

    clear = make_settings(redis={"key_prefix": f"atlastest-own{uuid.uuid4().hex[:8]}"})
    db_key = generate_encryption_key()
    sealing = make_settings(server={"db_encryption_key": db_key})
    batch = queued(batches.content(2))
    assert enqueue_batch(open_queue(clear), batch, clear)
    first, second = build_worker(clear), build_worker(sealing)
    try:
        assert first.work(burst=True, logging_level="WARNING")
        rows = db.execute(
            "SELECT count(*) FILTER (WHERE sealed IS NULL AND message IS NOT NULL), count(*) FROM widget_logs"
            " WHERE batch_id = %s",
            (batch["batch_id"],),
        ).fetchone()
        assert rows == (2, 2), "stored clear, as the first worker's settings say"
    finally:  # the run's other tests share this database, and its exports refuse a database key they lack
        for worker in (first, second):
            worker.context.close()
            worker.connection.close()
        for table in ("widget_logs", "batches"):
            delete = sql.SQL("DELETE FROM {} WHERE batch_id = %s").format(sql.Identifier(table))
            db.execute(delete, (batch["batch_id"],))
        db.execute("DELETE FROM db_key_ids WHERE kid = %s", (Key.from_base64(db_key).kid,))
