"""Ping widget: a pure parser of the system ``ping`` output plus a thin runner.

Understands macOS (BSD) ``ping``, Linux iputils ``ping`` and BusyBox ``ping``.
``parse_ping`` never raises: an unknown host, 100 % loss or an odd output are
results with a status, not exceptions.
"""

from __future__ import annotations

import ipaddress
import math
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import cast
from urllib.parse import urlsplit

from atlas.contract import PingData

from . import command

__all__ = [
    "PUBLIC_RESOLVER",
    "STATUSES",
    "PingResult",
    "Runner",
    "build_command",
    "default_targets",
    "parse_default_gateway",
    "parse_ping",
    "ping",
    "run_command",
]

STATUSES = ("ok", "partial_loss", "unreachable", "unknown_host", "error")
PUBLIC_RESOLVER = "1.1.1.1"
MAX_TEXT = 1024
"""Longest text kept in a result, so a log stays far below the wire's 8192-character message and 64 KiB data."""

# How long the Python side waits beyond ping's own deadline (DNS lookups are not
# covered by ``-w``/``-t``).
_GRACE_S = 5.0

# --- parsing ---------------------------------------------------------------

# ``PING host (addr): 56 data bytes`` (macOS, BusyBox), ``PING host (addr) 56(84) bytes`` and
# ``PING ::1(::1) 56 data bytes`` (iputils).
_HEADER = re.compile(r"^PING\s+(?P<host>\S+?)\s*\((?P<addr>[^)\s]+)\)", re.MULTILINE)
# macOS ``ping6``: ``PING6(56=40+8+8 bytes) ::1 --> ::1``.
_HEADER6 = re.compile(r"^PING6\(.*?\)\s+\S+\s+-->\s+(?P<addr>\S+)", re.MULTILINE)
_SUMMARY = re.compile(
    r"^\s*(?P<sent>\d+) packets transmitted, (?P<received>\d+) (?:packets )?received(?P<rest>.*)$",
    re.MULTILINE,
)
_DUPLICATES = re.compile(r"\+(\d+) duplicates")
_ERRORS = re.compile(r"\+(\d+) errors")
_LOSS = re.compile(r"(-?\d+(?:\.\d+)?)% packet loss")
# ``round-trip min/avg/max/stddev`` (macOS), ``rtt min/avg/max/mdev`` (iputils),
# ``round-trip min/avg/max`` (BusyBox, no fourth value).
_RTT = re.compile(
    r"^\s*(?:rtt|round-trip) min/avg/max(?:/(?:mdev|stddev))? = "
    r"(?P<min>\d+(?:\.\d+)?)/(?P<avg>\d+(?:\.\d+)?)/(?P<max>\d+(?:\.\d+)?)(?:/(?P<dev>\d+(?:\.\d+)?))? ms",
    re.MULTILINE,
)
_UNKNOWN_HOST = re.compile(
    r"cannot resolve|unknown host|Name or service not known|Temporary failure in name resolution"
    r"|No address associated with hostname|nodename nor servname provided|bad address"
    r"|Name does not resolve",
    re.IGNORECASE,
)
# Lines ping prints to stderr, e.g. ``ping: permission denied (are you root?)``.
_PING_MESSAGE = re.compile(r"^ping6?: (?P<msg>.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class PingResult:
    """One ping target's outcome; numbers are None when the output did not print them.

    ``rtt_stddev_ms`` is macOS's ``stddev`` or iputils' ``mdev`` (both the population
    standard deviation); BusyBox prints no fourth value, so it stays None.
    """

    target: str
    status: str
    address: str | None = None
    sent: int | None = None
    received: int | None = None
    duplicates: int | None = None
    errors: int | None = None
    loss_pct: float | None = None
    rtt_min_ms: float | None = None
    rtt_avg_ms: float | None = None
    rtt_max_ms: float | None = None
    rtt_stddev_ms: float | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        for name in ("target", "address", "reason"):  # a garbled output line can be any length
            value = getattr(self, name)
            if isinstance(value, str) and len(value) > MAX_TEXT:
                object.__setattr__(self, name, value[:MAX_TEXT])

    def as_data(self) -> PingData:
        """JSON-safe dict (str/int/float/None only) for a widget log's ``data``."""
        return cast("PingData", asdict(self))


def _error(target: str, reason: str) -> PingResult:
    return PingResult(target=target, status="error", reason=reason)


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _loss_from_counts(sent: int, received: int) -> float | None:
    """Loss in percent from the packet counts, in 0..100 however large they are; None without packets."""
    if sent <= 0:
        return None
    return 0.0 if received >= sent else round(100 * (sent - received) / sent, 1)


def parse_ping(text: str, target: str) -> PingResult:
    """Parse the combined stdout+stderr of one ``ping`` run. Never raises."""
    try:
        return _parse(text if isinstance(text, str) else "", target)
    except Exception as exc:  # a parser bug must not kill the agent
        return _error(target, f"unparsable ping output: {type(exc).__name__}")


def _parse(text: str, target: str) -> PingResult:
    address: str | None = None
    if header := _HEADER.search(text):
        address = header.group("addr")
    elif header6 := _HEADER6.search(text):
        address = header6.group("addr")

    messages = [m.group("msg") for m in _PING_MESSAGE.finditer(text)]
    unknown = next((msg for msg in messages if _UNKNOWN_HOST.search(msg)), None)
    if unknown is not None and address is None:
        return PingResult(target=target, status="unknown_host", reason=unknown)

    summaries = list(_SUMMARY.finditer(text))
    summary = summaries[-1] if summaries else None
    if summary is None:
        if messages:
            return PingResult(target=target, status="error", address=address, reason=messages[0])
        if not text.strip():
            return PingResult(target=target, status="error", address=address, reason="empty ping output")
        return PingResult(target=target, status="error", address=address, reason="no statistics in ping output")

    sent = int(summary.group("sent"))
    received = int(summary.group("received"))
    rest = summary.group("rest")
    duplicates = int(m.group(1)) if (m := _DUPLICATES.search(rest)) else 0
    errors = int(m.group(1)) if (m := _ERRORS.search(rest)) else None
    loss_pct = _float(m.group(1)) if (m := _LOSS.search(rest)) else None
    if loss_pct is None or not 0.0 <= loss_pct <= 100.0:  # absent, or absurd (garbled output): count it
        loss_pct = _loss_from_counts(sent, received)

    rtt = _RTT.search(text, summary.end())
    rtt_min, rtt_avg, rtt_max, rtt_dev = (
        (_float(rtt.group("min")), _float(rtt.group("avg")), _float(rtt.group("max")), _float(rtt.group("dev")))
        if rtt
        else (None, None, None, None)
    )

    reason: str | None = None
    if sent == 0:
        status, reason = "error", "no packets transmitted"
    elif received == 0:
        status = "unreachable"
    elif received < sent or (loss_pct is not None and loss_pct > 0):
        status = "partial_loss"
    else:
        status = "ok"
    if status != "ok" and reason is None and messages:
        reason = messages[0]

    return PingResult(
        target=target,
        status=status,
        address=address,
        sent=sent,
        received=received,
        duplicates=duplicates,
        errors=errors,
        loss_pct=loss_pct,
        rtt_min_ms=rtt_min,
        rtt_avg_ms=rtt_avg,
        rtt_max_ms=rtt_max,
        rtt_stddev_ms=rtt_dev,
        reason=reason,
    )


# --- running ---------------------------------------------------------------

Runner = Callable[[Sequence[str], float], str]
"""``run(argv, timeout_s) -> combined stdout+stderr``; may raise OSError or subprocess.TimeoutExpired."""


def run_command(argv: Sequence[str], timeout_s: float) -> str:
    """Run ``argv`` with stderr merged into stdout; a failed ping still has output to parse."""
    return command.run_command(argv, timeout=timeout_s, merge_stderr=True, check=False)


def _is_macos(platform: str | None) -> bool:
    return (platform or sys.platform) == "darwin"


def build_command(target: str, count: int, timeout_s: float, platform: str | None = None) -> list[str]:
    """``ping`` argv: ``-t`` is the overall timeout on macOS, ``-w`` the deadline on Linux."""
    deadline = str(max(1, math.ceil(timeout_s)))
    flag = "-t" if _is_macos(platform) else "-w"
    return ["ping", "-n", "-c", str(max(1, count)), flag, deadline, target]


def ping(
    target: str,
    count: int = 5,
    timeout_s: float = 10.0,
    run: Runner = run_command,
    platform: str | None = None,
) -> PingResult:
    """Ping ``target`` with the system ``ping`` and parse the output. Never raises."""
    if not target or target.startswith("-") or any(c.isspace() for c in target):
        return _error(target, f"invalid target {target!r}")
    argv = build_command(target, count, timeout_s, platform)
    try:
        output = run(argv, timeout_s + _GRACE_S)
    except FileNotFoundError:
        return _error(target, "ping command not found")
    except subprocess.TimeoutExpired:
        return _error(target, f"ping timed out after {timeout_s + _GRACE_S:g} s")
    except (OSError, subprocess.SubprocessError) as exc:
        return _error(target, f"could not run ping: {exc}")
    return parse_ping(output, target)


# --- default targets -------------------------------------------------------

_LINUX_GATEWAY = re.compile(r"^default\s+via\s+(\S+)", re.MULTILINE)
_MACOS_GATEWAY = re.compile(r"^\s*gateway:\s*(\S+)", re.MULTILINE)


def parse_default_gateway(text: str, platform: str | None = None) -> str | None:
    """Gateway IP from ``ip route show default`` (Linux) or ``route -n get default`` (macOS).

    None when there is no default route or the gateway is not an IP (e.g. ``link#5``).
    """
    match = (_MACOS_GATEWAY if _is_macos(platform) else _LINUX_GATEWAY).search(text or "")
    if match is None:
        return None
    gateway = match.group(1).split("%", 1)[0]  # drop an IPv6 zone such as ``%en0``
    try:
        ipaddress.ip_address(gateway)
    except ValueError:
        return None
    return gateway


def _server_host(url: str | None) -> str | None:
    if not url or not url.strip():
        return None
    url = url.strip()
    try:
        return urlsplit(url if "//" in url else f"//{url}").hostname or None
    except ValueError:
        return None


def default_targets(
    fleet_server_url: str | None,
    run: Runner = run_command,
    platform: str | None = None,
) -> list[str]:
    """Default gateway (skipped if unknown), the public resolver, and the fleet server's host; deduplicated."""
    argv = ["route", "-n", "get", "default"] if _is_macos(platform) else ["ip", "route", "show", "default"]
    try:
        gateway = parse_default_gateway(run(argv, 5.0), platform)
    except (OSError, subprocess.SubprocessError):
        gateway = None
    candidates = [gateway, PUBLIC_RESOLVER, _server_host(fleet_server_url)]
    return list(dict.fromkeys(c for c in candidates if c))
