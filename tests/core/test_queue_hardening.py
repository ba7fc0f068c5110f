"""The queue in Redis: whoever can write to it cannot make the worker run code (only Atlas jobs run, nothing
is unpickled), and with a database key it holds no log content in the clear."""

from __future__ import annotations

import contextlib
import os
import pickle
import uuid
import zlib
from pathlib import Path

import pytest
from psycopg import sql
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

from atlas.contract import Key, Keyring, generate_encryption_key
from atlas.core.atrest import AtRestError
from atlas.core.config import Settings
from atlas.core.failed import list_failed, requeue_failed
from atlas.core.queue import (
    PERSIST_JOB,
    batch_queue,
    enqueue_batch,
    job_payload,
    open_payload,
    redis_client,
    refusal,
)

from .. import batches
from ..worker.test_worker import count, queued


class RunsOnUnpickle:
    """Unpickling this runs a shell command: what a raw pickled job can carry."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture
def own_settings(make_settings, redis_prefix: str) -> Settings:
    """A queue of this test's own, so its failed registry holds only what the test put there."""
    return make_settings(redis={"key_prefix": f"{redis_prefix}-hardening{uuid.uuid4().hex[:8]}"})


def write_raw_pickled_job(queue: Queue, command: str) -> str:
    """A job hash written straight to Redis, its data a pickle that runs ``command`` when loaded."""
    job_id = str(uuid.uuid4())
    data = pickle.dumps((PERSIST_JOB, None, (RunsOnUnpickle(command),), {}), protocol=pickle.HIGHEST_PROTOCOL)
    stamp = utcformat(now())
    queue.connection.hset(
        Job.key_for(job_id),
        mapping={
            "data": zlib.compress(data),
            "origin": queue.name,
            "status": "queued",
            "created_at": stamp,
            "enqueued_at": stamp,
            "description": "raw pickled job",
        },
    )
    queue.connection.rpush(queue.key, job_id)
    return job_id


def test_only_atlas_jobs_run(tmp_path: Path, own_settings: Settings, drain, db):
    """A job for os.system (pickled or JSON) and a raw pickle are refused unrun; an Atlas job is stored."""
    settings = own_settings
    connection = redis_client(settings.redis_url)
    queue = batch_queue(connection, settings)
    markers = pickled_call, json_call, raw_pickle = [tmp_path / n for n in ("pickled-call", "json-call", "raw-pickle")]
    refused = [
        Queue(settings.queue_name, connection=connection).enqueue("os.system", f"touch {pickled_call}").id,
        Queue(settings.queue_name, connection=connection, serializer=JSONSerializer)
        .enqueue("os.system", f"touch {json_call}")
        .id,
        write_raw_pickled_job(queue, f"touch {raw_pickle}"),
    ]
    batch = queued()
    assert enqueue_batch(queue, batch, settings)

    drain(settings)

    assert [m for m in markers if m.exists()] == []
    assert sorted(queue.failed_job_registry.get_job_ids()) == sorted(refused)
    for job_id in refused:
        job = queue.fetch_job(job_id)
        assert job.get_status() == "failed"
        assert "RefusedJobError" in job.latest_result().exc_string
    assert count(db, "widget_logs", batch["batch_id"]) == 3

    listed = list_failed(queue)
    assert sorted(f.job_id for f in listed) == sorted(refused)
    assert all(f.batch_id == "-" and f.error.startswith("refused, never run:") for f in listed)
    assert requeue_failed(queue) == 0  # the worker would only refuse them again
    assert len(queue.failed_job_registry) == 3
    assert [m for m in markers if m.exists()] == []  # listing and requeueing unpickle nothing either


def test_callbacks_and_other_calls_are_refused(own_settings: Settings):
    """An Atlas function name is not enough: callbacks, webhooks or a different call shape are refused too."""
    from rq import Callback

    queue = Queue(own_settings.queue_name, connection=redis_client(own_settings.redis_url), serializer=JSONSerializer)
    group = [queued()]
    assert refusal(queue.create_job(PERSIST_JOB, args=(group,))) is None
    assert "callbacks" in refusal(queue.create_job(PERSIST_JOB, args=(group,), on_failure=Callback("os.system")))
    assert "not one argument" in refusal(queue.create_job(PERSIST_JOB, args=(group, group)))
    assert "not one argument" in refusal(queue.create_job(PERSIST_JOB, args=(), kwargs={"batches": group}))
    assert "not an Atlas job function" in refusal(queue.create_job("builtins.exec", args=("1",)))


