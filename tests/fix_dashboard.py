"""The dashboard served for real (``atlas-server dashboard``), users, machines and logs to show.

Machines and logs go straight into PostgreSQL (the ingest path has tests of
its own); every helper makes unique ids and names, since a test run shares
one database.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from atlas.contract import HealthData, PingData, ProcessesData, ProcessRow, SpeedtestData, WifiData
from atlas.core.accounts import create_user

from .fix_processes import ServerProcess

PASSWORD = "dashboard-test-password-0123"
"""Every test user's password (at least 12 characters)."""

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]*)"')


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Machine:
    machine_id: str
    serial_number: str
    hostname: str
    logs: list[tuple[datetime, str, str, str, dict[str, Any]]] = field(default_factory=list)
    """(timestamp, level, widget_type, message, data) as inserted."""


def wifi_data(rssi: int = -58, ssid: str = "Office-5G") -> WifiData:
    return {
        "state": "connected",
        "ssid": ssid,
        "ssid_redacted": False,
        "bssid": "fe:dc:ba:09:87:65",
        "rssi_dbm": rssi,
        "noise_dbm": -94,
        "snr_db": rssi + 94,
        "channel": 149,
        "band": "5GHz",
        "channel_width_mhz": 80,
        "phy_mode": "802.11ax",
        "tx_rate_mbps": 864.0,
        "security": "WPA3 Personal",
        "interface": "en0",
    }


def speed_data(down: float = 412.5, up: float = 38.25) -> SpeedtestData:
    return {
        "status": "ok",
        "download_mbps": down,
        "upload_mbps": up,
        "latency_ms": 11.2,
        "jitter_ms": 1.4,
        "packet_loss_pct": 0.0,
        "isp": "Example Fibre",
        "server_name": "Paris",
        "server_sponsor": "Example Hosting",
        "server_country": "France",
        "reason": None,
    }


def ping_data(target: str = "1.1.1.1", avg: float = 12.5, loss: float = 0.0) -> PingData:
    return {
        "target": target,
        "status": "ok" if loss < 100 else "unreachable",
        "address": target,
        "sent": 5,
        "received": round(5 * (1 - loss / 100)),
        "loss_pct": loss,
        "rtt_min_ms": avg - 2,
        "rtt_avg_ms": avg,
        "rtt_max_ms": avg + 3,
        "rtt_stddev_ms": 0.8,
    }


def health_data(cpu: float = 23.5, memory: float = 61.0) -> HealthData:
    """A health sample as the agent's ``HealthReading.as_data()`` sends it."""
    return {
        "psutil": {
            "cpu_percent_per_core": [cpu] * 4,
            "cpu_percent": cpu,
            "cpu_count": 8,
            "load_average": [1.5, 1.2, 0.9],
            "memory": {"total": 17179869184, "available": 6_000_000_000, "used": 10737418240, "percent": memory},
            "swap": {"total": 0, "used": 0, "free": 0, "percent": 0.0},
            "disks": {
                "/": {
                    "device": "/dev/disk3s1",
                    "fstype": "apfs",
                    "total": 994662584320,
                    "used": 5 * 10**11,
                    "percent": 50.3,
                }
            },
            "uptime_seconds": 273600,
            "battery": {"percent": 87.0, "power_plugged": True, "seconds_left": None},
        },
        "smc": {"cpu_die_temp_c": 48.5, "gpu_die_temp_c": None, "fans_rpm": [1850.0], "thermal_pressure": "Nominal"},
        "battery": {"cycle_count": 212, "max_capacity_pct": 91.0, "condition": "Normal", "temperature_c": 30.5},
    }


