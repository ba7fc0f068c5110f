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

from atlas.contract import WIDGET_DATA, key_paths

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
    ".".join((widget, *keys)): found.bounds
    for widget, shape in WIDGET_DATA.items()
    for keys, found in key_paths(shape)
    if found.low is not None
}
"""Per number a widget's ``data`` holds, named ``widget.key[.key...]`` (``health.psutil.memory.percent``): the
lowest and highest value shown (inclusive), from the contract's shapes; anything outside is missing.

Generous bounds on what a Mac can report (a process's CPU share counts every core), tight enough that every
value formats, charts and sums without overflow."""


def number(value: Any, field: str) -> float | None:
    """``value`` as a float if it is an int or a float within ``BOUNDS[field]``; anything else is None.

    KeyError for a ``field`` the contract's shapes do not have, so the dashboard reads only keys they define.

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
    """A number read from ``data``: at ``field``'s keys, else at the first of ``older`` (older agents' keys,
    also named in the contract's shapes) holding one; within ``BOUNDS[field]`` either way.

    Called like a function on decoded data; ``timeline`` reads the same number in SQL from the same keys.
    """

    field: str
    older: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in (self.field, *self.older):
            if name not in BOUNDS:
                raise KeyError(f"{name!r} is no number of the contract's widget data")

    @property
    def paths(self) -> tuple[tuple[str, ...], ...]:
        """Each place read, as keys below ``data``."""
        return tuple(tuple(name.split(".")[1:]) for name in (self.field, *self.older))

    @property
    def bounds(self) -> tuple[float, float]:
        return BOUNDS[self.field]

    def __call__(self, data: Mapping[str, Any]) -> float | None:
        return first_number(data, self.field, *self.paths)


wifi_rssi = NumberAt("wifi.rssi_dbm")
wifi_noise = NumberAt("wifi.noise_dbm")
speed_down = NumberAt("speedtest.download_mbps")
speed_up = NumberAt("speedtest.upload_mbps")
ping_latency = NumberAt("ping.rtt_avg_ms", ("ping.rtt_ms.avg",))
ping_fastest = NumberAt("ping.rtt_min_ms", ("ping.rtt_ms.min",))
ping_slowest = NumberAt("ping.rtt_max_ms", ("ping.rtt_ms.max",))
ping_loss = NumberAt("ping.loss_pct")
health_cpu = NumberAt("health.psutil.cpu_percent", ("health.cpu_percent",))
health_memory = NumberAt("health.psutil.memory.percent", ("health.memory_percent",))


def at(data: Mapping[str, Any], field: str) -> float | None:
    """The number at ``field``'s keys below ``data`` (``at(data, "wifi.snr_db")``), within its bounds."""
    return number(path(data, *field.split(".")[1:]), field)


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
        "snr_db": at(data, "wifi.snr_db"),
        "channel": at(data, "wifi.channel"),
        "band": text(data.get("band"), 16),
        "channel_width_mhz": at(data, "wifi.channel_width_mhz"),
        "phy_mode": text(data.get("phy_mode"), 32),
        "tx_rate_mbps": at(data, "wifi.tx_rate_mbps"),
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
        "latency_ms": at(data, "speedtest.latency_ms"),
        "jitter_ms": at(data, "speedtest.jitter_ms"),
        "packet_loss_pct": at(data, "speedtest.packet_loss_pct"),
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
        "sent": at(data, "ping.sent"),
        "received": at(data, "ping.received"),
        "loss_pct": ping_loss(data),
        "rtt_min_ms": ping_fastest(data),
        "rtt_avg_ms": ping_latency(data),
        "rtt_max_ms": ping_slowest(data),
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
                    number(usage.get("percent"), "health.psutil.disks.percent"),
                    number(usage.get("used"), "health.psutil.disks.used"),
                    number(usage.get("total"), "health.psutil.disks.total"),
                )
            )
    for entry in items(data.get("disk"), 12):  # the flat shape of early agents
        entry = mapping(entry)
        disks.append(
            Disk(text(entry.get("mount"), 128) or "?", number(entry.get("percent"), "health.disk.percent"), None, None)
        )
    return disks


def _temperatures(data: Mapping[str, Any]) -> list[Reading]:
    readings = []
    for label, field in (("CPU die", "health.smc.cpu_die_temp_c"), ("GPU die", "health.smc.gpu_die_temp_c")):
        value = at(data, field)
        if value is not None:
            readings.append(Reading(label, value, "°C"))
    chips = path(data, "psutil", "temperatures")
    if isinstance(chips, Mapping):
        for chip, sensors in list(chips.items())[:8]:
            for sensor in items(sensors, 8):
                sensor = mapping(sensor)
                value = number(sensor.get("current_c"), "health.psutil.temperatures.current_c")
                if value is not None:
                    label = text(sensor.get("label"), 64) or text(chip, 64) or "sensor"
                    readings.append(Reading(label, value, "°C"))
    battery_temp = at(data, "health.battery.temperature_c")
    if battery_temp is not None:
        readings.append(Reading("Battery temperature", battery_temp, "°C"))
    return readings[:16]


def _fans(data: Mapping[str, Any]) -> list[Reading]:
    fans = [number(rpm, "health.smc.fans_rpm") for rpm in items(path(data, "smc", "fans_rpm"), 8)]
    return [Reading(f"Fan {i}", rpm, "rpm") for i, rpm in enumerate(fans, 1) if rpm is not None]


def _battery(data: Mapping[str, Any]) -> list[Reading]:
    plain, details = mapping(path(data, "psutil", "battery")), mapping(data.get("battery"))
    readings: list[Reading] = []
    percent = number(plain.get("percent"), "health.psutil.battery.percent")
    if percent is None:
        percent = number(details.get("percent"), "health.battery.percent")
    if percent is not None:
        readings.append(Reading("Charge", percent, "%"))
    plugged = plain.get("power_plugged")
    if isinstance(plugged, bool):
        readings.append(Reading("Power", "plugged in" if plugged else "on battery"))
    for label, key, unit, field in (
        ("Health", "max_capacity_pct", "%", "health.battery.max_capacity_pct"),
        ("Cycles", "cycle_count", "", "health.battery.cycle_count"),
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
        "memory_used": at(data, "health.psutil.memory.used"),
        "memory_total": at(data, "health.psutil.memory.total"),
        "load_average": _numbers(path(data, "psutil", "load_average"), 3, "health.psutil.load_average"),
        "uptime_seconds": at(data, "health.psutil.uptime_seconds"),
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
                number(entry.get("pid"), "processes.top_cpu.pid"),
                number(entry.get("cpu_percent"), "processes.top_cpu.cpu_percent"),
                number(entry.get("memory_percent"), "processes.top_cpu.memory_percent"),
                text(entry.get("user"), 64),
            )
        )
    processes.sort(key=lambda p: -(p.cpu_percent or 0.0))
    return processes[:count]


def processes_summary(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"process_count": at(data, "processes.process_count"), "top": top_processes(data)}
