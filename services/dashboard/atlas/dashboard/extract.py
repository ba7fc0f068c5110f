"""Reading widget ``data`` the dashboard shows, defensively: pure functions, no I/O.

``data`` comes from Macs that may be compromised, so nothing in it is trusted:
a number is read by ``number`` alone, against the bounds ``BOUNDS`` gives its
field (an int or a float within them; a bool, a string, NaN, an infinity, a
400-digit integer or any value outside the bounds reads as None, so it is
shown as missing and never reaches a format, a chart or ``float()``); text is
a string cut to a bounded length, and a missing or oddly shaped field reads as
None. Templates escape whatever text comes out of here.

``decode_data`` is the one place a stored ``data`` value becomes a dict: the
parsed JSONB of a clear row, or the JSON text of a row opened by
``machine.LogContent`` when it is encrypted at rest.
"""

from __future__ import annotations

import json
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


BOUNDS: Mapping[str, tuple[float, float]] = {
    # Wi-Fi
    "wifi.rssi_dbm": (-120, 0),
    "wifi.noise_dbm": (-120, 0),
    "wifi.snr_db": (-50, 120),
    "wifi.channel": (1, 233),
    "wifi.channel_width_mhz": (5, 320),
    "wifi.tx_rate_mbps": (0, 100_000),
    # speed test
    "speedtest.mbps": (0, 100_000),
    "speedtest.ms": (0, 600_000),
    "speedtest.loss_pct": (0, 100),
    # ping
    "ping.count": (0, 1_000_000),
    "ping.loss_pct": (0, 100),
    "ping.ms": (0, 600_000),
    # health
    "health.percent": (0, 100),
    "health.bytes": (0, 2**60),
    "health.load_average": (0, 1_000_000),
    "health.uptime_seconds": (0, 200 * 365 * 86400),
    "health.temperature_c": (-100, 250),
    "health.fan_rpm": (0, 100_000),
    "health.battery_capacity_pct": (0, 200),
    "health.battery_cycles": (0, 1_000_000),
    # processes
    "processes.pid": (0, 2**32),
    "processes.cpu_percent": (0, 100 * 4096),
    "processes.memory_percent": (0, 100),
    "processes.count": (0, 100_000_000),
}
"""Per field read from ``data``: the lowest and highest value shown (inclusive); anything outside is missing.

Generous bounds on what a Mac can report (a process's CPU share counts every core), tight enough that every
value formats, charts and sums without overflow."""


def number(value: Any, field: str) -> float | None:
    """``value`` as a float if it is an int or a float within ``BOUNDS[field]``; anything else is None.

    The bounds are compared before any conversion: Python compares a huge int with a float exactly, so a
    400-digit integer is out of bounds instead of an OverflowError; NaN compares false and is refused too.
    """
    low, high = BOUNDS[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        return None
    return float(value)


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


def first_number(data: Mapping[str, Any], field: str, *paths: Sequence[str]) -> float | None:
    """The first of several key paths that holds a number for ``field`` (older agents used other names)."""
    for keys in paths:
        found = number(path(data, *keys), field)
        if found is not None:
            return found
    return None


# --- per widget: the numbers charts and the fleet list need ------------------------------


@dataclass(frozen=True)
class NumberAt:
    """A number read from ``data``: the first of ``paths`` holding a number within ``BOUNDS[field]``.

    Called like a function on decoded data; ``timeline`` reads the same number in SQL from the same fields.
    """

    field: str
    paths: tuple[tuple[str, ...], ...]

    def __call__(self, data: Mapping[str, Any]) -> float | None:
        return first_number(data, self.field, *self.paths)


wifi_rssi = NumberAt("wifi.rssi_dbm", (("rssi_dbm",),))
wifi_noise = NumberAt("wifi.noise_dbm", (("noise_dbm",),))
speed_down = NumberAt("speedtest.mbps", (("download_mbps",),))
speed_up = NumberAt("speedtest.mbps", (("upload_mbps",),))
ping_latency = NumberAt("ping.ms", (("rtt_avg_ms",), ("rtt_ms", "avg")))
ping_loss = NumberAt("ping.loss_pct", (("loss_pct",),))
health_cpu = NumberAt("health.percent", (("psutil", "cpu_percent"), ("cpu_percent",)))
health_memory = NumberAt("health.percent", (("psutil", "memory", "percent"), ("memory_percent",)))


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
        "snr_db": number(data.get("snr_db"), "wifi.snr_db"),
        "channel": number(data.get("channel"), "wifi.channel"),
        "band": text(data.get("band"), 16),
        "channel_width_mhz": number(data.get("channel_width_mhz"), "wifi.channel_width_mhz"),
        "phy_mode": text(data.get("phy_mode"), 32),
        "tx_rate_mbps": number(data.get("tx_rate_mbps"), "wifi.tx_rate_mbps"),
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
        "latency_ms": number(data.get("latency_ms"), "speedtest.ms"),
        "jitter_ms": number(data.get("jitter_ms"), "speedtest.ms"),
        "packet_loss_pct": number(data.get("packet_loss_pct"), "speedtest.loss_pct"),
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
        "sent": number(data.get("sent"), "ping.count"),
        "received": number(data.get("received"), "ping.count"),
        "loss_pct": ping_loss(data),
        "rtt_min_ms": first_number(data, "ping.ms", ("rtt_min_ms",), ("rtt_ms", "min")),
        "rtt_avg_ms": ping_latency(data),
        "rtt_max_ms": first_number(data, "ping.ms", ("rtt_max_ms",), ("rtt_ms", "max")),
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
                    number(usage.get("percent"), "health.percent"),
                    number(usage.get("used"), "health.bytes"),
                    number(usage.get("total"), "health.bytes"),
                )
            )
    for entry in items(data.get("disk"), 12):  # the flat shape of early agents
        entry = mapping(entry)
        disks.append(
            Disk(text(entry.get("mount"), 128) or "?", number(entry.get("percent"), "health.percent"), None, None)
        )
    return disks


