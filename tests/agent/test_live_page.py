"""The live widget page as the person at the Mac reads it: a card per widget, values with units, time, source."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from atlas.agent.collectors.health import HealthReading, parse_powermetrics_smc
from atlas.agent.collectors.speedtest import SpeedtestResult
from atlas.agent.collectors.wifi import parse_wdutil_info
from atlas.agent.live_page import number, render_page
from atlas.agent.widgets import health_log, speedtest_log, wifi_log
from atlas.live_widgets import start_live_widget_server

from .test_agent_daemon import write_config

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
    assert sorted(shown) == ["health", "ping", "processes", "speedtest", "wifi"]
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
