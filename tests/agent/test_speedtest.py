"""Speedtest collector: the real speedtest-cli library end to end against a loopback speedtest.net
look-alike (tests/agent/speedtest_server.py) serving the captured config and server-list XML in
tests/fixtures/speedtest/ (copied byte for byte from /work/shared/fixtures/speedtest/, sources in
that folder's SOURCES.md), plus the runner's locking/scheduling and the CLI-text fallback parser.

Nothing here reaches the internet: every name lookup other than loopback fails (fixture ``_offline``).
"""

from __future__ import annotations

import json
import math
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from urllib.error import URLError

import pytest
import speedtest

from atlas.agent.collectors.speedtest import (
    DEFAULT_INTERVAL_S,
    LATENCY_FAILED_MS,
    STATUSES,
    SpeedtestResult,
    SpeedtestRunner,
    SpeedtestSettings,
    collect_speedtest,
    jitter_ms,
    parse_speedtest_cli_simple,
)

from .speedtest_server import SpeedtestTestServer, jpeg_size, rewrite_server_urls, running_server

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "speedtest"
CONFIG_XML = "speedtest_config_php_2020-07.xml"
SERVERS_SUBSET = "speedtest_servers_static_subset_prettyprinted.xml"
SERVERS_RAW_HEAD30 = "speedtest_servers_static_php_2015_head30.xml"

# Small transfers so each run takes well under a second on loopback. Upload sizes avoid 65536 (see the
# collector's docstring: speedtest-cli's body for it is 7 bytes short of its Content-length).
DOWNLOAD_SIZES = [350, 500]
UPLOAD_SIZES = [32768, 131072]
COUNTS = {"download": 2, "upload": 2}
SMALL = {"sizes": {"download": DOWNLOAD_SIZES, "upload": UPLOAD_SIZES}, "counts": COUNTS, "length": {"upload": 5}}


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def parse_xml(data: bytes) -> ET.Element:
    return ET.fromstring(data)  # noqa: S314 - our own checked-in fixtures / loopback test data, not untrusted input


def config_client() -> dict[str, str]:
    return dict(parse_xml(fixture_bytes(CONFIG_XML)).find("client").attrib)  # type: ignore[union-attr]


def ignored_ids() -> set[int]:
    attrib = parse_xml(fixture_bytes(CONFIG_XML)).find("server-config").attrib  # type: ignore[union-attr]
    return {int(i) for i in attrib["ignoreids"].split(",") if i}


def fixture_servers(name: str) -> dict[int, dict[str, str]]:
    return {int(s.attrib["id"]): dict(s.attrib) for s in parse_xml(fixture_bytes(name)).iter("server")}


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371 * math.asin(math.sqrt(a))


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def settings_for(server: SpeedtestTestServer, **kwargs: object) -> SpeedtestSettings:
    values: dict[str, object] = {
        "config_url": server.config_url,
        "server_list_url": server.server_list_url,
        "timeout_s": 5.0,
        "overrides": SMALL,
    }
    values.update(kwargs)
    return SpeedtestSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail every name lookup except loopback, and drop proxy settings, so no test can reach the internet."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    real = socket.getaddrinfo

    def loopback_only(host: object, *args: object, **kwargs: object) -> object:
        if host not in ("127.0.0.1", "localhost", "::1", b"127.0.0.1"):
            raise socket.gaierror(socket.EAI_NONAME, f"test is offline: {host!r}")
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


@pytest.fixture
def st_server() -> Iterator[SpeedtestTestServer]:
    with running_server(fixture_bytes(CONFIG_XML), fixture_bytes(SERVERS_SUBSET)) as server:
        yield server


# --- end to end against the loopback server ---------------------------------------------------------


