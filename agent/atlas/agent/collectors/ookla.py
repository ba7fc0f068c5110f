"""Parser for the Ookla Speedtest CLI's JSON output (``speedtest -f json`` / ``-f json-pretty``).

A result is one object with ``"type": "result"``: ``download``/``upload`` carry ``bandwidth`` in
**bytes per second** (Mbps = bandwidth * 8 / 1e6), ``bytes`` and ``elapsed`` (ms); ``ping`` carries
``latency`` and ``jitter`` in ms; ``packetLoss`` is a percentage and is absent when the server could
not measure it; ``isp``, ``interface`` (name, internal/external IP, ``isVpn``), ``server`` (id, name,
location, country, host, port) and ``result`` (id, url) describe the run.

A failure is a log object, ``{"type": "log", "level": "error", "message": ...}``, printed on stdout
after ``[timestamp] [error] ...`` lines on stderr. When both streams are captured together the text
holds those lines and then the object (compact or pretty-printed), so the parser looks for JSON
objects anywhere in the text and takes the result if there is one, else the last error log.

Only the CLI 1.0/1.1 result layout has real captures here; the 1.2 additions (idle latency
low/high, per-phase loaded latency) are not read until one is found.

``parse_ookla_json`` is pure and never raises: garbled text is a result with ``status="error"``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from .speedtest import SpeedtestResult

__all__ = ["MAX_TEXT", "OoklaResult", "parse_ookla_json"]

MAX_TEXT = 1024
"""Longest text kept in a field: a garbled output must not make a log exceed the wire's bounds."""
MAX_OBJECTS = 64
"""JSON objects kept from one output; the CLI prints one (after a few log lines)."""
MAX_ATTEMPTS = 256
"""``{`` positions tried before giving up: bounds the work on garbage full of braces."""
MAX_INPUT_CHARS = 1_000_000
"""Text beyond this is ignored; a real result is under 2 KB."""

_decoder = json.JSONDecoder()


@dataclass(frozen=True)
class OoklaResult:
    """One Ookla CLI run; numbers are None when the output did not carry them.

    ``status`` is ``ok`` or ``error``; ``reason`` is the CLI's error message or why the output
    could not be read. ``timestamp`` is the CLI's own (UTC ISO 8601 with ``Z``).
    """

    status: str
    timestamp: str | None = None
    download_mbps: float | None = None
    upload_mbps: float | None = None
    download_bytes: int | None = None
    upload_bytes: int | None = None
    download_elapsed_ms: int | None = None
    upload_elapsed_ms: int | None = None
    latency_ms: float | None = None
    jitter_ms: float | None = None
    packet_loss_pct: float | None = None
    isp: str | None = None
    interface: str | None = None
    internal_ip: str | None = None
    external_ip: str | None = None
    is_vpn: bool | None = None
    server_id: int | None = None
    server_name: str | None = None
    server_location: str | None = None
    server_country: str | None = None
    server_host: str | None = None
    server_port: int | None = None
    result_id: str | None = None
    result_url: str | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and len(value) > MAX_TEXT:
                object.__setattr__(self, f.name, value[:MAX_TEXT])

    def as_data(self) -> dict[str, Any]:
        """JSON-safe dict (str/int/float/bool/None only)."""
        return asdict(self)

    def as_speedtest_result(self) -> SpeedtestResult:
        """The same run as the speedtest widget's result, ``source="ookla_cli"``."""
        return SpeedtestResult(
            status=self.status,
            timestamp=self.timestamp or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            source="ookla_cli",
            download_mbps=self.download_mbps,
            upload_mbps=self.upload_mbps,
            latency_ms=self.latency_ms,
            jitter_ms=self.jitter_ms,
            packet_loss_pct=self.packet_loss_pct,
            isp=self.isp,
            server_id=self.server_id,
            server_name=self.server_location,
            server_sponsor=self.server_name,
            server_country=self.server_country,
            bytes_sent=self.upload_bytes,
            bytes_received=self.download_bytes,
            reason=self.reason,
        )


# --------------------------------------------------------------------------- helpers


