"""The server-side fault harness: simulated agents, real worker processes, a Redis and a PostgreSQL to break.

Agents post numbered, sealed v1 batches (15 logs each) to a real ``atlas-server
ingest`` and retry the same batch_id until it is answered 202 or 200, as the
real agent does. Workers are real ``atlas-server worker`` processes that the
scenario kills and restarts. After the fault, ``settle`` waits (bounded) until
the queue has drained, and ``tally`` counts in PostgreSQL what was stored
against what the agents consider sent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml
from redis import Redis
from rq import Queue
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.worker import Worker as RqWorker

from atlas.core.config import settings_from_mapping
from atlas.core.db import connect
from atlas.core.queue import SERIALIZER

from .. import batches
from ..fix_processes import BIN, free_port, service_env
from .report import Tally, record

LOGS_PER_BATCH = 15
PG_BIN = max(
    Path("/usr/lib/postgresql").glob("[0-9]*/bin"), key=lambda p: int(p.parent.name), default=Path("/nonexistent")
)
"""Debian's PostgreSQL server binaries (initdb, pg_ctl), newest version installed."""
REPO = Path(__file__).resolve().parents[2]
REDIS_SERVER = shutil.which("redis-server") or "redis-server"
DRAIN_SECONDS = 180
"""How long a scenario whose workers die waits for the queue to drain. rq brings a dead worker's job back
after ``job_timeout + 60`` s (started registry); one it had taken off the queue but not yet started
waits that long and then 60 s more in rq's intermediate queue: about 150 s with the scenarios' settings."""


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@dataclass
class AgentLog:
    """What the simulated agents saw: per batch_id the final answer, and every answer counted by status."""

    sent: dict[str, int] = field(default_factory=dict)
    """batch_id -> 202 or 200: batches the agents consider delivered."""
    attempted: set[str] = field(default_factory=set)
    """Every batch_id ever posted, delivered or not."""
    statuses: Counter[str] = field(default_factory=Counter)
    """Every answer by status code, and transport errors by exception name."""
    unexpected: list[str] = field(default_factory=list)
    """Answers other than 202, 200 and 503: each a failure of the 'never a 500, never a 4xx for good data' rule."""
    lock: threading.Lock = field(default_factory=threading.Lock)


class Agents:
    """``count`` agent threads, each with its own machine, sending numbered batches until stopped.

    Each batch is sealed once and re-posted with the same batch_id after any
    non-2xx answer or transport error, after a short backoff, like the agent.
    """

    def __init__(self, url: str, api_key: str, key_b64: str, *, count: int = 4, pause: float = 0.02) -> None:
        self.url = f"{url}/api/fleet/widget-logs"
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self.key_b64 = key_b64
        self.pause = pause
        self.machines = [f"mac-fault-{uuid.uuid4().hex[:10]}" for _ in range(count)]
        self.log = AgentLog()
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(m,), daemon=True) for m in self.machines]

    def __enter__(self) -> Agents:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(finish_within=0)

    def delivered(self) -> int:
        with self.log.lock:
            return len(self.log.sent)

    def stop(self, finish_within: float = 60) -> bool:
        """Stop starting batches; give the one in flight ``finish_within`` seconds. Whether all finished."""
        self._stop.set()
        deadline = time.monotonic() + finish_within
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._abandon.set()
        for thread in self._threads:
            thread.join(10)
        return not any(t.is_alive() for t in self._threads)

    def _run(self, machine_id: str) -> None:
        with httpx.Client(timeout=10, headers=self.headers) as client:
            number = 0
            while not self._stop.is_set():
                number += 1
                body = batches.content(LOGS_PER_BATCH, machine_id)
                body["logs"][0]["data"]["batch_number"] = number
                envelope = batches.sealed(body, self.key_b64)
                self._deliver(client, envelope)
                time.sleep(self.pause)

    def _deliver(self, client: httpx.Client, envelope: dict[str, Any]) -> None:
        batch_id = envelope["batch_id"]
        with self.log.lock:
            self.log.attempted.add(batch_id)
        backoff = 0.05
        while not self._abandon.is_set():
            try:
                response = client.post(self.url, json=envelope)
            except httpx.TransportError as exc:
                self._count(type(exc).__name__)
            else:
                self._count(str(response.status_code))
                if response.status_code in (200, 202):
                    with self.log.lock:
                        self.log.sent[batch_id] = response.status_code
                    return
                if response.status_code != 503:
                    with self.log.lock:
                        self.log.unexpected.append(f"{response.status_code} {response.text[:200]}")
            time.sleep(backoff)
            backoff = min(backoff * 2, 0.5)

    def _count(self, what: str) -> None:
        with self.log.lock:
            self.log.statuses[what] += 1


