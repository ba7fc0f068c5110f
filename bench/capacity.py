"""Capacity benchmark: the largest fleet of Macs the whole stack sustains on this machine.

The stack runs as in production: ``atlas-server ingest`` and ``atlas-server worker``
processes against the machine's PostgreSQL (this run's own database) and Redis (this
run's own prefixes). Simulated Macs each send one sealed batch of 15 logs every 300 s,
each from its own machine identity, so a fleet of N Macs is an open-loop arrival rate
of N/300 batches/s (Poisson by default). The fleet grows step by step until a step is
not sustained: a non-202 answer, a backlog that grows, HTTP p99 >= 100 ms, or
202-to-visible p99 >= 2 s. The raw baseline, in the same run, is the largest rate the
bare FastAPI endpoint (``bench.bare_app``, same uvicorn settings) sustains under the
same paced client with p99 < 100 ms. At the end the database must hold exactly the
accepted batches and their rows.

    .venv/bin/python -m bench.capacity [--start 60000] [--factor 1.2] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import psycopg
from psycopg.conninfo import make_conninfo

from atlas.contract import Key, seal
from atlas.contract.envelope import format_timestamp

from .batches import LOGS_PER_BATCH, log_entries, machine, sealed_bodies
from .common import (
    DEFAULT_POSTGRES,
    DEFAULT_REDIS,
    BenchEnv,
    BenchError,
    isolated_env,
    machine_info,
    positive_float,
    positive_int,
    require_rq_prefix,
    say,
    shipped_redis,
)
from .ingest import HOST, PATH, Server, free_port, requests_for, stop, tail, wait_ready
from .loadgen import PacedResult, Scheduled, build_request, paced_load

if TYPE_CHECKING:  # rq must be imported only once RQ_KEY_PREFIX is set (see common.require_rq_prefix)
    from rq import Queue

SEND_INTERVAL = 300.0
"""Seconds between two batches of one Mac (the agent's default sending schedule)."""

TARGET_MACS = 200_000
HTTP_P99_LIMIT_MS = 100.0
VISIBLE_P99_LIMIT_S = 2.0
CLIENT_LAG_LIMIT = 0.01
"""Share of requests the client may hand over late (> 10 ms) before a step counts as client-limited."""

CLIENT_CPU_LIMIT = 0.7
"""Client CPU (share of one core) from which late sends are blamed on the client itself."""

DRAIN_LIMIT = 5.0
"""Seconds after a step's last answer within which the backlog must be stored for the step to count."""

DRAIN_TIMEOUT = 60.0
"""Seconds the bench waits for a backlog to drain before it stops stepping up."""

MIN_FLEET = 1000
"""Smallest fleet tried when the first step is not sustained and the ramp steps down."""

VISIBLE_TIMEOUT = 30.0
POLL_INTERVAL = 0.05
"""Seconds between two polls of ``batches`` for the sampled batch_ids (the resolution of 202-to-visible)."""

STORED_LINE = re.compile(r"Stored (\d+) of (\d+) batch")
"""The worker's log line per job (atlas.worker.jobs), from which batches per job are counted."""

MONITOR_APP = "atlas-capacity-monitor"
"""application_name of this process's own PostgreSQL connections, kept apart in the CPU shares."""

PG_BACKGROUND = ("walwriter", "checkpointer", "background writer", "autovacuum launcher")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", type=positive_int, default=60_000, help="Macs in the first step (default 60000)")
    parser.add_argument(
        "--machine-redis",
        action="store_true",
        help="use the Redis at --redis; by default the bench runs its own redis-server with the arguments "
        "docker-compose.yml ships (append-only file, appendfsync always)",
    )
    parser.add_argument("--factor", type=float, default=1.2, help="fleet growth per step (default 1.2)")
    parser.add_argument("--step", type=positive_int, help="add this many Macs per step instead of --factor")
    parser.add_argument("--max", type=positive_int, default=1_000_000, help="largest fleet tried (default 1000000)")
    parser.add_argument("--seconds", type=positive_float, default=30, help="seconds per step (default 30)")
    parser.add_argument("--budget", type=positive_float, default=230, help="seconds for all real steps (default 230)")
    parser.add_argument("--warmup", type=positive_float, default=5, help="untimed seconds at --start first (default 5)")
    parser.add_argument("--ingest-workers", type=positive_int, default=1, help="atlas-server ingest --workers N")
    parser.add_argument("--workers", type=positive_int, default=1, help="atlas-server worker processes (default 1)")
    parser.add_argument("--connections", type=positive_int, default=128, help="client keep-alive pool (default 128)")
    parser.add_argument("--arrivals", choices=("poisson", "even"), default="poisson", help="arrival process")
    parser.add_argument(
        "--sample-rate", type=positive_float, default=50, help="batches/s polled for 202-to-visible (default 50)"
    )
    parser.add_argument("--bare-seconds", type=positive_float, default=6, help="seconds per bare step (default 6)")
    parser.add_argument(
        "--bare-factor",
        type=float,
        default=1.3,
        help="bare fleet growth per step once its p99 reaches 25 ms; it doubles before (default 1.3)",
    )
    parser.add_argument("--bare-budget", type=positive_float, default=70, help="seconds for the bare ramp (default 70)")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help=f"maintenance DB URL (default {DEFAULT_POSTGRES})")
    parser.add_argument("--redis", default=DEFAULT_REDIS, help=f"Redis URL (default {DEFAULT_REDIS})")
    args = parser.parse_args(argv)
    if args.factor <= 1 or args.bare_factor <= 1:
        parser.error("--factor and --bare-factor must be more than 1")
    return args


