"""Speedtest widget: download/upload throughput, latency and jitter through the speedtest-cli library.

The main path drives ``speedtest.Speedtest`` in-process (no subprocess): ``get_servers`` ->
``get_best_server`` -> ``download`` -> ``upload``, then reads ``results.dict()``.
``collect_speedtest`` never raises: a failure is a result with ``status="error"``, the phase
it happened in and the library's reason (``ConfigRetrievalError: HTTP Error 403: Forbidden``,
``NoMatchedServers``, ``<urlopen error [Errno -3] Try again>`` ...).

Where the library fetches things (speedtest-cli 2.1.3):

* ``Speedtest.__init__`` builds ``self._opener`` (``speedtest.build_opener``) and immediately calls
  ``get_config()``, which GETs ``://www.speedtest.net/speedtest-config.php`` (``http`` or, with
  ``secure=True``, ``https``). The ``config=`` argument is only ``dict.update``-d into the parsed
  config *after* that fetch, so it cannot redirect it.
* ``get_servers()`` tries, in order, ``://www.speedtest.net/speedtest-servers-static.php``,
  ``http://c.speedtest.net/speedtest-servers-static.php``, ``://www.speedtest.net/speedtest-servers.php``
  and ``http://c.speedtest.net/speedtest-servers.php`` (each with ``?threads=N&x=<cache buster>``),
  silently moving on when one fails.
* Everything else follows the chosen server's ``url`` attribute from that list:
  ``<dir>/latency.txt`` (raw ``http.client`` connections, 3 GETs per server), ``<dir>/random{N}x{N}.jpg``
  downloads and POSTs to ``url`` itself (both through ``self._opener``).

The seam used here: every request of ``get_config``/``get_servers`` goes through the instance's
urllib ``OpenerDirector`` (``self._opener``). ``_RoutedSpeedtest`` adds one urllib handler to it, a
request pre-processor that rewrites the speedtest.net config and server-list URLs to
``SpeedtestSettings.config_url`` / ``server_list_url`` before the library's own HTTP handlers run.
The handler is installed in an overridden ``get_config`` because that is the first thing the
library's constructor does once the opener exists. The library's parsing, distance computation,
server selection, and throughput measurement are used unchanged.

Config overrides (``SpeedtestSettings.overrides``, e.g. smaller ``sizes``/``counts`` or shorter
``length``) are deep-merged into ``Speedtest.config`` after construction instead of being passed as
``Speedtest(config=...)``: the library does a shallow ``update`` (``{"sizes": {"download": [350]}}``
would drop ``sizes["upload"]``) and does not recompute ``upload_max``, and ``upload()`` waits
forever for ``upload_max`` uploads when fewer were queued. Avoid an upload size of 65536 in
overrides: the library's pre-allocated body for it is 7 bytes shorter than the ``Content-length`` it
sends, so the server waits for the rest until the upload test length runs out (the real config's
``ratio=5`` never uses that size).

Latency and jitter: ``latency_ms`` is speedtest-cli's own ``ping`` for the selected server
(``get_best_server``: three timed GETs of ``latency.txt``, reported as their sum / 6, i.e. half the
mean HTTP round trip: the library's convention, kept so numbers match the ``speedtest-cli`` CLI).
speedtest-cli reports no jitter and keeps its individual probe times local, so jitter is computed
from repeated runs of that same library probe against the selected server
(``get_best_server([server])``; ``SpeedtestSettings.latency_samples`` probes in total, the selection
probe included): the mean absolute difference between consecutive probe values (RFC 3550 style).
Each probe value is a 3-request average, so this jitter is smoother than a per-packet one. A probe
in which a request failed (the library counts 3600 s for it) is dropped. Packet loss is unknown
(HTTP over TCP): always None on this path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import math
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, cast
from urllib.parse import urlsplit

import speedtest

from atlas.contract import SpeedtestData

__all__ = [
    "DEFAULT_INTERVAL_S",
    "LATENCY_FAILED_MS",
    "SPEEDTEST_HOSTS",
    "STATUSES",
    "SpeedtestResult",
    "SpeedtestRunner",
    "SpeedtestSettings",
    "collect_speedtest",
    "jitter_ms",
    "parse_speedtest_cli_simple",
]

STATUSES = ("ok", "error", "skipped_busy")
DEFAULT_INTERVAL_S = 3600.0
MAX_TEXT = 1024
"""Longest text kept in a result, so a log stays far below the wire's 8192-character message and 64 KiB data."""
SPEEDTEST_HOSTS = frozenset({"www.speedtest.net", "c.speedtest.net"})
CONFIG_PATHS = frozenset({"/speedtest-config.php"})
SERVER_LIST_PATHS = frozenset({"/speedtest-servers-static.php", "/speedtest-servers.php"})