def _temperatures(data: Mapping[str, Any]) -> list[Reading]:
    readings = []
    for label, keys in (("CPU die", ("smc", "cpu_die_temp_c")), ("GPU die", ("smc", "gpu_die_temp_c"))):
        value = number(path(data, *keys), "health.temperature_c")
        if value is not None:
            readings.append(Reading(label, value, "°C"))
    chips = path(data, "psutil", "temperatures")
    if isinstance(chips, Mapping):
        for chip, sensors in list(chips.items())[:8]:
            for sensor in items(sensors, 8):
                sensor = mapping(sensor)
                value = number(sensor.get("current_c"), "health.temperature_c")
                if value is not None:
                    label = text(sensor.get("label"), 64) or text(chip, 64) or "sensor"
                    readings.append(Reading(label, value, "°C"))
    battery_temp = number(path(data, "battery", "temperature_c"), "health.temperature_c")
    if battery_temp is not None:
        readings.append(Reading("Battery temperature", battery_temp, "°C"))
    return readings[:16]


def _fans(data: Mapping[str, Any]) -> list[Reading]:
    fans = [number(rpm, "health.fan_rpm") for rpm in items(path(data, "smc", "fans_rpm"), 8)]
    return [Reading(f"Fan {i}", rpm, "rpm") for i, rpm in enumerate(fans, 1) if rpm is not None]


def _battery(data: Mapping[str, Any]) -> list[Reading]:
    plain, details = mapping(path(data, "psutil", "battery")), mapping(data.get("battery"))
    readings: list[Reading] = []
    percent = number(plain.get("percent"), "health.percent")
    if percent is None:
        percent = number(details.get("percent"), "health.percent")
    if percent is not None:
        readings.append(Reading("Charge", percent, "%"))
    plugged = plain.get("power_plugged")
    if isinstance(plugged, bool):
        readings.append(Reading("Power", "plugged in" if plugged else "on battery"))
    for label, key, unit, field in (
        ("Health", "max_capacity_pct", "%", "health.battery_capacity_pct"),
        ("Cycles", "cycle_count", "", "health.battery_cycles"),
    ):
        value = number(details.get(key), field)
        if value is not None:
            readings.append(Reading(label, value, unit))
    condition = text(details.get("condition"), 32)
    if condition:
        readings.append(Reading("Condition", condition))
    return readings


def _numbers(value: Any, limit: int, field: str) -> list[float]:
    return [n for n in (number(v, field) for v in items(value, limit)) if n is not None]


def health_summary(data: Mapping[str, Any]) -> dict[str, Any]:
    """CPU, memory, disks, and the temperatures, fans and battery the Mac reported."""
    return {
        "cpu_percent": health_cpu(data),
        "memory_percent": health_memory(data),
        "memory_used": number(path(data, "psutil", "memory", "used"), "health.bytes"),
        "memory_total": number(path(data, "psutil", "memory", "total"), "health.bytes"),
        "load_average": _numbers(path(data, "psutil", "load_average"), 3, "health.load_average"),
        "uptime_seconds": number(path(data, "psutil", "uptime_seconds"), "health.uptime_seconds"),
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
                number(entry.get("pid"), "processes.pid"),
                number(entry.get("cpu_percent"), "processes.cpu_percent"),
                number(entry.get("memory_percent"), "processes.memory_percent"),
                text(entry.get("user"), 64),
            )
        )
    processes.sort(key=lambda p: -(p.cpu_percent or 0.0))
    return processes[:count]


def processes_summary(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"process_count": number(data.get("process_count"), "processes.count"), "top": top_processes(data)}