# --- the stack ------------------------------------------------------------------------------------------------------


@dataclass
class Stack:
    """The processes under test: ingest (uvicorn, maybe with children) and the rq workers."""

    ingest: Server
    workers: list[subprocess.Popen[bytes]]
    logs: list[Path]

    def processes(self, group: str) -> list[psutil.Process]:
        roots = [self.ingest.process.pid] if group == "ingest" else [w.pid for w in self.workers]
        found = []
        for pid in roots:
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(pid)
                found += [parent, *parent.children(recursive=True)]
        return found

    def check_alive(self) -> None:
        for name, process in [("ingest", self.ingest.process)] + [("worker", w) for w in self.workers]:
            if process.poll() is not None:
                log = self.logs[0] if name == "ingest" else self.logs[1 + self.workers.index(process)]
                raise BenchError(f"{name} exited with {process.returncode}:\n{tail(log)}")

    def worker_log_sizes(self) -> list[int]:
        return [log.stat().st_size for log in self.logs[1:]]

    def jobs_stored(self, since: list[int]) -> tuple[int, int]:
        """(jobs, batches) the workers logged as stored after the given log sizes ("Stored X of Y batch(es)")."""
        jobs = batches = 0
        for log, offset in zip(self.logs[1:], since, strict=True):
            with open(log, "rb") as f:
                f.seek(offset)
                for match in STORED_LINE.finditer(f.read().decode("utf-8", "replace")):
                    jobs, batches = jobs + 1, batches + int(match[2])
        return jobs, batches

    def log_problems(self) -> list[str]:
        lines = []
        for log in self.logs:
            text = log.read_text(encoding="utf-8", errors="replace")
            lines += [line for line in text.splitlines() if "ERROR" in line or "Traceback" in line or "WARNING" in line]
        return lines


def spawn(command: list[str], env: BenchEnv, log: Path) -> subprocess.Popen[bytes]:
    """Start a server process in a session of its own (Ctrl-C reaches only the bench, which stops it)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            command,
            env=env.subprocess_environ(),
            cwd=env.workdir,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )


def atlas_server() -> str:
    path = Path(sys.executable).with_name("atlas-server")
    if not path.exists():
        raise BenchError(f"{path} not found: install the services into this virtualenv")
    return str(path)


@contextlib.contextmanager
def stack_running(env: BenchEnv, ingest_workers: int, workers: int) -> Iterator[Stack]:
    """``atlas-server ingest`` and ``workers`` x ``atlas-server worker``, stopped in order on exit."""
    port, log = free_port(), env.workdir / "ingest.log"
    command = [atlas_server(), "ingest", "--host", HOST, "--port", str(port), "--workers", str(ingest_workers)]
    ingest = Server("ingest", spawn(command, env, log), port, log)
    started: list[subprocess.Popen[bytes]] = []
    logs = [log]
    try:
        wait_ready(ingest, "/readyz")
        for i in range(workers):
            logs.append(env.workdir / f"worker-{i}.log")
            started.append(spawn([atlas_server(), "worker", "--name", f"capacity-{env.tag}-{i}"], env, logs[-1]))
        stack = Stack(ingest, started, logs)
        time.sleep(1.0)
        stack.check_alive()
        yield stack
    finally:
        stop(ingest.process)
        for process in started:
            stop(process)


@contextlib.contextmanager
def bare_running(env: BenchEnv, ingest_workers: int) -> Iterator[Server]:
    """The bare endpoint under uvicorn with the flags ``atlas-server ingest`` gives it."""
    port, log = free_port(), env.workdir / "bare.log"
    command = [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--host", HOST, "--port", str(port)]
    command += ["--workers", str(ingest_workers), "--log-level", "info", "--proxy-headers"]
    server = Server("bare", spawn(command, env, log), port, log)
    try:
        wait_ready(server, "/healthz")
        yield server
    finally:
        stop(server.process)


# --- the fleet ------------------------------------------------------------------------------------------------------


def seal_requests(job: tuple[list[int], str, str, int]) -> list[tuple[str, bytes]]:
    """(batch_id, HTTP request) for each Mac index: a fresh batch of 15 logs sealed as the agent does."""
    indices, key_b64, api_key, seed = job
    key, rng, now = Key.from_base64(key_b64), random.Random(seed), datetime.now(UTC)
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    out = []
    for index in indices:
        batch_id = str(uuid.uuid4())
        content = {"machine": machine(index), "logs": log_entries(rng, now)}
        plaintext = json.dumps(content, separators=(",", ":")).encode()
        envelope = seal(plaintext, key, batch_id=batch_id, created_at=format_timestamp(now))
        body = json.dumps(envelope, separators=(",", ":")).encode()
        out.append((batch_id, build_request(HOST, PATH, body, headers)))
    return out


def ignore_interrupts() -> None:
    """In a sealing process: leave Ctrl-C and SIGTERM to the bench, which shuts the pool down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Fleet:
    """Mac identities, seeded in ``machines`` as a running fleet has them, and their sealed batches.

    Every request of a step comes from a different Mac: Macs take turns in index order
    (a cursor that carries over from step to step), as each one sends once per 300 s.
    """

    def __init__(self, env: BenchEnv, pool: ProcessPoolExecutor) -> None:
        self.env, self.pool = env, pool
        self.seeded = 0
        self.cursor = 0

    def seed(self, conn: psycopg.Connection, macs: int) -> None:
        """Give Macs [seeded, macs) their ``machines`` row, so the worker's upsert updates as in steady state."""
        if macs <= self.seeded:
            return
        seen = datetime.now(UTC) - timedelta(days=1)
        columns = "machine_id, serial_number, hostname, model, os_version, agent_version, first_seen, last_seen"
        with (
            conn.transaction(),
            conn.cursor() as cur,
            cur.copy(f"COPY machines ({columns}, identity_at) FROM STDIN") as copy,
        ):
            for index in range(self.seeded, macs):
                m = machine(index)
                copy.write_row((*m.values(), seen, seen, seen))
        self.seeded = macs

    def requests(self, macs: int, count: int) -> list[tuple[str, bytes]]:
        """``count`` sealed requests from the next ``count`` Macs of a fleet of ``macs``."""
        indices = [(self.cursor + i) % macs for i in range(count)]
        self.cursor = (self.cursor + count) % macs
        chunks = max(1, os.cpu_count() or 1) * 4
        size = math.ceil(count / chunks) or 1
        jobs = [
            (indices[i : i + size], self.env.encryption_key, self.env.api_key, random.randrange(2**32))
            for i in range(0, count, size)
        ]
        return [r for part in self.pool.map(seal_requests, jobs) for r in part]


