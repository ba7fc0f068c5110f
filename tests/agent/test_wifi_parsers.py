"""Wi-Fi collector: every parser against every real captured output in tests/fixtures/wifi/ and
tests/fixtures/wifi_linux/ (copied byte for byte from /work/shared/fixtures/, sources in
SOURCES.md there), the helpers, ``merge`` and the runner with a fake ``run``.

Strings written inside this file (not read from a fixture) are hand-written edge cases and are
marked ``HAND-WRITTEN``; everything else is real command output.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from atlas.agent.collectors.wifi import (
    BANDS,
    NMCLI_COMMAND,
    NMCLI_DEFAULT_FIELDS,
    STATES,
    WifiReading,
    band_for_channel,
    channel_for_frequency,
    collect_wifi,
    iw_interfaces,
    merge,
    nmcli_rows,
    nmcli_wifi_devices,
    parse_airport_info,
    parse_channel,
    parse_ipconfig_summary,
    parse_iw_info,
    parse_iw_link,
    parse_nmcli_wifi_list,
    parse_system_profiler_airport,
    parse_wdutil_info,
    width_mhz,
    wifi_interface_from_hardware_ports,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ALL_FIXTURES = sorted(
    f"{p.parent.name}/{p.name}" for d in ("wifi", "wifi_linux") for p in (FIXTURES / d).iterdir() if p.is_file()
)

REQUIRED_FIELDS = {
    "ssid",
    "ssid_redacted",
    "bssid",
    "rssi_dbm",
    "noise_dbm",
    "snr_db",
    "channel",
    "band",
    "channel_width_mhz",
    "phy_mode",
    "tx_rate_mbps",
    "security",
    "mac_address",
    "country_code",
    "interface",
    "state",
    "source",
}


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def _nmcli_default(text: str) -> WifiReading:
    return parse_nmcli_wifi_list(text, NMCLI_DEFAULT_FIELDS)


TEXT_PARSERS: list[Callable[[str], WifiReading]] = [
    parse_wdutil_info,
    parse_system_profiler_airport,
    parse_airport_info,
    parse_ipconfig_summary,
    parse_iw_link,
    parse_iw_info,
    parse_nmcli_wifi_list,
    _nmcli_default,
]


# --- every fixture, every parser: never raises ----------------------------------------------


def test_all_fixtures_are_listed() -> None:
    assert len(ALL_FIXTURES) == 20


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_every_parser_survives_every_fixture(name: str) -> None:
    text = fixture(name)
    for parser in TEXT_PARSERS:
        reading = parser(text)
        assert isinstance(reading, WifiReading)
        assert reading.state in STATES
        assert reading.band in (*BANDS, None)
        json.dumps(reading.as_data())
    wifi_interface_from_hardware_ports(text)
    iw_interfaces(text)
    nmcli_wifi_devices(text)
    nmcli_rows(text, NMCLI_DEFAULT_FIELDS)


# --- wdutil info ------------------------------------------------------------------------------


def test_wdutil_monterey12_5ghz_dfs_channel_format() -> None:
    r = parse_wdutil_info(fixture("wifi/wdutil_info_monterey12_5ghz_dfs_trimmed.txt"))
    assert r.state == "connected"
    assert r.source == "wdutil"
    assert r.interface == "en1"
    assert r.mac_address == "fe:dc:ba:09:87:65"
    assert r.mac_redacted is False
    assert r.ssid == "SomeSSID-5"
    assert r.ssid_redacted is False
    assert r.bssid == "fe:dc:ba:09:87:65"
    assert r.rssi_dbm == -61
    assert r.noise_dbm == -96
    assert r.snr_db == 35
    assert r.tx_rate_mbps == 324.0
    assert r.security == "WPA2 Personal"
    assert r.phy_mode == "802.11ac"
    assert r.channel == 144
    assert r.channel_width_mhz == 40
    assert r.band == "5GHz"
    assert r.country_code == "US"


def test_wdutil_sequoia15_redacted_2g1() -> None:
    r = parse_wdutil_info(fixture("wifi/wdutil_info_sequoia15_2.4ghz_redacted.txt"))
    assert r.state == "connected"
    assert r.interface == "en0"
    assert r.ssid is None
    assert r.ssid_redacted is True
    assert r.bssid is None
    assert r.mac_address is None
    assert r.mac_redacted is True
    assert r.rssi_dbm == -63
    assert r.noise_dbm == -97
    assert r.snr_db == 34
    assert r.tx_rate_mbps == 48.0
    assert r.security == "open"
    assert r.phy_mode == "802.11ax"
    assert r.channel == 1
    assert r.band == "2.4GHz"
    assert r.channel_width_mhz == 20
    assert r.country_code == "US"


def test_wdutil_sequoia15_redacted_full_output_reads_only_the_wifi_section() -> None:
    # Full output: BLUETOOTH and AWDL sections also have "Power" lines, AWDL has channel lines,
    # and the file ends with a shell prompt and no final newline.
    r = parse_wdutil_info(fixture("wifi/wdutil_info_sequoia15_2.4ghz_redacted_full.txt"))
    assert r.state == "connected"
    assert r.interface == "en0"
    assert r.ssid is None
    assert r.ssid_redacted is True
    assert r.bssid is None
    assert r.mac_address is None
    assert r.mac_redacted is True
    assert r.rssi_dbm == -63
    assert r.noise_dbm == -97
    assert r.snr_db == 34
    assert r.tx_rate_mbps == 162.0
    assert r.security == "open"
    assert r.phy_mode == "802.11ax"
    assert r.channel == 11
    assert r.band == "2.4GHz"
    assert r.channel_width_mhz == 20
    assert r.country_code == "US"
    assert "<redacted>" not in json.dumps(r.as_data())


def test_wdutil_sequoia15_not_associated_sentinels_and_stale_channel() -> None:
    r = parse_wdutil_info(fixture("wifi/wdutil_info_sequoia15_not_associated.txt"))
    assert r.state == "disconnected"
    assert r.interface == "en0"
    assert r.rssi_dbm is None  # "0 dBm" sentinel
    assert r.noise_dbm is None  # "0 dBm" sentinel
    assert r.snr_db is None
    assert r.tx_rate_mbps is None  # "0.0 Mbps"
    assert r.channel is None  # "2g1/20" is stale while not associated
    assert r.band is None
    assert r.channel_width_mhz is None
    assert r.ssid is None
    assert r.ssid_redacted is False  # "SSID : None", not redacted
    assert r.bssid is None
    assert r.security is None
    assert r.phy_mode is None
    assert r.mac_address is None
    assert r.mac_redacted is True
    assert r.country_code == "US"


def test_wdutil_sonoma14_trimmed_two_fields() -> None:
    r = parse_wdutil_info(fixture("wifi/wdutil_info_sonoma14.5_m1pro_trimmed_two_fields.txt"))
    assert r.state == "connected"  # only a non-zero Tx Rate says so
    assert r.interface == "en0"
    assert r.tx_rate_mbps == 1200.0
    assert r.ssid is None
    assert r.ssid_redacted is False
    assert r.rssi_dbm is None
    assert r.channel is None
    assert r.mac_address is None
    assert r.mac_redacted is False


def test_wdutil_power_off_hand_written() -> None:
    # HAND-WRITTEN: no real capture of wdutil with Wi-Fi turned off was found.
    text = "WIFI\n    Interface Name       : en0\n    Power                : Off [Off]\n"
    r = parse_wdutil_info(text)
    assert r.state == "off"
    assert r.interface == "en0"


# --- system_profiler SPAirPortDataType -json ---------------------------------------------------


def test_system_profiler_sequoia15_connected_string_channel() -> None:
    r = parse_system_profiler_airport(fixture("wifi/system_profiler_airport_sequoia15.5_connected.json"))
    assert r.state == "connected"
    assert r.source == "system_profiler"
    assert r.interface == "en0"  # not the awdl0 entry
    assert r.ssid == "SSID-2"
    assert r.ssid_redacted is False
    assert r.bssid is None  # 15.x does not list it
    assert r.rssi_dbm == -40
    assert r.noise_dbm == -97
    assert r.snr_db == 57
    assert r.channel == 6
    assert r.band == "2.4GHz"
    assert r.channel_width_mhz == 20
    assert r.phy_mode == "802.11n"
    assert r.tx_rate_mbps == 144.0
    assert r.security == "open"
    assert r.mac_address == "fe:dc:ba:09:87:65"
    assert r.country_code == "US"


def test_system_profiler_sequoia15_wifi_off() -> None:
    r = parse_system_profiler_airport(fixture("wifi/system_profiler_airport_sequoia15.5_wifi_off.json"))
    assert r.state == "off"
    assert r.interface == "en0"
    assert r.mac_address == "fe:dc:ba:09:87:65"
    assert r.ssid is None
    assert r.channel is None
    assert r.rssi_dbm is None
    assert r.country_code is None


def test_system_profiler_monterey12_disassociated() -> None:
    r = parse_system_profiler_airport(fixture("wifi/system_profiler_airport_monterey12.7.2_disassociated.json"))
    assert r.state == "disconnected"
    assert r.interface == "en0"
    assert r.mac_address == "fe:dc:ba:09:87:65"
    assert r.country_code is None  # "X0" is a placeholder, not a country
    assert r.ssid is None
    assert r.ssid_redacted is False
    assert r.channel is None
    assert r.rssi_dbm is None
    assert r.noise_dbm is None


def test_system_profiler_catalina10_15_integer_channel_and_bssid() -> None:
    r = parse_system_profiler_airport(fixture("wifi/system_profiler_airport_catalina10.15.7_connected.json"))
    assert r.state == "connected"
    assert r.interface == "en1"
    assert r.ssid == "SSID-6"
    assert r.bssid == "fe:dc:ba:09:87:65"
    assert r.rssi_dbm == -55
    assert r.noise_dbm == -98
    assert r.snr_db == 43
    assert r.channel == 6
    assert r.band == "2.4GHz"
    assert r.channel_width_mhz is None  # an integer channel carries no width
    assert r.phy_mode == "802.11n"
    assert r.tx_rate_mbps == 145.0
    assert r.security == "open"
    assert r.mac_address == "fe:dc:ba:09:87:65"
    assert r.country_code == "US"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        '{"SPAirPortDataType": "x"}',
        '{"SPAirPortDataType": [{"spairport_airport_interfaces": [1, null]}]}',
    ],
)
def test_system_profiler_garbage_hand_written(text: str) -> None:
    # HAND-WRITTEN: malformed JSON.
    r = parse_system_profiler_airport(text)
    assert r.state == "no_interface"
    assert r.source == "system_profiler"


def test_system_profiler_redacted_ssid_and_noise_sentinel_hand_written() -> None:
    # HAND-WRITTEN: the redacted form of a 15.x current network (the fixtures were captured
    # with Location permission) and a "0 dBm" noise as seen in the 10.15 neighbour list.
    text = json.dumps(
        {
            "SPAirPortDataType": [
                {
                    "spairport_airport_interfaces": [
                        {
                            "_name": "en0",
                            "spairport_status_information": "spairport_status_connected",
                            "spairport_wireless_mac_address": "<redacted>",
                            "spairport_current_network_information": {
                                "_name": "<redacted>",
                                "spairport_network_channel": "149 (5GHz, 80MHz)",
                                "spairport_signal_noise": "-57 dBm / 0 dBm",
                            },
                        }
                    ]
                }
            ]
        }
    )
    r = parse_system_profiler_airport(text)
    assert r.state == "connected"
    assert r.ssid is None
    assert r.ssid_redacted is True
    assert r.mac_address is None
    assert r.mac_redacted is True
    assert r.rssi_dbm == -57
    assert r.noise_dbm is None
    assert r.snr_db is None
    assert r.channel == 149
    assert r.band == "5GHz"
    assert r.channel_width_mhz == 80


# --- airport -I ---------------------------------------------------------------------------------


def test_airport_mojave_connected() -> None:
    r = parse_airport_info(fixture("wifi/airport_I_mojave10.14.6_connected.txt"))
    assert r.state == "connected"
    assert r.source == "airport"
    assert r.ssid == "SnazzleDazzle"
    assert r.bssid == "3c:37:86:15:ad:f9"
    assert r.rssi_dbm == -66
    assert r.noise_dbm == -90
    assert r.snr_db == 24
    assert r.tx_rate_mbps == 195.0
    assert r.max_rate_mbps == 867.0
    assert r.security == "WPA2 Personal"
    assert r.channel == 48
    assert r.channel_width_mhz == 80
    assert r.band == "5GHz"
    assert r.interface is None  # airport -I does not print it
    assert r.mac_address is None
    assert r.phy_mode is None
    assert r.country_code is None


def test_airport_sonoma14_4_deprecation_warning_is_no_data() -> None:
    r = parse_airport_info(fixture("wifi/airport_I_sonoma14.4.1_deprecated_warning.txt"))
    assert r.state == "no_interface"
    assert r.source == "airport"
    assert r.ssid is None
    assert r.rssi_dbm is None


def test_airport_warning_followed_by_data_still_parses() -> None:
    # Real lines, joined here: macOS 13-14.3 printed the warning before the data.
    text = fixture("wifi/airport_I_sonoma14.4.1_deprecated_warning.txt") + fixture(
        "wifi/airport_I_mojave10.14.6_connected.txt"
    )
    r = parse_airport_info(text)
    assert r.state == "connected"
    assert r.ssid == "SnazzleDazzle"


def test_airport_scan_output_is_not_mistaken_for_a_connection() -> None:
    r = parse_airport_info(fixture("wifi/airport_s_mojave10.14.6_scan.txt"))
    assert r.state == "no_interface"
    assert r.ssid is None


def test_airport_off_hand_written() -> None:
    # HAND-WRITTEN: no real capture of "airport -I" with Wi-Fi off was found.
    r = parse_airport_info("AirPort: Off\n")
    assert r.state == "off"


# --- other macOS outputs -------------------------------------------------------------------------


def test_ipconfig_getsummary_sequoia15_redacted() -> None:
    r = parse_ipconfig_summary(fixture("wifi/ipconfig_getsummary_en0_sequoia15.6_redacted_tail.txt"), "en0")
    assert r.state == "connected"
    assert r.source == "ipconfig"
    assert r.interface == "en0"
    assert r.ssid is None
    assert r.ssid_redacted is True
    assert r.bssid is None
    assert r.security == "WPA2 Personal"


def test_networksetup_listallhardwareports_finds_the_wifi_device() -> None:
    text = fixture("wifi/networksetup_listallhardwareports_m1pro_sonoma14.5.txt")
    assert wifi_interface_from_hardware_ports(text) == "en0"


def test_networksetup_getairportnetwork_is_not_trusted_as_disconnected() -> None:
    # macOS 15 prints this while connected, so the collector does not use networksetup and no
    # parser turns this message into a "disconnected" reading.
    text = fixture("wifi/networksetup_getairportnetwork_sequoia15.0_connected_reports_not_associated.txt")
    for parser in TEXT_PARSERS:
        assert parser(text).state == "no_interface"


# --- Linux: iw ----------------------------------------------------------------------------------


def test_iw_link_heatmapper_sample() -> None:
    r = parse_iw_link(fixture("wifi_linux/iw_dev_wlp1s0_link_anonymized_heatmapper.txt"))
    assert r.state == "connected"
    assert r.source == "iw"
    assert r.interface == "wlp1s0"
    assert r.bssid == "fe:dc:ba:98:76:02"
    assert r.ssid == "SSID-1"
    assert r.rssi_dbm == -51
    assert r.noise_dbm is None  # iw link prints no noise
    assert r.snr_db is None
    assert r.channel == 1  # from "freq: 2412.0"
    assert r.band == "2.4GHz"
    assert r.tx_rate_mbps == 26.0
    assert r.channel_width_mhz is None
    assert r.phy_mode is None


def test_iw_info_partial() -> None:
    text = fixture("wifi_linux/iw_dev_wlan0_info_partial.txt")
    r = parse_iw_info(text)
    assert r.state == "connected"  # a station reports a channel only while associated
    assert r.interface == "wlan0"
    assert r.channel == 36
    assert r.band == "5GHz"
    assert r.channel_width_mhz == 80
    assert r.ssid is None
    assert r.mac_address is None
    assert iw_interfaces(text) == ["wlan0"]


def test_iw_scan_output_is_not_mistaken_for_a_link() -> None:
    text = fixture("wifi_linux/iw_scan_centos7.7.txt")
    link = parse_iw_link(text)
    assert link.state == "no_interface"
    assert link.ssid is None
    assert link.rssi_dbm is None
    assert parse_iw_info(text).state == "no_interface"


def test_iw_link_not_connected_hand_written() -> None:
    # HAND-WRITTEN: iw's message for an unassociated interface.
    r = parse_iw_link("Not connected.\n")
    assert r.state == "disconnected"
    assert r.rssi_dbm is None


def test_iw_link_vht_bitrate_and_iw_dev_listing_hand_written() -> None:
    # HAND-WRITTEN: the heatmapper sample has a bare bitrate; real iw appends MCS/width flags.
    link = parse_iw_link(
        "Connected to 0a:1b:2c:3d:4e:5f (on wlp2s0)\n"
        "\tSSID: Lab\n\tfreq: 5180\n\tsignal: -48 dBm\n"
        "\ttx bitrate: 866.7 MBit/s VHT-MCS 9 80MHz short GI VHT-NSS 2\n"
    )
    assert link.channel == 36
    assert link.band == "5GHz"
    assert link.channel_width_mhz == 80
    assert link.phy_mode == "802.11ac"
    assert link.tx_rate_mbps == 866.7
    info = parse_iw_info(
        "phy#1\n\tInterface p2p-dev\n\t\ttype P2P-device\n"
        "phy#0\n\tInterface wlp2s0\n\t\taddr 0A:1B:2C:3D:4E:60\n\t\tssid Lab\n\t\ttype managed\n"
    )
    assert info.interface == "wlp2s0"
    assert info.mac_address == "0a:1b:2c:3d:4e:60"
    assert info.ssid == "Lab"
    assert info.state == "connected"


# --- Linux: nmcli -------------------------------------------------------------------------------


def test_nmcli_terse_default_fields_active_row_and_escapes() -> None:
    text = fixture("wifi_linux/nmcli_t_dev_wifi_list_annotated_heatmapper.txt")
    r = parse_nmcli_wifi_list(text, NMCLI_DEFAULT_FIELDS)
    assert r.state == "connected"
    assert r.source == "nmcli"
    assert r.ssid == "SSID-3"
    assert r.bssid == "fe:dc:ba:09:87:03"
    assert r.channel == 1
    assert r.band == "2.4GHz"
    assert r.signal_percent == 87
    assert r.max_rate_mbps == 260.0
    assert r.security == "open"
    assert r.rssi_dbm is None  # nmcli gives a percentage, not dBm
    assert r.tx_rate_mbps is None
    assert r.interface is None


def test_nmcli_rows_unescape_colons_and_backslashes() -> None:
    rows = nmcli_rows(fixture("wifi_linux/nmcli_t_dev_wifi_list_annotated_heatmapper.txt"), NMCLI_DEFAULT_FIELDS)
    assert len(rows) == 11  # the upstream "//" comment lines and blank lines are skipped
    second = rows[1]
    assert second["BSSID"] == "FE:DC:BA:09:87:02"
    assert second["SSID"] == "SSID-2-\\foo:bar"
    assert second["SECURITY"] == "WPA2"
    assert [r["IN-USE"] for r in rows].count("*") == 1


def test_nmcli_wrong_field_layout_is_no_data() -> None:
    # The fixture has 9 fields per row; the runner's layout has 8, so nothing matches.
    r = parse_nmcli_wifi_list(fixture("wifi_linux/nmcli_t_dev_wifi_list_annotated_heatmapper.txt"))
    assert r.state == "no_interface"


def test_nmcli_device_table_without_wifi() -> None:
    text = fixture("wifi_linux/nmcli_device_all_centos7.7_ethernet_only_no_wifi.txt")
    assert nmcli_wifi_devices(text) == []
    assert parse_nmcli_wifi_list(text).state == "no_interface"
    assert parse_nmcli_wifi_list(text, NMCLI_DEFAULT_FIELDS).state == "no_interface"


def test_nmcli_runner_layout_hand_written() -> None:
    # HAND-WRITTEN: no real capture of the runner's -f ACTIVE,SSID,BSSID,CHAN,FREQ,... layout.
    text = (
        "no:Cafe:AA\\:BB\\:CC\\:DD\\:EE\\:01:6:2437 MHz:130 Mbit/s:40:WPA2\n"
        "yes:Lab\\:5G:AA\\:BB\\:CC\\:DD\\:EE\\:02:5:5975 MHz:1201 Mbit/s:70:WPA3\n"
    )
    r = parse_nmcli_wifi_list(text)
    assert r.state == "connected"
    assert r.ssid == "Lab:5G"
    assert r.bssid == "aa:bb:cc:dd:ee:02"
    assert r.channel == 5
    assert r.band == "6GHz"  # from FREQ; channel 5 alone would read as 2.4 GHz
    assert r.signal_percent == 70
    assert r.security == "WPA3"
    only_inactive = parse_nmcli_wifi_list(text.splitlines()[0])
    assert only_inactive.state == "disconnected"
    assert nmcli_wifi_devices("wlp2s0:wifi:connected:Lab\nlo:loopback:unmanaged:\n") == ["wlp2s0"]


# --- empty and garbage input ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n", "garbage \x00\xff : : :", "::::::::", "é" * 50])
def test_parsers_on_empty_and_garbage_hand_written(text: str) -> None:
    # HAND-WRITTEN: empty output and noise.
    for parser in TEXT_PARSERS:
        r = parser(text)
        assert r.state == "no_interface"
        assert r.ssid is None
        assert r.channel is None


# --- helpers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # Real notations seen in the fixtures.
        ("2g11/20", (11, "2.4GHz", 20)),
        ("2g1/20", (1, "2.4GHz", 20)),
        ("5g149/80", (149, "5GHz", 80)),
        ("6g37/160", (37, "6GHz", 160)),
        ("144 (40 MHz, DFS)", (144, "5GHz", 40)),
        ("6 (2GHz, 20MHz)", (6, "2.4GHz", 20)),
        ("144 (5GHz, 80MHz)", (144, "5GHz", 80)),
        ("1 (6GHz)", (1, "6GHz", None)),
        ("36 (5GHz)", (36, "5GHz", None)),
        (6, (6, "2.4GHz", None)),
        (165, (165, "5GHz", None)),
        ("48,80", (48, "5GHz", 80)),
        ("3,+1", (3, "2.4GHz", 40)),
        ("36 (5180 MHz), width: 80 MHz, center1: 5210 MHz", (36, "5GHz", None)),
        # Hand-written odd values.
        (0, (None, None, None)),
        (None, (None, None, None)),
        ("n/a", (None, None, None)),
        (True, (None, None, None)),
    ],
)
def test_parse_channel(value: object, expected: tuple[int | None, str | None, int | None]) -> None:
    assert parse_channel(value) == expected


def test_parse_channel_every_supported_channel_in_the_fixtures() -> None:
    wdutil = fixture("wifi/wdutil_info_sequoia15_2.4ghz_redacted_full.txt")
    line = next(x for x in wdutil.splitlines() if "Supported Channels" in x)
    tokens = line.split(":", 1)[1].strip().split(",")
    assert len(tokens) > 300
    for token in tokens:
        channel, band, width = parse_channel(token)
        assert channel is not None
        assert band == {"2": "2.4GHz", "5": "5GHz", "6": "6GHz"}[token[0]]
        assert width in (20, 40, 80, 160)
    profiler = json.loads(fixture("wifi/system_profiler_airport_sequoia15.5_connected.json"))
    en0 = profiler["SPAirPortDataType"][0]["spairport_airport_interfaces"][0]
    for entry in en0["spairport_supported_channels"]:
        assert parse_channel(entry)[1] in BANDS
    monterey = json.loads(fixture("wifi/system_profiler_airport_monterey12.7.2_disassociated.json"))
    for number in monterey["SPAirPortDataType"][0]["spairport_airport_interfaces"][0]["spairport_supported_channels"]:
        assert parse_channel(number)[1] in ("2.4GHz", "5GHz")


@pytest.mark.parametrize(
    ("channel", "hint", "band"),
    [
        (1, None, "2.4GHz"),
        (14, None, "2.4GHz"),
        (36, None, "5GHz"),
        (177, None, "5GHz"),
        (233, None, "6GHz"),
        (1, "6g", "6GHz"),
        (37, "6GHz", "6GHz"),
        (11, "2g", "2.4GHz"),
        (149, "5GHz", "5GHz"),
        (6, "2.4 GHz", "2.4GHz"),
        (20, None, None),
        (0, None, None),
        (None, None, None),
    ],
)
def test_band_for_channel(channel: int | None, hint: str | None, band: str | None) -> None:
    assert band_for_channel(channel, hint) == band


@pytest.mark.parametrize(
    ("value", "width"),
    [(20, 20), ("80", 80), ("160MHz", 160), ("40 MHz", 40), ("+1", 40), ("-1", 40), ("5180", None), (None, None)],
)
def test_width_mhz(value: object, width: int | None) -> None:
    assert width_mhz(value) == width


@pytest.mark.parametrize(
    ("mhz", "channel"),
    [(2412, 1), (2412.0, 1), (2484, 14), (5180, 36), (5825, 165), (5955, 1), (6115, 33), (900, None)],
)
def test_channel_for_frequency(mhz: float, channel: int | None) -> None:
    assert channel_for_frequency(mhz) == channel


# --- WifiReading ------------------------------------------------------------------------------------------


def test_reading_as_data_is_json_safe_and_complete() -> None:
    r = parse_wdutil_info(fixture("wifi/wdutil_info_monterey12_5ghz_dfs_trimmed.txt"))
    data = r.as_data()
    assert set(data) >= REQUIRED_FIELDS
    assert json.loads(json.dumps(data)) == data
    assert data["channel"] == 144
    assert data["band"] == "5GHz"


def test_reading_is_frozen() -> None:
    r = WifiReading()
    assert r.state == "no_interface"
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.ssid = "x"  # type: ignore[misc]


# --- merge ------------------------------------------------------------------------------------------------


def test_merge_wdutil_redacted_with_system_profiler() -> None:
    # Two real captures from the same upstream repository (not the same instant): wdutil keeps
    # its own values, system_profiler fills the redacted SSID and MAC.
    wd = parse_wdutil_info(fixture("wifi/wdutil_info_sequoia15_2.4ghz_redacted_full.txt"))
    sp = parse_system_profiler_airport(fixture("wifi/system_profiler_airport_sequoia15.5_connected.json"))
    m = merge(wd, sp)
    assert m.state == "connected"
    assert m.source == "wdutil+system_profiler"
    assert m.ssid == "SSID-2"
    assert m.ssid_redacted is False
    assert m.bssid is None
    assert m.mac_address == "fe:dc:ba:09:87:65"
    assert m.mac_redacted is False
    assert m.channel == 11
    assert m.rssi_dbm == -63
    assert m.noise_dbm == -97
    assert m.snr_db == 34
    assert m.tx_rate_mbps == 162.0


def test_merge_does_not_take_link_fields_into_a_disconnected_reading() -> None:
    wd = parse_wdutil_info(fixture("wifi/wdutil_info_sequoia15_not_associated.txt"))
    sp = parse_system_profiler_airport(fixture("wifi/system_profiler_airport_sequoia15.5_connected.json"))
    m = merge(wd, sp)
    assert m.state == "disconnected"
    assert m.ssid is None
    assert m.channel is None
    assert m.rssi_dbm is None
    assert m.mac_address == "fe:dc:ba:09:87:65"  # adapter fields are always filled
    assert m.mac_redacted is False


def test_merge_no_interface_primary_and_snr_recomputed() -> None:
    sp = parse_system_profiler_airport(fixture("wifi/system_profiler_airport_catalina10.15.7_connected.json"))
    assert merge(WifiReading(source="wdutil"), sp) == sp
    assert merge(WifiReading(source="wdutil"), WifiReading(source="x")).source == "wdutil"
    rssi_only = WifiReading(state="connected", source="a", rssi_dbm=-60)
    noise_only = WifiReading(state="connected", source="b", noise_dbm=-90)
    m = merge(rssi_only, noise_only)
    assert m.snr_db == 30
    assert m.source == "a+b"
    assert merge(rssi_only, WifiReading(state="connected", source="b")) is rssi_only


# --- runner ----------------------------------------------------------------------------------------------


def fake_run(outputs: dict[tuple[str, ...], str | BaseException]) -> tuple[Callable[[Sequence[str]], str], list]:
    calls: list[tuple[str, ...]] = []

    def run(argv: Sequence[str]) -> str:
        calls.append(tuple(argv))
        result = outputs.get(tuple(argv), FileNotFoundError(argv[0]))
        if isinstance(result, BaseException):
            raise result
        return result

    return run, calls


WDUTIL = ("wdutil", "info")
PROFILER = ("system_profiler", "SPAirPortDataType", "-json")


def test_collect_macos_wdutil_then_system_profiler() -> None:
    run, calls = fake_run(
        {
            WDUTIL: fixture("wifi/wdutil_info_sequoia15_2.4ghz_redacted.txt"),
            PROFILER: fixture("wifi/system_profiler_airport_sequoia15.5_connected.json"),
        }
    )
    r = collect_wifi(run, platform="darwin")
    assert calls == [WDUTIL, PROFILER]
    assert r.state == "connected"
    assert r.source == "wdutil+system_profiler"
    assert r.channel == 1
    assert r.ssid == "SSID-2"


def test_collect_macos_wdutil_missing_or_failing_uses_system_profiler() -> None:
    profiler = fixture("wifi/system_profiler_airport_monterey12.7.2_disassociated.json")
    for failure in (FileNotFoundError("wdutil"), subprocess.CalledProcessError(1, list(WDUTIL))):
        run, _ = fake_run({WDUTIL: failure, PROFILER: profiler})
        r = collect_wifi(run, platform="darwin")
        assert r.state == "disconnected"
        assert r.source == "system_profiler"
        assert r.interface == "en0"


def test_collect_macos_system_profiler_timeout_keeps_wdutil() -> None:
    run, _ = fake_run(
        {
            WDUTIL: fixture("wifi/wdutil_info_monterey12_5ghz_dfs_trimmed.txt"),
            PROFILER: subprocess.TimeoutExpired(list(PROFILER), 30),
        }
    )
    r = collect_wifi(run, platform="darwin")
    assert r.source == "wdutil"
    assert r.channel == 144


def test_collect_macos_nothing_available() -> None:
    run, _ = fake_run({})
    r = collect_wifi(run, platform="darwin")
    assert r.state == "no_interface"


def test_collect_linux_iw() -> None:
    # Real iw outputs from two machines (wlan0 info, wlp1s0 link): the plumbing is under test.
    run, calls = fake_run(
        {
            ("iw", "dev"): fixture("wifi_linux/iw_dev_wlan0_info_partial.txt"),
            ("iw", "dev", "wlan0", "link"): fixture("wifi_linux/iw_dev_wlp1s0_link_anonymized_heatmapper.txt"),
        }
    )
    r = collect_wifi(run, platform="linux")
    assert calls == [("iw", "dev"), ("iw", "dev", "wlan0", "link")]
    assert r.state == "connected"
    assert r.source == "iw"
    assert r.ssid == "SSID-1"
    assert r.rssi_dbm == -51
    assert r.channel_width_mhz == 80  # filled from the info output


def test_collect_linux_without_iw_uses_nmcli() -> None:
    # HAND-WRITTEN nmcli line in the runner's field layout (no real capture of it exists).
    run, calls = fake_run({NMCLI_COMMAND: "yes:Lab:AA\\:BB\\:CC\\:DD\\:EE\\:02:36:5180 MHz:540 Mbit/s:70:WPA2\n"})
    r = collect_wifi(run, platform="linux")
    assert calls == [("iw", "dev"), NMCLI_COMMAND]
    assert r.state == "connected"
    assert r.source == "nmcli"
    assert r.channel == 36
    assert r.band == "5GHz"


def test_collect_linux_nothing_and_other_platforms() -> None:
    run, _ = fake_run({})
    assert collect_wifi(run, platform="linux").state == "no_interface"
    assert collect_wifi(run, platform="win32").state == "no_interface"
    run, _ = fake_run({NMCLI_COMMAND: fixture("wifi_linux/nmcli_device_all_centos7.7_ethernet_only_no_wifi.txt")})
    assert collect_wifi(run, platform="linux").state == "no_interface"
