"""Ookla ``speedtest -f json`` parser against the real captured outputs in tests/fixtures/speedtest/
(copied byte for byte from /work/shared/fixtures/speedtest/, sources in tests/fixtures/SOURCES.md).

Variants built in this file from a real capture (a key deleted, a value changed) are marked
``DERIVED``; nothing else here is invented output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atlas.agent import widgets
from atlas.agent.collectors.ookla import OoklaResult, parse_ookla_json
from atlas.contract.schema import LogEntry

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "speedtest"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def test_v1_result_ipv6_capture() -> None:
    r = parse_ookla_json(fixture("ookla_json_v1.0_ipv6.json"))
    assert r.status == "ok"
    assert r.timestamp == "2021-05-15T14:16:42Z"
    assert r.download_mbps == 261.241  # bandwidth 32655144 bytes/s * 8 / 1e6
    assert r.upload_mbps == 36.988  # 4623519 bytes/s
    assert (r.download_bytes, r.upload_bytes) == (259696700, 58489684)
    assert (r.download_elapsed_ms, r.upload_elapsed_ms) == (8001, 13207)
    assert (r.latency_ms, r.jitter_ms) == (5.391, 0.032)
    assert r.packet_loss_pct == 0
    assert r.isp == "Deutsche Telekom AG"
    assert r.interface == "eth0"
    assert r.internal_ip == r.external_ip == "2001:db8:4727:7900:bc93:2361:976f:e978"
    assert r.is_vpn is False
    assert (r.server_id, r.server_name, r.server_location, r.server_country) == (
        4087,
        "wilhelm.tel",
        "Norderstedt",
        "Germany",
    )
    assert (r.server_host, r.server_port) == ("speedtest.wtnet.de", 8080)
    assert r.result_id == "0817ab3e-03d7-426a-9df2-173a7a0f1e00"
    assert r.result_url == "https://www.speedtest.net/result/c/0817ab3e-03d7-426a-9df2-173a7a0f1e00"
    assert r.reason is None


def test_v1_result_with_hidden_addresses() -> None:
    r = parse_ookla_json(fixture("ookla_json_v1.0_raspberrypi_eth0.json"))
    assert r.status == "ok"
    assert r.download_mbps == 638.825
    assert r.upload_mbps == 771.879
    assert (r.latency_ms, r.jitter_ms) == (11.217, 0.361)  # float artefacts of the capture rounded
    assert r.internal_ip is None  # "***" placeholder in the capture
    assert r.external_ip == "203.0.113.172"
    assert r.isp == "Box Broadband Limited"
    assert (r.server_id, r.server_host) == (50179, "speedtest.trejj.net")


def test_error_log_after_stderr_lines() -> None:
    r = parse_ookla_json(fixture("ookla_error_config_503_stderr_and_json.txt"))
    assert r.status == "error"
    assert r.reason == "Configuration - Could not retrieve or read configuration (ConfigurationError)"
    assert r.timestamp == "2021-03-19T17:33:25Z"
    assert r.download_mbps is None
    assert r.latency_ms is None


def test_error_log_pretty_printed() -> None:
    r = parse_ookla_json(fixture("ookla_error_hostnotfound_json_pretty.txt"))
    assert r.status == "error"
    assert r.reason == "Configuration - Could not retrieve or read configuration (ConfigurationError)"
    assert r.timestamp == "2022-10-21T18:42:58Z"


def test_packet_loss_absent_is_none() -> None:
    data = json.loads(fixture("ookla_json_v1.0_ipv6.json"))
    del data["packetLoss"]  # DERIVED: the CLI omits the key when the server cannot measure loss
    r = parse_ookla_json(json.dumps(data))
    assert r.status == "ok"
    assert r.packet_loss_pct is None
    assert r.download_mbps == 261.241


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "[2021-03-19 14:33:25.456] [error] Configuration - Cannot retrieve configuration document (503)\n",
        fixture("ookla_json_v1.0_ipv6.json")[:200],  # DERIVED: cut short
        fixture("speedtest_cli_simple.txt"),  # speedtest-cli's text, not Ookla's JSON
    ],
)
def test_non_results_are_errors(text: str) -> None:
    r = parse_ookla_json(text)
    assert r.status == "error"
    assert r.reason


def test_bad_values_are_dropped_not_trusted() -> None:
    data = json.loads(fixture("ookla_json_v1.0_ipv6.json"))
    # DERIVED: wrong types and impossible values in an otherwise real result
    data["download"]["bandwidth"] = "32655144"
    data["upload"]["bandwidth"] = -1
    data["packetLoss"] = 250
    data["server"]["id"] = True
    data["interface"]["isVpn"] = "false"
    r = parse_ookla_json(json.dumps(data))
    assert r.status == "ok"
    assert r.download_mbps is None
    assert r.upload_mbps is None
    assert r.packet_loss_pct is None
    assert r.server_id is None
    assert r.is_vpn is None
    assert r.latency_ms == 5.391


def test_result_wins_over_earlier_log_lines() -> None:
    text = fixture("ookla_error_config_503_stderr_and_json.txt") + fixture("ookla_json_v1.0_ipv6.json")
    assert parse_ookla_json(text).status == "ok"  # DERIVED: a retry's result after the first failure


def test_not_a_string() -> None:
    assert parse_ookla_json(None).status == "error"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    [
        "ookla_json_v1.0_ipv6.json",
        "ookla_json_v1.0_raspberrypi_eth0.json",
        "ookla_error_config_503_stderr_and_json.txt",
    ],
)
def test_as_speedtest_result_makes_a_valid_speedtest_log(name: str) -> None:
    r = parse_ookla_json(fixture(name))
    result = r.as_speedtest_result()
    assert result.source == "ookla_cli"
    assert result.status == r.status
    assert result.download_mbps == r.download_mbps
    assert result.server_sponsor == r.server_name
    LogEntry.model_validate_json(json.dumps(widgets.speedtest_log(result)))
    json.dumps(r.as_data(), allow_nan=False)


def test_long_text_is_bounded() -> None:
    data = json.loads(fixture("ookla_json_v1.0_ipv6.json"))
    data["isp"] = "x" * 100_000  # DERIVED
    assert isinstance(parse_ookla_json(json.dumps(data)), OoklaResult)
    assert len(parse_ookla_json(json.dumps(data)).isp or "") == 1024