def arrival_times(rate: float, seconds: float, arrivals: str, rng: random.Random) -> list[float]:
    """Send times in [0, seconds): a Poisson process of ``rate``, or one per 1/rate slot at a random point in it."""
    if arrivals == "even":
        count = round(rate * seconds)
        return [(i + rng.random()) * seconds / count for i in range(count)]
    times, t = [], rng.expovariate(rate)
    while t < seconds:
        times.append(t)
        t += rng.expovariate(rate)
    return times


# --- CPU shares -----------------------------------------------------------------------------------------------------


Snapshot = tuple[float, float, dict[str, dict[int, float]]]
"""(wall time, machine busy CPU seconds, group -> pid -> CPU seconds)."""


class CpuMeter:
    """CPU seconds of each part of the stack, from psutil, between two snapshots."""

    def __init__(self, stack: Stack | None, server: Server | None, conn: psycopg.Connection, redis_pid: int | None):
        self.stack, self.server, self.conn, self.redis_pid = stack, server, conn, redis_pid

    def _groups(self) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {"client": [os.getpid()]}
        if self.stack is not None:
            groups["ingest"] = [p.pid for p in self.stack.processes("ingest")]
            groups["worker"] = [p.pid for p in self.stack.processes("worker")]
        if self.server is not None:
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(self.server.process.pid)
                groups["bare"] = [parent.pid, *(c.pid for c in parent.children(recursive=True))]
        rows = self.conn.execute(
            "SELECT pid, CASE WHEN application_name = %s THEN 'probe' WHEN datname = current_database() THEN 'pg'"
            " WHEN backend_type = ANY(%s) THEN 'pg bg' END FROM pg_stat_activity",
            (MONITOR_APP, list(PG_BACKGROUND)),
        ).fetchall()
        for pid, group in rows:
            if group is not None and pid != self.conn.info.backend_pid:
                groups.setdefault(group, []).append(pid)
        if self.redis_pid:
            groups["redis"] = [self.redis_pid]
        return groups

    def snapshot(self) -> Snapshot:
        """(wall time, machine busy CPU seconds, group -> pid -> CPU seconds)."""
        cpu: dict[str, dict[int, float]] = {}
        for group, pids in self._groups().items():
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    times = psutil.Process(pid).cpu_times()
                    cpu.setdefault(group, {})[pid] = times.user + times.system
        total = psutil.cpu_times()
        busy = sum(total) - total.idle - getattr(total, "iowait", 0.0)
        return time.perf_counter(), busy, cpu

    @staticmethod
    def shares(before: Snapshot, after: Snapshot) -> dict[str, float]:
        """Share of one core each group used between the snapshots; ``others`` is the rest of the machine."""
        wall = after[0] - before[0]
        out: dict[str, float] = {}
        for group, pids in after[2].items():
            used = sum(t - before[2].get(group, {}).get(pid, 0.0) for pid, t in pids.items())
            out[group] = used / wall
        machine_busy = (after[1] - before[1]) / wall
        out["others"] = max(0.0, machine_busy - sum(out.values()))
        out["machine"] = machine_busy
        return out


