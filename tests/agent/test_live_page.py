"""The live widget page as the person at the Mac reads it: a card per widget, values with units, time, source."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from atlas.agent.collectors.health import HealthReading, parse_powermetrics_smc
from atlas.agent.collectors.speedtest import SpeedtestResult
from atlas.agent.collectors.wifi import parse_airport_info, parse_wdutil_info
from atlas.agent.config import load_agent_config
from atlas.agent.daemon import Agent
from atlas.agent.live import serve
from atlas.agent.live_page import number, render_page
from atlas.agent.widgets import health_log, speedtest_log, wifi_log
from atlas.live_widgets import start_live_widget_server

from .network_servers import dns_responder, http_server
from .test_agent_daemon import write_config
from .test_network_daemon import write_config as write_network_config

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def cards(page: str) -> dict[str, list[str]]:
    """Each card's HTML by its widget (ping: one per target)."""
    found: dict[str, list[str]] = {}
    for widget, body in re.findall(r'<section class="card" data-widget="(\w+)">(.*?)</section>', page, re.S):
        found.setdefault(widget, []).append(body)
    return found


def test_the_live_page_shows_readable_cards_from_the_running_agent(tmp_path: Path, keys) -> None:
    server = start_live_widget_server(
        port=0, encryption_key=keys["current"], config=str(write_config(tmp_path)), block=False
    )
    try:
        deadline = time.monotonic() + 30
        widgets: dict = {}
        while time.monotonic() < deadline and not {"wifi", "health", "processes", "ping:127.0.0.1"} <= widgets.keys():
            widgets = httpx.get(server.url + "api/widgets", timeout=5).json()["widgets"]
            time.sleep(0.2)
        answer = httpx.get(server.url, timeout=5)
    finally:
        server.stop()
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert "script" not in answer.headers["content-security-policy"]
    page = answer.text
    assert "<script" not in page
    assert "http://" not in page
    assert "https://" not in page
    assert '<meta http-equiv="refresh"' in page
    assert "cpu_percent" not in page
    assert '":' not in page
    shown = cards(page)
    assert sorted(shown) == ["health", "network", "ping", "processes", "roam", "speedtest", "wifi"]
    assert "No reading yet" in shown["speedtest"][0]  # speed tests are off in write_config

    health = widgets["health"]
    cpu = health["data"]["psutil"]["cpu_percent"]
    assert f"<dt>CPU</dt><dd>{number(cpu, '%')}," in shown["health"][0]
    assert f'<time datetime="{health["timestamp"]}">' in shown["health"][0]
    assert "source: psutil" in shown["health"][0]
    assert re.search(r"<dt>Memory</dt><dd>[\d.]+ [KMGT]?B of [\d.]+ [KMGT]?B \([\d.]+%\)</dd>", shown["health"][0])

    (ping,) = shown["ping"]
    assert "<h2>Ping 127.0.0.1</h2>" in ping
    assert "<dt>Packets</dt><dd>3 of 3 answered</dd>" in ping
    assert re.search(r"<dt>Average</dt><dd>[\d.]+ ms</dd>", ping)
    assert "source: ping" in ping

    processes = widgets["processes"]["data"]
    assert f"<dt>Processes</dt><dd>{number(processes['process_count'], 'running', 0)}</dd>" in shown["processes"][0]
    assert f"source: {processes['source']}" in shown["processes"][0]
    assert f"source: {widgets['wifi']['data']['source']}" in shown["wifi"][0]


EMOJI = re.compile("[\u2190-\u21ff\u2300-\u23ff\u2600-\u27bf\u2b00-\u2bff\u200d\ufe0f\U0001f000-\U0001faff]")
"""Emoji and the pictographs and arrows that render as emoji: the page labels things in words."""

NETWORK_ROW = re.compile(
    r'<tr data-layer="(\w+)"><td>(.*?)</td><td>(.*?)</td><td class="status (\w*)">(.*?)</td>'
    r"<td>(.*?)</td><td>(.*?)</td></tr>"
)


