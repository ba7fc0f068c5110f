"""A stopped or paused worker shows on the dashboard: real ingest, worker and dashboard processes.

The dashboard reads only PostgreSQL; the worker reports the queue there every
``server.pipeline_report_seconds`` (1 s here), so a banner appears within a
few seconds of the worker going silent and goes once it reports again.
"""

from __future__ import annotations

import copy
import html
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from atlas.core.accounts import create_user
from atlas.core.db import connect

from .. import batches
from ..fix_dashboard import PASSWORD, Browserless
from ..fix_processes import BIN, IngestServer, ServerProcess, service_env
from ..fix_services import own_database

BANNER = 'class="pipeline-banner'


@pytest.fixture
def stack(server_config: dict[str, Any], redis_prefix: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A database and queue of the test's own, with ingest and the dashboard on them (no worker yet)."""
    with own_database("_pipeline") as url:
        config = copy.deepcopy(server_config)
        config["database"]["url"] = url
        config["redis"]["key_prefix"] = f"{redis_prefix}pipe{uuid.uuid4().hex[:6]}"
        config["server"]["pipeline_report_seconds"] = 1
        config["dashboard"] = {"online_seconds": 4, "pipeline_behind_seconds": 3}
        config["worker"] = {**config["worker"], "job_timeout": 120}
        started: list[Any] = []
        try:
            ingest = IngestServer(config, tmp_path)
            started.append(ingest)
            dashboard = ServerProcess("dashboard", config, tmp_path)
            started.append(dashboard)
            with connect(url, autocommit=True) as conn:
                create_user(conn, "pipeline-admin", PASSWORD, "admin")
            yield {"config": config, "ingest": ingest, "dashboard": dashboard, "dir": tmp_path, "url": url}
        finally:
            for process in reversed(started):
                process.stop()


class Worker:
    """``atlas-server worker`` in a subprocess."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        path = workdir / f"worker-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log_path = path.with_suffix(".log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [BIN / "atlas-server", "worker", "--config", path],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=service_env(),
        )

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails after ``seconds``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, what
        time.sleep(0.2)
    return time.monotonic() - start


def test_no_worker_shows_a_banner_until_a_worker_stores_the_batches(stack, keys):
    client = Browserless(stack["dashboard"])
    try:
        assert client.login("pipeline-admin").status_code == 303
        body = batches.content(5)
        machine_id = body["machine"]["machine_id"]
        assert stack["ingest"].post(batches.sealed(body, keys["current"])).status_code == 202

        # No worker: the banner says so on every page, with the command to run; within one report and the cache.
        wait_for(lambda: BANNER in client.get("/").text, 4, "no banner without a worker")
        for path in ("/", "/pipeline", "/account", "/admin/users"):
            page = client.get(path).text
            assert 'data-kind="no_worker"' in page, path
            assert "atlas-server worker" in page, path

        worker = Worker(stack["config"], stack["dir"])
        try:
            wait_for(lambda: BANNER not in client.get("/").text, 30, "the banner stayed with a worker running")
            done = '<td class="num jobs-done">1</td>'  # the one job, stored
            wait_for(lambda: done in client.get("/pipeline").text, 10, "the worker reported no job done")
            page = html.unescape(client.get("/pipeline").text)
            assert 'data-state="healthy"' in page
            assert "alive" in page
            # the ingest process's report, left in Redis and brought over by the worker
            assert '<td class="num batches-accepted">1</td>' in page
            assert f'data-machine-id="{machine_id}"' in client.get("/").text

            # Paused (SIGSTOP): silent, so within three reports the banner is back; the Mac, whose last batch
            # is older than online_seconds, is "server behind", not stale.
            os.kill(worker.proc.pid, signal.SIGSTOP)
            took = wait_for(
                lambda: "No worker has reported for" in html.unescape(client.get("/").text), 15, "a paused worker"
            )
            assert took < 10
            wait_for(lambda: "server behind" in client.get("/").text, 10, "the fleet page still says stale")
            fleet = client.get("/").text
            row = fleet.split(f'data-machine-id="{machine_id}"', 1)[1].split("</tr>", 1)[0]
            assert "server behind" in row
            assert ">stale<" not in row
            machine = client.get(f"/machines/{machine_id}").text
            assert "server behind" in machine.split("</h1>", 1)[0]

            os.kill(worker.proc.pid, signal.SIGCONT)
            wait_for(lambda: BANNER not in client.get("/").text, 15, "the banner stayed after the worker resumed")
            fleet = client.get("/").text
            row = fleet.split(f'data-machine-id="{machine_id}"', 1)[1].split("</tr>", 1)[0]
            assert "server behind" not in row
            assert ">stale<" in row
        finally:
            worker.stop()
    finally:
        client.close()


def test_a_worker_stuck_on_a_job_shows_the_server_behind(stack, keys):
    """Alive (it reports) but stuck: a job waits in the queue past pipeline_behind_seconds, and the banner says so."""
    client = Browserless(stack["dashboard"])
    worker = Worker(stack["config"], stack["dir"])
    try:
        assert client.login("pipeline-admin").status_code == 303
        wait_for(lambda: BANNER not in client.get("/").text, 30, "no healthy start with a worker")
        with connect(stack["url"]) as lock:
            lock.execute("LOCK TABLE batches IN ACCESS EXCLUSIVE MODE")  # the worker's next job waits for it
            for _ in range(2):  # the first job is taken and waits; the second waits in the queue
                body = batches.content(2)
                assert stack["ingest"].post(batches.sealed(body, keys["current"])).status_code == 202
            wait_for(lambda: 'data-kind="behind"' in client.get("/").text, 15, "no 'behind' banner")
            page = html.unescape(client.get("/").text)
            assert "The server is behind: the oldest of 1 queued job(s) has waited" in page
            assert "No worker has reported" not in page  # it is alive, and says so
            lock.rollback()
        wait_for(lambda: BANNER not in client.get("/").text, 30, "the banner stayed once the worker went on")
    finally:
        worker.stop()
        client.close()