def format_shares(shares: dict[str, float]) -> str:
    order = ["ingest", "worker", "bare", "pg", "pg bg", "redis", "client", "probe", "others"]
    parts = [f"{name} {shares[name]:.0%}" for name in order if name in shares]
    cores = os.cpu_count() or 1
    return ", ".join(parts) + f" | machine {shares['machine']:.0%} of {cores * 100}%"


# --- one step -------------------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One step's figures and verdict."""

    macs: int
    seconds: float
    load: PacedResult
    visible: list[float] = field(default_factory=list)
    invisible: int = 0
    stored_lag: tuple[float, float] = (math.nan, math.nan)
    backlog: list[int] = field(default_factory=list)
    jobs: list[int] = field(default_factory=list)
    drain: float = math.nan
    cpu: dict[str, float] = field(default_factory=dict)
    load_avg: float = math.nan
    seal_seconds: float = 0.0
    reasons: list[str] = field(default_factory=list)
    stored_jobs: tuple[int, int] = (0, 0)

    @property
    def offered_rate(self) -> float:
        return self.macs / SEND_INTERVAL

    @property
    def sustained(self) -> bool:
        return not self.reasons

    def visible_s(self, q: float) -> float:
        if not self.visible:
            return math.nan
        ordered = sorted(self.visible)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def judge(self) -> None:
        load, tolerance = self.load, max(50, self.offered_rate)
        if load.failures():
            self.reasons.append(f"not all 202: {load.failures()}")
        if client_limited(load, self.cpu):
            self.reasons.append(
                f"CLIENT-LIMITED: {load.loop_late} requests sent > 10 ms late, client CPU {self.cpu['client']:.0%}"
            )
        if len(self.backlog) >= 3 and self.backlog[-1] - self.backlog[1] > tolerance:
            self.reasons.append(f"backlog grew {self.backlog[1]} -> {self.backlog[-1]}")
        if not self.drain <= DRAIN_LIMIT:
            self.reasons.append(f"backlog took {self.drain:.1f} s to drain")
        if not load.percentile_ms(99) < HTTP_P99_LIMIT_MS:
            self.reasons.append(f"HTTP p99 {load.percentile_ms(99):.0f} ms")
        if self.invisible or not self.visible_s(99) < VISIBLE_P99_LIMIT_S:
            self.reasons.append(f"202-to-visible p99 {self.visible_s(99):.2f} s, {self.invisible} not visible")


def client_limited(load: PacedResult, cpu: dict[str, float]) -> bool:
    """Over 1 % of requests (and at least 5) left > 10 ms late while the client used most of a core.

    Then the client, not the stack, set the pace, and the step says nothing about the stack.
    Late sends on a machine saturated by other work (the client barely busy) only delay
    requests, and latencies already count from the scheduled time, so they show there.
    """
    return load.loop_late > max(5, CLIENT_LAG_LIMIT * load.offered) and cpu.get("client", 0.0) >= CLIENT_CPU_LIMIT


class Probe:
    """Watches one step from inside the client's event loop: 202s, visibility, backlog and queue depth."""

    def __init__(self, env: BenchEnv, queue: Queue, sample_probability: float, accepted_before: int) -> None:
        self.env, self.queue = env, queue
        self.probability = sample_probability
        self.accepted_before = accepted_before
        self.accepted_ids: list[str] = []
        self.pending: dict[str, float] = {}
        self.visible: list[float] = []
        self.rng = random.Random()

    def on_answer(self, tag: object, status: int, at: float) -> None:
        if status != 202:
            return
        batch_id = str(tag)
        self.accepted_ids.append(batch_id)
        if self.rng.random() < self.probability:
            self.pending[batch_id] = at

    async def poll_visible(self, conn: psycopg.AsyncConnection) -> None:
        """Look up pending sampled batch_ids every POLL_INTERVAL; a hit's delay is taken at the poll's start."""
        while True:
            if self.pending:
                ids = list(self.pending)[:2000]
                asked = time.perf_counter()
                cur = await conn.execute("SELECT batch_id::text FROM batches WHERE batch_id = ANY(%s::uuid[])", [ids])
                for (batch_id,) in await cur.fetchall():
                    self.visible.append(max(0.0, asked - self.pending.pop(batch_id)))
            await asyncio.sleep(POLL_INTERVAL)

    async def backlog(self, conn: psycopg.AsyncConnection) -> int:
        """Batches answered 202 (this run) and not yet in ``batches``."""
        cur = await conn.execute("SELECT count(*) FROM batches")
        row = await cur.fetchone()
        return self.accepted_before + len(self.accepted_ids) - (row[0] if row else 0)


