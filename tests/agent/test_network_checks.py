"""The layered network checks against real loopback targets (a DNS responder, HTTP and HTTPS servers, ping
to 127.0.0.1), the resolver and gateway parsers on real captures in tests/fixtures/network/ (sources in
SOURCES.md there), and roam detection over a sequence of real Wi-Fi captures from tests/fixtures/wifi/.

Strings written inside this file (not read from a fixture) are hand-written and marked ``HAND-WRITTEN``.
"""

from __future__ import annotations

import socket
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from atlas.agent.collectors.network import (
    LAYERS,
    NetworkCheck,
    build_query,
    check_dns,
    check_gateway,
    check_http,
    check_wifi_link,
    default_gateway,
    parse_answer_header,
    parse_resolv_conf,
    parse_scutil_dns,
    split_resolver,
    tls_context,
)
from atlas.agent.collectors.roam import RoamTracker
from atlas.agent.collectors.wifi import (
    WifiReading,
    parse_airport_info,
    parse_system_profiler_airport,
    parse_wdutil_info,
)
from atlas.agent.widgets import network_log, roam_log
from atlas.contract import LogEntry, NetworkData, RoamData, widget_keys

from .network_servers import dns_responder, http_server

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def valid(entry: dict) -> dict:
    """The log as the server's schema validates it; its data keys all documented for its widget."""
    LogEntry.model_validate(entry)
    shape = {"network": NetworkData, "roam": RoamData}[entry["widget_type"]]
    assert set(entry["data"]) <= set(widget_keys(shape)), set(entry["data"]) - set(widget_keys(shape))
    return entry["data"]


# --- resolvers and gateway: parsers on real captures ------------------------------------------


def test_scutil_dns_gives_the_unscoped_nameservers_of_a_real_capture() -> None:
    servers = parse_scutil_dns(fixture("network/scutil_dns_ventura13.0_excerpt.txt"))
    assert servers == ["fe80::800c:67ff:fe1d:fd64%12d", "172.20.10.1"]  # mdns resolvers have no nameserver


def test_scutil_dns_ignores_the_scoped_part() -> None:
    text = fixture("network/scutil_dns_ventura13.0_excerpt.txt")
    # HAND-WRITTEN: the scoped section macOS prints after the unscoped one.
    scoped = "\nDNS configuration (for scoped queries)\n\nresolver #1\n  nameserver[0] : 10.9.9.9\n"
    assert "10.9.9.9" not in parse_scutil_dns(text + scoped)


def test_resolv_conf() -> None:
    # HAND-WRITTEN: comments, a repeat, a non-address and an IPv6 server.
    text = "# generated\nnameserver 192.0.2.53\nnameserver 192.0.2.53\nnameserver bogus\n; x\nnameserver ::1 # lo\n"
    assert parse_resolv_conf(text) == ["192.0.2.53", "::1"]
    assert parse_resolv_conf("") == []
    assert parse_scutil_dns("") == []


def test_split_resolver() -> None:
    assert split_resolver("1.1.1.1") == ("1.1.1.1", 53)
    assert split_resolver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert split_resolver("::1") == ("::1", 53)
    assert split_resolver("[::1]:5353") == ("::1", 5353)


def test_default_gateway_from_a_real_macos_route_capture() -> None:
    capture = fixture("network/route_get_macos_real_world_systems.txt")
    asked: list[list[str]] = []

    def run(argv, timeout_s):
        asked.append(list(argv))
        return capture

    assert default_gateway(run, "darwin") == "192.168.1.1"
    assert asked == [["route", "-n", "get", "default"]]


def test_default_gateway_on_this_machine_is_an_address_or_none() -> None:
    gateway = default_gateway()  # the real `ip route show default` here
    if gateway is not None:
        socket.inet_pton(socket.AF_INET6 if ":" in gateway else socket.AF_INET, gateway)


# --- gateway: the real ping ------------------------------------------------------------------


def test_gateway_check_pings_with_the_ping_collector() -> None:
    data = valid(network_log(check_gateway("127.0.0.1", count=2, timeout_s=5)))
    assert data["layer"] == "gateway"
    assert data["status"] == "ok"
    assert data["sent"] == 2
    assert data["received"] == 2
    assert data["loss_pct"] == 0
    assert 0 <= data["rtt_avg_ms"] < 1000
    assert "dns_ms" not in data
    assert "status_code" not in data


def test_no_gateway_is_a_status() -> None:
    data = valid(network_log(check_gateway(None)))
    assert data["status"] == "no_gateway"
    assert data["target"] == ""


# --- dns: a loopback responder ---------------------------------------------------------------


def test_dns_check_times_an_answer() -> None:
    with dns_responder({"intranet.example": "192.0.2.7"}, delay_s=0.05) as server:
        entry = network_log(check_dns(server.address, "intranet.example", timeout_s=2))
    data = valid(entry)
    assert server.questions == ["intranet.example"]
    assert data["layer"] == "dns"
    assert data["status"] == "ok"
    assert entry["level"] == "INFO"
    assert data["target"] == server.address
    assert data["address"] == "127.0.0.1"
    assert data["rcode"] == "NOERROR"
    assert data["answers"] == 1
    assert 50 <= data["dns_ms"] < 2000  # the responder waited 50 ms


