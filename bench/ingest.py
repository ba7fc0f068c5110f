"""Ingest benchmark: batches/s the real ingest endpoint accepts, against a bare FastAPI endpoint.

Two servers run side by side, each one uvicorn process with the same settings:
``atlas-server ingest`` (auth, decrypt, validate, enqueue into Redis) and
``uvicorn bench.bare_app:app`` (reads the body, answers 202). This process is the
load generator: N keep-alive connections post pre-sealed batches of 15 logs, each
with a unique batch_id, for a fixed time, alternating bare and real runs. Only 202
answers count as accepted. No worker runs: the queue just grows, and at the end its
length is checked against the number of 202s.

    .venv/bin/python -m bench.ingest [--seconds 20] [--concurrency 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from atlas.contract import Key

from .batches import LOGS_PER_BATCH, sealed_bodies
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
from .loadgen import LoadResult, build_request, run_load

PATH = "/api/fleet/widget-logs"
HOST = "127.0.0.1"
READY_TIMEOUT = 30.0
"""Seconds a server gets to start answering its health check."""

MIN_BODIES_PER_RUN = 500


@dataclass(frozen=True)
class Server:
    """A uvicorn process under test."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def cpu_seconds(self) -> float:
        """User + system CPU the process (all its threads) has used so far."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_problems(self) -> list[str]:
        lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return [line for line in lines if "ERROR" in line or "Traceback" in line or "WARNING" in line]


@dataclass(frozen=True)
class Run:
    """One timed run, and the CPU each side used during it, as a fraction of one core."""

    server: str
    load: LoadResult
    server_cpu: float
    client_cpu: float

    def describe(self) -> str:
        r = self.load
        unit = "batches/s" if self.server == "real" else "req/s    "
        text = (
            f"{r.rate:7.0f} {unit} ({r.accepted} x 202 in {r.seconds:.1f} s)  p50 {r.percentile_ms(50):5.1f} ms  "
            f"p99 {r.percentile_ms(99):5.1f} ms  server CPU {self.server_cpu:4.0%}  client CPU {self.client_cpu:4.0%}"
        )
        if r.others():
            text += f"  OTHER: {r.others()}"
        if r.exhausted:
            text += "  (ran out of pre-sealed bodies: run cut short)"
        return text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=positive_float, default=20, help="timed seconds, all runs (default 20)")
    parser.add_argument("--concurrency", type=positive_int, default=32, help="client connections (default 32)")
    parser.add_argument(
        "--warmup", type=positive_float, default=2.0, help="untimed seconds of load on each server first (default 2)"
    )
    add_common_arguments(parser)
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def server_command(name: str, port: int) -> list[str]:
    if name == "real":
        atlas_server = Path(sys.executable).with_name("atlas-server")
        if not atlas_server.exists():
            raise BenchError(f"{atlas_server} not found: install the services into this virtualenv")
        return [str(atlas_server), "ingest", "--host", HOST, "--port", str(port)]
    # the flags `atlas-server ingest` gives uvicorn.run (one process, access log at info, proxy headers)
    uvicorn = [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--host", HOST, "--port", str(port)]
    return [*uvicorn, "--workers", "1", "--log-level", "info", "--proxy-headers"]


def wait_ready(server: Server, path: str) -> None:
    """Poll ``path`` until it answers 200; fail with the server's log if it dies or takes too long."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(f"{server.name} server exited with {server.process.returncode}:\n{tail(server.log)}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{server.port}{path}", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise BenchError(f"{server.name} server not ready after {READY_TIMEOUT:.0f} s:\n{tail(server.log)}")


def tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