class Worker:
    """One ``atlas-server worker`` in a process group of its own (it forks rq's scheduler), log kept."""

    def __init__(self, config_path: Path, name: str, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [BIN / "atlas-server", "worker", "--config", config_path, "--name", name],
                env=service_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker and its scheduler, as when a container or machine dies."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGCONT)  # a paused worker cannot act on SIGTERM
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):  # its scheduler child may outlive a worker that exited
            os.killpg(self.proc.pid, signal.SIGKILL)


class WorkerPool:
    """Worker processes kept running like ``restart: unless-stopped``: one that exits is started again."""

    def __init__(self, config: dict[str, Any], log_dir: Path, size: int = 2) -> None:
        self.config_path = log_dir / "worker.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.settings = settings_from_mapping(config, env={})
        self.log_dir = log_dir
        self.workers = [self._start() for _ in range(size)]
        self.kills = 0
        self.mid_job_kills = 0
        self.restarts = 0
        """Workers that exited on their own (e.g. Redis gone mid-job) and were started again."""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._keeper = threading.Thread(target=self._keep, daemon=True)
        self._keeper.start()

    def _start(self) -> Worker:
        return Worker(self.config_path, f"fault-{uuid.uuid4().hex[:8]}", self.log_dir)

    def _keep(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                for index, worker in enumerate(self.workers):
                    if not worker.alive():
                        worker.stop()
                        self.workers[index] = self._start()
                        self.restarts += 1

    def busy(self, index: int) -> bool:
        """Whether rq says this worker is running a job right now."""
        connection = Redis.from_url(self.settings.redis_url, socket_timeout=2)
        try:
            key = RqWorker.redis_worker_namespace_prefix + self.workers[index].name
            return connection.hget(key, "state") == b"busy"
        finally:
            connection.close()

    def kill_and_restart(self, index: int, *, busy_within: float = 3.0) -> bool:
        """SIGKILL one worker, as soon as it is running a job (waiting at most ``busy_within`` s),
        then start a new one in its place. Whether the kill landed mid-job."""
        mid_job = wait_for(lambda: self.busy(index), timeout=busy_within, interval=0.005)
        with self._lock:
            self.workers[index].kill()
            self.workers[index].stop()
            self.workers[index] = self._start()
            self.kills += 1
            self.mid_job_kills += mid_job
        return mid_job

    def pause(self) -> None:
        """SIGSTOP every worker (and its scheduler): accepted batches pile up in Redis."""
        with self._lock:
            for worker in self.workers:
                os.killpg(worker.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        with self._lock:
            for worker in self.workers:
                os.killpg(worker.proc.pid, signal.SIGCONT)

    def logs(self, tail: int = 4000) -> str:
        """The end of each worker's log (for failure messages)."""
        return "\n".join(p.read_text(errors="replace")[-tail:] for p in sorted(self.log_dir.glob("fault-*.log")))

    def count_in_logs(self, text: str) -> int:
        """Occurrences of ``text`` in every worker log of the pool, whole."""
        return sum(p.read_text(errors="replace").count(text) for p in self.log_dir.glob("fault-*.log"))

    def close(self) -> None:
        self._stop.set()
        self._keeper.join(5)
        with self._lock:
            for worker in self.workers:
                worker.stop()


def shipped_redis_args() -> list[str]:
    """redis-server's arguments as shipped: docker-compose.yml's, which the trial Kubernetes Redis must match."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    command = compose["services"]["redis"]["command"]
    manifests = yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "trial" / "redis.yaml").read_text())
    [redis] = [m for m in manifests if m and m.get("kind") == "StatefulSet"]
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    # Compose's entrypoint adds --requirepass from the redis_password secret, so its command has none.
    assert "--requirepass" not in command, command
    args = _without_password(args)
    assert command == args, f"docker-compose.yml runs {command}, the Kubernetes trial Redis {args}"
    assert command[0] == "redis-server"
    return command[1:]


def _without_password(args: list[str]) -> list[str]:
    """``args`` less ``--requirepass VALUE``: each deployment fills the password in its own way, and the
    scenarios' Redis is one of their own, on loopback, without one."""
    assert "--requirepass" in args, f"{args}: Redis as shipped requires a password"
    at = args.index("--requirepass")
    return args[:at] + args[at + 2 :]


class OwnRedis:
    """A redis-server of the scenario's own on a free port, run with ``args`` (its files in ``workdir``)."""

    def __init__(self, workdir: Path, args: list[str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = args
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.workdir,
                "--save",
                "",
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        client = Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            assert wait_for(lambda: self._ping(client), timeout=15), "own redis-server did not start"
        finally:
            client.close()

    @staticmethod
    def _ping(client: Redis) -> bool:
        try:
            return bool(client.ping())
        except Exception:  # LOADING while it replays the AOF, or not listening yet
            return False

    def shutdown(self) -> None:
        """A clean stop: SHUTDOWN flushes and fsyncs the append-only file."""
        assert self.proc is not None
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown"], capture_output=True, timeout=15, check=False)
        self.proc.wait(15)

    def kill(self) -> None:
        """SIGKILL: whatever was not yet written to the append-only file is gone."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class PrivatePostgres:
    """A PostgreSQL cluster of the scenario's own on a free loopback port, run as the postgres user when we are
    root (initdb refuses root); its socket and files in a directory of its own, deleted at the end."""

    def __init__(self) -> None:
        # Not under pytest's tmp_path: pytest keeps its base directory 0700, and postgres must reach its files.
        self.root = Path(tempfile.mkdtemp(prefix="atlas-fault-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/atlas_faults"
        try:
            if os.geteuid() == 0:
                shutil.chown(self.root, "postgres", "postgres")
            self._as_postgres(PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    @staticmethod
    def _as_postgres(*args: Any) -> str:
        """Run a PostgreSQL tool, as the postgres user when we are root (initdb and postgres refuse root)."""
        command = [str(a) for a in args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stdout}{done.stderr}")
        return done.stdout

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.root / "pg.log", "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def logs(self) -> str:
        return (self.root / "pg.log").read_text(errors="replace")

    def migrate(self, config_path: Path) -> None:
        """``atlas-server migrate``: creates the scenario's database and its schema, as an operator would."""
        done = subprocess.run(
            [BIN / "atlas-server", "migrate", "--config", config_path],
            env=service_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"atlas-server migrate failed: {done.stdout}{done.stderr}")

    def close(self) -> None:
        """Stop it (immediately) and delete its files."""
        with contextlib.suppress(RuntimeError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def scenario_config(base: dict[str, Any], *, database_url: str, redis_url: str, prefix: str) -> dict[str, Any]:
    """A server config for one scenario: its database, Redis and queue; short timeouts, the default retries.

    rq's SimpleWorker gives an execution ``job_timeout + 60`` seconds before a
    dead worker's job counts as abandoned; a worker's maintenance (every 2 s
    here, while it is not blocked waiting for work) then retries it.
    """
    config = {name: dict(values) for name, values in base.items()}
    config["database"] = {"url": database_url}
    config["redis"] = {"url": redis_url, "key_prefix": prefix}
    config["worker"] = {"retries": 8, "job_timeout": 10, "monitoring_interval": 1, "maintenance_interval": 2}
    return config


@dataclass
class QueueState:
    """Jobs per place in rq, read without running rq's cleanups (which would recover abandoned jobs for us)."""

    queued: int
    intermediate: int
    started: int
    scheduled: int
    failed: int

    @property
    def idle(self) -> bool:
        return self.queued == self.intermediate == self.started == self.scheduled == 0


def queue_state(config: dict[str, Any]) -> QueueState:
    settings = settings_from_mapping(config, env={})
    connection = Redis.from_url(settings.redis_url, socket_timeout=5)
    try:
        queue = Queue(settings.queue_name, connection=connection, serializer=SERIALIZER)
        return QueueState(
            queued=connection.llen(queue.key),
            intermediate=connection.llen(queue.intermediate_queue_key),
            started=StartedJobRegistry(queue=queue).get_job_count(cleanup=False),
            scheduled=ScheduledJobRegistry(queue=queue).get_job_count(cleanup=False),
            failed=FailedJobRegistry(queue=queue).get_job_count(cleanup=False),
        )
    finally:
        connection.close()


def stored_logs(database_url: str, machines: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Per batch_id of these machines: rows in ``batches`` and logs in ``widget_logs``."""
    with connect(database_url) as conn:
        rows = conn.execute(
            "SELECT batch_id::text, count(*) FROM batches WHERE machine_id = ANY(%s) GROUP BY 1", (machines,)
        ).fetchall()
        logs = conn.execute(
            "SELECT batch_id::text, count(*) FROM widget_logs WHERE machine_id = ANY(%s) GROUP BY 1", (machines,)
        ).fetchall()
    return dict(rows), dict(logs)


def settle(config: dict[str, Any], database_url: str, agents: Agents, timeout: float) -> tuple[float, QueueState]:
    """Wait until every delivered batch is in PostgreSQL and the queue is idle; seconds waited, final state."""
    started = time.monotonic()
    sent = set(agents.log.sent)

    def done() -> bool:
        try:
            rows, _ = stored_logs(database_url, agents.machines)
        except psycopg.OperationalError:
            return False
        return sent <= rows.keys() and queue_state(config).idle

    wait_for(done, timeout=timeout, interval=0.5)
    return time.monotonic() - started, queue_state(config)


def count(scenario: str, database_url: str, agents: Agents, state: QueueState, *, note: str = "") -> Tally:
    """What PostgreSQL holds against what the agents delivered: distinct stored, duplicated, lost.

    A batch is duplicated if its row or any of its logs is there more than
    once; lost if it was delivered and has no row, or has fewer logs than sent.
    """
    rows, logs = stored_logs(database_url, agents.machines)
    sent = agents.log.sent
    duplicated = sum(1 for b in rows if rows[b] > 1 or logs.get(b, 0) > LOGS_PER_BATCH)
    lost = sum(1 for b in sent if b not in rows) + sum(1 for b in rows if logs.get(b, 0) < LOGS_PER_BATCH)
    statuses = ", ".join(f"{k}x{v}" for k, v in sorted(agents.log.statuses.items()))
    parts = [f"answers {statuses}"]
    if state.failed:
        parts.append(f"{state.failed} job(s) parked in failed registry")
    if note:
        parts.append(note)
    return Tally(
        scenario=scenario,
        sent=len(sent),
        stored=len(rows.keys() & agents.log.attempted),
        duplicated=duplicated,
        lost=lost,
        note="; ".join(parts),
    )


def tally(scenario: str, database_url: str, agents: Agents, state: QueueState, *, note: str = "") -> Tally:
    """Count (see ``count``) and record the scenario's line in the fault report."""
    return record(count(scenario, database_url, agents, state, note=note))


def assert_clean(result: Tally, agents: Agents, state: QueueState, logs: str) -> None:
    """The pass: nothing lost, nothing twice, no job parked, no answer but 202/200/503."""
    assert agents.log.unexpected == [], agents.log.unexpected[:5]
    assert result.sent > 0
    assert result.lost == 0, (result, state, logs[-6000:])
    assert result.duplicated == 0, result
    assert state.failed == 0, (state, logs[-6000:])
    assert state.idle, (state, logs[-6000:])