def assert_ok_against_fixture(result: SpeedtestResult, server: SpeedtestTestServer, servers_fixture: str) -> None:
    assert result.status == "ok", result.reason
    assert result.source == "library"
    assert result.phase is None
    assert result.reason is None
    # Loopback throughput: positive and plausible (not inf/NaN, not absurd).
    assert result.download_mbps is not None
    assert 0 < result.download_mbps < 1_000_000
    assert result.upload_mbps is not None
    assert 0 < result.upload_mbps < 1_000_000
    assert result.latency_ms is not None
    assert 0 < result.latency_ms < 1000
    assert result.jitter_ms is not None
    assert 0 <= result.jitter_ms < 1000
    assert result.latency_samples == 5
    assert result.packet_loss_pct is None  # speedtest-cli cannot know
    # Bytes as the library counted them equal the bytes that crossed the wire.
    expected_download = sum(jpeg_size(n) for n in DOWNLOAD_SIZES) * COUNTS["download"]
    assert result.bytes_received == expected_download == server.bytes_downloaded
    assert result.bytes_sent == sum(UPLOAD_SIZES) * COUNTS["upload"] == server.bytes_uploaded
    # ISP and server are exactly what the captured XML says.
    client = config_client()
    assert result.isp == client["isp"] == "CenturyLink"
    rows = fixture_servers(servers_fixture)
    assert result.server_id in rows
    assert result.server_id not in ignored_ids()
    row = rows[result.server_id]  # type: ignore[index]
    assert result.server_name == row["name"]
    assert result.server_sponsor == row["sponsor"]
    assert result.server_country == row["country"]
    assert result.server_cc == row["cc"]
    expected_km = haversine_km(float(client["lat"]), float(client["lon"]), float(row["lat"]), float(row["lon"]))
    assert result.server_distance_km == pytest.approx(expected_km, abs=0.01)
    # The chosen server is the closest by distance among those in the list (the library pings the 5 closest).
    candidates = [
        haversine_km(float(client["lat"]), float(client["lon"]), float(r["lat"]), float(r["lon"]))
        for sid, r in rows.items()
        if sid not in ignored_ids()
    ]
    assert result.server_distance_km <= sorted(candidates)[min(4, len(candidates) - 1)] + 0.01
    # The traffic went where the server list said: the chosen server's own directory.
    base = f"/srv/{result.server_id}/speedtest"
    paths = server.paths()
    assert paths[:2] == ["/speedtest-config.php", "/speedtest-servers-static.php"]
    assert f"{base}/latency.txt" in paths
    assert sorted(p for p in server.paths("GET") if p.endswith(".jpg")) == sorted(
        f"{base}/random{n}x{n}.jpg" for n in DOWNLOAD_SIZES for _ in range(COUNTS["download"])
    )
    assert server.paths("POST") == [f"{base}/upload.php"] * (len(UPLOAD_SIZES) * COUNTS["upload"])
    assert result.timestamp.endswith("Z")
    json.dumps(result.as_data())


@pytest.mark.parametrize("servers_fixture", [SERVERS_SUBSET, SERVERS_RAW_HEAD30])
def test_end_to_end_against_loopback_speedtest_server(servers_fixture: str) -> None:
    with running_server(fixture_bytes(CONFIG_XML), fixture_bytes(servers_fixture)) as server:
        result = collect_speedtest(settings_for(server))
        assert_ok_against_fixture(result, server, servers_fixture)


def test_selected_server_id_and_secure_flag(st_server: SpeedtestTestServer) -> None:
    """``server_ids`` goes to get_servers(servers=...); secure=True (https://www.speedtest.net/...) is routed too."""
    result = collect_speedtest(settings_for(st_server, server_ids=(5256,), secure=True, latency_samples=3))
    assert result.status == "ok", result.reason
    assert (result.server_id, result.server_name, result.server_sponsor) == (5256, "Portales, NM", "Yucca Telecom")
    assert result.latency_samples == 3
    assert {p for p in st_server.paths() if p.startswith("/srv/")} >= {"/srv/5256/speedtest/latency.txt"}
    assert all(p.startswith(("/speedtest-", "/srv/5256/")) for p in st_server.paths())


def test_download_and_upload_can_be_skipped(st_server: SpeedtestTestServer) -> None:
    result = collect_speedtest(settings_for(st_server, download=False, upload=False, latency_samples=1))
    assert result.status == "ok", result.reason
    assert result.download_mbps is None
    assert result.upload_mbps is None
    assert result.bytes_sent is None
    assert result.bytes_received is None
    assert result.latency_ms is not None
    assert result.latency_ms > 0
    assert result.jitter_ms is None  # a single latency sample has no jitter
    assert st_server.paths("POST") == []


# --- failures become results ------------------------------------------------------------------------


def test_config_endpoint_unreachable_closed_port() -> None:
    result = collect_speedtest(SpeedtestSettings(config_url=f"{closed_port_url()}/speedtest-config.php", timeout_s=3))
    assert result.status == "error"
    assert result.phase == "config"
    assert result.reason is not None
    assert result.reason.startswith("ConfigRetrievalError: <urlopen error")
    json.dumps(result.as_data())


def test_config_endpoint_403_matches_captured_cli_error(st_server: SpeedtestTestServer) -> None:
    st_server.config_status = 403
    result = collect_speedtest(settings_for(st_server))
    assert result.status == "error"
    assert result.phase == "config"
    assert result.reason == "ConfigRetrievalError: HTTP Error 403: Forbidden"
    # The same text speedtest-cli printed in the captured real failure.
    captured = fixture_text("speedtest_cli_error_403_forbidden.txt").splitlines()[-1].removeprefix("ERROR: ")
    assert captured in result.reason
    assert st_server.paths() == ["/speedtest-config.php"]