def processes_data(name: str = "WindowServer") -> ProcessesData:
    top: list[ProcessRow] = [
        {
            "pid": 100 + i,
            "name": n,
            "user": "_windowserver" if i == 0 else "alice",
            "cpu_percent": c,
            "memory_percent": m,
        }
        for i, (n, c, m) in enumerate(
            [(name, 35.5, 2.1), ("kernel_task", 20.0, 1.0), ("Safari", 12.0, 8.5), ("mds", 3.0, 0.5)]
            + [(f"proc{j}", 0.5, 0.1) for j in range(6)]
        )
    ]
    return {"status": "ok", "source": "psutil", "process_count": 431, "top_cpu": top, "top_memory": top[:3]}


def every_widget_logs(now: datetime, *, hours: int = 24, hostile: str | None = None) -> list[tuple]:
    """A day (by default) of logs of every widget type, every 15 minutes (speed test hourly)."""
    logs: list[tuple] = []
    steps = hours * 4
    for k in range(steps):
        at = now - timedelta(minutes=15 * (steps - 1 - k)) - timedelta(seconds=30)
        logs.append((at, "INFO", "wifi", f"WiFi status #{k}", wifi_data(-50 - k % 20, hostile or "Office-5G")))
        logs.append((at, "INFO", "ping", "Ping 1.1.1.1", ping_data("1.1.1.1", 10 + k % 7)))
        logs.append((at, "INFO", "ping", "Ping 8.8.8.8", ping_data("8.8.8.8", 20 + k % 5, 20.0 if k % 10 == 0 else 0)))
        level = "WARNING" if k % 8 == 0 else "INFO"
        logs.append((at, level, "health", f"Health check #{k}", health_data(10 + k % 50, 55 + k % 20)))
        logs.append((at, "DEBUG", "processes", "Top processes", processes_data(hostile or "WindowServer")))
        if k % 4 == 0:
            logs.append((at, "INFO", "speedtest", "Speed test done", speed_data(300 + k, 30 + k % 10)))
    logs.append((now - timedelta(minutes=1), "ERROR", "agent", "Agent hiccup (test)", {"error": "disk full"}))
    return logs


def off_the_mark_week(now: datetime) -> list[tuple]:
    """A week of Wi-Fi, ping (two targets) and health readings at :03, :08, :13 ... past the hour (never on a
    multiple of 5 minutes), up to ``now``, and an hourly speed test at :33; values vary with the reading."""
    last = now.replace(second=0, microsecond=0) - timedelta(minutes=(now.minute - 3) % 5)
    logs: list[tuple] = []
    for k in range(7 * 288 + 2):
        at = last - timedelta(minutes=5 * k)
        logs.append((at, "INFO", "wifi", "WiFi status", wifi_data(-40 - k % 50)))
        logs.append((at, "INFO", "ping", "Ping 1.1.1.1", ping_data("1.1.1.1", 10 + k % 7)))
        logs.append((at, "INFO", "ping", "Ping 8.8.8.8", ping_data("8.8.8.8", 30 + k % 7, 20.0 if k % 4 == 0 else 0)))
        logs.append((at, "INFO", "health", "Health check", health_data(10 + k % 80, 50 + k % 40)))
        if at.minute == 33:
            logs.append((at, "INFO", "speedtest", "Speed test done", speed_data(300 + k % 100, 30 + k % 10)))
    return logs


def chart_points(page: str) -> dict[str, int]:
    """Points drawn in each chart of a page (polyline vertices and isolated dots), by chart title."""
    found = {}
    for figure in page.split('<figure class="chart">')[1:]:
        title = figure.split("<figcaption>", 1)[1].split("</figcaption>", 1)[0]
        vertices = sum(len(points.split()) for points in re.findall(r'<polyline[^>]* points="([^"]*)"', figure))
        found[title] = vertices + figure.count("<circle")
    return found