def test_the_live_page_shows_the_layered_checks_and_the_last_roam(tmp_path: Path, monkeypatch) -> None:
    """Two Wi-Fi readings through the collect loop (a roam between them), then a round of checks on loopback."""
    first = parse_airport_info((FIXTURES / "wifi/airport_I_mojave10.14.6_connected.txt").read_text())
    second = parse_wdutil_info((FIXTURES / "wifi/wdutil_info_monterey12_5ghz_dfs_trimmed.txt").read_text())
    readings = iter([first, second])
    monkeypatch.setattr("atlas.agent.daemon.collect_wifi", lambda: next(readings))  # the Mac's tools, not Atlas
    with (
        dns_responder({"intranet.example": "192.0.2.7"}) as good,
        dns_responder({}) as bad,
        http_server() as (base, _),
    ):
        path = write_network_config(
            tmp_path,
            dns_resolvers=[good.address, bad.address],
            dns_names=["intranet.example"],
            http_targets=[f"{base}/ok", f"{base}/fail"],
        )
        agent = Agent(load_agent_config(path))
        agent.collect(store=False)
        agent.collect(store=False)
        network = agent.run_network(store=False)
    server = serve(agent, "127.0.0.1", 0)
    try:
        page = httpx.get(f"http://127.0.0.1:{server.server_address[1]}/", timeout=5).text
    finally:
        server.shutdown()
        server.server_close()
    assert not EMOJI.findall(page)
    shown = cards(page)
    (card,) = shown["network"]
    rows = NETWORK_ROW.findall(card)
    assert [(r[0], r[2]) for r in rows] == [(e["data"]["layer"], e["data"]["target"]) for e in network]
    assert [r[0] for r in rows] == ["wifi", "gateway", "dns", "dns", "http", "http"]
    status = {(r[0], r[2]): (r[4], r[5]) for r in rows}
    gateway = network[1]["data"]
    assert status[("gateway", gateway["target"])][0] == gateway["status"].replace("_", " ")

    link, measured = status[("wifi", second.interface)]
    assert link == "ok"
    assert f"{second.rssi_dbm} dBm" in measured
    assert f"channel {second.channel} ({second.band})" in measured
    assert "1 roam since the last round" in measured

    assert status[("dns", good.address)][0] == "ok"
    assert re.fullmatch(r"intranet\.example A, NOERROR, 1 answer, in [\d.]+ ms", status[("dns", good.address)][1])
    assert status[("dns", bad.address)][0] == "dns error"
    assert "NXDOMAIN" in status[("dns", bad.address)][1]

    assert status[("http", f"{base}/ok")][0] == "ok"
    assert re.fullmatch(
        r"HTTP/1\.1 200 in [\d.]+ ms \(connect [\d.]+ ms, first byte [\d.]+ ms\)", status[("http", f"{base}/ok")][1]
    )
    assert status[("http", f"{base}/fail")][0] == "http error"
    assert status[("http", f"{base}/fail")][1].endswith("; HTTP 500")
    assert all(f'<time datetime="{e["timestamp"]}">' in card for e in network)
    ok = sum(e["data"]["status"] == "ok" for e in network)
    assert f"{ok} of 6 checks ok" in card
    assert "source: Wi-Fi reading, ping, DNS query over UDP, HTTP GET" in card

    (roam,) = shown["roam"]
    entry = agent.snapshot()["widgets"]["roam"]
    for row in (
        f"<dt>Access point</dt><dd>{first.bssid} to {second.bssid}</dd>",
        f"<dt>Channel</dt><dd>{first.channel} ({first.band}) to {second.channel} ({second.band})</dd>",
        f"<dt>Signal</dt><dd>{first.rssi_dbm} dBm to {second.rssi_dbm} dBm"
        f" ({second.rssi_dbm - first.rssi_dbm:+d} dB)</dd>",
        "<dt>Roams</dt><dd>1 since the agent started</dd>",
        f'<time datetime="{entry["timestamp"]}">',
        "source: consecutive Wi-Fi readings",
    ):
        assert row in roam, row


