"""Export benchmark: rows/s and peak memory of the exporter, against PostgreSQL's own COPY of the same rows.

Loads ``--rows`` realistic widget logs (200 machines, the five widget types, data
shaped like the agent's) into the run's database, starts ``atlas-server exporter``
on a free loopback port, then runs, for each format, rounds of:

1. **baseline**: ``psql`` running ``COPY (SELECT id, serial_number, "timestamp", level,
   widget_type, message, data FROM widget_logs ORDER BY id) TO STDOUT WITH CSV HEADER``;
2. **for insight**: ``psql`` running the exporter's own COPY statement for the format
   (``query.copy_statement``), which shows what its SQL costs (timestamp formatting,
   formula neutralising, JSON building) apart from Python and HTTP;
3. **real**: ``curl`` fetching ``GET /api/exports/logs?format=...`` with an API token,
   uncompressed (and, with ``--gzip``, once more with ``Accept-Encoding: gzip``).

Both clients are C programs run as subprocesses, and this process counts their output
from a pipe with the same reader, so the client's cost is the same on both sides and
stays out of Python. During each real export the exporter's RSS is sampled every 20 ms,
and its VmHWM is reset before and read after. Every export is checked: HTTP 200, its
audit row complete with the right row count, the right number of lines.

    .venv/bin/python -m bench.export [--rows 1000000] [--formats csv,ndjson] [--rounds 2] [--gzip]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

from atlas.contract import ProcessesData, ProcessRow, SpeedtestData, WifiData
from atlas.core.accounts import create_token, create_user, generate_password
from atlas.core.db import connect
from atlas.exporter.app import EXPORT_PATH
from atlas.exporter.query import FORMATS, ExportFilters, copy_statement

from .common import BenchEnv, BenchError, add_common_arguments, isolated_env, machine_info, positive_int, say
from .ingest import HOST, Server, free_port, stop, wait_ready

MACHINES = 200
"""Distinct machines the rows come from."""

POOL_ROWS = 20_000
"""Distinct (widget type, level, message, data) rows generated in Python; the table cycles through them."""

LOAD_CHUNK = 100_000
"""Rows per INSERT ... SELECT while loading (one progress mark each)."""

SPAN = timedelta(days=7)
"""The rows' timestamps are spread evenly over this much time, ending now."""

LOGS_PER_BATCH = 15
"""Consecutive rows that share a machine and a batch_id, as an agent's batch does."""

SAMPLE_SECONDS = 0.02
"""How often the exporter's RSS is sampled during an export."""

READ_BYTES = 1 << 20
"""Bytes asked for per read from a client's stdout (the pipe is enlarged to this size too)."""

AUDIT_TIMEOUT = 10.0
"""Seconds an export's audit row gets to leave 'running' once the response has ended."""

TARGET_CSV_RATIO = 0.75
TARGET_RSS_MIB = 150.0
MIB = 1 << 20

BASELINE_COPY = (
    'COPY (SELECT id, serial_number, "timestamp", level, widget_type, message, data FROM widget_logs ORDER BY id)'
    " TO STDOUT WITH CSV HEADER"
)
"""PostgreSQL writing the same rows as plain CSV: the least possible version of an export."""

INSERT_CHUNK = """
INSERT INTO widget_logs
    (machine_id, serial_number, "timestamp", level, widget_type, message, data, batch_id, received_at)
SELECT m.machine_id, m.serial_number, t.ts, p.level, p.widget_type, p.message, p.data,
       md5(%(tag)s || (g / %(per_batch)s)::text)::uuid, t.ts + interval '150 seconds'
FROM generate_series(%(start)s::bigint, %(stop)s::bigint) AS g
CROSS JOIN LATERAL (
    SELECT date_trunc('second', %(first)s::timestamptz + g::float8 * %(step)s::interval)
           + CASE WHEN g %% 4 = 0 THEN (g %% 999983) * interval '1 microsecond' ELSE interval '0' END AS ts
) AS t
JOIN bench_pool AS p ON p.n = g %% %(pool)s
JOIN bench_machines AS m ON m.n = (g / %(per_batch)s) %% %(machines)s
ORDER BY g
"""
"""One chunk of rows, in id order: timestamps rise with id, a quarter of them with a sub-second fraction."""

# --- realistic rows ----------------------------------------------------------------------

SSIDS = ("Office-5G", "CorpNet", "CorpNet-Guest", "Home-WiFi", "Cafe Free WiFi", "SomeSSID-5")
PING_TARGETS = ("1.1.1.1", "192.168.1.1", "fleet.corp.example", "8.8.8.8")
PROCESSES = (
    ("Google Chrome Helper (Renderer)", "/Applications/Google Chrome.app/Contents/Frameworks/Helpers/Renderer"),
    ("WindowServer", "/System/Library/PrivateFrameworks/SkyLight.framework/Resources/WindowServer -daemon"),
    ("Slack Helper", "/Applications/Slack.app/Contents/Frameworks/Slack Helper.app/Contents/MacOS/Slack Helper"),
    ("zoom.us", "/Applications/zoom.us.app/Contents/MacOS/zoom.us"),
    ("mds_stores", "/System/Library/Frameworks/CoreServices.framework/Support/mds_stores"),
    ("kernel_task", None),
    ("Code Helper (Plugin)", "/Applications/Visual Studio Code.app/Contents/Frameworks/Code Helper (Plugin).app"),
    ("python3.11", "/usr/local/bin/python3.11 -m atlas.agent run --api-key [redacted]"),
)
PROCESS_TOP_N = 3
"""Processes listed by CPU and by memory (the agent's default is 10; 3 keeps the table, and the run, smaller)."""