def test_dns_nxdomain_is_a_dns_error() -> None:
    with dns_responder({}) as server:
        data = valid(network_log(check_dns(server.address, "nowhere.example", timeout_s=2)))
    assert data["status"] == "dns_error"
    assert data["rcode"] == "NXDOMAIN"
    assert data["answers"] == 0


def test_dns_timeout_is_bounded() -> None:
    with dns_responder({"a.example": "192.0.2.1"}, silent=True) as server:
        started = time.monotonic()
        entry = network_log(check_dns(server.address, "a.example", timeout_s=0.5))
        took = time.monotonic() - started
    data = valid(entry)
    assert server.questions == ["a.example"]
    assert data["status"] == "timeout"
    assert entry["level"] == "ERROR"
    assert data["dns_ms"] is None
    assert 0.5 <= took < 2


def test_dns_reply_with_another_id_is_not_taken() -> None:
    query = build_query("a.example", 0x1234)
    assert parse_answer_header(query, 0x1234) is None  # a query, not an answer
    assert parse_answer_header(b"\x12\x34\x81\x80\x00\x01\x00\x01", 0x1234) is None  # too short
    answer = b"\x12\x35\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
    assert parse_answer_header(answer, 0x1234) is None
    assert parse_answer_header(answer, 0x1235) == ("NOERROR", 1)


def test_dns_bad_resolver_or_name_is_an_error_not_a_raise() -> None:
    assert check_dns("127.0.0.1:notaport", "a.example").status == "error"
    assert check_dns("127.0.0.1:53", "a" * 64 + ".example").status == "error"


# --- http: loopback HTTP and HTTPS servers ---------------------------------------------------


def test_http_check_times_each_phase(tmp_path) -> None:
    with http_server() as (base, _):
        data = valid(network_log(check_http(f"{base}/ok", timeout_s=5)))
    assert data["layer"] == "http"
    assert data["status"] == "ok"
    assert data["status_code"] == 200
    assert data["http_version"] == "HTTP/1.1"
    assert data["tls_ms"] is None  # plain HTTP
    assert data["dns_ms"] is None  # an address: nothing to resolve
    assert data["connect_ms"] >= 0
    assert data["ttfb_ms"] >= 0
    assert data["total_ms"] >= data["connect_ms"] + data["ttfb_ms"]


def test_https_check_times_the_tls_handshake(tmp_path) -> None:
    with http_server(tmp_path) as (base, ca):
        entry = network_log(check_http(f"{base}/ok", timeout_s=5, verify=tls_context(ca)))
    data = valid(entry)
    assert data["status"] == "ok"
    assert data["status_code"] == 200
    assert data["tls_ms"] > 0
    assert data["total_ms"] >= data["connect_ms"] + data["tls_ms"] + data["ttfb_ms"]
    assert "TLS" in entry["message"]


def test_http_resolves_a_name_and_times_it() -> None:
    with http_server() as (base, _):
        url = base.replace("127.0.0.1", "localhost") + "/ok"
        data = valid(network_log(check_http(url, timeout_s=5)))
    assert data["status"] == "ok"
    assert data["dns_ms"] is not None
    assert data["dns_ms"] >= 0
    assert data["address"] in ("127.0.0.1", "::1")


def test_http_500_is_recorded_as_status() -> None:
    with http_server() as (base, _):
        entry = network_log(check_http(f"{base}/fail", timeout_s=5))
    data = valid(entry)
    assert data["status"] == "http_error"
    assert data["status_code"] == 500
    assert data["reason"] == "HTTP 500"
    assert entry["level"] == "WARNING"
    assert data["ttfb_ms"] is not None


def test_untrusted_certificate_is_a_tls_error(tmp_path) -> None:
    with http_server(tmp_path) as (base, _):
        data = valid(network_log(check_http(f"{base}/ok", timeout_s=5)))  # the test CA is not trusted
    assert data["status"] == "tls_error"
    assert "CERTIFICATE_VERIFY_FAILED" in data["reason"]
    assert data["connect_ms"] is not None
    assert data["tls_ms"] is None
    assert data["status_code"] is None


def test_https_to_a_plain_http_server_is_a_tls_error() -> None:
    with http_server() as (base, _):
        data = valid(network_log(check_http(base.replace("http:", "https:") + "/ok", timeout_s=5)))
    assert data["status"] == "tls_error"


def test_nothing_listening_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        data = valid(network_log(check_http(f"http://127.0.0.1:{port}/", timeout_s=2)))
    assert data["status"] == "connect_error"


def test_http_timeout_is_bounded() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)  # accepts the connection, never answers
        port = sock.getsockname()[1]
        started = time.monotonic()
        data = valid(network_log(check_http(f"http://127.0.0.1:{port}/", timeout_s=0.5)))
        took = time.monotonic() - started
    assert data["status"] == "timeout"
    assert took < 3