def test_malformed_config_is_an_error(st_server: SpeedtestTestServer) -> None:
    st_server.config_body = b"<html>captive portal</html>"
    result = collect_speedtest(settings_for(st_server))
    assert result.status == "error"
    assert result.phase == "config"
    assert result.reason  # the library's AttributeError/IndexError path, whatever it is, is reported


def test_server_list_unreachable(st_server: SpeedtestTestServer) -> None:
    result = collect_speedtest(
        settings_for(st_server, server_list_url=f"{closed_port_url()}/speedtest-servers-static.php")
    )
    assert result.status == "error"
    assert result.phase == "servers"
    assert result.reason is not None
    assert "ServersRetrievalError" in result.reason
    assert result.isp == "CenturyLink"  # what was known before the failure is kept


def test_no_matched_servers(st_server: SpeedtestTestServer) -> None:
    result = collect_speedtest(settings_for(st_server, server_ids=(1,)))
    assert (result.status, result.phase, result.reason) == ("error", "servers", "NoMatchedServers")


def test_test_servers_unreachable() -> None:
    """The server list points every server at a closed port: the library picks a server anyway (3600 s probes)."""
    closed = closed_port_url()
    with running_server(fixture_bytes(CONFIG_XML), b"") as server:
        server.servers_xml = rewrite_server_urls(fixture_bytes(SERVERS_SUBSET), closed)
        result = collect_speedtest(settings_for(server))
    assert result.status == "error"
    assert result.phase == "latency"
    assert result.reason == "no test server answered latency.txt (5 tried)"
    assert result.download_mbps is None
    assert result.latency_ms is None
    assert result.server_id in fixture_servers(SERVERS_SUBSET)


def test_dns_failure_reason_matches_captured_cli_error() -> None:
    """A resolver failure as speedtest-cli wraps it; the captured OpenWrt output shows the same text."""

    def factory(_settings: SpeedtestSettings) -> speedtest.Speedtest:
        raise speedtest.ConfigRetrievalError(URLError(socket.gaierror(-3, "Try again")))

    result = collect_speedtest(SpeedtestSettings(), factory=factory)
    assert (result.status, result.phase) == ("error", "config")
    captured = fixture_text("speedtest_cli_error_urlopen_dns.txt").splitlines()[-1].removeprefix("ERROR: ")
    assert result.reason == f"ConfigRetrievalError: {captured}"


def test_unexpected_exception_in_a_later_phase_is_an_error() -> None:
    class Broken:
        config = {"client": {"isp": "ISP"}}
        servers: dict[float, list[dict[str, str]]] = {}

        def get_servers(self, *_args: object) -> None:
            raise RuntimeError("boom")

    result = collect_speedtest(SpeedtestSettings(), factory=lambda _s: Broken())
    assert (result.status, result.phase, result.reason, result.isp) == ("error", "servers", "RuntimeError: boom", "ISP")


# --- runner: one at a time, hourly ------------------------------------------------------------------


def test_concurrent_runs_one_is_skipped_busy(st_server: SpeedtestTestServer) -> None:
    st_server.config_gate = threading.Event()  # hold the first run inside get_config()
    runner = SpeedtestRunner(settings_for(st_server), lock=threading.Lock())
    results: list[SpeedtestResult] = []
    first = threading.Thread(target=lambda: results.append(runner.run()))
    first.start()
    try:
        assert st_server.config_requested.wait(10)
        assert runner.busy
        second = runner.run()  # must not wait
    finally:
        st_server.config_gate.set()
        first.join(30)
    assert second.status == "skipped_busy"
    assert second.reason == "another speed test is running"
    assert [r.status for r in results] == ["ok"], results
    assert not runner.busy
    assert st_server.paths().count("/speedtest-config.php") == 1


def test_runners_share_the_process_lock_by_default() -> None:
    gate, entered = threading.Event(), threading.Event()

    def slow(_settings: SpeedtestSettings) -> SpeedtestResult:
        entered.set()
        gate.wait(10)
        return SpeedtestResult(status="ok", timestamp="t")

    first, second = SpeedtestRunner(collect=slow), SpeedtestRunner(collect=slow)
    thread = threading.Thread(target=first.run)
    thread.start()
    try:
        assert entered.wait(10)
        assert second.run().status == "skipped_busy"
    finally:
        gate.set()
        thread.join(10)
    assert second.run().status == "ok"


def test_runner_turns_exceptions_into_errors_and_releases_the_lock() -> None:
    def broken(_settings: SpeedtestSettings) -> SpeedtestResult:
        raise ValueError("bad")

    runner = SpeedtestRunner(collect=broken, lock=threading.Lock())
    result = runner.run()
    assert (result.status, result.phase, result.reason) == ("error", "internal", "ValueError: bad")
    assert not runner.busy
    assert runner.run().status == "error"