WIDGET_WEIGHTS = {"wifi": 60, "speedtest": 1, "ping": 180, "health": 60, "processes": 60}
"""Per hour of one agent: each of wifi, health and processes every minute, ping for 3 targets, a speed test."""


def _stamp(rng: random.Random) -> str:
    moment = datetime(2026, 11, 28, tzinfo=UTC) - timedelta(seconds=rng.randrange(7 * 86_400))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _wifi(rng: random.Random) -> tuple[str, str, Mapping[str, Any]]:
    if rng.random() < 0.02:
        return "INFO", "WiFi disconnected", {"state": "disconnected", "interface": "en0", "ssid": None}
    rssi, noise, channel = rng.randint(-82, -40), rng.randint(-98, -88), rng.choice((1, 6, 11, 36, 44, 144, 149))
    band = "5GHz" if channel > 14 else "2.4GHz"
    data: WifiData = {
        "ssid": rng.choice(SSIDS),
        "ssid_redacted": False,
        "bssid": ":".join(f"{rng.randrange(256):02x}" for _ in range(6)),
        "rssi_dbm": rssi,
        "noise_dbm": noise,
        "snr_db": rssi - noise,
        "channel": channel,
        "band": band,
        "channel_width_mhz": rng.choice((20, 40, 80)) if band == "5GHz" else 20,
        "security": rng.choice(("WPA2 Personal", "WPA2 Enterprise", "WPA3 Personal")),
    }
    return "INFO", f"WiFi connected to {data['ssid']}: RSSI {rssi} dBm, channel {channel}, {band}", data


def _speedtest(rng: random.Random) -> tuple[str, str, Mapping[str, Any]]:
    if rng.random() < 0.05:
        reason = "ConfigRetrievalError: HTTP Error 403: Forbidden"
        data: SpeedtestData = {
            "status": "error",
            "timestamp": _stamp(rng),
            "source": "library",
            "phase": "config",
            "reason": reason,
        }
        return "ERROR", f"Speed test failed: {reason}", data
    down, up, latency = round(rng.uniform(20, 900), 3), round(rng.uniform(5, 300), 3), round(rng.uniform(3, 60), 3)
    data = {
        "status": "ok",
        "timestamp": _stamp(rng),
        "source": "library",
        "download_mbps": down,
        "upload_mbps": up,
        "latency_ms": latency,
        "jitter_ms": round(latency * rng.uniform(0.05, 0.3), 3),
        "latency_samples": 10,
        "packet_loss_pct": None,
        "isp": rng.choice(("Comcast Cable", "Deutsche Telekom AG", "Orange", "Verizon Fios")),
        "server_id": rng.randint(1000, 60_000),
        "server_name": rng.choice(("Frankfurt", "Paris", "Chicago, IL", "London")),
        "server_sponsor": rng.choice(("Telekom", "Orange", "Fastly", "Vodafone UK")),
        "server_country": rng.choice(("Germany", "France", "United States", "United Kingdom")),
        "server_cc": rng.choice(("DE", "FR", "US", "GB")),
        "server_distance_km": round(rng.uniform(2, 400), 3),
        "bytes_sent": rng.randint(10_000_000, 60_000_000),
        "bytes_received": rng.randint(50_000_000, 400_000_000),
        "duration_s": round(rng.uniform(15, 40), 3),
        "phase": None,
        "reason": None,
    }
    return "INFO", f"Speed test completed: {down:.1f} Mbps down, {up:.1f} Mbps up, {latency:.0f} ms", data


def _ping(rng: random.Random) -> tuple[str, str, Mapping[str, Any]]:
    target = rng.choice(PING_TARGETS)
    if rng.random() < 0.01:
        data = {"target": target, "sent": 3, "received": 0, "loss_pct": 100.0, "rtt_ms": None, "status": "unreachable"}
        return "ERROR", f"Ping {target}: 100% loss", data
    received = 3 if rng.random() < 0.95 else 2
    loss = round(100 * (3 - received) / 3, 1)
    low = round(rng.uniform(0.4, 40), 3)
    avg = round(low * rng.uniform(1, 1.4), 3)
    rtt = {"min": low, "avg": avg, "max": round(avg * rng.uniform(1, 1.8), 3), "stddev": round(avg * 0.1, 3)}
    data = {"target": target, "sent": 3, "received": received, "loss_pct": loss, "rtt_ms": rtt}
    level = "INFO" if received == 3 else "WARNING"
    return level, f"Ping {target}: {loss:g}% loss, avg {avg:g} ms", data


