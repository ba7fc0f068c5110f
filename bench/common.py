"""What both benchmarks share: an isolated environment, its cleanup, and how results are printed.

Every run gets a random tag naming its own PostgreSQL database (``atlas_bench_<tag>``),
its own Redis key prefixes (``atlasbench_<tag>`` for Atlas, ``rqbench_<tag>`` for rq)
and an empty config file, so it never touches anyone else's data and never reads a
``config.yaml`` lying around. Everything is removed on exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import signal
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from redis import Redis

from atlas.contract import generate_encryption_key
from atlas.core.config import Settings, settings_from_mapping

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
"""Maintenance database the bench connects to in order to create and drop its own."""

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
"""Redis the bench uses, under its own key prefixes."""

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout, put on PYTHONPATH of server subprocesses so they can import ``bench``."""


class BenchError(RuntimeError):
    """The run cannot produce a valid figure: the message says why."""


@dataclass(frozen=True)
class BenchEnv:
    """One run's isolated names and secrets."""

    tag: str
    postgres_url: str
    redis_url: str
    workdir: Path
    api_key: str
    encryption_key: str

    @classmethod
    def create(cls, postgres_url: str, redis_url: str, workdir: Path) -> BenchEnv:
        return cls(
            tag=secrets.token_hex(4),
            postgres_url=postgres_url,
            redis_url=redis_url,
            workdir=workdir,
            api_key=secrets.token_urlsafe(24),
            encryption_key=generate_encryption_key(),
        )

    @property
    def database(self) -> str:
        return f"atlas_bench_{self.tag}"

    @property
    def database_url(self) -> str:
        return make_conninfo(self.postgres_url, dbname=self.database, application_name="atlas-bench")

    @property
    def redis_prefix(self) -> str:
        return f"atlasbench_{self.tag}"

    @property
    def rq_prefix(self) -> str:
        return f"rqbench_{self.tag}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "empty-config.yaml"

    def environ(self) -> dict[str, str]:
        """The variables that point Atlas (and rq) at this run's database, keys and prefixes."""
        return {
            "ATLAS_CONFIG": str(self.config_path),
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "ATLAS_REDIS_PREFIX": self.redis_prefix,
            "RQ_KEY_PREFIX": self.rq_prefix,
            "FLEET_API_KEY": self.api_key,
            "FLEET_ENCRYPTION_KEY": self.encryption_key,
        }

    def subprocess_environ(self) -> dict[str, str]:
        """This process's environment plus :meth:`environ`, with the checkout importable."""
        path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        return {**os.environ, **self.environ(), "PYTHONPATH": path}

    def settings(self) -> Settings:
        return settings_from_mapping({}, self.environ())


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help=f"maintenance DB URL (default {DEFAULT_POSTGRES})")
    parser.add_argument("--redis", default=DEFAULT_REDIS, help=f"Redis URL (default {DEFAULT_REDIS})")
    parser.add_argument(
        "--rounds", type=positive_int, default=2, help="baseline/real pairs to run, alternating (default 2)"
    )


@contextmanager
def isolated_env(postgres_url: str, redis_url: str) -> Iterator[BenchEnv]:
    """A fresh BenchEnv with its scratch directory, database and Redis keys, all removed on exit.

    Its variables are also set in ``os.environ`` (rq reads RQ_KEY_PREFIX when first
    imported, and the worker's job reads its settings from the environment) and
    restored on exit.
    """
    with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
        env = BenchEnv.create(postgres_url, redis_url, Path(tmp))
        env.config_path.write_text("{}\n", encoding="utf-8")
        with sigterm_as_interrupt(), patched_environ(env.environ()), redis_keys_removed(env), database(env):
            yield env


@contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt, so ``finally`` blocks clean up as they do on Ctrl-C."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def database(env: BenchEnv) -> Iterator[None]:
    """Create the run's database with the Atlas schema; drop it on exit, whatever still holds it open."""
    from atlas.core.db import connect, migrate

    admin = make_conninfo(env.postgres_url, application_name="atlas-bench")
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(env.database)))
    try:
        with connect(env.database_url) as conn:
            migrate(conn)
        yield
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(env.database)))


def delete_keys(client: Redis, prefix: str) -> int:
    """Delete every key under ``prefix:``, found with SCAN; return how many."""
    deleted, batch = 0, []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += client.delete(*batch)
            batch.clear()
    if batch:
        deleted += client.delete(*batch)
    return deleted


@contextmanager
def redis_keys_removed(env: BenchEnv) -> Iterator[None]:
    """On exit, delete every key under the run's Atlas and rq prefixes."""
    try:
        yield
    finally:
        client = Redis.from_url(env.redis_url, socket_timeout=10)
        try:
            for prefix in (env.redis_prefix, env.rq_prefix):
                delete_keys(client, prefix)
        finally:
            client.close()


def server_versions(env: BenchEnv) -> str:
    with psycopg.connect(env.database_url, connect_timeout=5) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    client = Redis.from_url(env.redis_url)
    try:
        redis_version = client.info("server")["redis_version"]
    finally:
        client.close()
    pg_version = row[0].split()[0] if row else "?"
    return f"PostgreSQL {pg_version}, Redis {redis_version}"


def machine_info(env: BenchEnv) -> str:
    """One line: date, cores, CPU, load, Python and server versions."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC | {os.cpu_count()} cores ({cpu_model()}) | load avg {load} | "
        f"Python {platform.python_version()} | {server_versions(env)}"
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def say(text: str = "") -> None:
    print(text, flush=True)


def require_rq_prefix(env: BenchEnv) -> None:
    """Import rq, and make sure it took this run's key prefix (rq reads RQ_KEY_PREFIX once, at import)."""
    from rq.defaults import RQ_KEY_PREFIX

    if env.rq_prefix != RQ_KEY_PREFIX:
        raise BenchError(f"rq was imported with key prefix {RQ_KEY_PREFIX!r} before this run set {env.rq_prefix!r}")


@contextmanager
def shipped_redis(workdir: Path) -> Iterator[str]:
    """A redis-server of this run's own, with the arguments docker-compose.yml ships
    (append-only file, fsync on every write), on a free loopback port; its URL.

    The machine's Redis may keep nothing on disk, which would flatter every
    figure that writes to Redis.
    """
    import shutil
    import socket
    import subprocess

    import yaml  # the server's dependency, so in the bench's virtualenv

    command = yaml.safe_load((Path(__file__).parent.parent / "docker-compose.yml").read_text())["services"]["redis"][
        "command"
    ]
    server = shutil.which("redis-server")
    if server is None:
        raise BenchError("redis-server is not on the PATH (needed to run Redis as shipped; or pass --machine-redis)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = workdir / "redis"
    data.mkdir()
    args = [server, *command[1:], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                Redis.from_url(url, socket_connect_timeout=1).ping()
                break
            except Exception as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"redis-server as shipped did not start: {exc}") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