def _number(value: Any, ndigits: int = 3) -> float | None:
    """A finite, non-negative number (bools and strings refused), rounded."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # a huge JSON integer
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return round(number, ndigits)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 2**63:
        return None
    return value


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value or None


def _ip(value: Any) -> str | None:
    """An address, or None for the ``***`` placeholder the CLI prints when it hides one."""
    text = _text(value)
    return None if text is None or set(text) == {"*"} else text


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _mbps(phase: dict[str, Any]) -> float | None:
    bandwidth = _number(phase.get("bandwidth"), 6)
    return None if bandwidth is None else round(bandwidth * 8 / 1e6, 3)


def _objects(text: str) -> list[dict[str, Any]]:
    """The JSON objects in ``text``, in order (stderr log lines and other text skipped)."""
    found: list[dict[str, Any]] = []
    at = text.find("{")
    attempts = 0
    while at != -1 and len(found) < MAX_OBJECTS and attempts < MAX_ATTEMPTS:
        attempts += 1
        try:
            value, end = _decoder.raw_decode(text, at)
        except (ValueError, RecursionError):
            at = text.find("{", at + 1)
            continue
        if isinstance(value, dict):
            found.append(value)
        at = text.find("{", end)
    return found


# --------------------------------------------------------------------------- parser


def parse_ookla_json(text: str) -> OoklaResult:
    """Parse ``speedtest -f json`` (or ``json-pretty``) output, stderr lines allowed. Never raises."""
    try:
        return _parse(text if isinstance(text, str) else "")
    except Exception as exc:  # a parser bug must not kill the agent
        return OoklaResult(status="error", reason=f"unparsable Ookla output: {exc!r}")


def _parse(text: str) -> OoklaResult:
    objects = _objects(text[:MAX_INPUT_CHARS])
    results = [o for o in objects if o.get("type") == "result"]
    if results:
        return _from_result(results[-1])
    errors = [o for o in objects if o.get("type") == "log" and o.get("level") == "error"]
    if errors:
        last = errors[-1]
        return OoklaResult(
            status="error",
            timestamp=_text(last.get("timestamp")),
            reason=_text(last.get("message")) or "Ookla CLI reported an error",
        )
    if not text.strip():
        return OoklaResult(status="error", reason="empty Ookla output")
    return OoklaResult(status="error", reason="no Ookla result in output")


def _from_result(data: dict[str, Any]) -> OoklaResult:
    ping = _dict(data.get("ping"))
    download = _dict(data.get("download"))
    upload = _dict(data.get("upload"))
    interface = _dict(data.get("interface"))
    server = _dict(data.get("server"))
    result = _dict(data.get("result"))
    loss = _number(data.get("packetLoss"))
    vpn = interface.get("isVpn")
    values = OoklaResult(
        status="ok",
        timestamp=_text(data.get("timestamp")),
        download_mbps=_mbps(download),
        upload_mbps=_mbps(upload),
        download_bytes=_count(download.get("bytes")),
        upload_bytes=_count(upload.get("bytes")),
        download_elapsed_ms=_count(download.get("elapsed")),
        upload_elapsed_ms=_count(upload.get("elapsed")),
        latency_ms=_number(ping.get("latency")),
        jitter_ms=_number(ping.get("jitter")),
        packet_loss_pct=loss if loss is not None and loss <= 100 else None,
        isp=_text(data.get("isp")),
        interface=_text(interface.get("name")),
        internal_ip=_ip(interface.get("internalIp")),
        external_ip=_ip(interface.get("externalIp")),
        is_vpn=vpn if isinstance(vpn, bool) else None,
        server_id=_count(server.get("id")),
        server_name=_text(server.get("name")),
        server_location=_text(server.get("location")),
        server_country=_text(server.get("country")),
        server_host=_text(server.get("host")),
        server_port=_count(server.get("port")),
        result_id=_text(result.get("id")),
        result_url=_text(result.get("url")),
    )
    if values.download_mbps is None and values.upload_mbps is None and values.latency_ms is None:
        return OoklaResult(status="error", timestamp=values.timestamp, reason="Ookla result without measurements")
    return values