def _health(rng: random.Random) -> tuple[str, str, Mapping[str, Any]]:
    cpu, memory = round(rng.uniform(1, 99), 1), round(rng.uniform(20, 95), 1)
    data = {
        "cpu_percent": cpu,
        "memory_percent": memory,
        "disk": [{"mount": "/", "percent": round(rng.uniform(10, 97), 1)}],
        "load_avg": [round(rng.uniform(0.2, 8), 2) for _ in range(3)],
        "battery_percent": rng.randint(3, 100),
        "uptime_s": rng.randint(600, 3_000_000),
    }
    return "INFO", f"Health: CPU {cpu:g}%, memory {memory:g}%", data


def _process(rng: random.Random) -> ProcessRow:
    name, command = rng.choice(PROCESSES)
    rss = rng.randint(20, 2_000) * MIB
    return {
        "pid": rng.randint(90, 99_999),
        "name": name,
        "ppid": 1,
        "user": "root" if name in ("WindowServer", "kernel_task") else "alice",
        "uid": 0 if name in ("WindowServer", "kernel_task") else 501,
        "cpu_percent": round(rng.uniform(0, 180), 1),
        "memory_percent": round(rss / (16 * 1024 * MIB) * 100, 1),
        "rss_bytes": rss,
        "vms_bytes": rss * 8,
        "status": rng.choice(("running", "sleeping")),
        "start_time": _stamp(rng),
        "command": command,
    }


def _processes(rng: random.Random) -> tuple[str, str, Mapping[str, Any]]:
    top_cpu = sorted((_process(rng) for _ in range(PROCESS_TOP_N)), key=lambda p: -(p.get("cpu_percent") or 0))
    top_memory = sorted((_process(rng) for _ in range(PROCESS_TOP_N)), key=lambda p: -(p.get("rss_bytes") or 0))
    count = rng.randint(350, 700)
    sleeping = count - rng.randint(2, 9)
    data: ProcessesData = {
        "status": "ok",
        "source": "psutil",
        "sampled_at": _stamp(rng),
        "process_count": count,
        "status_counts": {"running": count - sleeping, "sleeping": sleeping},
        "top_cpu": top_cpu,
        "top_memory": top_memory,
        "cpu_interval_s": 60.0,
        "cpu_unmeasured": rng.randint(0, 4),
        "vanished": rng.randint(0, 2),
        "access_limited": rng.randint(0, 40),
        "unparsed_lines": 0,
        "reason": None,
    }
    lead = f"; top CPU {top_cpu[0]['name']} ({top_cpu[0]['cpu_percent']}%)"
    return "INFO", f"Processes: {count} running{lead}", data


WIDGETS: dict[str, Callable[[random.Random], tuple[str, str, Mapping[str, Any]]]] = {
    "wifi": _wifi,
    "speedtest": _speedtest,
    "ping": _ping,
    "health": _health,
    "processes": _processes,
}


def pool_rows(count: int, rng: random.Random) -> Iterator[tuple[int, str, str, str, str]]:
    """``count`` distinct rows (n, widget_type, level, message, data as JSON text), widget types mixed."""
    kinds = rng.choices(list(WIDGET_WEIGHTS), weights=list(WIDGET_WEIGHTS.values()), k=count)
    for n, widget_type in enumerate(kinds):
        level, message, data = WIDGETS[widget_type](rng)
        yield n, widget_type, level, message, json.dumps(data)


def machine_rows(count: int, rng: random.Random) -> list[tuple[int, str, str, str, str, str, str]]:
    """(n, machine_id, serial_number, hostname, model, os_version, agent_version) of ``count`` machines."""
    models = ("MacBookPro18,3", "MacBookAir10,1", "Mac14,2", "Mac15,6", "iMac21,1")
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
    rows = []
    for n in range(count):
        serial = "C02" + "".join(rng.choice(alphabet) for _ in range(8))
        hostname = f"{rng.choice(('alice', 'bob', 'carol', 'dave', 'erin', 'frank'))}-{n:03d}-mbp.local"
        os_version = rng.choice(("macOS 15.5 (24F74)", "macOS 14.7.1 (23H222)", "macOS 15.1 (24B83)"))
        machine_id = f"mac-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}"
        rows.append((n, machine_id, serial, hostname, rng.choice(models), os_version, "0.1.0"))
    return rows


# --- loading -----------------------------------------------------------------------------


def drop_secondary_indexes(conn: psycopg.Connection) -> list[str]:
    """Drop widget_logs' non-unique indexes; return their definitions, to build them again after the load."""
    rows = conn.execute(
        "SELECT c.relname, pg_get_indexdef(c.oid) FROM pg_index AS x JOIN pg_class AS c ON c.oid = x.indexrelid"
        " WHERE x.indrelid = 'widget_logs'::regclass AND NOT x.indisunique ORDER BY c.relname"
    ).fetchall()
    for name, _ in rows:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    return [definition for _, definition in rows]


