"""SMC key-dump parser against real dumps from Apple Silicon Macs in tests/fixtures/smc/ (copied byte
for byte from dkorunic/iSMC's ``internal/reports`` and extracted from narugit/smctemp#21; sources in
tests/fixtures/SOURCES.md).

Variants built in this file from a real dump (a line changed or removed) are marked ``DERIVED``;
nothing else here is invented output.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from atlas.agent.collectors.smc import (
    _LINE,
    SmcTemperatures,
    _decode,
    parse_smc_dump,
    parse_smc_keys,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "smc"
ALL = sorted(p.name for p in FIXTURES.iterdir())
WITH_DECODED_COLUMN = [
    "ismc_raw_m2max_fans_stopped_gated_p_cores.txt",
    "ismc_raw_m4_fanless_hot.txt",
    "ismc_raw_m4_one_fan.txt",
    "ismc_raw_m4pro_mac16.7_two_fans.txt",
    "smctemp_l_grep_tp_40s_m3_excerpt.txt",
]


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", WITH_DECODED_COLUMN)
def test_decoding_matches_the_tools_own_decoded_column(name: str) -> None:
    """Every value decoded from the bytes equals what the dumping tool printed beside them."""
    compared = 0
    for line in fixture(name).splitlines():
        m = _LINE.match(line)
        assert m is not None, line
        try:
            printed = float(m.group("value"))
        except ValueError:
            continue  # e.g. "false", or no decoded column
        decoded = _decode(m.group("type").strip(), bytes.fromhex("".join(m.group("bytes").split())))
        if decoded is None:
            continue  # a type the parser does not decode (hex_, ch8*, ...)
        text = m.group("value")
        shown = len(text.partition(".")[2])  # smctemp prints one decimal, iSMC float32's shortest form
        assert math.isclose(decoded, printed, rel_tol=1e-5, abs_tol=max(1e-3, 0.5 * 10**-shown)), line
        compared += 1
    assert compared >= 18


def test_m2_max_stopped_fans_and_power_gated_p_cores() -> None:
    r = parse_smc_dump(fixture("ismc_raw_m2max_fans_stopped_gated_p_cores.txt"))
    assert r.keys_read == 2279
    assert r.unparsed_lines == 0
    assert r.fan_count == 2
    assert [(f.index, f.rpm, f.min_rpm, f.max_rpm) for f in r.fans] == [
        (0, 0.0, 1350.0, 5349.0),
        (1, 0.0, 1522.0, 5777.0),
    ]
    # every Tp key reads 0 or a fixed 4.6-8.4 °C placeholder: all dropped, the three Te keys are the CPU
    assert r.cpu_die_sensors == 3
    assert r.cpu_die_max_c == 38.322
    assert "Tp01=6.7" in r.dropped
    assert "Tp05=4.633" in r.dropped
    assert r.cpu_firmware_avg_c == 36.848  # TCMb
    assert r.cpu_firmware_max_c == 38.322  # TCMz agrees with the hottest die sensor kept
    assert r.gpu_die_sensors == 16
    assert r.battery_c == 25.9
    assert r.ssd_c == 26.301


def test_m4_pro_two_spinning_fans_and_negative_placeholders() -> None:
    r = parse_smc_dump(fixture("ismc_raw_m4pro_mac16.7_two_fans.txt"))
    assert r.keys_read == 3197
    assert [(f.rpm, f.max_rpm) for f in r.fans] == [(1358.2, 5777.0), (1470.4, 5777.0)]
    assert r.cpu_die_max_c == r.cpu_firmware_max_c == 47.625
    assert r.cpu_die_sensors == 61
    assert "Tp1i=-4" in r.dropped  # -4.0 and 0 placeholders of absent cores
    assert all(not item.startswith(("TB", "TH")) for item in r.dropped)


def test_m4_fanless_under_load_keeps_readings_over_100_c() -> None:
    r = parse_smc_dump(fixture("ismc_raw_m4_fanless_hot.txt"))
    assert r.fan_count is None
    assert r.fans == []
    assert r.cpu_die_max_c == r.cpu_firmware_max_c == 112.094
    assert r.cpu_firmware_avg_c == 96.498
    assert r.battery_c == 29.1
    assert r.ssd_c == 51.161
    assert r.dropped_count == 0


def test_m4_desktop_one_fan_no_battery() -> None:
    r = parse_smc_dump(fixture("ismc_raw_m4_one_fan.txt"))
    assert r.fan_count == 1
    assert [(f.index, f.rpm) for f in r.fans] == [(0, 1000.0)]
    assert r.battery_c is None
    assert r.cpu_firmware_max_c == 48.109


def test_dump_without_decoded_column_is_decoded_from_bytes() -> None:
    r = parse_smc_dump(fixture("ismc_raw_m4pro_temps_only_no_decoded_column.txt"))
    assert r.keys_read == 321
    assert r.cpu_firmware_avg_c == 65.322  # TCMb bytes ce a4 82 42, little-endian float32
    assert r.cpu_firmware_max_c == r.cpu_die_max_c == 80.391
    assert r.battery_c == 32.8


def test_smctemp_listing_format() -> None:
    keys, unparsed = parse_smc_keys(fixture("smctemp_l_grep_tp_40s_m3_excerpt.txt"))
    assert unparsed == 0
    assert [k.key for k in keys][:3] == ["Tp01", "Tp05", "Tp09"]
    r = parse_smc_dump(fixture("smctemp_l_grep_tp_40s_m3_excerpt.txt"))
    assert r.cpu_die_sensors == 18
    assert r.cpu_die_max_c == 46.368  # Tp17 printed as 46.4


@pytest.mark.parametrize(
    ("line", "dropped"),
    [
        ("  TH0x  [flt ]  26.300781 (bytes 00 00 c0 7f)", "TH0x=nan"),  # DERIVED: bytes of a NaN
        ("  TB0T  [flt ]  25.899994 (bytes 00 00 7f 43)", "TB0T=255"),  # DERIVED: 255 °C
        ("  F0Ac  [flt ]  0 (bytes 00 ff 7f 47)", "F0Ac=65535"),  # DERIVED: 65535 rpm
    ],
)
def test_sentinels_are_dropped(line: str, dropped: str) -> None:
    text = fixture("ismc_raw_m2max_fans_stopped_gated_p_cores.txt")
    key = line.split()[0]
    lines = [line if raw.split()[0] == key else raw for raw in text.splitlines()]
    r = parse_smc_dump("\n".join(lines))
    assert dropped in r.dropped


def test_integer_typed_t_keys_are_not_temperatures() -> None:
    # DERIVED: TCMb given the si32 type of the dump's TVDi counter
    text = fixture("ismc_raw_m4pro_temps_only_no_decoded_column.txt").replace(
        "  TCMb  [flt ]  (bytes ce a4 82 42)", "  TCMb  [si32]  (bytes 07 00 00 00)"
    )
    assert parse_smc_dump(text).cpu_firmware_avg_c is None


def test_fans_beyond_fnum_are_ignored() -> None:
    text = fixture("ismc_raw_m2max_fans_stopped_gated_p_cores.txt").replace(
        "  FNum  [ui8 ]  2 (bytes 02)", "  FNum  [ui8 ]  1 (bytes 01)"
    )  # DERIVED
    assert [f.index for f in parse_smc_dump(text).fans] == [0]


@pytest.mark.parametrize("text", ["", "\n\n", "Invalid key detected!\n", None])
def test_empty_or_foreign_text(text: str | None) -> None:
    r = parse_smc_dump(text)  # type: ignore[arg-type]
    assert isinstance(r, SmcTemperatures)
    assert r.keys_read == 0
    assert r.cpu_die_max_c is None


@pytest.mark.parametrize("name", ALL)
def test_results_are_json_safe(name: str) -> None:
    data = parse_smc_dump(fixture(name)).as_data()
    json.dumps(data, allow_nan=False)
    assert len(data["dropped"]) <= 32