def insert_machine(
    conn: psycopg.Connection,
    *,
    last_seen: datetime | None = None,
    logs: Sequence[tuple] = (),
    machine_id: str | None = None,
    serial_number: str | None = None,
    hostname: str | None = None,
    model: str = "MacBookPro18,3",
    os_version: str = "macOS 15.5 (24F74)",
) -> Machine:
    """A machine row and its logs, with unique ids unless given."""
    last_seen = last_seen or datetime.now(UTC)
    machine = Machine(
        machine_id or unique("mac"),
        serial_number or unique("SER").upper(),
        hostname if hostname is not None else unique("host") + ".local",
        list(logs),
    )
    conn.execute(
        "INSERT INTO machines (machine_id, serial_number, hostname, model, os_version, agent_version,"
        " first_seen, last_seen, identity_at) VALUES (%s, %s, %s, %s, %s, '0.1.0', %s, %s, %s)",
        (
            machine.machine_id,
            machine.serial_number,
            machine.hostname,
            model,
            os_version,
            last_seen - timedelta(days=30),
            last_seen,
            last_seen,
        ),
    )
    insert_logs(conn, machine, logs)
    return machine


def insert_logs(conn: psycopg.Connection, machine: Machine, logs: Sequence[tuple]) -> None:
    if not logs:
        return
    batch_id = uuid.uuid4()
    received = datetime.now(UTC)
    with (
        conn.cursor() as cur,
        cur.copy(
            'COPY widget_logs (machine_id, serial_number, "timestamp", level, widget_type, message, data, batch_id,'
            " received_at) FROM STDIN"
        ) as copy,
    ):
        for at, level, widget_type, message, data in logs:
            copy.write_row(
                (
                    machine.machine_id,
                    machine.serial_number,
                    at,
                    level,
                    widget_type,
                    message,
                    Jsonb(data),
                    batch_id,
                    received,
                )
            )


class Browserless:
    """An httpx client signed in to the dashboard (or not), following no redirects."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.client = httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)
        self.username = ""

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, **kw)

    def post(self, path: str, data: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        return self.client.post(path, data=data or {}, **kw)

    def login_form_token(self, next_path: str = "") -> str:
        page = self.get("/login", params={"next": next_path} if next_path else None)
        assert page.status_code == 200, page.text
        found = CSRF_FIELD.search(page.text)
        assert found, "login form has no csrf_token field"
        return found.group(1)

    def login(self, username: str, password: str = PASSWORD, next_path: str = "") -> httpx.Response:
        token = self.login_form_token(next_path)
        self.username = username
        return self.post("/login", {"username": username, "password": password, "csrf_token": token, "next": next_path})

    def csrf(self, path: str = "/") -> str:
        """The session's CSRF token, read from a page's forms."""
        page = self.get(path)
        assert page.status_code == 200, page.text
        found = CSRF_FIELD.search(page.text)
        assert found, f"{path} has no form with a csrf_token"
        return found.group(1)

    def close(self) -> None:
        self.client.close()


@pytest.fixture(scope="session")
def dashboard(start_server: Callable[..., ServerProcess], server_config: dict[str, Any]) -> ServerProcess:
    """``atlas-server dashboard`` on the run's database (session cookie key kept in the database)."""
    return start_server("dashboard", server_config)


@pytest.fixture
def make_user(db: psycopg.Connection) -> Callable[..., str]:
    """Create a user with a unique name and ``PASSWORD``; returns the name."""

    def make(role: str = "viewer") -> str:
        name = unique(f"test-{role}")
        create_user(db, name, PASSWORD, role)
        return name

    return make


@pytest.fixture
def browserless(dashboard: ServerProcess) -> Iterator[Callable[[], Browserless]]:
    """New httpx clients of the dashboard, each with its own cookie jar."""
    clients: list[Browserless] = []

    def make() -> Browserless:
        client = Browserless(dashboard)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def viewer(browserless: Callable[[], Browserless], make_user: Callable[..., str]) -> Browserless:
    """A client signed in as a new viewer."""
    client = browserless()
    assert client.login(make_user("viewer")).status_code == 303
    return client


@pytest.fixture
def admin(browserless: Callable[[], Browserless], make_user: Callable[..., str]) -> Browserless:
    """A client signed in as a new admin."""
    client = browserless()
    assert client.login(make_user("admin")).status_code == 303
    return client
