"""Building widget-log batches the way an agent does, for tests."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from atlas.contract import HealthData, Key, PingData, WifiData, format_timestamp, seal

WIFI_DATA: WifiData = {
    "ssid": "SomeSSID-5",
    "ssid_redacted": False,
    "bssid": "fe:dc:ba:09:87:65",
    "rssi_dbm": -58,
    "noise_dbm": -94,
    "snr_db": 36,
    "channel": 144,
    "band": "5GHz",
    "channel_width_mhz": 40,
    "security": "WPA2 Personal",
}
PING_DATA: PingData = {
    "target": "1.1.1.1",
    "sent": 5,
    "received": 5,
    "loss_pct": 0.0,
    "rtt_ms": {"min": 9.1, "avg": 11.4},
}
HEALTH_DATA: HealthData = {"cpu_percent": 12.5, "memory_percent": 61.2, "disk": [{"mount": "/", "percent": 48.0}]}


def machine(machine_id: str | None = None, **overrides: str) -> dict[str, str]:
    """A machine object with every field of ``MachineInfo`` (``MACHINE_FIELDS``)."""
    info = {
        "machine_id": machine_id or f"mac-{uuid.uuid4().hex[:12]}",
        "serial_number": "C02AB12CD3F",
        "hostname": "studio-mac.local",
        "model": "MacBookPro18,3",
        "os_version": "macOS 15.5 (24F74)",
        "agent_version": "0.1.0",
    }
    info.update(overrides)
    return info


def logs(count: int = 3, *, start: datetime | None = None) -> list[dict[str, Any]]:
    start = start or datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    kinds: list[tuple[str, str, str, Mapping[str, object]]] = [
        ("wifi", "INFO", "WiFi status checked", WIFI_DATA),
        ("ping", "INFO", "Ping 1.1.1.1: 0% loss", PING_DATA),
        ("health", "WARNING", "Memory above 60%", HEALTH_DATA),
    ]
    out = []
    for i in range(count):
        widget_type, level, message, data = kinds[i % len(kinds)]
        out.append(
            {
                "timestamp": format_timestamp(start + timedelta(seconds=10 * i)),
                "level": level,
                "widget_type": widget_type,
                "message": f"{message} #{i}",
                "data": {**data, "seq": i},
            }
        )
    return out


def content(count: int = 3, machine_id: str | None = None) -> dict[str, Any]:
    return {"machine": machine(machine_id), "logs": logs(count)}


def now_stamp(delta: timedelta = timedelta(0)) -> str:
    return format_timestamp(datetime.now(UTC) + delta)


def sealed(
    body: dict[str, Any],
    key_b64: str,
    *,
    batch_id: str | None = None,
    created_at: str | None = None,
    compression: str = "gzip",
    legacy: bool = False,
) -> dict[str, Any]:
    """An encrypted v1 envelope of ``body`` (a {"machine", "logs"} dict): with a salt, or, ``legacy``,
    without one, as agents before per-batch keys sealed it."""
    plaintext = json.dumps(body).encode("utf-8")
    return seal(
        plaintext,
        Key.from_base64(key_b64),
        batch_id=batch_id or str(uuid.uuid4()),
        created_at=created_at or now_stamp(),
        compression=compression,
        legacy=legacy,
    )


def plaintext_body(body: dict[str, Any], *, batch_id: str | None = None, created_at: str | None = None) -> dict:
    return {"v": 1, "batch_id": batch_id or str(uuid.uuid4()), "created_at": created_at or now_stamp(), **body}