# get_best_server() counts a failed latency.txt request as 3600 s and reports sum(3 samples) / 6 in ms,
# so any probe value at or above this contains at least one failed request.
LATENCY_FAILED_MS = 3600 / 6 * 1000.0


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- settings and result -------------------------------------------------------


@dataclass(frozen=True)
class SpeedtestSettings:
    """How to run one speed test.

    ``config_url`` / ``server_list_url`` replace speedtest.net's ``speedtest-config.php`` and
    ``speedtest-servers(-static).php`` (None: the library's defaults). ``server_ids`` /
    ``exclude_ids`` are ``get_servers(servers=..., exclude=...)``. ``overrides`` are deep-merged into
    the library's parsed config (keys ``sizes``, ``counts``, ``threads``, ``length``, ...).
    """

    config_url: str | None = None
    server_list_url: str | None = None
    server_ids: tuple[int, ...] = ()
    exclude_ids: tuple[int, ...] = ()
    source_address: str | None = None
    secure: bool = False
    timeout_s: float = 10.0
    latency_samples: int = 5
    closest_limit: int = 5
    download: bool = True
    upload: bool = True
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SpeedtestResult:
    """One speed test; numbers are None when not measured.

    ``phase`` says where an error happened: ``config``, ``servers``, ``latency``, ``download``,
    ``upload`` or ``internal``. ``server_distance_km`` is the library's great-circle distance from
    the client location in the config to the server. ``timestamp`` is UTC ISO 8601 with ``Z``.
    """

    status: str
    timestamp: str
    source: str = "library"
    download_mbps: float | None = None
    upload_mbps: float | None = None
    latency_ms: float | None = None
    jitter_ms: float | None = None
    latency_samples: int | None = None
    packet_loss_pct: float | None = None
    isp: str | None = None
    server_id: int | None = None
    server_name: str | None = None
    server_sponsor: str | None = None
    server_country: str | None = None
    server_cc: str | None = None
    server_distance_km: float | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None
    duration_s: float | None = None
    phase: str | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        for f in fields(self):  # names and reasons come from the network or a garbled output: bound them
            value = getattr(self, f.name)
            if isinstance(value, str) and len(value) > MAX_TEXT:
                object.__setattr__(self, f.name, value[:MAX_TEXT])

    def as_data(self) -> SpeedtestData:
        """JSON-safe dict (str/int/float/None only) for a widget log's ``data``."""
        return cast("SpeedtestData", asdict(self))


# --- helpers ---------------------------------------------------------------------


