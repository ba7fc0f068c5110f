"""Worker benchmark: rows/s the real rq worker persists from a full queue, against a raw COPY.

Each round fills the queue with ``--batches`` batches of 15 logs through
``enqueue_batches``, ``--group`` per rq job as ingest groups them under load, then
times ``build_worker(settings).work(burst=True)`` in this process until the queue is
empty, and checks that ``widget_logs`` and ``batches`` hold exactly what was queued. The baseline is one psycopg
``COPY widget_logs (...) FROM STDIN`` of the same rows into the same table, same
indexes, in one transaction: the median of 3 COPYs just before and 3 just after the
worker run, so that baseline and worker alternate and drift on a noisy machine hits
both. For insight, the same batches also go through the worker's own
``store.persist_batch`` in a loop: its database work without rq. Tables are
truncated before every timed step.

    .venv/bin/python -m bench.worker [--batches 1000] [--rounds 2] [--timeout 120]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from atlas.contract import Key, decode_content
from atlas.core.config import Settings
from atlas.core.db import connect

from .batches import LOGS_PER_BATCH, plaintext
from .common import (
    BenchEnv,
    BenchError,
    add_common_arguments,
    isolated_env,
    machine_info,
    positive_float,
    positive_int,
    require_rq_prefix,
    say,
)

if TYPE_CHECKING:  # these import rq, which must only happen once RQ_KEY_PREFIX is set
    from atlas.core.queue import QueuedBatch

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The format ``atlas-server worker`` logs with."""

BASELINE_REPEATS = 3
"""COPYs before, and again after, each worker run; the round's baseline is the median of all."""

Row = tuple[str, str, str, str, str, str, str, str, str]


@dataclass(frozen=True)
class WorkerRun:
    """One burst of the real worker over a full queue."""

    seconds: float
    cpu: float
    enqueue_seconds: float
    batches: int
    rows: int

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds

    @property
    def batches_per_second(self) -> float:
        return self.batches / self.seconds


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=positive_int, default=1000, help="batches queued per round (default 1000)")
    parser.add_argument(
        "--group",
        type=positive_int,
        default=20,
        help="batches per rq job, as ingest groups them under load (default 20; 1 = one job per batch)",
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=120, help="seconds a worker run may take (default 120)"
    )
    add_common_arguments(parser)
    return parser.parse_args(argv)


def make_batches(count: int, kid: str) -> list[QueuedBatch]:
    """``count`` validated batches with fresh batch_ids, flattened into job payloads as ingest does."""
    from atlas.core.queue import queued_batch

    rng, now = random.Random(), datetime.now(UTC)
    return [
        queued_batch(
            decode_content(plaintext(rng, now)), batch_id=str(uuid.uuid4()), created_at=now, received_at=now, kid=kid
        )
        for _ in range(count)
    ]


def copy_rows(batches: Sequence[QueuedBatch]) -> list[Row]:
    """The widget_logs rows the worker writes for ``batches``, in COPY column order."""
    rows = []
    for batch in batches:
        machine = batch["machine"]
        for timestamp, level, widget_type, message, data_json in batch["logs"]:
            row = (machine["machine_id"], machine["serial_number"], timestamp, level, widget_type, message, data_json)
            rows.append((*row, batch["batch_id"], batch["received_at"]))
    return rows


def reset_tables(conn: psycopg.Connection) -> None:
    with conn.transaction():
        conn.execute("TRUNCATE widget_logs, batches, machines RESTART IDENTITY")


def table_counts(conn: psycopg.Connection) -> tuple[int, int]:
    """Rows in (batches, widget_logs)."""
    row = conn.execute("SELECT (SELECT count(*) FROM batches), (SELECT count(*) FROM widget_logs)").fetchone()
    assert row is not None
    return row[0], row[1]


def time_copy(conn: psycopg.Connection, rows: Sequence[Row]) -> float:
    """Seconds to COPY ``rows`` into widget_logs in one transaction, commit included."""
    from atlas.worker.store import COPY_LOGS

    started = time.perf_counter()
    with conn.transaction(), conn.cursor() as cur, cur.copy(COPY_LOGS) as copy:
        for row in rows:
            copy.write_row(row)
    return time.perf_counter() - started


