"""Reading widget ``data`` the dashboard shows, defensively: pure functions, no I/O.

``data`` comes from Macs that may be compromised, so nothing in it is trusted:
a number is an int or a finite float (never a bool or a string), text is a
string cut to a bounded length, and a missing or oddly shaped field reads as
None. Templates escape whatever text comes out of here.

``decode_data`` is the one place a stored ``data`` value becomes a dict: the
parsed JSONB of a clear row, or the JSON text of a row opened by
``machine.LogContent`` when it is encrypted at rest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

MAX_TEXT_CHARS = 200
"""Longest agent-sent string shown in a table cell; the rest is cut off with an ellipsis."""

TOP_PROCESSES = 5
"""Processes shown on the machine page, by CPU."""


def decode_data(stored: Any) -> dict[str, Any]:
    """A stored ``data`` value as a dict; anything else (or undecodable JSON text) is an empty dict."""
    if isinstance(stored, (bytes, str)):
        try:
            stored = json.loads(stored)
        except ValueError:
            return {}
    return stored if isinstance(stored, dict) else {}


def number(value: Any) -> float | None:
    """``value`` if it is an int or a finite float; bools, strings, NaN and infinities are None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    result = float(value)
    return result if math.isfinite(result) else None


def text(value: Any, limit: int = MAX_TEXT_CHARS) -> str | None:
    """A non-blank string, cut to ``limit`` characters; anything else is None."""
    if not isinstance(value, str) or not value.strip():
        return None
    return value if len(value) <= limit else value[: limit - 1] + "…"


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def items(value: Any, limit: int = 50) -> list[Any]:
    """The first ``limit`` elements of a list; anything else is an empty list."""
    return list(value[:limit]) if isinstance(value, list) else []


def path(data: Mapping[str, Any], *keys: str) -> Any:
    """``data[k1][k2]...``, or None where a level is missing or not a mapping."""
    current: Any = data
    for key in keys:
        if not isinstance(current, Mapping):
            return None
        current = current.get(key)
    return current


def first_number(data: Mapping[str, Any], *paths: Sequence[str]) -> float | None:
    """The first of several key paths that holds a number (older agents used other names)."""
    for keys in paths:
        found = number(path(data, *keys))
        if found is not None:
            return found
    return None


# --- per widget: the numbers charts and the fleet list need ------------------------------


def wifi_rssi(data: Mapping[str, Any]) -> float | None:
    return number(data.get("rssi_dbm"))


def wifi_noise(data: Mapping[str, Any]) -> float | None:
    return number(data.get("noise_dbm"))


def speed_down(data: Mapping[str, Any]) -> float | None:
    return number(data.get("download_mbps"))


def speed_up(data: Mapping[str, Any]) -> float | None:
    return number(data.get("upload_mbps"))


def ping_latency(data: Mapping[str, Any]) -> float | None:
    return first_number(data, ("rtt_avg_ms",), ("rtt_ms", "avg"))


def ping_loss(data: Mapping[str, Any]) -> float | None:
    return number(data.get("loss_pct"))


def health_cpu(data: Mapping[str, Any]) -> float | None:
    return first_number(data, ("psutil", "cpu_percent"), ("cpu_percent",))


def health_memory(data: Mapping[str, Any]) -> float | None:
    return first_number(data, ("psutil", "memory", "percent"), ("memory_percent",))


# --- per widget: what the machine page shows ---------------------------------------------


@dataclass(frozen=True)
class Disk:
    mount: str
    percent: float | None
    used: float | None
    total: float | None


@dataclass(frozen=True)
class Reading:
    """A named value with its unit, for a list of readings (temperatures, fans, battery)."""

    label: str
    value: float | str | None
    unit: str = ""


@dataclass(frozen=True)
class Process:
    name: str | None
    pid: float | None
    cpu_percent: float | None
    memory_percent: float | None
    user: str | None


def wifi_summary(data: Mapping[str, Any]) -> dict[str, Any]:
    """The Wi-Fi fields shown on the machine page."""
    ssid = text(data.get("ssid"))
    if ssid is None and data.get("ssid_redacted") is True:
        ssid = "(hidden by macOS)"
    return {
        "state": text(data.get("state"), 32),
        "ssid": ssid,
        "rssi_dbm": wifi_rssi(data),
        "noise_dbm": wifi_noise(data),
        "snr_db": number(data.get("snr_db")),
        "channel": number(data.get("channel")),
        "band": text(data.get("band"), 16),
        "channel_width_mhz": number(data.get("channel_width_mhz")),
        "phy_mode": text(data.get("phy_mode"), 32),
        "tx_rate_mbps": number(data.get("tx_rate_mbps")),
        "bssid": text(data.get("bssid"), 32),
        "security": text(data.get("security"), 64),
        "interface": text(data.get("interface"), 32),
    }


def speed_summary(data: Mapping[str, Any]) -> dict[str, Any]:
    """The speed-test fields shown on the machine page."""
    return {
        "status": text(data.get("status"), 16),
        "download_mbps": speed_down(data),
        "upload_mbps": speed_up(data),
        "latency_ms": number(data.get("latency_ms")),
        "jitter_ms": number(data.get("jitter_ms")),
        "packet_loss_pct": number(data.get("packet_loss_pct")),
        "isp": text(data.get("isp")),
        "server": text(data.get("server_sponsor")) or text(data.get("server_name")),
        "server_name": text(data.get("server_name")),
        "server_country": text(data.get("server_country"), 64),
        "reason": text(data.get("reason")),
    }