@pytest.mark.parametrize("widget", ["network", "roam"])
def test_a_widget_not_read_yet_says_so(widget: str) -> None:
    (card,) = cards(render_page({"widgets": {}}))[widget]
    assert "No reading yet" in card


def test_cards_from_captured_mac_readings() -> None:
    wifi = wifi_log(parse_wdutil_info((FIXTURES / "wifi" / "wdutil_info_monterey12_5ghz_dfs_trimmed.txt").read_text()))
    smc = parse_powermetrics_smc((FIXTURES / "health" / "powermetrics_smc_intel_idle_fan0.txt").read_text())
    health = health_log(HealthReading(psutil={"cpu_percent": 12.5, "uptime_seconds": 273600}, smc=smc))
    speedtest = speedtest_log(
        SpeedtestResult(
            status="ok",
            timestamp="2026-11-25T14:30:00Z",
            download_mbps=125.5,
            upload_mbps=45.2,
            latency_ms=11.84,
            isp="Example ISP",
            server_sponsor="Example Sponsor",
            server_name="Berlin",
            server_cc="DE",
        )
    )
    for entry in (wifi, health, speedtest):
        entry["timestamp"] = "2026-11-25T14:30:00Z"
    page = render_page(
        {
            "machine": {"hostname": "my-mac"},
            "encryption": True,
            "widgets": {"wifi": wifi, "health": health, "speedtest": speedtest},
        },
        now=datetime(2026, 11, 25, 14, 32, 5, tzinfo=UTC),
    )
    shown = cards(page)
    card = shown["wifi"][0]
    for row in (
        "<dt>Network</dt><dd>SomeSSID-5</dd>",
        "<dt>Signal</dt><dd>-61 dBm</dd>",
        "<dt>Noise</dt><dd>-96 dBm</dd>",
        "<dt>SNR</dt><dd>35 dB</dd>",
        "<dt>Channel</dt><dd>144, 5GHz, 40 MHz</dd>",
        "<dt>Tx rate</dt><dd>324 Mbps</dd>",
        "<dt>Security</dt><dd>WPA2 Personal</dd>",
        "source: wdutil",
        "(2 min ago)",
    ):
        assert row in card, row
    card = shown["health"][0]
    for row in (
        "<dt>CPU</dt><dd>12.5%</dd>",
        "<dt>Uptime</dt><dd>3 d 4 h</dd>",
        "<dt>CPU temperature</dt><dd>56 °C</dd>",
        "<dt>Fans</dt><dd>0 rpm</dd>",
        "source: psutil, powermetrics",
    ):
        assert row in card, row
    card = shown["speedtest"][0]
    for row in (
        "<dt>Download</dt><dd>125.5 Mbps</dd>",
        "<dt>Upload</dt><dd>45.2 Mbps</dd>",
        "<dt>Latency</dt><dd>11.8 ms</dd>",
        "<dt>Server</dt><dd>Example Sponsor, Berlin, DE</dd>",
        "source: library",
    ):
        assert row in card, row
    assert "No reading yet" in shown["processes"][0]
    assert "my-mac · Encryption on (AES-256-GCM) · live only (no fleet server)" in page


def test_what_a_network_names_itself_is_shown_as_text() -> None:
    reading = parse_wdutil_info((FIXTURES / "wifi" / "wdutil_info_monterey12_5ghz_dfs_trimmed.txt").read_text())
    entry = wifi_log(reading)
    entry["data"]["ssid"] = '<img src=x onerror="alert(1)">'
    page = render_page({"widgets": {"wifi": entry}})
    assert "<img" not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
