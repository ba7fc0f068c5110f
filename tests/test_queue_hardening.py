"""Whoever can write to Redis cannot make the worker run code: only Atlas jobs run, and nothing is unpickled."""

from __future__ import annotations

import os
import pickle
import uuid
import zlib
from pathlib import Path

import pytest
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

from atlas.server.config import Settings
from atlas.server.failed import list_failed, requeue_failed
from atlas.server.queue import PERSIST_JOB, batch_queue, enqueue_batch, redis_client, refusal

from .test_worker import count, queued


class RunsOnUnpickle:
    """Unpickling this runs a shell command: what a raw pickled job can carry."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture
def own_settings(make_settings) -> Settings:
    """A queue of this test's own, so its failed registry holds only what the test put there."""
    return make_settings(redis={"key_prefix": f"hardening{uuid.uuid4().hex[:8]}"})


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