def test_runner_schedule_default_hourly() -> None:
    now = [1000.0]
    runner = SpeedtestRunner(
        collect=lambda _s: SpeedtestResult(status="ok", timestamp="t"), lock=threading.Lock(), clock=lambda: now[0]
    )
    assert runner.interval_s == DEFAULT_INTERVAL_S == 3600.0
    assert runner.due()
    assert runner.run_if_due() is not None
    now[0] += 3599
    assert not runner.due()
    assert runner.run_if_due() is None
    now[0] += 1
    assert runner.due()


# --- pure helpers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([10.0, 12.0, 11.0], 1.5),
        ([5.0, 5.0, 5.0, 5.0], 0.0),
        ([10.0, LATENCY_FAILED_MS + 1, 14.0], 4.0),  # a probe with a failed request is dropped
        ([10.0], None),
        ([], None),
        ([float("nan"), 3.0], None),
    ],
)
def test_jitter(samples: list[float], expected: float | None) -> None:
    assert jitter_ms(samples) == expected


def test_rewrite_server_urls_keeps_everything_but_urls() -> None:
    for name in (SERVERS_SUBSET, SERVERS_RAW_HEAD30):
        original = fixture_bytes(name)
        rewritten = rewrite_server_urls(original, "http://127.0.0.1:9")
        before, after = (
            fixture_servers(name),
            {int(s.attrib["id"]): dict(s.attrib) for s in parse_xml(rewritten).iter("server")},
        )
        assert before.keys() == after.keys()
        assert len(before) >= 14
        for sid, attrib in after.items():
            assert attrib["url"] == f"http://127.0.0.1:9/srv/{sid}/speedtest/upload.php"
            assert attrib.get("url2", attrib["url"]) == attrib["url"]
            assert ("url2" in attrib) == ("url2" in before[sid])
            assert {k: v for k, v in attrib.items() if k not in ("url", "url2")} == {
                k: v for k, v in before[sid].items() if k not in ("url", "url2")
            }
        assert rewritten.count(b"\n") == original.count(b"\n")  # raw formatting kept


def test_statuses() -> None:
    assert STATUSES == ("ok", "error", "skipped_busy")


# --- fallback parser for speedtest-cli text output ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "speedtest_cli_simple.txt",
            {"status": "ok", "latency_ms": 94.331, "download_mbps": 86.41, "upload_mbps": 82.64},
        ),
        (
            "speedtest_cli_simple_raspberrypi.txt",
            {"status": "ok", "latency_ms": 27.909, "download_mbps": 28.65, "upload_mbps": 38.15},
        ),
        (
            "speedtest_cli_default_verbose.txt",
            {
                "status": "ok",
                "isp": "ZOL",
                "server_sponsor": "ZOL Zimbabwe",
                "server_name": "Harare",
                "server_distance_km": 16.25,
                "latency_ms": 4.616,
                "download_mbps": 88.95,
                "upload_mbps": 75.2,
            },
        ),
        (
            "speedtest_cli_error_403_forbidden.txt",
            {"status": "error", "phase": "config", "reason": "HTTP Error 403: Forbidden", "download_mbps": None},
        ),
        ("speedtest_cli_error_config_1.txt", {"status": "error", "phase": "config", "reason": "1"}),
        (
            "speedtest_cli_error_urlopen_dns.txt",
            {"status": "error", "phase": "config", "reason": "<urlopen error [Errno -3] Try again>"},
        ),
    ],
)
def test_parse_speedtest_cli_text_fixtures(name: str, expected: dict[str, object]) -> None:
    result = parse_speedtest_cli_simple(fixture_text(name))
    assert result.source == "cli_text"
    assert {key: getattr(result, key) for key in expected} == expected
    assert result.jitter_ms is None
    assert result.packet_loss_pct is None
    json.dumps(result.as_data())


@pytest.mark.parametrize(
    ("text", "reason"),
    [("", "empty speedtest-cli output"), ("hello\n", "no speedtest-cli results in output"), (None, None)],
)
def test_parse_speedtest_cli_odd_input(text: object, reason: str | None) -> None:
    result = parse_speedtest_cli_simple(text)  # type: ignore[arg-type]
    assert result.status == "error"
    if reason:
        assert result.reason == reason


def test_parse_speedtest_cli_bytes_units() -> None:
    result = parse_speedtest_cli_simple("Ping: 1.5 ms\nDownload: 10.00 Mbyte/s\nUpload: 500.00 kbit/s\n")
    assert (result.download_mbps, result.upload_mbps, result.latency_ms) == (80.0, 0.5, 1.5)