def _finite(value: Any, ndigits: int = 3) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return round(number, ndigits) if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _describe(exc: BaseException) -> str:
    """``ConfigRetrievalError: HTTP Error 403: Forbidden``; just the class name when the message is empty."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _release(exc: BaseException) -> None:
    """Close an HTTP error response the library wrapped (ConfigRetrievalError(HTTPError)) so its socket is freed."""
    for arg in (exc, *getattr(exc, "args", ())):
        if isinstance(arg, urllib.error.HTTPError):
            with contextlib.suppress(Exception):
                arg.close()


def jitter_ms(samples: Sequence[float]) -> float | None:
    """Mean absolute difference of consecutive latency samples (ms); failed probes dropped; None if < 2 remain."""
    values = [float(s) for s in samples if s is not None and math.isfinite(s) and 0 <= s < LATENCY_FAILED_MS]
    if len(values) < 2:
        return None
    return round(sum(abs(b - a) for a, b in itertools.pairwise(values)) / (len(values) - 1), 3)


def _deep_merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value


# --- the seam: route speedtest.net config/server-list requests elsewhere --------------------


class _EndpointRouter(urllib.request.BaseHandler):
    """urllib pre-processor rewriting speedtest.net config / server-list URLs; runs before the HTTP handlers."""

    handler_order = 100  # default handlers are 500; pre-processors run in this order

    def __init__(self, routes: Mapping[str, str]) -> None:
        self.routes = dict(routes)

    def _route(self, request: urllib.request.Request) -> urllib.request.Request:
        parts = urlsplit(request.full_url)
        target = self.routes.get(parts.path) if parts.hostname in SPEEDTEST_HOSTS else None
        if target:
            query = f"{'&' if '?' in target else '?'}{parts.query}" if parts.query else ""
            request.full_url = target + query  # keeps the library's threads= and x= cache buster
            request.remove_header("Host")
        return request

    http_request = _route
    https_request = _route


def _routes(settings: SpeedtestSettings) -> dict[str, str]:
    routes: dict[str, str] = {}
    if settings.config_url:
        routes.update(dict.fromkeys(CONFIG_PATHS, settings.config_url))
    if settings.server_list_url:
        routes.update(dict.fromkeys(SERVER_LIST_PATHS, settings.server_list_url))
    return routes


class _RoutedSpeedtest(speedtest.Speedtest):
    """``speedtest.Speedtest`` whose opener sends config/server-list requests to configured URLs."""

    def __init__(self, routes: Mapping[str, str], **kwargs: Any) -> None:
        self._atlas_routes = dict(routes)
        super().__init__(**kwargs)

    def get_config(self) -> Any:
        # The constructor calls get_config() right after building self._opener: install the router once.
        if self._atlas_routes and not any(isinstance(h, _EndpointRouter) for h in self._opener.handlers):
            self._opener.add_handler(_EndpointRouter(self._atlas_routes))
        return super().get_config()


SpeedtestFactory = Callable[[SpeedtestSettings], Any]
"""Builds a ready ``speedtest.Speedtest``-like object (config fetched); may raise."""


def _default_factory(settings: SpeedtestSettings) -> speedtest.Speedtest:
    return _RoutedSpeedtest(
        _routes(settings),
        source_address=settings.source_address,
        timeout=settings.timeout_s,
        secure=settings.secure,
    )


def _apply_overrides(st: Any, overrides: Mapping[str, Any]) -> None:
    if not overrides:
        return
    _deep_merge(st.config, overrides)
    if "upload_max" not in overrides:
        # upload() waits for exactly upload_max uploads: keep it equal to what will be queued.
        st.config["upload_max"] = len(st.config["sizes"]["upload"]) * int(st.config["counts"]["upload"])


# --- collection ------------------------------------------------------------------------


class _Failure(Exception):
    def __init__(self, phase: str, reason: str) -> None:
        super().__init__(reason)
        self.phase = phase
        self.reason = reason


def collect_speedtest(
    settings: SpeedtestSettings | None = None,
    factory: SpeedtestFactory = _default_factory,
) -> SpeedtestResult:
    """Run one speed test with the speedtest-cli library. Never raises (except KeyboardInterrupt/SystemExit)."""
    settings = settings or SpeedtestSettings()
    started = time.monotonic()
    partial: dict[str, Any] = {}
    phase = "config"
    try:
        try:
            st = factory(settings)
            _apply_overrides(st, settings.overrides)
        except Exception as exc:
            _release(exc)
            raise _Failure("config", _describe(exc)) from exc
        partial["isp"] = _str((st.config.get("client") or {}).get("isp"))

        phase = "servers"
        try:
            st.get_servers(list(settings.server_ids), list(settings.exclude_ids))
        except Exception as exc:
            raise _Failure("servers", _describe(exc)) from exc
        if not st.servers:
            raise _Failure("servers", "ServersRetrievalError: no server list could be retrieved, or it was empty")

        phase = "latency"
        try:
            candidates = st.get_closest_servers(limit=max(1, settings.closest_limit))
            best = st.get_best_server(candidates)
        except Exception as exc:
            raise _Failure("latency", _describe(exc)) from exc
        partial.update(_server_fields(best))
        latency = _finite(best.get("latency"))
        if latency is None or latency >= LATENCY_FAILED_MS:
            raise _Failure("latency", f"no test server answered latency.txt ({len(candidates)} tried)")
        samples = [latency, *_extra_latency_samples(st, best, settings.latency_samples - 1)]
        st.results.ping = best["latency"] = latency  # keep speedtest-cli's reported ping
        used = sum(1 for s in samples if s < LATENCY_FAILED_MS)  # probes with a failed request are not used
        partial.update(latency_ms=latency, jitter_ms=jitter_ms(samples), latency_samples=used)

        if settings.download:
            phase = "download"
            st.download()
            partial["bytes_received"] = _int(st.results.bytes_received)
            if not partial["bytes_received"]:
                raise _Failure("download", "download received no data")
        if settings.upload:
            phase = "upload"
            st.upload(pre_allocate=True)
            partial["bytes_sent"] = _int(st.results.bytes_sent)
            if not partial["bytes_sent"]:
                raise _Failure("upload", "upload sent no data")
        return _from_results(st.results.dict(), settings, partial, time.monotonic() - started)
    except _Failure as failure:
        return SpeedtestResult(
            status="error",
            timestamp=_now(),
            duration_s=round(time.monotonic() - started, 3),
            phase=failure.phase,
            reason=failure.reason,
            **partial,
        )
    except Exception as exc:  # a library quirk must not kill the agent
        return SpeedtestResult(
            status="error",
            timestamp=_now(),
            duration_s=round(time.monotonic() - started, 3),
            phase=phase,
            reason=_describe(exc),
            **partial,
        )


def _extra_latency_samples(st: Any, best: dict[str, Any], count: int) -> list[float]:
    samples: list[float] = []
    for _ in range(max(0, count)):
        try:
            value = _finite(st.get_best_server([best]).get("latency"))
        except Exception:  # a failed extra probe only costs one sample
            value = None
        if value is not None:
            samples.append(value)
    return samples


def _server_fields(server: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "server_id": _int(server.get("id")),
        "server_name": _str(server.get("name")),
        "server_sponsor": _str(server.get("sponsor")),
        "server_country": _str(server.get("country")),
        "server_cc": _str(server.get("cc")),
        "server_distance_km": _finite(server.get("d")),
    }


def _from_results(
    data: Mapping[str, Any], settings: SpeedtestSettings, partial: dict[str, Any], duration: float
) -> SpeedtestResult:
    download = _finite(data.get("download"), 6)
    upload = _finite(data.get("upload"), 6)
    fields = {
        **partial,
        **_server_fields(data.get("server") or {}),
        "isp": _str((data.get("client") or {}).get("isp")) or partial.get("isp"),
        "download_mbps": round(download / 1e6, 3) if settings.download and download is not None else None,
        "upload_mbps": round(upload / 1e6, 3) if settings.upload and upload is not None else None,
        "bytes_sent": _int(data.get("bytes_sent")) if settings.upload else None,
        "bytes_received": _int(data.get("bytes_received")) if settings.download else None,
    }
    timestamp = data.get("timestamp")
    return SpeedtestResult(
        status="ok",
        timestamp=timestamp if isinstance(timestamp, str) and timestamp else _now(),
        duration_s=round(duration, 3),
        **fields,
    )


# --- scheduling: one at a time, hourly by default ---------------------------------------------

_PROCESS_LOCK = threading.Lock()


class SpeedtestRunner:
    """Runs speed tests on their own (slow) schedule, never two at once.

    ``run()`` takes the lock without waiting: while a test is running, another call returns a
    ``skipped_busy`` result immediately. By default all runners in the process share one lock.
    """

    def __init__(
        self,
        settings: SpeedtestSettings | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        collect: Callable[[SpeedtestSettings], SpeedtestResult] = collect_speedtest,
        lock: threading.Lock | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or SpeedtestSettings()
        self.interval_s = float(interval_s)
        self._collect = collect
        self._lock = lock if lock is not None else _PROCESS_LOCK
        self._clock = clock
        self.last_started: float | None = None

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def due(self, now: float | None = None) -> bool:
        if self.last_started is None:
            return True
        return (self._clock() if now is None else now) - self.last_started >= self.interval_s

    def run(self) -> SpeedtestResult:
        if not self._lock.acquire(blocking=False):
            return SpeedtestResult(status="skipped_busy", timestamp=_now(), reason="another speed test is running")
        try:
            self.last_started = self._clock()
            try:
                return self._collect(self.settings)
            except Exception as exc:
                return SpeedtestResult(status="error", timestamp=_now(), phase="internal", reason=_describe(exc))
        finally:
            self._lock.release()

    def run_if_due(self) -> SpeedtestResult | None:
        """``run()`` when the interval has passed since the last start, else None."""
        return self.run() if self.due() else None


# --- fallback: speedtest-cli text output ----------------------------------------------

_NUMBER = r"(\d+(?:\.\d+)?)"
_PING = re.compile(rf"^Ping:\s*{_NUMBER}\s*ms\s*$", re.MULTILINE)
_RATE = re.compile(rf"^(?P<kind>Download|Upload):\s*{_NUMBER}\s*(?P<unit>[kMG])(?P<what>bit|byte)/s\s*$", re.MULTILINE)
_HOSTED = re.compile(
    rf"^Hosted by (?P<sponsor>.+?) \((?P<name>.*?)\) \[{_NUMBER} km\]:\s*{_NUMBER}\s*ms\s*$",
    re.MULTILINE,
)
_FROM = re.compile(r"^Testing from (?P<isp>.+?) \((?P<ip>[^()]*)\)\.\.\.\s*$", re.MULTILINE)
_ERROR = re.compile(r"^ERROR:\s*(?P<msg>.*?)\s*$", re.MULTILINE)
_CANNOT = re.compile(r"^Cannot retrieve speedtest (?P<what>configuration|server list)\s*$", re.MULTILINE)
_UNIT = {"k": 1e-3, "M": 1.0, "G": 1e3}


def parse_speedtest_cli_simple(text: str) -> SpeedtestResult:
    """Parse ``speedtest-cli --simple`` (or default verbose) text output. Never raises.

    A fallback for when only the CLI's text is available; the main path is ``collect_speedtest``.
    """
    try:
        return _parse_text(text if isinstance(text, str) else "")
    except Exception as exc:  # a parser bug must not kill the agent
        return SpeedtestResult(
            status="error", timestamp=_now(), source="cli_text", reason=f"unparsable speedtest-cli output: {exc!r}"
        )


def _parse_text(text: str) -> SpeedtestResult:
    result = SpeedtestResult(status="ok", timestamp=_now(), source="cli_text")
    if m := _FROM.search(text):
        result = replace(result, isp=m.group("isp"))
    if m := _HOSTED.search(text):
        result = replace(
            result,
            server_sponsor=m.group("sponsor"),
            server_name=m.group("name"),
            server_distance_km=_finite(m.group(3)),
            latency_ms=_finite(m.group(4)),
        )
    if m := _PING.search(text):
        result = replace(result, latency_ms=_finite(m.group(1)))
    for m in _RATE.finditer(text):
        mbps = float(m.group(2)) * _UNIT[m.group("unit")] * (8 if m.group("what") == "byte" else 1)
        if m.group("kind") == "Download":
            result = replace(result, download_mbps=_finite(mbps))
        else:
            result = replace(result, upload_mbps=_finite(mbps))

    if error := _ERROR.search(text):
        cannot = _CANNOT.search(text)
        phase = None if cannot is None else ("config" if cannot.group("what") == "configuration" else "servers")
        return replace(result, status="error", phase=phase, reason=error.group("msg") or "ERROR")
    if result.download_mbps is None and result.upload_mbps is None and result.latency_ms is None:
        reason = "empty speedtest-cli output" if not text.strip() else "no speedtest-cli results in output"
        return replace(result, status="error", reason=reason)
    return result
