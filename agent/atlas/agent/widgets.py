"""Turning collector results into widget logs: a message a person reads, and the data."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from atlas.contract import MAX_MESSAGE_CHARS, format_timestamp

from .collectors.health import HealthReading
from .collectors.network import NetworkCheck
from .collectors.ping import PingResult
from .collectors.processes import ProcessesResult
from .collectors.roam import RoamEvent
from .collectors.speedtest import SpeedtestResult
from .collectors.wifi import WifiReading

LogEntry = dict[str, Any]


def wire_safe(value: Any) -> Any:
    """``value`` as the wire contract accepts it: NUL (an SSID may hold one) -> U+FFFD, NaN/inf -> None.

    The server refuses a whole batch (422) for one such log, so every log is made safe here.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {wire_safe(str(k)): wire_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [wire_safe(v) for v in value]
    return value


def _entry(widget_type: str, level: str, message: str, data: Mapping[str, Any]) -> LogEntry:
    return {
        "timestamp": format_timestamp(datetime.now(UTC)),
        "level": level,
        "widget_type": widget_type,
        "message": wire_safe(message)[:MAX_MESSAGE_CHARS],
        "data": wire_safe(data),
    }


def wifi_log(reading: WifiReading) -> LogEntry:
    data = reading.as_data()
    if reading.state != "connected":
        text = {"disconnected": "WiFi disconnected", "off": "WiFi is off"}.get(reading.state, "No WiFi interface")
        return _entry("wifi", "INFO", text, data)
    name = reading.ssid or ("a network (SSID redacted by macOS)" if reading.ssid_redacted else "a network")
    parts = [
        f"RSSI {reading.rssi_dbm} dBm" if reading.rssi_dbm is not None else None,
        f"channel {reading.channel}" if reading.channel is not None else None,
        reading.band,
    ]
    return _entry("wifi", "INFO", f"WiFi connected to {name}: " + ", ".join(p for p in parts if p), data)


def ping_log(result: PingResult) -> LogEntry:
    data = result.as_data()
    if result.status in ("ok", "partial_loss"):
        avg = f", avg {result.rtt_avg_ms:g} ms" if result.rtt_avg_ms is not None else ""
        level = "INFO" if result.status == "ok" else "WARNING"
        return _entry("ping", level, f"Ping {result.target}: {result.loss_pct:g}% loss{avg}", data)
    reason = {"unreachable": "100% loss", "unknown_host": "unknown host"}.get(result.status, result.reason or "error")
    return _entry("ping", "ERROR", f"Ping {result.target}: {reason}", data)


def health_log(reading: HealthReading) -> LogEntry:
    data = reading.as_data()
    sample = data.get("psutil") or {}
    cpu = sample.get("cpu_percent")
    memory = (sample.get("memory") or {}).get("percent")
    parts = [
        f"CPU {cpu:g}%" if isinstance(cpu, int | float) else None,
        f"memory {memory:g}%" if isinstance(memory, int | float) else None,
    ]
    text = ", ".join(p for p in parts if p) or "health sampled"
    return _entry("health", "INFO", f"Health: {text}", data)


def processes_log(result: ProcessesResult) -> LogEntry:
    data = result.as_data()
    if result.status != "ok":
        return _entry("processes", "ERROR", f"Processes: {result.status}", data)
    top = data.get("top_cpu") or []
    lead = f"; top CPU {top[0].get('name')} ({top[0].get('cpu_percent')}%)" if top else ""
    return _entry("processes", "INFO", f"Processes: {data.get('process_count')} running{lead}", data)


def speedtest_log(result: SpeedtestResult) -> LogEntry:
    data = result.as_data()
    if result.status != "ok":
        return _entry("speedtest", "ERROR", f"Speed test failed: {result.reason}", data)
    down = f"{result.download_mbps:.1f}" if result.download_mbps is not None else "?"
    up = f"{result.upload_mbps:.1f}" if result.upload_mbps is not None else "?"
    latency = f", {result.latency_ms:.0f} ms" if result.latency_ms is not None else ""
    return _entry("speedtest", "INFO", f"Speed test completed: {down} Mbps down, {up} Mbps up{latency}", data)


def _ms(value: float | None) -> str:
    return f"{value:.1f} ms" if value is not None else "?"


def network_log(check: NetworkCheck) -> LogEntry:
    data = check.as_data()
    name = {"wifi": "Wi-Fi link", "gateway": "Gateway", "dns": "DNS", "http": "HTTP"}.get(check.layer, check.layer)
    target = f" {check.target}" if check.target else ""
    if check.status != "ok":
        level = "WARNING" if check.status in ("partial_loss", "disconnected", "http_error") else "ERROR"
        return _entry("network", level, f"{name}{target}: {check.status} ({check.reason or 'no reason'})", data)
    if check.layer == "gateway":
        text = f"{check.loss_pct:g}% loss, avg {_ms(check.rtt_avg_ms)}" if check.loss_pct is not None else "ok"
    elif check.layer == "dns":
        text = f"{check.query_name} answered in {_ms(check.dns_ms)}"
    elif check.layer == "http":
        text = (
            f"{check.status_code} in {_ms(check.total_ms)} (DNS {_ms(check.dns_ms)}, connect {_ms(check.connect_ms)},"
            f" TLS {_ms(check.tls_ms)}, first byte {_ms(check.ttfb_ms)})"
        )
    else:
        text = f"RSSI {check.rssi_dbm} dBm" if check.rssi_dbm is not None else "connected"
    return _entry("network", "INFO", f"{name}{target}: {text}", data)


def roam_log(event: RoamEvent) -> LogEntry:
    data = event.as_data()
    b, a = event.before, event.after
    before = b.bssid or f"channel {b.channel}"
    after = a.bssid or f"channel {a.channel}"
    return _entry("roam", "INFO", f"Roamed from {before} to {after} ({', '.join(event.changed)} changed)", data)


def agent_log(level: str, message: str, data: dict[str, Any] | None = None) -> LogEntry:
    return _entry("agent", level, message, data or {})
