"""Known-networks plist parser against the real files in tests/fixtures/known_networks/ (copied byte
for byte from log2timeline/plaso's test data; sources in tests/fixtures/SOURCES.md).

Variants built here from a real file (re-encoded as XML or binary with ``plistlib``, a key changed or
removed) are marked ``DERIVED``; nothing else here is invented.
"""

from __future__ import annotations

import json
import plistlib
from pathlib import Path

import pytest

from atlas.agent.collectors.known_networks import KnownNetworks, parse_known_networks

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "known_networks"
MODERN = "ios_known_networks_binary_2023_one_network_nine_bss.plist"
OLD = "osx_airport_preferences_remembered_networks_2013.plist"


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_modern_layout_last_joined_network_and_access_point() -> None:
    r = parse_known_networks(raw(MODERN))
    assert r.status == "ok"
    assert r.source == "known_networks"
    assert r.networks == 1
    n = r.last_joined
    assert n is not None
    assert n.ssid == "Matt_Foley"
    assert n.security == "WPA2 Personal"
    assert n.hidden is False
    assert n.last_joined_at == "2023-05-20T19:55:03.073186Z"  # JoinedBySystemAt, later than JoinedByUserAt
    assert n.last_joined_by == "system"
    assert n.added_at == "2023-04-15T13:53:47.476017Z"
    # of the nine BSSList entries, the one associated with last (same as __OSSpecific__.BSSID)
    assert n.bssid == "6a:22:32:98:f4:df"
    assert n.channel == 161
    assert n.bssid_last_associated_at == "2023-05-20T19:55:03.073125Z"


def test_old_remembered_networks_layout() -> None:
    r = parse_known_networks(raw(OLD))
    assert r.status == "ok"
    assert r.source == "airport_preferences"
    assert r.networks == 4
    n = r.last_joined
    assert n is not None
    assert (n.ssid, n.security, n.last_joined_at) == ("Boingo Hotspot", "Open", "2013-12-13T16:05:47.000000Z")
    assert n.bssid is None  # no CachedScanRecord for that network
    assert n.last_joined_by is None


def test_old_layout_bssid_is_zero_padded() -> None:
    root = plistlib.loads(raw(OLD))
    root["RememberedNetworks"] = root["RememberedNetworks"][:2]  # DERIVED: europa and CampusNet only
    n = parse_known_networks(plistlib.dumps(root)).last_joined
    assert n is not None
    assert (n.ssid, n.bssid, n.channel) == ("CampusNet", "00:24:6c:26:a4:01", 11)  # file: 0:24:6c:26:a4:1


def _to_seconds(data: dict) -> dict:
    """XML plists keep dates to the second: compare times without their microseconds."""
    net = data["last_joined"]
    for key, value in net.items():
        if key.endswith("_at") and value:
            net[key] = value[:19]
    return data


@pytest.mark.parametrize("fmt", [plistlib.FMT_XML, plistlib.FMT_BINARY])
def test_binary_and_xml_encodings_read_alike(fmt: plistlib.PlistFormat) -> None:
    for name in (MODERN, OLD):
        again = plistlib.dumps(plistlib.loads(raw(name)), fmt=fmt)  # DERIVED: same data, other encoding
        assert _to_seconds(parse_known_networks(again).as_data()) == _to_seconds(
            parse_known_networks(raw(name)).as_data()
        )


def test_ssid_falls_back_to_the_key() -> None:
    root = plistlib.loads(raw(MODERN))
    del root["wifi.network.ssid.Matt_Foley"]["SSID"]  # DERIVED
    n = parse_known_networks(plistlib.dumps(root)).last_joined
    assert n is not None
    assert n.ssid == "Matt_Foley"


def test_never_joined_network_is_counted_but_not_last() -> None:
    root = plistlib.loads(raw(MODERN))
    entry = root["wifi.network.ssid.Matt_Foley"]
    del entry["JoinedBySystemAt"], entry["JoinedByUserAt"]  # DERIVED
    r = parse_known_networks(plistlib.dumps(root))
    assert r.status == "ok"
    assert r.networks == 1
    assert r.last_joined is None


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", "error"),
        (b"not a plist", "error"),
        (raw(MODERN)[:600], "error"),  # DERIVED: truncated binary plist
        (plistlib.dumps({}), "empty"),  # DERIVED: no networks left
        (plistlib.dumps([1, 2]), "error"),
        (plistlib.dumps({"KnownNetworks": {}}), "error"),  # layout with no real capture: refused, not guessed
        (b"x" * (16 * 1024 * 1024 + 1), "error"),
    ],
)
def test_bad_input(data: bytes, status: str) -> None:
    r = parse_known_networks(data)
    assert r.status == status
    assert r.last_joined is None


def test_not_bytes() -> None:
    assert parse_known_networks("text").status == "error"  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [MODERN, OLD])
def test_json_safe(name: str) -> None:
    r = parse_known_networks(raw(name))
    assert isinstance(r, KnownNetworks)
    json.dumps(r.as_data(), allow_nan=False)