@contextmanager
def served(name: str, env: BenchEnv, ready_path: str) -> Iterator[Server]:
    """Start one uvicorn server, wait until it is ready, and stop it on exit."""
    port, log = free_port(), env.workdir / f"{name}-server.log"
    with open(log, "wb") as out:
        # a session of its own: Ctrl-C reaches only the bench, which then stops the server in order
        process = subprocess.Popen(
            server_command(name, port),
            env=env.subprocess_environ(),
            cwd=env.workdir,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    server = Server(name, process, port, log)
    try:
        wait_ready(server, ready_path)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def requests_for(bodies: Sequence[bytes], api_key: str) -> list[bytes]:
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    return [build_request(HOST, PATH, body, headers) for body in bodies]


def timed_run(server: Server, requests: Iterator[bytes], concurrency: int, seconds: float) -> Run:
    server_cpu, client_cpu, started = server.cpu_seconds(), time.process_time(), time.perf_counter()
    load = run_load(HOST, server.port, requests, concurrency, seconds)
    wall = time.perf_counter() - started
    return Run(server.name, load, (server.cpu_seconds() - server_cpu) / wall, (time.process_time() - client_cpu) / wall)


def queued_batches(env: BenchEnv) -> tuple[int, int]:
    """Jobs waiting in the run's rq queue, and the batches they carry (rq is imported here, after RQ_KEY_PREFIX)."""
    require_rq_prefix(env)
    from atlas.core.queue import batch_queue, payload_batch_ids, redis_client

    queue = batch_queue(redis_client(env.redis_url), env.settings())
    try:
        jobs = queue.jobs
        return len(jobs), sum(len(payload_batch_ids(job.args[0])) for job in jobs)
    finally:
        queue.connection.close()


def run(env: BenchEnv, args: argparse.Namespace) -> bool:
    """Run the benchmark; return False if a check failed (figures are printed regardless)."""
    run_seconds = args.seconds / (2 * args.rounds)
    say(f"ingest bench | {machine_info(env)}")
    say(f"  {args.rounds} x (bare, real) runs of {run_seconds:.1f} s, {args.concurrency} connections")
    say(f"  bodies: sealed batches of {LOGS_PER_BATCH} logs, a unique batch_id each, sealed before timing")
    key = Key.from_base64(env.encryption_key)
    with served("bare", env, "/healthz") as bare, served("real", env, "/readyz") as real:
        warm = requests_for(sealed_bodies(MIN_BODIES_PER_RUN, key), env.api_key)
        warm_bare = run_load(HOST, bare.port, itertools.cycle(warm), args.concurrency, args.warmup)
        warm_real = run_load(HOST, real.port, iter(warm), args.concurrency, args.warmup)
        per_run = max(MIN_BODIES_PER_RUN, math.ceil(2 * max(warm_real.rate, 1) * run_seconds))
        say(f"  warm-up: bare {warm_bare.rate:.0f} req/s, real {warm_real.rate:.0f} batches/s")
        say(f"  sealing {per_run} bodies for each real run")
        pools = [requests_for(sealed_bodies(per_run, key), env.api_key) for _ in range(args.rounds)]
        runs: list[Run] = []
        for i, pool in enumerate(pools, start=1):
            runs.append(timed_run(bare, itertools.cycle(warm), args.concurrency, run_seconds))
            say(f"  round {i} bare: {runs[-1].describe()}")
            runs.append(timed_run(real, iter(pool), args.concurrency, run_seconds))
            say(f"  round {i} real: {runs[-1].describe()}")
        accepted = warm_real.all_accepted + sum(r.load.all_accepted for r in runs if r.server == "real")
        problems = real.log_problems() + bare.log_problems()
    return report(runs, accepted, *queued_batches(env), problems)


def combined(runs: Sequence[Run], server: str) -> LoadResult:
    total = LoadResult()
    for r in (r for r in runs if r.server == server):
        total.seconds += r.load.seconds
        total.statuses.update(r.load.statuses)
        total.late.update(r.load.late)
        total.errors.update(r.load.errors)
        total.latencies.extend(r.load.latencies)
    return total


def ratio_of(real: LoadResult, bare: LoadResult) -> float:
    return real.rate / bare.rate if bare.rate else float("nan")


def report(runs: Sequence[Run], accepted: int, jobs: int, queued: int, problems: Sequence[str]) -> bool:
    real, bare = combined(runs, "real"), combined(runs, "bare")
    say(
        f"ingest: {real.rate:.0f} batches/s accepted vs bare {bare.rate:.0f} req/s -> ratio {ratio_of(real, bare):.3f} "
        f"(p50 {real.percentile_ms(50):.0f} ms, p99 {real.percentile_ms(99):.0f} ms; "
        f"bare p50 {bare.percentile_ms(50):.0f} ms, p99 {bare.percentile_ms(99):.0f} ms)"
    )
    per_round = ", ".join(f"{ratio_of(r.load, b.load):.3f}" for b, r in zip(runs[::2], runs[1::2], strict=True))
    say(f"  ratio per round: {per_round}")
    say(f"  non-202 answers: real {real.others() or 'none'}; bare {bare.others() or 'none'}")
    ok = queued == accepted
    verdict = "OK" if ok else "MISMATCH"
    say(
        f"  queue check: {queued} batches in {jobs} jobs queued for {accepted} batches accepted "
        f"(warm-up included; {accepted / max(jobs, 1):.1f} batches per job): {verdict}"
    )
    for line in problems[:10]:
        say(f"  server logged: {line}")
    if len(problems) > 10:
        say(f"  ... and {len(problems) - 10} more problem lines")
    return ok and not real.others() and not bare.others()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with isolated_env(args.postgres, args.redis) as env:
            ok = run(env, args)
    except BenchError as exc:
        print(f"ingest bench FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ingest bench interrupted; cleaned up", file=sys.stderr)
        return 130
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
