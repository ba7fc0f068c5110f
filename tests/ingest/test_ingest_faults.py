"""Redis unreachable: ingest answers 503 with Retry-After, never a lying 202."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import httpx
import pytest
from redis import Redis
from rq import Queue

from atlas.core.queue import SERIALIZER

from .. import batches
from ..fix_processes import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class OwnRedis:
    """A redis-server of the test's own on a free loopback port, to stop and start at will."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        with Redis.from_url(self.url) as client:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    client.ping()
                    return
                except Exception:
                    time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def own_redis():
    redis = OwnRedis()
    redis.start()
    yield redis
    redis.stop()


def test_redis_down_gives_503_and_recovers(own_redis, start_ingest, server_config, keys, settings):
    config = json.loads(json.dumps(server_config))
    config["redis"]["url"] = own_redis.url
    server = start_ingest(config)

    before = batches.sealed(batches.content(2), keys["current"])
    assert server.post(before).status_code == 202

    own_redis.stop()
    during = batches.sealed(batches.content(2), keys["current"])
    response = server.post(during)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["detail"] == "queue unavailable, retry later"
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 503
    assert httpx.get(f"{server.url}/healthz").status_code == 200

    own_redis.start()  # a fresh, empty Redis: the agent re-sends what got 503
    assert server.post(during).status_code == 202
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    with Redis.from_url(own_redis.url) as client:
        [job] = Queue(settings.queue_name, connection=client, serializer=SERIALIZER).jobs
    assert [b["batch_id"] for b in job.args[0]] == [during["batch_id"]]
    assert "Traceback" not in server.logs()