async def step_async(
    env: BenchEnv,
    port: int,
    schedule: list[Scheduled],
    macs: int,
    args: argparse.Namespace,
    probe: Probe,
    meter: CpuMeter,
) -> Step:
    """Run one step, then wait for its backlog to drain and its sampled batches to become visible."""
    conninfo = make_conninfo(env.database_url, application_name=MONITOR_APP)
    async with (
        await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as poll_conn,
        await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as count_conn,
    ):
        backlog, jobs = [await probe.backlog(count_conn)], [probe.queue.count]

        async def watch() -> None:
            for _ in range(4):
                await asyncio.sleep(args.seconds / 4)
                backlog.append(await probe.backlog(count_conn))
                jobs.append(probe.queue.count)

        poller = asyncio.create_task(probe.poll_visible(poll_conn))
        watcher = asyncio.create_task(watch())
        before = meter.snapshot()
        load = await paced_load(
            HOST, port, schedule, connections=args.connections, on_answer=probe.on_answer, seconds=args.seconds
        )
        after = meter.snapshot()
        load_avg = os.getloadavg()[0]
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        answered = time.perf_counter()
        drain = math.nan
        while time.perf_counter() - answered < DRAIN_TIMEOUT:
            if await probe.backlog(count_conn) <= 0:
                drain = time.perf_counter() - answered
                break
            await asyncio.sleep(0.1)
        deadline = time.perf_counter() + VISIBLE_TIMEOUT
        while probe.pending and time.perf_counter() < deadline:
            await asyncio.sleep(POLL_INTERVAL)
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        stored_lag = await received_to_stored(count_conn, probe.accepted_ids)
    step = Step(macs, args.seconds, load, probe.visible, len(probe.pending), stored_lag, backlog, jobs, drain)
    step.cpu, step.load_avg = CpuMeter.shares(before, after), load_avg
    return step


async def received_to_stored(conn: psycopg.AsyncConnection, ids: list[str]) -> tuple[float, float]:
    """p50 and p99 of stored_at - received_at over the step's batches, in seconds (server clocks)."""
    if not ids:
        return math.nan, math.nan
    cur = await conn.execute(
        "SELECT percentile_disc(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - received_at))"
        " FROM batches WHERE batch_id = ANY(%s::uuid[])",
        [ids],
    )
    row = await cur.fetchone()
    values = row[0] if row and row[0] else [math.nan, math.nan]
    return float(values[0]), float(values[1])


# --- the ramps ------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Counters across the whole run, for the final verification."""

    accepted: set[str] = field(default_factory=set)
    offered: set[str] = field(default_factory=set)
    errors: int = 0


def next_fleet(macs: int, step: int | None, factor: float) -> int:
    """The next step's fleet: ``step`` more Macs, or ``factor`` times as many rounded up to a thousand."""
    grown = macs + step if step else math.ceil(macs * factor / 1000) * 1000
    return max(grown, macs + 1)


def run_step(
    env: BenchEnv,
    stack: Stack,
    fleet: Fleet,
    conn: psycopg.Connection,
    meter: CpuMeter,
    macs: int,
    seconds: float,
    args: argparse.Namespace,
    run: Run,
    queue: Queue,
) -> Step:
    """Seal the step's batches, send them on schedule, and judge the step."""
    rate = macs / SEND_INTERVAL
    times = arrival_times(rate, seconds, args.arrivals, random.Random())
    fleet.seed(conn, macs)
    sealed_at = time.perf_counter()
    requests = fleet.requests(macs, len(times))
    seal_seconds = time.perf_counter() - sealed_at
    schedule = [Scheduled(t, data, batch_id) for t, (batch_id, data) in zip(times, requests, strict=True)]
    run.offered.update(batch_id for batch_id, _ in requests)
    probe = Probe(env, queue, min(1.0, args.sample_rate / rate), len(run.accepted))
    step_args = argparse.Namespace(**{**vars(args), "seconds": seconds})
    logged = stack.worker_log_sizes()
    step = asyncio.run(step_async(env, stack.ingest.port, schedule, macs, step_args, probe, meter))
    step.seal_seconds, step.stored_jobs = seal_seconds, stack.jobs_stored(logged)
    run.accepted.update(probe.accepted_ids)
    run.errors += sum(step.load.errors.values())
    stack.check_alive()
    step.judge()
    return step


HEADER = (
    "      Macs  offered/s  202/s  202 share  HTTP p50/p99 ms  202->visible p50/p99 s (n)  recv->stored_at p99 s"
    "  backlog q1->mid->end  jobs max  drain s"
)