def load(conn: psycopg.Connection, rows: int, tag: str) -> None:
    """Fill machines and widget_logs, build the indexes, then VACUUM, ANALYZE and CHECKPOINT."""
    rng = random.Random(2026)  # the same data set every run
    started = time.perf_counter()
    conn.execute("SET maintenance_work_mem = '256MB'")
    conn.execute(
        "CREATE TEMP TABLE bench_pool (n int PRIMARY KEY, widget_type text, level text, message text, data jsonb)"
    )
    conn.execute("CREATE TEMP TABLE bench_machines (n int PRIMARY KEY, machine_id text, serial_number text)")
    pool = min(POOL_ROWS, rows)
    with conn.cursor() as cur:
        with cur.copy("COPY bench_pool (n, widget_type, level, message, data) FROM STDIN") as copy:
            for row in pool_rows(pool, rng):
                copy.write_row(row)
        machines = machine_rows(MACHINES, rng)
        with cur.copy("COPY bench_machines (n, machine_id, serial_number) FROM STDIN") as copy:
            for row in machines:
                copy.write_row(row[:3])
        now = datetime.now(UTC)
        columns = "machine_id, serial_number, hostname, model, os_version, agent_version, first_seen, last_seen"
        with cur.copy(f"COPY machines ({columns}, identity_at) FROM STDIN") as copy:
            for row in machines:
                copy.write_row((*row[1:], now - SPAN, now, now))
    say(
        f"  loading {rows} rows into widget_logs: {MACHINES} machines, {pool} distinct widget rows "
        f"(generated in {time.perf_counter() - started:.1f} s), INSERT ... SELECT from generate_series"
    )
    indexes = drop_secondary_indexes(conn)
    print("  rows loaded:", end="", flush=True)
    step, first = SPAN / rows, now - SPAN
    for start in range(0, rows, LOAD_CHUNK):
        end = min(start + LOAD_CHUNK, rows) - 1
        params = {"tag": tag, "per_batch": LOGS_PER_BATCH, "start": start, "stop": end, "first": first}
        conn.execute(INSERT_CHUNK, {**params, "step": step, "pool": pool, "machines": MACHINES})
        print(f" {end + 1}", end="", flush=True)
    say(f" ({time.perf_counter() - started:.0f} s)")
    print(f"  building {len(indexes)} indexes again, VACUUM (ANALYZE), CHECKPOINT ...", end="", flush=True)
    for definition in indexes:
        conn.execute(definition)
    conn.execute("VACUUM (ANALYZE) widget_logs")
    conn.execute("VACUUM (ANALYZE) machines")
    conn.execute("CHECKPOINT")
    stored = conn.execute("SELECT count(*), pg_total_relation_size('widget_logs') FROM widget_logs").fetchone()
    assert stored is not None
    say(f" done; {stored[0]} rows, table and indexes {stored[1] / MIB:.0f} MiB, {time.perf_counter() - started:.0f} s")
    if stored[0] != rows:
        raise BenchError(f"loading {rows} rows left {stored[0]} in widget_logs")


def make_token(conn: psycopg.Connection) -> str:
    user = create_user(conn, "bench-export", generate_password(), "viewer")
    return create_token(conn, user, "export bench")


# --- clients -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Transfer:
    """One client process run to its end: wall time, what it wrote to stdout, its CPU, how it ended."""

    seconds: float
    size: int
    lines: int
    client_cpu: float
    returncode: int
    stderr: str


def transfer(argv: Sequence[str], workdir: Path) -> Transfer:
    """Run ``argv``, counting the bytes and lines of its stdout in large reads until it exits."""
    err_path = workdir / "client-stderr.txt"
    buffer = bytearray(READ_BYTES)
    view = memoryview(buffer)
    size = lines = 0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(err_path, "wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, bufsize=0)
        try:
            assert process.stdout is not None
            with contextlib.suppress(OSError):  # a smaller pipe only means more reads, on both sides alike
                fcntl.fcntl(process.stdout.fileno(), fcntl.F_SETPIPE_SZ, READ_BYTES)
            while n := process.stdout.readinto(view):
                size += n
                lines += buffer.count(b"\n", 0, n)
            returncode = process.wait()
            seconds = time.perf_counter() - started
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - usage.ru_utime + after.ru_stime - usage.ru_stime
    stderr = err_path.read_text(encoding="utf-8", errors="replace").strip()
    return Transfer(seconds, size, lines, cpu, returncode, stderr)


def psql_command(env: BenchEnv, statement: str) -> list[str]:
    return ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", env.database_url, "-c", statement]


FIND_BACKEND = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    " AND state = 'active' AND query LIKE 'COPY (%' LIMIT 1"
)
"""The backend running an export's COPY (only one runs at a time in the run's database)."""