def test_not_a_url_is_an_error() -> None:
    assert check_http("ftp://example.com/").status == "error"
    assert check_http("not a url").status == "error"


def test_tls_context_adds_a_private_ca_to_the_system_store(tmp_path) -> None:
    with http_server(tmp_path) as (_, ca):
        context = tls_context(ca)
    assert isinstance(context, ssl.SSLContext)
    assert any(c["subject"] == ((("commonName", "Atlas test CA"),),) for c in context.get_ca_certs())


# --- wifi link ------------------------------------------------------------------------------


def test_wifi_link_layer_from_a_real_reading() -> None:
    reading = parse_airport_info(fixture("wifi/airport_I_mojave10.14.6_connected.txt"))
    data = valid(network_log(check_wifi_link(reading, age_s=12.5, roams=2)))
    assert data["layer"] == "wifi"
    assert data["status"] == "ok"
    assert data["bssid"] == reading.bssid
    assert data["rssi_dbm"] == reading.rssi_dbm
    assert data["reading_age_s"] == 12.5
    assert data["roams"] == 2
    off = valid(
        network_log(
            check_wifi_link(
                parse_system_profiler_airport(fixture("wifi/system_profiler_airport_sequoia15.5_wifi_off.json"))
            )
        )
    )
    assert off["status"] == "disconnected"
    assert off["state"] == "off"
    assert valid(network_log(check_wifi_link(None)))["status"] == "error"


def test_every_layer_keeps_to_its_keys() -> None:
    for layer in LAYERS:
        data = NetworkCheck(layer, "t", "ok").as_data()
        assert {"layer", "target", "status", "reason"} <= set(data)
    assert "dns_ms" not in NetworkCheck("gateway", "t", "ok").as_data()


# --- roams over real Wi-Fi captures ---------------------------------------------------------


def _readings() -> list[WifiReading]:
    """Real captures in a row, as if one Mac moved between the access points they were taken on."""
    return [
        parse_airport_info(fixture("wifi/airport_I_mojave10.14.6_connected.txt")),
        parse_airport_info(fixture("wifi/airport_I_mojave10.14.6_connected.txt")),
        parse_wdutil_info(fixture("wifi/wdutil_info_monterey12_5ghz_dfs_trimmed.txt")),
        parse_wdutil_info(fixture("wifi/wdutil_info_sequoia15_2.4ghz_redacted.txt")),
        parse_wdutil_info(fixture("wifi/wdutil_info_sequoia15_not_associated.txt")),
        parse_system_profiler_airport(fixture("wifi/system_profiler_airport_sequoia15.5_connected.json")),
        parse_system_profiler_airport(fixture("wifi/system_profiler_airport_sequoia15.5_connected.json")),
    ]


def test_roams_are_detected_between_real_readings() -> None:
    readings = _readings()
    assert [r.state for r in readings] == ["connected"] * 4 + ["disconnected"] + ["connected"] * 2
    tracker = RoamTracker()
    start = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    events = [tracker.observe(r, start + timedelta(minutes=i)) for i, r in enumerate(readings)]
    assert [e is not None for e in events] == [False, False, True, True, False, False, False]
    first, second = events[2], events[3]
    assert first is not None
    assert second is not None

    a = valid(roam_log(first))
    assert a["from_bssid"] == readings[0].bssid
    assert a["to_bssid"] == readings[2].bssid
    assert a["from_channel"] == readings[0].channel
    assert a["to_channel"] == 144
    assert a["to_band"] == "5GHz"
    assert a["rssi_before_dbm"] == readings[1].rssi_dbm
    assert a["rssi_after_dbm"] == readings[2].rssi_dbm
    assert "channel" in a["changed"]
    assert a["previous_at"] == "2026-12-01T09:01:00Z"
    assert a["interval_s"] == 60
    assert a["roam_count"] == 1

    b = valid(roam_log(second))  # macOS 15 redacts the BSSID: the band and channel still show the roam
    assert b["to_bssid"] is None
    assert "bssid" not in b["changed"]
    assert b["changed"] == ["channel", "band"]
    assert b["from_band"] == "5GHz"
    assert b["to_band"] == "2.4GHz"
    assert b["roam_count"] == 2
    # after the disconnected reading, connecting again is not a roam; the same reading twice is not either
    assert tracker.count == 2
    assert tracker.take_period_count() == 2
    assert tracker.take_period_count() == 0


@pytest.mark.parametrize("name", ["wifi/airport_I_mojave10.14.6_connected.txt"])
def test_the_same_access_point_is_no_roam(name: str) -> None:
    tracker = RoamTracker()
    now = datetime.now(UTC)
    reading = parse_airport_info(fixture(name))
    assert tracker.observe(reading, now) is None
    assert tracker.observe(reading, now + timedelta(seconds=60)) is None
    assert tracker.count == 0