def fill_queue(settings: Settings, batches: Sequence[QueuedBatch], group: int) -> float:
    """Enqueue ``batches`` as ingest does, ``group`` per rq job; return the seconds it took."""
    from atlas.core.queue import batch_queue, enqueue_batches, redis_client

    queue = batch_queue(redis_client(settings.redis_url), settings)
    started = time.perf_counter()
    for start in range(0, len(batches), group):
        chunk = list(batches[start : start + group])
        if not all(enqueue_batches(queue, chunk, settings)):
            raise BenchError(f"a batch of the group at {start} was refused as a duplicate")
    elapsed = time.perf_counter() - started
    queue.connection.close()
    return elapsed


@contextmanager
def worker_logging(path: Path) -> Iterator[None]:
    """Send log records to ``path`` at INFO, as ``atlas-server worker`` does to stderr."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()


@contextmanager
def signal_handlers_restored() -> Iterator[None]:
    """rq installs its own SIGINT/SIGTERM handlers for a warm shutdown; put ours back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def time_worker(settings: Settings, timeout: float) -> tuple[float, float]:
    """Run the real worker in burst mode until the queue is empty; return wall and CPU seconds.

    A watchdog sends this process SIGINT after ``timeout`` seconds, which rq turns into
    a warm shutdown; a Ctrl-C does the same. Either way the queue is left non-empty,
    which is reported rather than timed.
    """
    from atlas.worker.runner import build_worker

    worker = build_worker(settings, name=f"bench-{os.getpid()}")
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        os.kill(os.getpid(), signal.SIGINT)

    watchdog = threading.Timer(timeout, stop)
    with signal_handlers_restored():
        started, cpu = time.perf_counter(), time.process_time()
        watchdog.start()
        try:
            worker.work(burst=True, with_scheduler=True, logging_level="INFO")  # what run_worker does
        finally:
            watchdog.cancel()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    remaining = worker.queues[0].count
    if timed_out.is_set() and remaining:
        raise BenchError(f"worker still had {remaining} jobs queued after the {timeout:.0f} s timeout")
    if remaining:
        raise KeyboardInterrupt
    return elapsed, cpu


def failed_jobs(settings: Settings) -> int:
    from atlas.core.queue import batch_queue, redis_client

    queue = batch_queue(redis_client(settings.redis_url), settings)
    try:
        return queue.failed_job_registry.count + queue.scheduled_job_registry.count
    finally:
        queue.connection.close()


def verify(conn: psycopg.Connection, settings: Settings, batches: int, rows: int) -> None:
    """Fail unless exactly what was queued is stored, and no job failed or waits for a retry."""
    stored_batches, stored_rows = table_counts(conn)
    failed = failed_jobs(settings)
    if (stored_batches, stored_rows, failed) != (batches, rows, 0):
        raise BenchError(
            f"queued {batches} batches / {rows} rows but stored {stored_batches} batches / {stored_rows} rows, "
            f"{failed} job(s) failed or awaiting retry"
        )


def copy_rates(conn: psycopg.Connection, rows: Sequence[Row]) -> list[float]:
    """Rows/s of a few raw COPYs into the empty table (one takes well under a second, so one is too noisy)."""
    rates = []
    for _ in range(BASELINE_REPEATS):
        reset_tables(conn)
        seconds = time_copy(conn, rows)
        stored = table_counts(conn)[1]
        if stored != len(rows):
            raise BenchError(f"COPY of {len(rows)} rows left {stored} rows")
        rates.append(len(rows) / seconds)
    return rates


def worker_round(
    conn: psycopg.Connection, env: BenchEnv, batches: Sequence[QueuedBatch], timeout: float, group: int
) -> WorkerRun:
    settings = env.settings()
    count = len(batches)
    reset_tables(conn)
    enqueue_seconds = fill_queue(settings, batches, group)
    with worker_logging(env.workdir / "worker.log"):
        seconds, cpu = time_worker(settings, timeout)
    rows = count * LOGS_PER_BATCH
    verify(conn, settings, count, rows)
    return WorkerRun(seconds, cpu, enqueue_seconds, count, rows)