class Watcher:
    """During one export, every ``SAMPLE_SECONDS`` in a thread: the CPU of the PostgreSQL backend running
    the COPY and, given the exporter's pid, the exporter's RSS (its VmHWM is also reset at the start)."""

    def __init__(self, database_url: str, exporter_pid: int | None = None) -> None:
        self.database_url = database_url
        self.exporter = psutil.Process(exporter_pid) if exporter_pid else None
        self.idle = self.exporter.memory_info().rss if self.exporter else None
        self.peak = self.idle
        self.hwm: int | None = None
        self.hwm_reset = False
        self.backend_cpu: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="export-watcher", daemon=True)
        self._conn: psycopg.Connection | None = None

    def _watch(self) -> None:
        started = time.time()
        backend: psutil.Process | None = None
        cpu_at_start = 0.0
        while not self._stop.wait(SAMPLE_SECONDS):
            if self.exporter is not None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    self.peak = max(self.peak or 0, self.exporter.memory_info().rss)
            try:
                if backend is None and self._conn is not None:
                    row = self._conn.execute(FIND_BACKEND).fetchone()
                    if row is not None:
                        backend = psutil.Process(row[0])
                        # a backend started for this export (psql's) counts from zero; a pooled one from now
                        cpu_at_start = 0.0 if backend.create_time() >= started - 1 else sum(backend.cpu_times()[:2])
                if backend is not None:
                    self.backend_cpu = sum(backend.cpu_times()[:2]) - cpu_at_start
            except (psutil.Error, psycopg.Error):
                backend = None

    def __enter__(self) -> Watcher:
        self._conn = psycopg.connect(self.database_url, autocommit=True, application_name="atlas-bench-watcher")
        if self.exporter is not None:
            self.hwm_reset = reset_hwm(self.exporter.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._conn is not None:
            self._conn.close()
        if self.exporter is not None and self.hwm_reset:
            self.hwm = vm_hwm(self.exporter.pid)


def reset_hwm(pid: int) -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux: write 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def vm_hwm(pid: int) -> int | None:
    """Peak resident bytes of the process (VmHWM from /proc/<pid>/status), or None if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# --- one export of each kind -------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One timed export by one client."""

    leg: str
    transfer: Transfer
    rows: int
    backend_cpu: float | None = None
    server_cpu: float | None = None
    idle_rss: int | None = None
    peak_rss: int | None = None
    hwm: int | None = None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.transfer.seconds

    @property
    def mb_per_second(self) -> float:
        return self.transfer.size / 1e6 / self.transfer.seconds

    def describe(self) -> str:
        t = self.transfer
        text = (
            f"{self.rows_per_second:8.0f} rows/s {self.mb_per_second:6.1f} MB/s ({t.size / 1e6:.1f} MB in "
            f"{t.seconds:.2f} s; CPU: client {t.client_cpu / t.seconds:4.0%}"
        )
        if self.backend_cpu is not None:
            text += f", PostgreSQL backend {self.backend_cpu / t.seconds:4.0%}"
        if self.server_cpu is not None:
            text += f", exporter {self.server_cpu / t.seconds:4.0%}"
        if self.peak_rss is not None and self.idle_rss is not None:
            text += f", RSS {self.idle_rss / MIB:.1f} -> peak {self.peak_rss / MIB:.1f} MiB"
            if self.hwm is not None:
                text += f" (VmHWM {self.hwm / MIB:.1f})"
        return text + ")"


FRAME_LINES = {"csv": 1, "json": 2, "ndjson": 0}
"""Lines of an export besides its rows: the CSV header; JSON's opening and closing brackets."""

LEGS = {
    "copy": "baseline COPY CSV (psql)",
    "sql": "exporter's COPY (psql)",
    "http": "exporter (curl)",
    "gzip": "exporter, gzip (curl)",
}


@dataclass
class Bench:
    """What the rounds share: the run, the server, the token, and the problems found so far."""

    env: BenchEnv
    conn: psycopg.Connection
    server: Server
    token: str
    rows: int
    problems: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        self.problems.append(text)
        say(f"  CHECK FAILED: {text}")

    def psql(self, leg: str, statement: str, expected_lines: int) -> Run:
        with Watcher(self.env.database_url) as watcher:
            t = transfer(psql_command(self.env, statement), self.env.workdir)
        if t.returncode != 0:
            raise BenchError(f"psql exited with {t.returncode}: {t.stderr[:500]}")
        if t.lines != expected_lines:
            self.fail(f"{LEGS[leg]}: {t.lines} lines, expected {expected_lines}")
        return Run(leg, t, self.rows, watcher.backend_cpu)

    def http(self, fmt: str, gzip: bool) -> Run:
        headers, dump = self.env.workdir / "curl-headers.txt", self.env.workdir / "curl-response-headers.txt"
        lines = [f"Authorization: Bearer {self.token}"] + (["Accept-Encoding: gzip"] if gzip else [])
        headers.write_text("\n".join(lines) + "\n", encoding="utf-8")  # from a file: the token stays out of ps
        url = f"http://{HOST}:{self.server.port}{EXPORT_PATH}?format={fmt}"
        argv = ["curl", "-sS", "--no-buffer", "-H", f"@{headers}", "-D", str(dump), url]
        with Watcher(self.env.database_url, self.server.process.pid) as watcher:
            cpu = self.server.cpu_seconds()
            t = transfer(argv, self.env.workdir)
            cpu = self.server.cpu_seconds() - cpu
        leg = "gzip" if gzip else "http"
        run = Run(leg, t, self.rows, watcher.backend_cpu, cpu, watcher.idle, watcher.peak, watcher.hwm)
        self.check_http(run, fmt, dump)
        return run

    def check_http(self, run: Run, fmt: str, dump: Path) -> None:
        t, what = run.transfer, f"{LEGS[run.leg]} {fmt}"
        if t.returncode != 0:
            self.fail(f"{what}: curl exited with {t.returncode}: {t.stderr[:300]}")
            return
        status, headers = response_headers(dump)
        if status != 200:
            self.fail(f"{what}: HTTP {status}")
            return
        expected_lines = self.rows + FRAME_LINES[fmt]
        if run.leg == "gzip":
            if headers.get("content-encoding") != "gzip":
                self.fail(f"{what}: the answer is not gzip (Content-Encoding {headers.get('content-encoding')!r})")
        elif t.lines != expected_lines:
            self.fail(f"{what}: {t.lines} lines, expected {expected_lines}")
        export_id = headers.get("x-atlas-export-id", "")
        if not export_id.isdigit():
            self.fail(f"{what}: no X-Atlas-Export-Id header")
            return
        status_text, counted = audit_row(self.conn, int(export_id))
        if (status_text, counted) != ("complete", self.rows):
            self.fail(
                f"{what}: audit row {export_id} says {status_text}, {counted} rows; expected complete, {self.rows}"
            )


def response_headers(path: Path) -> tuple[int | None, dict[str, str]]:
    """The status and headers (names lowercased) of the last response curl dumped with -D."""
    status, headers = None, {}
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith("HTTP/"):
            parts = line.split()
            status, headers = (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None), {}
        elif ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


def audit_row(conn: psycopg.Connection, export_id: int) -> tuple[str, int | None]:
    """The audit row's status and row count, once it has left 'running' (or after AUDIT_TIMEOUT)."""
    deadline = time.monotonic() + AUDIT_TIMEOUT
    while True:
        row = conn.execute("SELECT status, row_count FROM export_audit WHERE id = %s", (export_id,)).fetchone()
        if row is None:
            return "missing", None
        if row[0] != "running" or time.monotonic() > deadline:
            return row[0], row[1]
        time.sleep(0.05)


# --- the run -----------------------------------------------------------------------------


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise argparse.ArgumentTypeError(f"a comma-separated list of {', '.join(FORMATS)}")
    return list(dict.fromkeys(formats))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=positive_int, default=1_000_000, help="rows to load and export (default 1000000)"
    )
    parser.add_argument(
        "--formats", type=parse_formats, default=["csv", "ndjson"], help="formats to export (default csv,ndjson)"
    )
    parser.add_argument(
        "--gzip", action="store_true", help="also export each format with Accept-Encoding: gzip, reported apart"
    )
    parser.add_argument(
        "--atrest",
        action="store_true",
        help="then encrypt the table at rest (rotate-db-key) and export again through a keyed exporter",
    )
    add_common_arguments(parser)
    return parser.parse_args(argv)