def describe(step: Step) -> str:
    load = step.load
    share = load.accepted / load.offered if load.offered else math.nan
    jobs = max(step.jobs) if step.jobs else 0
    backlog = (
        "->".join(str(b) for b in (step.backlog[1], step.backlog[2], step.backlog[-1]))
        if len(step.backlog) > 2
        else "?"
    )
    line = (
        f"{step.macs:10d}  {step.offered_rate:9.1f}  {load.rate:5.0f}  {share:9.2%}  "
        f"{load.percentile_ms(50):6.1f} / {load.percentile_ms(99):6.1f}  "
        f"{step.visible_s(50):8.3f} / {step.visible_s(99):6.3f} ({len(step.visible):5d})  "
        f"{step.stored_lag[1]:21.3f}  {backlog:>20}  {jobs:8d}  {step.drain:7.1f}"
    )
    verdict = "sustained" if step.sustained else "NOT sustained: " + "; ".join(step.reasons)
    jobs_done, batches_done = step.stored_jobs
    per_job = f"{batches_done / jobs_done:.1f}" if jobs_done else "?"
    lag = (
        f"client lag: {load.loop_late} sent >10 ms late (max {1000 * load.max_loop_lag:.0f} ms), "
        f"{load.connection_waits} waited for a connection (max {1000 * load.max_connection_wait:.0f} ms)"
    )
    return (
        f"{line}\n            {verdict}\n            CPU (share of one core): {format_shares(step.cpu)} | "
        f"load avg {step.load_avg:.2f}\n            {lag}; sealing took {step.seal_seconds:.1f} s; "
        f"worker stored {jobs_done} jobs, {per_job} batches per job{slow_answers(load)}"
    )


def slow_answers(load: PacedResult) -> str:
    """Where in the step the answers over 100 ms fell: bunched in a few seconds is a stall, spread is a queue."""
    if not load.slow:
        return ""
    seconds = Counter(int(t) for t in load.slow)
    second, most = seconds.most_common(1)[0]
    return (
        f"\n            {len(load.slow)} answers over 100 ms, sent in {len(seconds)} distinct seconds of the step "
        f"(most: {most} in second {second})"
    )


