"""Realistic widget-log batches for the benchmarks: what a Mac agent sends every few minutes.

Each log is a few hundred bytes of wifi, ping, health or processes data. Batches are
built as plaintext JSON (the contract's record schema) and, for the ingest bench,
sealed into v1 envelopes exactly as the agent does.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from atlas.contract import Key, seal
from atlas.contract.envelope import format_timestamp

LOGS_PER_BATCH = 15
"""Logs in one benchmark batch."""

MACHINES = 50
"""Distinct machines the batches come from."""

PROCESS_NAMES = ("Google Chrome Helper", "WindowServer", "Slack Helper", "zoom.us", "mds_stores", "kernel_task")


def _wifi(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    rssi, channel = rng.randint(-80, -40), rng.choice((1, 6, 11, 36, 44, 149))
    data = {
        "ssid": rng.choice(("CorpNet", "CorpNet-Guest", "Office-5G")),
        "bssid": ":".join(f"{rng.randrange(256):02x}" for _ in range(6)),
        "rssi": rssi,
        "noise": rng.randint(-98, -88),
        "channel": channel,
        "band": "5GHz" if channel > 14 else "2.4GHz",
        "tx_rate_mbps": rng.choice((144, 300, 573, 866, 1200)),
        "security": "WPA2 Enterprise",
        "interface": "en0",
    }
    level = "WARNING" if rssi < -72 else "INFO"
    return level, f"Wi-Fi {data['ssid']}: RSSI {rssi} dBm on channel {channel}", data


def _ping(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    avg = round(rng.uniform(4, 60), 2)
    received = rng.choice((10, 10, 10, 9))
    data = {
        "host": rng.choice(("1.1.1.1", "8.8.8.8", "gateway.corp.example")),
        "sent": 10,
        "received": received,
        "loss_pct": round(100 * (10 - received) / 10, 1),
        "min_ms": round(avg * 0.7, 2),
        "avg_ms": avg,
        "max_ms": round(avg * 1.9, 2),
        "stddev_ms": round(avg * 0.2, 2),
    }
    level = "WARNING" if received < 10 else "INFO"
    return level, f"Ping {data['host']}: {avg} ms avg, {data['loss_pct']}% loss", data


def _health(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    data = {
        "cpu_pct": round(rng.uniform(2, 95), 1),
        "load_avg": [round(rng.uniform(0.5, 6), 2) for _ in range(3)],
        "mem_used_gb": round(rng.uniform(4, 15), 1),
        "mem_total_gb": 16,
        "swap_used_gb": round(rng.uniform(0, 3), 1),
        "disk_free_gb": round(rng.uniform(20, 400), 1),
        "battery_pct": rng.randint(5, 100),
        "thermal_state": rng.choice(("nominal", "nominal", "fair", "serious")),
        "uptime_s": rng.randint(3_600, 2_000_000),
    }
    return "INFO", f"Health: CPU {data['cpu_pct']}%, memory {data['mem_used_gb']}/16 GB", data


def _processes(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    top = [
        {
            "name": name,
            "pid": rng.randint(100, 99_999),
            "cpu_pct": round(rng.uniform(0, 80), 1),
            "mem_mb": rng.randint(50, 2_500),
        }
        for name in rng.sample(PROCESS_NAMES, 3)
    ]
    return "INFO", f"Top process: {top[0]['name']} at {top[0]['cpu_pct']}% CPU", {"top": top, "count": 412}


WIDGETS: dict[str, Callable[[random.Random], tuple[str, str, dict[str, Any]]]] = {
    "wifi": _wifi,
    "ping": _ping,
    "health": _health,
    "processes": _processes,
}


def machine(index: int) -> dict[str, str]:
    """The identity of benchmark machine ``index``."""
    return {
        "machine_id": f"bench-{index:04d}-{uuid.UUID(int=index).hex[-12:]}",
        "serial_number": f"C02BENCH{index:04d}",
        "hostname": f"mac-bench-{index:04d}.corp.example",
        "model": "MacBookPro18,3",
        "os_version": "14.5 (23F79)",
        "agent_version": "1.4.2",
    }


def log_entries(rng: random.Random, end: datetime, count: int = LOGS_PER_BATCH) -> list[dict[str, Any]]:
    """``count`` logs, one every 20 seconds up to ``end``, widgets in rotation."""
    widgets = list(WIDGETS)
    entries = []
    for i in range(count):
        widget = widgets[i % len(widgets)]
        level, message, data = WIDGETS[widget](rng)
        moment = end - timedelta(seconds=20 * (count - 1 - i))
        entries.append(
            {
                "timestamp": format_timestamp(moment),
                "level": level,
                "widget_type": widget,
                "message": message,
                "data": data,
            }
        )
    return entries


def plaintext(rng: random.Random, now: datetime, count: int = LOGS_PER_BATCH) -> bytes:
    """One batch's plaintext JSON: a random machine of the fleet and ``count`` logs."""
    content = {"machine": machine(rng.randrange(MACHINES)), "logs": log_entries(rng, now, count)}
    return json.dumps(content, separators=(",", ":")).encode()


def sealed_body(rng: random.Random, key: Key, now: datetime) -> bytes:
    """One request body: a fresh batch sealed into a v1 envelope under ``key``, with a unique batch_id."""
    batch_id = str(uuid.uuid4())
    envelope = seal(plaintext(rng, now), key, batch_id=batch_id, created_at=format_timestamp(now))
    return json.dumps(envelope, separators=(",", ":")).encode()


def sealed_bodies(count: int, key: Key) -> list[bytes]:
    """``count`` request bodies, each a distinct batch created now."""
    rng, now = random.Random(), datetime.now(UTC)
    return [sealed_body(rng, key, now) for _ in range(count)]