def require_clients() -> None:
    missing = [name for name in ("psql", "curl") if shutil.which(name) is None]
    if missing:
        raise BenchError(f"{' and '.join(missing)} not found on PATH: the bench runs both sides through C clients")


@contextmanager
def exporter_served(env: BenchEnv, extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start ``atlas-server exporter`` as ``bench.ingest.served`` starts its servers; stop it on exit."""
    atlas_server = Path(sys.executable).with_name("atlas-server")
    if not atlas_server.exists():
        raise BenchError(f"{atlas_server} not found: install the services into this virtualenv")
    port, log = free_port(), env.workdir / "exporter-server.log"
    with open(log, "wb") as out:
        # a session of its own: Ctrl-C reaches only the bench, which then stops the server in order
        process = subprocess.Popen(
            [str(atlas_server), "exporter", "--host", HOST, "--port", str(port)],
            env={**env.subprocess_environ(), **(extra_env or {})},
            cwd=env.workdir,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    server = Server("exporter", process, port, log)
    try:
        wait_ready(server, "/readyz")
        yield server
    finally:
        stop(process)


def format_rounds(bench: Bench, fmt: str, rounds: int, gzip: bool) -> list[Run]:
    """``rounds`` x (baseline COPY, exporter's COPY, exporter over HTTP[, gzip]), in that order.

    CSV has no exporter's COPY: the exporter writes every CSV in Python (``atlas.contract.export.CsvWriter``).
    """
    legs: list[Callable[[], Run]] = [lambda: bench.psql("copy", BASELINE_COPY, bench.rows + 1)]
    if fmt != "csv":
        statement, params = copy_statement(fmt, ExportFilters())  # type: ignore[arg-type]
        assert not params
        ours = statement.as_string(bench.conn)
        legs.append(lambda: bench.psql("sql", ours, bench.rows))  # COPY writes no JSON brackets
    legs.append(lambda: bench.http(fmt, gzip=False))
    if gzip:
        legs.append(lambda: bench.http(fmt, gzip=True))
    runs: list[Run] = []
    for i in range(1, rounds + 1):
        for leg in legs:
            runs.append(leg())
            say(f"  {fmt:6} round {i} {LEGS[runs[-1].leg]:26}: {runs[-1].describe()}")
    return runs


def run(env: BenchEnv, args: argparse.Namespace) -> bool:
    """Run the benchmark; return False if a check failed (figures are printed regardless)."""
    require_clients()
    say(f"export bench | {machine_info(env)}")
    say(
        f"  {args.rows} rows; formats {', '.join(args.formats)}; {args.rounds} round(s) of "
        f"(baseline COPY, exporter's COPY, exporter{', exporter gzip' if args.gzip else ''}) each"
    )
    with connect(env.database_url, autocommit=True) as conn:
        load(conn, args.rows, env.tag)
        token = make_token(conn)
        with exporter_served(env) as server:
            bench = Bench(env, conn, server, token, args.rows)
            results = {fmt: format_rounds(bench, fmt, args.rounds, args.gzip) for fmt in args.formats}
            life_hwm = vm_hwm(server.process.pid)
            problems = log_problems(server)
        if args.atrest:
            sealed_problems = atrest_phase(env, conn, token, args, results)
            problems += sealed_problems
    report(results, args.rows, life_hwm, problems + bench.problems, bool(bench.problems))
    exports = sum(len(runs) for runs in results.values())
    outcome = f"{len(bench.problems)} FAILED (listed above)" if bench.problems else "OK"
    say(f"checks: {exports} exports, each complete with {args.rows} rows (HTTP 200, audit row, line count): {outcome}")
    return not bench.problems


def atrest_phase(
    env: BenchEnv, conn: psycopg.Connection, token: str, args: argparse.Namespace, clear: dict[str, list[Run]]
) -> list[str]:
    """Seal every row under a database key (as rotate-db-key does), then export through a keyed exporter.

    Sequential after the clear rounds (sealing is one-way), in the same run and on the same rows; reports
    the keyed exporter's rows/s against the clear exporter's, and how fast the table was sealed.
    """
    from atlas.contract import Keyring, generate_encryption_key
    from atlas.server.rotation import rotate

    started = time.perf_counter()
    conn.execute(
        "INSERT INTO batches (batch_id, machine_id, created_at, received_at, log_count)"
        ' SELECT batch_id, min(machine_id), min("timestamp"), min(received_at), count(*)'
        " FROM widget_logs GROUP BY batch_id"
    )
    key = generate_encryption_key()
    done = 0

    def progress(count: int) -> None:
        nonlocal done
        done += count
        if done % 10_000 < count:
            print(f" {done}", end="", flush=True)

    print("  at rest: sealing every batch (rotate-db-key) ...", end="", flush=True)
    rotate(conn, Keyring.from_base64([key]), chunk=1000, progress=progress)
    seconds = time.perf_counter() - started
    conn.execute("VACUUM (ANALYZE) widget_logs")
    conn.execute("CHECKPOINT")
    say(f" {done} batches, {args.rows} rows sealed in {seconds:.0f} s ({args.rows / seconds:.0f} rows/s)")
    with exporter_served(env, {"FLEET_DB_ENCRYPTION_KEY": key}) as server:
        bench = Bench(env, conn, server, token, args.rows)
        for fmt in args.formats:
            runs = []
            for i in range(1, args.rounds + 1):
                runs.append(bench.http(fmt, gzip=False))
                say(f"  {fmt:6} round {i} exporter, at rest (curl)  : {runs[-1].describe()}")
            sealed_rate = statistics.median(r.rows_per_second for r in runs)
            clear_rate = median_of(clear[fmt], "http", lambda r: r.rows_per_second)
            copy_rate = median_of(clear[fmt], "copy", lambda r: r.rows_per_second)
            peak = max(max(r.peak_rss or 0, r.hwm or 0) for r in runs) / MIB
            say(
                f"export {fmt} at rest: {sealed_rate:.0f} rows/s, {sealed_rate / clear_rate:.3f} of the clear"
                f" exporter ({clear_rate:.0f} rows/s), {sealed_rate / copy_rate:.3f} of COPY CSV; peak RSS"
                f" {peak:.1f} MiB"
            )
        problems = log_problems(server)
    return problems + bench.problems


def log_problems(server: Server) -> list[str]:
    return [f"exporter logged: {line}" for line in server.log_problems()]


def median_of(runs: Sequence[Run], leg: str, value: Callable[[Run], float]) -> float:
    values = [value(r) for r in runs if r.leg == leg]
    return statistics.median(values) if values else float("nan")


@dataclass(frozen=True)
class Summary:
    """One format's headline figures."""

    fmt: str
    ratio: float
    memory: float  # MiB: the larger of the sampled peak RSS and VmHWM


def report_format(fmt: str, runs: Sequence[Run]) -> Summary:
    copy_rate = median_of(runs, "copy", lambda r: r.rows_per_second)
    sql_rate = median_of(runs, "sql", lambda r: r.rows_per_second)
    http_rate = median_of(runs, "http", lambda r: r.rows_per_second)
    ratio = http_rate / copy_rate
    pairs = zip([r for r in runs if r.leg == "copy"], [r for r in runs if r.leg == "http"], strict=True)
    per_round = ", ".join(f"{h.rows_per_second / c.rows_per_second:.3f}" for c, h in pairs)
    say(
        f"export {fmt}: exporter {http_rate:.0f} rows/s ({median_of(runs, 'http', lambda r: r.mb_per_second):.1f}"
        f" MB/s) vs COPY CSV {copy_rate:.0f} rows/s ({median_of(runs, 'copy', lambda r: r.mb_per_second):.1f}"
        f" MB/s) -> ratio {ratio:.3f} of the medians (per round {per_round})"
    )
    if any(r.leg == "sql" for r in runs):
        say(
            f"  exporter's own COPY through psql: {sql_rate:.0f} rows/s, ratio {sql_rate / copy_rate:.3f} to COPY"
            f" CSV (the SQL's share); exporter / its own COPY {http_rate / sql_rate:.3f} (Python and HTTP's share)"
        )
    http_runs = [r for r in runs if r.leg in ("http", "gzip")]
    peak = max(r.peak_rss or 0 for r in http_runs)
    hwm = max(r.hwm or 0 for r in http_runs)
    idle = min(r.idle_rss or 0 for r in http_runs)
    size_http = median_of(runs, "http", lambda r: r.transfer.size)
    size_copy = median_of(runs, "copy", lambda r: r.transfer.size)
    say(
        f"  bytes: exporter {size_http / 1e6:.1f} MB ({size_http / runs[0].rows:.0f} B/row), COPY CSV "
        f"{size_copy / 1e6:.1f} MB; exporter RSS idle {idle / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB "
        f"(sampled every {SAMPLE_SECONDS * 1000:.0f} ms), VmHWM {hwm / MIB:.1f} MiB"
    )
    say(f"  CPU, share of wall time (medians): {cpu_shares(runs)}")
    if any(r.leg == "gzip" for r in runs):
        gzip_rate = median_of(runs, "gzip", lambda r: r.rows_per_second)
        gzip_size = median_of(runs, "gzip", lambda r: r.transfer.size)
        say(
            f"  gzip: {gzip_rate:.0f} rows/s, ratio {gzip_rate / copy_rate:.3f} to COPY CSV; "
            f"{gzip_size / 1e6:.1f} MB on the wire ({gzip_size / size_http:.1%} of uncompressed)"
        )
    return Summary(fmt, ratio, max(peak, hwm) / MIB)


def report(
    results: dict[str, list[Run]], rows: int, life_hwm: int | None, problems: Sequence[str], problems_found: bool
) -> None:
    summaries = [report_format(fmt, runs) for fmt, runs in results.items()]
    if life_hwm is not None:
        say(f"  exporter VmHWM over its whole life: {life_hwm / MIB:.1f} MiB")
    say(f"  load avg at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} (the machine is shared)")
    verdicts = [
        f"CSV >= {TARGET_CSV_RATIO} x COPY CSV: {verdict(s.ratio >= TARGET_CSV_RATIO)} ({s.ratio:.3f})"
        for s in summaries
        if s.fmt == "csv"
    ]
    memory = max(s.memory for s in summaries)
    verdicts.append(f"peak RSS < {TARGET_RSS_MIB:.0f} MiB: {verdict(memory < TARGET_RSS_MIB)} ({memory:.1f} MiB)")
    scale = "" if rows >= 1_000_000 else f"; they are set at 1000000 rows, this run had {rows}"
    if problems_found:
        say("targets: not judged, a check failed (below)")
    else:
        say(f"targets: {'; '.join(verdicts)}{scale}")
    for line in problems[:10]:
        say(f"  {line}")
    if len(problems) > 10:
        say(f"  ... and {len(problems) - 10} more problems")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL, below target"


def cpu_shares(runs: Sequence[Run]) -> str:
    """Median CPU of each process, as a share of the wall time, per leg."""

    def share(leg: str, cpu: Callable[[Run], float | None]) -> str:
        values = [c / r.transfer.seconds for r in runs if r.leg == leg and (c := cpu(r)) is not None]
        return f"{statistics.median(values):.0%}" if values else "?"

    parts = []
    for leg, client in (("copy", "psql"), ("sql", "psql"), ("http", "curl"), ("gzip", "curl")):
        if any(r.leg == leg for r in runs):
            text = f"{leg}: backend {share(leg, lambda r: r.backend_cpu)}"
            if leg in ("http", "gzip"):
                text += f" exporter {share(leg, lambda r: r.server_cpu)}"
            parts.append(f"{text} {client} {share(leg, lambda r: r.transfer.client_cpu)}")
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with isolated_env(args.postgres, args.redis) as env:
            ok = run(env, args)
    except BenchError as exc:
        print(f"export bench FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("export bench interrupted; cleaned up", file=sys.stderr)
        return 130
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