def store_round(conn: psycopg.Connection, batches: Sequence[QueuedBatch]) -> float:
    """Rows/s of the worker's own ``store.persist_batch`` called in a loop: its database work without rq."""
    from atlas.worker.store import persist_batch

    reset_tables(conn)
    started = time.perf_counter()
    for batch in batches:
        persist_batch(conn, batch)
    seconds = time.perf_counter() - started
    rows = len(batches) * LOGS_PER_BATCH
    if table_counts(conn) != (len(batches), rows):
        raise BenchError(f"store.persist_batch of {len(batches)} batches left {table_counts(conn)} rows")
    return rows / seconds


def log_problems(path: Path) -> list[str]:
    """WARNING and worse lines the worker logged."""
    if not path.exists():
        return []
    return [line for line in path.read_text(encoding="utf-8").splitlines() if " WARNING " in line or " ERROR " in line]


@dataclass(frozen=True)
class Round:
    """One round's figures: the COPY baseline, store.persist_batch alone, and the real worker."""

    copy_rate: float
    store_rate: float
    worker: WorkerRun

    @property
    def ratio(self) -> float:
        return self.worker.rows_per_second / self.copy_rate


def one_round(conn: psycopg.Connection, env: BenchEnv, args: argparse.Namespace, number: int) -> Round:
    """COPYs, store.persist_batch, the worker, COPYs again: the baseline brackets the worker run in time."""
    batches = make_batches(args.batches, Key.from_base64(env.encryption_key).kid)
    rows = copy_rows(batches)
    before = copy_rates(conn, rows)
    store_rate = store_round(conn, batches)
    w = worker_round(conn, env, batches, args.timeout, args.group)
    copy_rate = statistics.median(before + copy_rates(conn, rows))
    say(
        f"  round {number} baseline COPY        : {copy_rate:8.0f} rows/s "
        f"(median of {2 * BASELINE_REPEATS} COPYs, half before and half after the worker)"
    )
    say(f"  round {number} store.persist_batch  : {store_rate:8.0f} rows/s (same batches, one transaction each, no rq)")
    say(
        f"  round {number} worker (rq, burst)   : {w.rows_per_second:8.0f} rows/s = {w.batches_per_second:.0f} "
        f"batches/s ({w.batches} batches in {w.seconds:.1f} s, worker CPU {w.cpu / w.seconds:.0%}; "
        f"enqueueing them took {w.enqueue_seconds:.1f} s)"
    )
    return Round(copy_rate, store_rate, w)


def run(env: BenchEnv, args: argparse.Namespace) -> None:
    require_rq_prefix(env)
    say(f"worker bench | {machine_info(env)}")
    rows = args.batches * LOGS_PER_BATCH
    say(f"  {args.rounds} round(s) of {args.batches} batches x {LOGS_PER_BATCH} logs = {rows} rows")
    with connect(env.database_url, autocommit=True) as conn:
        rounds = [one_round(conn, env, args, i) for i in range(1, args.rounds + 1)]
        reset_tables(conn)
    report(rounds, log_problems(env.workdir / "worker.log"))


def report(rounds: Sequence[Round], problems: Sequence[str]) -> None:
    seconds = sum(r.worker.seconds for r in rounds)
    rows_per_s = sum(r.worker.rows for r in rounds) / seconds
    batches_per_s = sum(r.worker.batches for r in rounds) / seconds
    copy_rate = statistics.fmean(r.copy_rate for r in rounds)
    store_rate = statistics.fmean(r.store_rate for r in rounds)
    per_round = ", ".join(f"{r.ratio:.3f}" for r in rounds)
    say(
        f"worker: {batches_per_s:.0f} batches/s = {rows_per_s:.0f} rows/s persisted vs COPY {copy_rate:.0f} rows/s "
        f"-> ratio {rows_per_s / copy_rate:.3f} (per round {per_round}); every row verified"
    )
    say(f"  store.persist_batch alone: {store_rate:.0f} rows/s (ratio {store_rate / copy_rate:.3f} to COPY)")
    for line in problems[:10]:
        say(f"  worker logged: {line}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with isolated_env(args.postgres, args.redis) as env:
            run(env, args)
    except BenchError as exc:
        print(f"worker bench FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("worker bench interrupted; cleaned up", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