def real_ramp(env: BenchEnv, stack: Stack, args: argparse.Namespace, run: Run, queue: Queue) -> tuple[list[Step], int]:
    """Warm up at --start, then step the fleet up until a step is not sustained, --max, or the time budget."""
    steps: list[Step] = []
    redis_pid = redis_process_id(env)
    with (
        ProcessPoolExecutor(os.cpu_count(), multiprocessing.get_context("fork"), ignore_interrupts) as pool,
        psycopg.connect(make_conninfo(env.database_url, application_name=MONITOR_APP), autocommit=True) as conn,
    ):
        fleet = Fleet(env, pool)
        meter = CpuMeter(stack, None, conn, redis_pid)
        warm = run_step(env, stack, fleet, conn, meter, args.start, args.warmup, args, run, queue)
        say(
            f"  warm-up ({args.warmup:.0f} s at {args.start} Macs): {warm.load.accepted} x 202, "
            f"HTTP p99 {warm.load.percentile_ms(99):.0f} ms, drained in {warm.drain:.1f} s (not counted)"
        )
        say(HEADER)
        started, macs, failed_at = time.perf_counter(), args.start, None
        while macs <= args.max:
            estimate = args.seconds + 10 + (steps[-1].seal_seconds * macs / steps[-1].macs if steps else 5)
            if steps and time.perf_counter() - started + estimate > args.budget:
                say(f"  time budget of {args.budget:.0f} s reached: stopped stepping")
                break
            step = run_step(env, stack, fleet, conn, meter, macs, args.seconds, args, run, queue)
            steps.append(step)
            say(describe(step))
            if math.isnan(step.drain):
                say(f"  the backlog did not drain within {DRAIN_TIMEOUT:.0f} s: stopped stepping")
                break
            if step.sustained:
                macs = next_fleet(macs, args.step, args.factor)
                if failed_at is not None and macs >= failed_at:
                    break
            elif any(s.sustained for s in steps) or macs <= MIN_FLEET:
                break
            else:  # not even the first step: step down until one is sustained, then up again towards it
                failed_at = macs
                macs = max(MIN_FLEET, macs // 2000 * 1000)
    return steps, fleet.seeded


@dataclass
class BareStep:
    macs: int
    load: PacedResult
    cpu: dict[str, float]

    @property
    def sustained(self) -> bool:
        load = self.load
        return not load.failures() and not self.client_limited and load.percentile_ms(99) < HTTP_P99_LIMIT_MS

    @property
    def client_limited(self) -> bool:
        return client_limited(self.load, self.cpu)


def bare_ramp(env: BenchEnv, args: argparse.Namespace, start: int) -> list[BareStep]:
    """The bare endpoint under the same paced client, stepped up from ``start`` Macs until not sustained.

    The fleet doubles while p99 stays under a quarter of the limit, then grows by ``--bare-factor``;
    after a failed step it goes on by ``--bare-factor`` from the largest sustained fleet, below the failure.
    """
    steps: list[BareStep] = []
    bodies = requests_for(sealed_bodies(500, Key.from_base64(env.encryption_key)), env.api_key)
    conninfo = make_conninfo(env.database_url, application_name=MONITOR_APP)
    with bare_running(env, args.ingest_workers) as bare, psycopg.connect(conninfo, autocommit=True) as conn:
        meter = CpuMeter(None, bare, conn, None)
        warm = [Scheduled(i / 200, bodies[i % len(bodies)]) for i in range(400)]
        asyncio.run(paced_load(HOST, bare.port, warm, connections=args.connections))
        started, macs, upper = time.perf_counter(), start, None
        while time.perf_counter() - started + args.bare_seconds + 2 <= args.bare_budget:
            times = arrival_times(macs / SEND_INTERVAL, args.bare_seconds, args.arrivals, random.Random())
            schedule = [Scheduled(t, bodies[i % len(bodies)]) for i, t in enumerate(times)]
            before = meter.snapshot()
            load = asyncio.run(
                paced_load(HOST, bare.port, schedule, connections=args.connections, seconds=args.bare_seconds)
            )
            steps.append(BareStep(macs, load, CpuMeter.shares(before, meter.snapshot())))
            s = steps[-1]
            verdict = (
                "sustained" if s.sustained else "NOT sustained" + (" (CLIENT-LIMITED)" if s.client_limited else "")
            )
            say(
                f"  bare {macs:9d} Macs = {macs / SEND_INTERVAL:7.1f} req/s offered, {load.rate:7.1f} x 202/s, "
                f"p50 {load.percentile_ms(50):5.1f} ms, p99 {load.percentile_ms(99):6.1f} ms, "
                f"{load.loop_late} sent late, {load.failures() or 'all 202'}: {verdict} | CPU {format_shares(s.cpu)}"
            )
            best = max((b.macs for b in steps if b.sustained), default=None)
            if s.sustained:
                far = upper is None and load.percentile_ms(99) < HTTP_P99_LIMIT_MS / 4
                macs = next_fleet(macs, None, 2.0 if far else args.bare_factor)  # far from the limit: double
            elif best is None:
                break
            else:  # failed: go on from the largest sustained fleet in finer steps, below this one
                upper = macs if upper is None else min(upper, macs)
                macs = next_fleet(best, None, args.bare_factor)
            if upper is not None and macs >= upper:
                break
    return steps


def redis_process_id(env: BenchEnv) -> int | None:
    from redis import Redis

    client = Redis.from_url(env.redis_url)
    try:
        return int(client.info("server").get("process_id", 0)) or None
    finally:
        client.close()


# --- verification and report ----------------------------------------------------------------------------------------


def verify(env: BenchEnv, run: Run, queue: Queue, seeded: int) -> list[str]:
    """Wait for the queue to be stored, then compare the database with what was accepted; return the problems."""
    problems = []
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            stored = conn.execute("SELECT count(*) FROM batches").fetchone()[0]
            if stored >= len(run.accepted) and queue.count == 0:
                break
            time.sleep(0.5)
        ids = {row[0] for row in conn.execute("SELECT batch_id::text FROM batches")}
        rows = conn.execute("SELECT count(*) FROM widget_logs").fetchone()[0]
        machines = conn.execute("SELECT count(*) FROM machines").fetchone()[0]
    missing = run.accepted - ids
    unknown = ids - run.offered
    extra = ids - run.accepted  # possible only for a request that timed out after it was queued
    if missing:
        problems.append(f"{len(missing)} batches answered 202 are not in the database (e.g. {next(iter(missing))})")
    if unknown:
        problems.append(f"{len(unknown)} batches in the database were never sent")
    if len(extra) > run.errors:
        problems.append(f"{len(extra)} stored batches were not answered 202, but only {run.errors} requests failed")
    if rows != LOGS_PER_BATCH * len(ids):
        problems.append(f"widget_logs holds {rows} rows for {len(ids)} batches (expected {LOGS_PER_BATCH * len(ids)})")
    if machines != seeded:
        problems.append(f"machines holds {machines} rows for a fleet of {seeded}")
    failed = queue.failed_job_registry.count + queue.scheduled_job_registry.count
    if failed:
        problems.append(f"{failed} jobs failed or wait for a retry")
    say(
        f"  verification: {len(ids)} batches and {rows} rows stored for {len(run.accepted)} batches answered 202 "
        f"({len(extra)} more stored from {run.errors} failed requests), {machines} machines, "
        f"{failed} failed jobs: {'OK' if not problems else 'FAILED'}"
    )
    return problems


def report(steps: Sequence[Step], bare: Sequence[BareStep]) -> None:
    sustained = [s for s in steps if s.sustained]
    best = sustained[-1] if sustained else None
    bare_best = max((b for b in bare if b.sustained), key=lambda b: b.macs, default=None)
    largest = best.macs if best else 0
    say(
        f"largest sustained fleet: {largest} Macs = {largest / SEND_INTERVAL:.0f} batches/s",
    )
    if best:
        say(
            f"  at that step: HTTP p50 {best.load.percentile_ms(50):.1f} ms, p99 {best.load.percentile_ms(99):.1f} ms; "
            f"202-to-visible p50 {best.visible_s(50):.3f} s, p99 {best.visible_s(99):.3f} s "
            f"({len(best.visible)} sampled batches)"
        )
    limit = min((s for s in steps if not s.sustained and s.macs > largest), key=lambda s: s.macs, default=None)
    if limit is not None:
        say(f"  limit: the {limit.macs}-Mac step was not sustained: {'; '.join(limit.reasons)}")
    elif steps:
        say("  no step failed: the figure is a lower bound (time budget or --max reached)")
    if bare_best:
        lower = " (lower bound: the bare ramp ended by its time budget)" if all(b.sustained for b in bare) else ""
        client = " (lower bound: the client could not send faster)" if any(b.client_limited for b in bare) else ""
        say(
            f"  raw baseline: bare endpoint sustains {bare_best.macs} Macs = {bare_best.macs / SEND_INTERVAL:.0f} "
            f"req/s (p99 {bare_best.load.percentile_ms(99):.1f} ms){lower}{client} "
            f"-> ratio stack/bare {largest / bare_best.macs:.3f}"
        )
        if best:
            same = min(bare, key=lambda b: abs(b.macs - best.macs))
            say(
                f"  at {same.macs} Macs the bare endpoint answers p99 {same.load.percentile_ms(99):.1f} ms: "
                f"HTTP p99 ratio stack/bare {best.load.percentile_ms(99) / same.load.percentile_ms(99):.2f}"
            )
    else:
        say("  raw baseline: the bare endpoint sustained no step")
    checks = [
        ("fleet", largest >= TARGET_MACS, f">= {TARGET_MACS} Macs"),
        ("HTTP p99", best is not None and best.load.percentile_ms(99) < HTTP_P99_LIMIT_MS, "< 100 ms"),
        ("202-to-visible p99", best is not None and best.visible_s(99) < VISIBLE_P99_LIMIT_S, "< 2 s"),
    ]
    met = all(ok for _, ok, _ in checks)
    say(
        "target: "
        + ", ".join(f"{name} {want} {'met' if ok else 'missed'}" for name, ok, want in checks)
        + f" -> {'PASS' if met else 'FAIL, below target'}"
    )


def run(env: BenchEnv, args: argparse.Namespace) -> bool:
    """The whole benchmark; False when a check failed (lost batches, failed jobs, a dead process)."""
    require_rq_prefix(env)
    from atlas.core.queue import batch_queue, redis_client

    say(f"capacity bench | {machine_info(env)}")
    growth = f"+{args.step}" if args.step else f"x{args.factor}"
    say(
        f"  stack: atlas-server ingest --workers {args.ingest_workers}, {args.workers} x atlas-server worker; "
        f"Macs send {LOGS_PER_BATCH}-log batches every {SEND_INTERVAL:.0f} s ({args.arrivals} arrivals), "
        f"{args.connections} client connections"
    )
    say(
        f"  steps of {args.seconds:.0f} s from {args.start} Macs, {growth} each, until one is not sustained "
        f"(budget {args.budget:.0f} s); 202-to-visible polled for about {args.sample_rate:.0f} batches/s"
    )
    queue = batch_queue(redis_client(env.redis_url), env.settings())
    state = Run()
    try:
        with stack_running(env, args.ingest_workers, args.workers) as stack:
            steps, seeded = real_ramp(env, stack, args, state, queue)
            problems = verify(env, state, queue, seeded)
            log_lines = stack.log_problems()
        sustained = [s.macs for s in steps if s.sustained]
        bare_start = max(sustained, default=args.start)
        say(f"  raw baseline: bare endpoint, same client, {args.bare_seconds:.0f}-s steps from {bare_start} Macs")
        bare = bare_ramp(env, args, bare_start)
        report(steps, bare)
        for line in log_lines[:10]:
            say(f"  server logged: {line}")
        if len(log_lines) > 10:
            say(f"  ... and {len(log_lines) - 10} more problem lines")
        for problem in problems:
            say(f"  CHECK FAILED: {problem}")
        return not problems
    finally:
        queue.connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with ExitStack() as stack:
            redis_url = args.redis
            if not args.machine_redis:
                scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="atlas-bench-redis-")))
                redis_url = stack.enter_context(shipped_redis(scratch))
            env = stack.enter_context(isolated_env(args.postgres, redis_url))
            which = "the machine's" if args.machine_redis else "its own, with docker-compose.yml's arguments"
            say(f"capacity bench: Redis at {redis_url}, {which}")
            ok = run(env, args)
    except BenchError as exc:
        print(f"capacity bench FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("capacity bench interrupted; cleaned up", file=sys.stderr)
        return 130
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