def raw_values(connection, patterns: list[str]) -> list[bytes]:
    """Every value under these key patterns as Redis keeps it (and so its append-only file), zlib-compressed
    values also inflated: rq compresses job data, which hides nothing."""
    found: list[bytes] = []
    for pattern in patterns:
        for key in connection.scan_iter(match=pattern, count=1000):
            kind = connection.type(key)
            if kind == b"string":
                values = [connection.get(key)]
            elif kind == b"hash":
                values = list(connection.hgetall(key).values())
            elif kind == b"list":
                values = connection.lrange(key, 0, -1)
            elif kind == b"zset":
                values = connection.zrange(key, 0, -1)
            else:
                values = list(connection.smembers(key)) if kind == b"set" else []
            for value in values:
                found.append(value)
                with contextlib.suppress(zlib.error):
                    found.append(zlib.decompress(value))
    return found


def test_with_a_database_key_redis_holds_no_log_content(
    make_settings, redis_prefix, start_ingest, server_config, keys, drain, db
):
    """Ingest accepts a batch; Redis holds its job sealed under the database key; the worker opens and stores it."""
    prefix = f"{redis_prefix}-sealed{uuid.uuid4().hex[:8]}"
    db_key = generate_encryption_key()
    config = {name: dict(values) for name, values in server_config.items()}
    config["server"]["db_encryption_key"] = db_key
    config["redis"] = {**config["redis"], "key_prefix": prefix}
    ingest = start_ingest(config)
    secret = f"plaintext-{uuid.uuid4().hex}"
    body = {"machine": batches.machine(hostname=f"{secret}.local"), "logs": batches.logs(3)}  # unique: other
    # tests' jobs under the run's rq prefix carry the default hostname, unsealed
    body["logs"][0]["message"] = secret
    body["logs"][1]["data"] = {"note": f"{secret}-data"}
    envelope = batches.sealed(body, keys["current"])
    assert ingest.post(envelope).status_code == 202

    settings = make_settings(server={"db_encryption_key": db_key}, redis={"key_prefix": prefix})
    queue = batch_queue(redis_client(settings.redis_url), settings)
    assert len(queue) == 1
    values = raw_values(queue.connection, [f"{prefix}*", f"{os.environ['RQ_KEY_PREFIX']}*"])
    assert any(envelope["batch_id"].encode() in v for v in values), "the scan saw the job"
    leaks = [v[:200] for v in values if secret.encode() in v or body["machine"]["hostname"].encode() in v]
    assert leaks == []

    try:
        drain(settings)
        assert count(db, "widget_logs", envelope["batch_id"]) == 3
        assert len(queue.failed_job_registry) == 0
    finally:  # the run's other tests share this database, and its exports refuse a database key they lack
        machine_id = body["machine"]["machine_id"]
        for table in ("widget_logs", "batches", "machines"):
            db.execute(sql.SQL("DELETE FROM {} WHERE machine_id = %s").format(sql.Identifier(table)), (machine_id,))
        db.execute("DELETE FROM db_key_ids WHERE kid = %s", (Key.from_base64(db_key).kid,))
        queue.connection.close()


def test_a_sealed_job_opens_only_as_sealed():
    """Altered, moved to other batch_ids, or sealed under an unknown key: the worker refuses, naming why.
    Unsealed (an ingest without a database key) the batches go as they are."""
    keyring = Keyring.from_base64([generate_encryption_key()])
    group = [queued(), queued()]
    sealed = job_payload(group, keyring.current)
    assert open_payload(sealed, keyring) == [
        {**b, "logs": [list(row) for row in b["logs"]]} for b in group
    ]  # JSON: rows come back as lists
    assert job_payload(group, None) is group
    assert open_payload(group, Keyring()) is group
    assert open_payload(group, keyring) is group  # while a database key is being switched on
    with pytest.raises(AtRestError, match="altered"):
        open_payload({**sealed, "batch_ids": sealed["batch_ids"][::-1]}, keyring)
    with pytest.raises(AtRestError, match=r"server\.db_encryption_key"):
        open_payload(sealed, Keyring.from_base64([generate_encryption_key()]))
    with pytest.raises(AtRestError, match="neither batches nor a sealed group"):
        open_payload({"sealed": sealed["sealed"]}, keyring)


def test_a_failed_attempt_logs_batch_ids_not_batches(own_settings: Settings, drain, caplog):
    """rq logs a failed job's arguments as extras, which the JSON log format writes out: not here."""
    settings = Settings(**{**own_settings.__dict__, "worker_retries": 1, "job_retry_intervals": (0,)})
    queue = batch_queue(redis_client(settings.redis_url), settings)
    batch = queued()
    secret = f"plaintext-{uuid.uuid4().hex}"
    batch["logs"][0] = ("0001-01-01T00:00:00+23:59", batch["logs"][0][1], batch["logs"][0][2], secret, "{}")
    assert enqueue_batch(queue, batch, settings)  # PostgreSQL refuses that timestamp: the attempt fails
    with caplog.at_level("ERROR"):
        drain(settings)
    failures = [r for r in caplog.records if "exception raised while executing" in r.getMessage()]
    assert failures, "the attempt failed and was logged"
    assert all(r.batch_ids == [batch["batch_id"]] for r in failures)
    assert [r for r in caplog.records if secret in repr(vars(r))] == []
