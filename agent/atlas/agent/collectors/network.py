"""Layered network checks: the Wi-Fi link, the default gateway, DNS and HTTP(S), one result per layer and target.

Each check has a hard time bound and never raises: a failure is a result with a status. Resolvers come
from ``scutil --dns`` on macOS (``/etc/resolv.conf`` there is a compatibility copy that misses scoped and
VPN resolvers) and ``/etc/resolv.conf`` elsewhere; DNS is timed with a minimal UDP query written here (an
``A`` question, the answer's code and record count: no parsing of records is needed to time one), so the
agent needs no DNS library. HTTP(S) timings come from httpcore's ``trace`` extension.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httpx

from atlas.contract import NetworkData

from . import command
from .ping import PingResult, parse_default_gateway, ping
from .wifi import WifiReading

__all__ = [
    "LAYERS",
    "NetworkCheck",
    "check_dns",
    "check_gateway",
    "check_http",
    "check_wifi_link",
    "default_gateway",
    "parse_resolv_conf",
    "parse_scutil_dns",
    "split_resolver",
    "system_resolvers",
]

LAYERS = ("wifi", "gateway", "dns", "http")
MAX_TEXT = 512
"""Longest text (target, reason) kept in a result."""
MAX_BODY_BYTES = 1024 * 1024
"""An HTTP check reads at most this much of the body, then stops the clock."""

_LAYER_KEYS: dict[str, tuple[str, ...]] = {
    "wifi": ("state", "bssid", "rssi_dbm", "snr_db", "tx_rate_mbps", "channel", "band", "reading_age_s", "roams"),
    "gateway": ("address", "sent", "received", "loss_pct", "rtt_min_ms", "rtt_avg_ms", "rtt_max_ms"),
    "dns": ("address", "query_name", "query_type", "rcode", "answers", "dns_ms"),
    "http": (
        "address",
        "status_code",
        "http_version",
        "dns_ms",
        "connect_ms",
        "tls_ms",
        "ttfb_ms",
        "total_ms",
    ),
}


@dataclass(frozen=True)
class NetworkCheck:
    """One layer's check of one target; only the keys of its layer go into the log's data."""

    layer: str
    target: str
    status: str
    reason: str | None = None
    address: str | None = None
    sent: int | None = None
    received: int | None = None
    loss_pct: float | None = None
    rtt_min_ms: float | None = None
    rtt_avg_ms: float | None = None
    rtt_max_ms: float | None = None
    query_name: str | None = None
    query_type: str | None = None
    rcode: str | None = None
    answers: int | None = None
    dns_ms: float | None = None
    connect_ms: float | None = None
    tls_ms: float | None = None
    ttfb_ms: float | None = None
    total_ms: float | None = None
    status_code: int | None = None
    http_version: str | None = None
    state: str | None = None
    bssid: str | None = None
    rssi_dbm: int | None = None
    snr_db: int | None = None
    tx_rate_mbps: float | None = None
    channel: int | None = None
    band: str | None = None
    reading_age_s: float | None = None
    roams: int | None = None

    def __post_init__(self) -> None:
        for name in ("target", "reason"):
            value = getattr(self, name)
            if isinstance(value, str) and len(value) > MAX_TEXT:
                object.__setattr__(self, name, value[:MAX_TEXT])

    def as_data(self) -> NetworkData:
        """The layer, target, status and reason, and the keys its layer measures (null when not measured)."""
        values = asdict(self)
        keys = ("layer", "target", "status", "reason", *_LAYER_KEYS.get(self.layer, ()))
        return cast("NetworkData", {k: values[k] for k in keys})


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


# --- wifi -------------------------------------------------------------------


def check_wifi_link(reading: WifiReading | None, age_s: float | None = None, roams: int | None = None) -> NetworkCheck:
    """The link layer from the latest Wi-Fi reading (the collect loop's): its state, signal and rate."""
    if reading is None:
        return NetworkCheck("wifi", "", "error", reason="no Wi-Fi reading yet", roams=roams)
    connected = reading.state == "connected"
    return NetworkCheck(
        "wifi",
        reading.interface or "",
        "ok" if connected else "disconnected",
        reason=None if connected else f"Wi-Fi {reading.state}",
        state=reading.state,
        bssid=reading.bssid,
        rssi_dbm=reading.rssi_dbm,
        snr_db=reading.snr_db,
        tx_rate_mbps=reading.tx_rate_mbps,
        channel=reading.channel,
        band=reading.band,
        reading_age_s=None if age_s is None else round(age_s, 3),
        roams=roams,
    )


# --- gateway ----------------------------------------------------------------

RouteRunner = Callable[[Sequence[str], float], str]
"""``run(argv, timeout_s) -> output``; may raise OSError or SubprocessError."""


def _run_route(argv: Sequence[str], timeout_s: float) -> str:
    return command.run_command(argv, timeout=timeout_s, merge_stderr=True, check=False)


def default_gateway(run: RouteRunner = _run_route, platform: str | None = None) -> str | None:
    """The default gateway's address (``route -n get default`` on macOS, ``ip route show default`` elsewhere)."""
    macos = (platform or sys.platform) == "darwin"
    argv = ["route", "-n", "get", "default"] if macos else ["ip", "route", "show", "default"]
    try:
        return parse_default_gateway(run(argv, 5.0), "darwin" if macos else "linux")
    except (OSError, subprocess.SubprocessError):
        return None


def check_gateway(gateway: str | None, *, count: int = 3, timeout_s: float = 5.0) -> NetworkCheck:
    """Ping the gateway with the ping collector; ``no_gateway`` when there is no default route."""
    if not gateway:
        return NetworkCheck("gateway", "", "no_gateway", reason="no default gateway")
    result: PingResult = ping(gateway, count=count, timeout_s=timeout_s)
    status = result.status if result.status in ("ok", "partial_loss", "unreachable") else "error"
    return NetworkCheck(
        "gateway",
        gateway,
        status,
        reason=result.reason,
        address=result.address or gateway,
        sent=result.sent,
        received=result.received,
        loss_pct=result.loss_pct,
        rtt_min_ms=result.rtt_min_ms,
        rtt_avg_ms=result.rtt_avg_ms,
        rtt_max_ms=result.rtt_max_ms,
    )


# --- resolvers --------------------------------------------------------------

_RESOLV_NAMESERVER = re.compile(r"^\s*nameserver\s+(\S+)", re.MULTILINE)
_SCUTIL_NAMESERVER = re.compile(r"^\s*nameserver\[\d+\]\s*:\s*(\S+)", re.MULTILINE)


def _unique_addresses(found: Sequence[str]) -> list[str]:
    out: list[str] = []
    for value in found:
        try:
            ipaddress.ip_address(value.split("%", 1)[0])
        except ValueError:
            continue
        if value not in out:
            out.append(value)
    return out


def parse_resolv_conf(text: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf, in order, without repeats; comments and junk skipped."""
    if not isinstance(text, str):
        return []
    lines = (line.split("#", 1)[0].split(";", 1)[0] for line in text.splitlines())
    return _unique_addresses(_RESOLV_NAMESERVER.findall("\n".join(lines)))


def parse_scutil_dns(text: str) -> list[str]:
    """The nameservers of ``scutil --dns``'s unscoped resolvers (the part before "for scoped queries")."""
    if not isinstance(text, str):
        return []
    main = text.split("DNS configuration (for scoped queries)", 1)[0]
    return _unique_addresses(_SCUTIL_NAMESERVER.findall(main))


def system_resolvers(run: RouteRunner = _run_route, platform: str | None = None) -> list[str]:
    """This machine's resolvers; empty when none are configured or readable."""
    if (platform or sys.platform) == "darwin":
        try:
            return parse_scutil_dns(run(["scutil", "--dns"], 5.0))
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        with open("/etc/resolv.conf", encoding="utf-8", errors="replace") as f:
            return parse_resolv_conf(f.read(65536))
    except OSError:
        return []


def split_resolver(value: str) -> tuple[str, int]:
    """``1.1.1.1``, ``1.1.1.1:5353``, ``::1``, ``[::1]:5353`` -> (address, port)."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, int(port)
    return value, 53


# --- dns --------------------------------------------------------------------

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
_QTYPES = {"A": 1, "AAAA": 28}


def build_query(name: str, ident: int, qtype: str = "A") -> bytes:
    """A DNS query (RFC 1035 section 4): header with recursion desired, one question of class IN."""
    labels = [label.encode("idna") for label in name.rstrip(".").split(".") if label]
    if not labels or any(len(label) > 63 for label in labels):
        raise ValueError(f"not a DNS name: {name!r}")
    qname = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    if len(qname) > 255:
        raise ValueError(f"not a DNS name: {name!r}")
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", _QTYPES[qtype], 1)


def parse_answer_header(packet: bytes, ident: int) -> tuple[str, int] | None:
    """(response code, answer count) of a reply to query ``ident``; None for anything else (not ours, too short)."""
    if len(packet) < 12:
        return None
    got, flags, _qd, answers = struct.unpack("!HHHH", packet[:8])
    if got != ident or not flags & 0x8000:
        return None
    code = flags & 0x000F
    return RCODES.get(code, f"RCODE{code}"), answers


def check_dns(resolver: str, name: str, *, timeout_s: float = 2.0, qtype: str = "A") -> NetworkCheck:
    """Time one UDP query for ``name`` to ``resolver`` (``host`` or ``host:port``); ``timeout`` after ``timeout_s``."""
    base: dict[str, Any] = {"query_name": name, "query_type": qtype}
    try:
        host, port = split_resolver(resolver)
        ident = secrets.randbelow(0x10000)
        query = build_query(name, ident, qtype)
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    except (ValueError, OSError, UnicodeError) as exc:
        return NetworkCheck("dns", resolver, "error", reason=f"{type(exc).__name__}: {exc}", **base)
    address = str(sockaddr[0])
    with socket.socket(family, kind, proto) as sock:
        started = time.perf_counter()
        deadline = started + timeout_s
        try:
            sock.connect(sockaddr)
            sock.send(query)
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                header = parse_answer_header(sock.recv(4096), ident)
                if header is not None:
                    break
        except TimeoutError:
            reason = f"no answer within {timeout_s:g} s"
            return NetworkCheck("dns", resolver, "timeout", reason=reason, address=address, **base)
        except OSError as exc:  # e.g. ICMP port unreachable: nothing listens there
            reason = exc.strerror or type(exc).__name__
            return NetworkCheck("dns", resolver, "error", reason=reason, address=address, **base)
        elapsed = time.perf_counter() - started
    rcode, answers = header
    ok = rcode == "NOERROR" and answers > 0
    why: str | None = None if ok else (f"answer {rcode}" if rcode != "NOERROR" else "no records in the answer")
    return NetworkCheck(
        "dns",
        resolver,
        "ok" if ok else "dns_error",
        reason=why,
        address=address,
        rcode=rcode,
        answers=answers,
        dns_ms=_ms(elapsed),
        **base,
    )


# --- http -------------------------------------------------------------------


def _resolve_bounded(host: str, port: int, timeout_s: float) -> tuple[list[Any] | None, BaseException | None]:
    """getaddrinfo in a thread of its own, waited for at most ``timeout_s`` (it has no timeout itself)."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as exc:
            box["error"] = exc

    thread = threading.Thread(target=work, name="network-resolve", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return None, TimeoutError(f"resolving {host} took over {timeout_s:g} s")
    return box.get("result"), box.get("error")


def tls_context(ca_bundle: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """The system's trust store, and ``ca_bundle`` as well when given (a private CA adds to it)."""
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=os.fspath(ca_bundle))
    return context


def check_http(url: str, *, timeout_s: float = 10.0, verify: ssl.SSLContext | bool = True) -> NetworkCheck:
    """GET ``url`` on a fresh connection, no redirects followed; each phase timed, the status recorded.

    ``dns_ms`` is this check's own resolution of the host; httpcore resolves it again inside
    ``connect_ms`` (then from the system's cache).
    """
    events: dict[str, float] = {}

    def trace(name: str, info: dict[str, Any]) -> None:
        events.setdefault(name, time.perf_counter())

    def phase(start: str, end: str) -> float | None:
        starts = [v for k, v in events.items() if k.endswith(start)]
        ends = [v for k, v in events.items() if k.endswith(end)]
        return _ms(ends[0] - starts[0]) if starts and ends else None

    started = time.perf_counter()
    values: dict[str, Any] = {}
    status: str
    reason: str | None
    try:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http:// or https:// URL")
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        return NetworkCheck("http", url, "error", reason=str(exc))
    try:
        ipaddress.ip_address(host)
        values["address"] = host
    except ValueError:
        resolved, error = _resolve_bounded(host, port, timeout_s)
        values["dns_ms"] = _ms(time.perf_counter() - started)
        if resolved is None:
            status = "timeout" if isinstance(error, TimeoutError) else "dns_error"
            return NetworkCheck("http", url, status, reason=f"{type(error).__name__}: {error}", **values)
        values["address"] = str(resolved[0][4][0])
    left = max(0.1, timeout_s - (time.perf_counter() - started))
    try:
        with (
            httpx.Client(verify=verify, timeout=left, follow_redirects=False, trust_env=False) as client,
            client.stream("GET", url, extensions={"trace": trace}) as response,
        ):
            read = 0
            for chunk in response.iter_raw():
                read += len(chunk)
                if read >= MAX_BODY_BYTES:
                    break
            values["status_code"] = response.status_code
            values["http_version"] = response.http_version
    except httpx.TimeoutException as exc:
        status, reason = "timeout", f"{type(exc).__name__} after {timeout_s:g} s"
    except httpx.HTTPError as exc:
        in_tls = any(k.endswith("start_tls.started") for k in events) and not any(
            k.endswith("start_tls.complete") for k in events
        )
        status = "tls_error" if in_tls or isinstance(exc.__context__, ssl.SSLError) else "connect_error"
        reason = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a bug in a check must not stop the others
        status, reason = "error", f"{type(exc).__name__}: {exc}"
    else:
        code = values["status_code"]
        status, reason = ("ok", None) if code < 400 else ("http_error", f"HTTP {code}")
    values["total_ms"] = _ms(time.perf_counter() - started)
    values["connect_ms"] = phase("connect_tcp.started", "connect_tcp.complete")
    values["tls_ms"] = phase("start_tls.started", "start_tls.complete")
    sent = next((k for k in events if k.endswith("send_request_body.complete")), None)
    values["ttfb_ms"] = phase(sent or "send_request_headers.complete", "receive_response_headers.complete")
    return NetworkCheck("http", url, status, reason=reason, **values)