def ping_summary(data: Mapping[str, Any]) -> dict[str, Any]:
    """One ping target's fields."""
    return {
        "target": text(data.get("target"), 128) or "?",
        "status": text(data.get("status"), 32),
        "address": text(data.get("address"), 64),
        "sent": number(data.get("sent")),
        "received": number(data.get("received")),
        "loss_pct": ping_loss(data),
        "rtt_min_ms": first_number(data, ("rtt_min_ms",), ("rtt_ms", "min")),
        "rtt_avg_ms": ping_latency(data),
        "rtt_max_ms": first_number(data, ("rtt_max_ms",), ("rtt_ms", "max")),
    }


def latest_per_target(rows: Iterable[tuple[datetime, Mapping[str, Any]]]) -> list[tuple[datetime, dict[str, Any]]]:
    """The newest ping of each target, sorted by target; ``rows`` are (timestamp, data) in any order."""
    newest: dict[str, tuple[datetime, dict[str, Any]]] = {}
    for when, data in rows:
        summary = ping_summary(data)
        seen = newest.get(summary["target"])
        if seen is None or when > seen[0]:
            newest[summary["target"]] = (when, summary)
    return [newest[target] for target in sorted(newest)]


def _disks(data: Mapping[str, Any]) -> list[Disk]:
    disks = []
    found = path(data, "psutil", "disks")
    if isinstance(found, Mapping):
        for mount, usage in list(found.items())[:12]:
            usage = mapping(usage)
            disks.append(
                Disk(
                    text(mount, 128) or "?",
                    number(usage.get("percent")),
                    number(usage.get("used")),
                    number(usage.get("total")),
                )
            )
    for entry in items(data.get("disk"), 12):  # the flat shape of early agents
        entry = mapping(entry)
        disks.append(Disk(text(entry.get("mount"), 128) or "?", number(entry.get("percent")), None, None))
    return disks


def _temperatures(data: Mapping[str, Any]) -> list[Reading]:
    readings = []
    for label, keys in (("CPU die", ("smc", "cpu_die_temp_c")), ("GPU die", ("smc", "gpu_die_temp_c"))):
        value = number(path(data, *keys))
        if value is not None:
            readings.append(Reading(label, value, "°C"))
    chips = path(data, "psutil", "temperatures")
    if isinstance(chips, Mapping):
        for chip, sensors in list(chips.items())[:8]:
            for sensor in items(sensors, 8):
                sensor = mapping(sensor)
                value = number(sensor.get("current_c"))
                if value is not None:
                    label = text(sensor.get("label"), 64) or text(chip, 64) or "sensor"
                    readings.append(Reading(label, value, "°C"))
    battery_temp = number(path(data, "battery", "temperature_c"))
    if battery_temp is not None:
        readings.append(Reading("Battery temperature", battery_temp, "°C"))
    return readings[:16]


def _fans(data: Mapping[str, Any]) -> list[Reading]:
    fans = [number(rpm) for rpm in items(path(data, "smc", "fans_rpm"), 8)]
    return [Reading(f"Fan {i}", rpm, "rpm") for i, rpm in enumerate(fans, 1) if rpm is not None]


def _battery(data: Mapping[str, Any]) -> list[Reading]:
    plain, details = mapping(path(data, "psutil", "battery")), mapping(data.get("battery"))
    readings: list[Reading] = []
    percent = number(plain.get("percent"))
    if percent is None:
        percent = number(details.get("percent"))
    if percent is not None:
        readings.append(Reading("Charge", percent, "%"))
    plugged = plain.get("power_plugged")
    if isinstance(plugged, bool):
        readings.append(Reading("Power", "plugged in" if plugged else "on battery"))
    for label, key, unit in (("Health", "max_capacity_pct", "%"), ("Cycles", "cycle_count", "")):
        value = number(details.get(key))
        if value is not None:
            readings.append(Reading(label, value, unit))
    condition = text(details.get("condition"), 32)
    if condition:
        readings.append(Reading("Condition", condition))
    return readings


def _numbers(value: Any, limit: int) -> list[float]:
    return [n for n in (number(v) for v in items(value, limit)) if n is not None]


def health_summary(data: Mapping[str, Any]) -> dict[str, Any]:
    """CPU, memory, disks, and the temperatures, fans and battery the Mac reported."""
    return {
        "cpu_percent": health_cpu(data),
        "memory_percent": health_memory(data),
        "memory_used": number(path(data, "psutil", "memory", "used")),
        "memory_total": number(path(data, "psutil", "memory", "total")),
        "load_average": _numbers(path(data, "psutil", "load_average"), 3),
        "uptime_seconds": number(path(data, "psutil", "uptime_seconds")),
        "disks": _disks(data),
        "temperatures": _temperatures(data),
        "fans": _fans(data),
        "battery": _battery(data),
        "thermal_pressure": text(path(data, "smc", "thermal_pressure"), 32),
    }


def top_processes(data: Mapping[str, Any], count: int = TOP_PROCESSES) -> list[Process]:
    """The ``count`` processes using the most CPU, from ``top_cpu``."""
    processes = []
    for entry in items(data.get("top_cpu"), 100):
        entry = mapping(entry)
        if not entry:
            continue
        processes.append(
            Process(
                text(entry.get("name"), 128),
                number(entry.get("pid")),
                number(entry.get("cpu_percent")),
                number(entry.get("memory_percent")),
                text(entry.get("user"), 64),
            )
        )
    processes.sort(key=lambda p: -(p.cpu_percent or 0.0))
    return processes[:count]


def processes_summary(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"process_count": number(data.get("process_count")), "top": top_processes(data)}
