"""Every collector parser over mutated real command outputs (tests/fixtures, from /work/shared/fixtures).

Each parser documents that it never raises: garbled text is a result with a status or None fields.
Hypothesis mutates the real captures (truncation, deleted, duplicated and swapped lines, flipped
bytes decoded as ``run_command`` decodes them, injected junk and control characters, huge and
non-finite numbers) and checks two things for every parser:

* it returns its documented type and raises nothing, and the catch-all safety net of the parsers
  that have one (``parse_ping``, ``parse_ps``, ``parse_speedtest_cli_simple``) is never what
  answered: the inner parser is called directly, so a bug cannot hide behind it;
* the widget log (or machine object) built from the result passes the wire contract's own schema
  (``atlas.contract.schema``) after a JSON round trip, as the server will validate it. A log the
  server refuses with 422 would hold back every other log of its batch.
"""

from __future__ import annotations

import json
import os
import plistlib
import re
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas.agent import widgets
from atlas.agent.collectors import health, identity, known_networks, ookla, ping, processes, smc, speedtest, wifi
from atlas.contract.schema import LogEntry, MachineInfo

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")
"""A failing example of many kilobytes would otherwise be reported as this warning instead of the failure."""
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
NOW = datetime(2026, 11, 28, 16, 0, tzinfo=UTC)
FUZZ = settings(
    max_examples=int(os.environ.get("ATLAS_FUZZ_EXAMPLES", "200")),  # more for a longer hunt
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fixtures(*patterns: str) -> list[str]:
    """The texts of the fixtures matching ``patterns`` (relative globs), decoded as run_command does."""
    paths = sorted({p for pattern in patterns for p in FIXTURES.glob(pattern)})
    assert paths, f"no fixture matches {patterns}"
    return [p.read_bytes().decode("utf-8", errors="replace") for p in paths]


def valid_log(entry: dict[str, Any]) -> None:
    """The entry as the agent stores and sends it (JSON) passes the server's schema."""
    wire = json.dumps(entry, ensure_ascii=False)  # the store writes json.dumps output, NaN and all
    LogEntry.model_validate_json(wire)


# --------------------------------------------------------------------------- mutations

JUNK = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from("\x00\x01\x1b\x7f\u202e\ufeff\r\t\n:=|\"'{}[]<>"),
    ),
    max_size=40,
)
NUMBERS = st.sampled_from(
    ["9" * 400, "-" + "9" * 40, "1e999", "-1e999", "nan", "NaN", "inf", "-inf", "0", "-0", "1e-400", "0x1F", "١٢٣"]
)
_NUMBER_RUN = re.compile(r"-?\d+(?:\.\d+)?")


@st.composite
def mutated(draw: st.DrawFn, texts: list[str]) -> str:
    """One of ``texts`` with one to five random edits."""
    text = draw(st.sampled_from(texts))
    for _ in range(draw(st.integers(1, 5))):
        op = draw(
            st.sampled_from(
                ["truncate", "delete", "duplicate", "swap", "flip", "inject", "number", "strip", "crlf", "repeat"]
            )
        )
        lines = text.splitlines(keepends=True)
        if op == "truncate":
            text = text[: draw(st.integers(0, len(text)))]
        elif op in ("delete", "duplicate") and lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines[i : i + 1] = [] if op == "delete" else [lines[i], lines[i]]
            text = "".join(lines)
        elif op == "swap" and len(lines) > 1:
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "".join(lines)
        elif op == "flip" and text:
            raw = bytearray(text.encode("utf-8", errors="surrogatepass"))
            for _ in range(draw(st.integers(1, 8))):
                raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
            text = bytes(raw).decode("utf-8", errors="replace")  # non-UTF-8 bytes, as run_command reads them
        elif op == "inject":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(JUNK) + text[at:]
        elif op == "number":
            found = list(_NUMBER_RUN.finditer(text))
            if found:
                m = draw(st.sampled_from(found))
                text = text[: m.start()] + draw(NUMBERS) + text[m.end() :]
        elif op == "strip":
            text = "".join(line.strip() + "\n" for line in lines)
        elif op == "crlf":
            text = text.replace("\n", "\r\n")
        elif op == "repeat" and lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines[i] = lines[i].rstrip("\n") * draw(st.integers(2, 400)) + "\n"
            text = "".join(lines)
    return text


# --------------------------------------------------------------------------- Wi-Fi

WIFI_PARSERS: list[tuple[str, Callable[[str], wifi.WifiReading], list[str]]] = [
    ("wdutil", wifi.parse_wdutil_info, fixtures("wifi/wdutil_*")),
    ("system_profiler", wifi.parse_system_profiler_airport, fixtures("wifi/system_profiler_*.json")),
    ("airport", wifi.parse_airport_info, fixtures("wifi/airport_*")),
    ("ipconfig", wifi.parse_ipconfig_summary, fixtures("wifi/ipconfig_*")),
    ("iw_link", wifi.parse_iw_link, fixtures("wifi_linux/iw_*")),
    ("iw_info", wifi.parse_iw_info, fixtures("wifi_linux/iw_*")),
    ("nmcli", wifi.parse_nmcli_wifi_list, fixtures("wifi_linux/nmcli_*")),
]


@pytest.mark.parametrize(("parse", "texts"), [p[1:] for p in WIFI_PARSERS], ids=[p[0] for p in WIFI_PARSERS])
def test_wifi_parsers_never_raise_and_give_valid_logs(parse, texts) -> None:
    @FUZZ
    @given(text=mutated(texts))
    def check(text: str) -> None:
        reading = parse(text)
        assert isinstance(reading, wifi.WifiReading)
        assert reading.state in wifi.STATES
        valid_log(widgets.wifi_log(reading))
        merged = wifi.merge(reading, parse(texts[0]))
        valid_log(widgets.wifi_log(merged))

    check()


@FUZZ
@given(
    ports=mutated(fixtures("wifi/networksetup_*")),
    iw=mutated(fixtures("wifi_linux/iw_*")),
    nmcli=mutated(fixtures("wifi_linux/nmcli_*")),
)
def test_wifi_interface_finders_never_raise(ports: str, iw: str, nmcli: str) -> None:
    found = wifi.wifi_interface_from_hardware_ports(ports)
    assert found is None or isinstance(found, str)
    assert all(isinstance(name, str) for name in wifi.iw_interfaces(iw))
    assert all(isinstance(name, str) for name in wifi.nmcli_wifi_devices(nmcli))
    assert all(isinstance(row, dict) for row in wifi.nmcli_rows(nmcli))


# --------------------------------------------------------------------------- ping

PING = fixtures("ping/*")


@FUZZ
@given(text=mutated(PING), target=st.sampled_from(["1.1.1.1", "gateway.local", "::1"]))
def test_ping_parser_never_raises_and_gives_valid_logs(text: str, target: str) -> None:
    result = ping._parse(text, target)  # the inner parser: the safety net in parse_ping must not be needed
    assert result.status in ping.STATUSES
    assert result == ping.parse_ping(text, target)
    valid_log(widgets.ping_log(result))


@FUZZ
@given(text=mutated(PING) | JUNK, macos=st.booleans())
def test_default_gateway_parser_never_raises(text: str, macos: bool) -> None:
    gateway = ping.parse_default_gateway(text, "darwin" if macos else "linux")
    assert gateway is None or isinstance(gateway, str)


# --------------------------------------------------------------------------- processes

PS = fixtures("processes/*")


@FUZZ
@given(text=mutated(PS), with_now=st.booleans())
def test_ps_parser_never_raises_and_gives_valid_logs(text: str, with_now: bool) -> None:
    now = NOW if with_now else None
    parsed = processes._parse_ps(text, now)  # the inner parser, not parse_ps's safety net
    assert isinstance(parsed, processes.ParsedPs)
    assert parsed == processes.parse_ps(text, now=now)
    if parsed.reason is None:
        result = processes.summarize(parsed.processes, source="ps", unparsed_lines=parsed.unparsed_lines)
    else:
        result = processes.ProcessesResult(status="error", source="ps", reason=parsed.reason)
    valid_log(widgets.processes_log(result))


@FUZZ
@given(text=st.from_regex(r"[\d\-: APMadefgJlnoSTuvMWe]{0,16}", fullmatch=True) | JUNK | NUMBERS)
def test_ps_time_columns_never_raise(text: str) -> None:
    seconds = processes.parse_etime(text)
    assert seconds is None or seconds >= 0
    started = processes.parse_started(text, NOW)
    assert started is None or isinstance(started, datetime)


# --------------------------------------------------------------------------- speedtest

SPEEDTEST = fixtures("speedtest/*.txt")


@FUZZ
@given(text=mutated(SPEEDTEST))
def test_speedtest_text_parser_never_raises_and_gives_valid_logs(text: str) -> None:
    result = speedtest._parse_text(text)  # the inner parser, not the safety net
    assert isinstance(result, speedtest.SpeedtestResult)
    valid_log(widgets.speedtest_log(result))


OOKLA = fixtures("speedtest/ookla_json_*", "speedtest/ookla_error_*")


@FUZZ
@given(text=mutated(OOKLA))
def test_ookla_json_parser_never_raises_and_gives_valid_logs(text: str) -> None:
    result = ookla._parse(text)  # the inner parser, not parse_ookla_json's safety net
    assert isinstance(result, ookla.OoklaResult)
    assert result.status in ("ok", "error")
    assert result == ookla.parse_ookla_json(text)
    json.dumps(result.as_data(), allow_nan=False)
    valid_log(widgets.speedtest_log(result.as_speedtest_result()))


# --------------------------------------------------------------------------- health

HEALTH_PARSERS: list[tuple[str, Callable[[str], Any], str, list[str]]] = [
    ("powermetrics_smc", health.parse_powermetrics_smc, "smc", fixtures("health/powermetrics_*")),
    ("powermetrics_cpu", health.parse_powermetrics_cpu, "cpu_power", fixtures("health/powermetrics_*")),
    ("pmset_therm", health.parse_pmset_therm, "thermal_limits", fixtures("health/pmset_*")),
    ("sp_power", health.parse_sp_power_text, "battery", fixtures("health/system_profiler_*.txt")),
    ("ioreg_battery", health.parse_ioreg_battery, "battery", fixtures("health/ioreg_*")),
]


@pytest.mark.parametrize(
    ("parse", "slot", "texts"), [p[1:] for p in HEALTH_PARSERS], ids=[p[0] for p in HEALTH_PARSERS]
)
def test_health_parsers_never_raise_and_give_valid_logs(parse, slot: str, texts: list[str]) -> None:
    @FUZZ
    @given(text=mutated(texts))
    def check(text: str) -> None:
        reading = health.HealthReading(psutil={"cpu_percent": 1.0})
        setattr(reading, slot, parse(text))
        valid_log(widgets.health_log(reading))

    check()


@FUZZ
@given(text=mutated(fixtures("health/pmset_g_thermlog_*")))
def test_pmset_thermlog_parser_never_raises(text: str) -> None:
    events = health.parse_pmset_thermlog(text)
    assert isinstance(events, list)
    json.dumps([asdict(e) for e in events], allow_nan=False)


SMC_DUMPS = fixtures("smc/*")


@FUZZ
@given(text=mutated(SMC_DUMPS))
def test_smc_dump_parser_never_raises_and_gives_valid_logs(text: str) -> None:
    result = smc._parse(text)  # the inner parser, not parse_smc_dump's safety net
    assert isinstance(result, smc.SmcTemperatures)
    assert result == smc.parse_smc_dump(text)
    data = result.as_data()
    json.dumps(data, allow_nan=False)
    for value in (result.cpu_die_max_c, result.gpu_die_max_c, result.battery_c, result.ssd_c):
        assert value is None or smc.TEMP_MIN_C < value < smc.TEMP_MAX_C
    assert all(f.rpm is None or 0 <= f.rpm <= smc.FAN_MAX_RPM for f in result.fans)
    valid_log(widgets.agent_log("INFO", "smc", data))


# --------------------------------------------------------------------------- known networks (plist bytes)

PLIST_FILES = sorted((FIXTURES / "known_networks").glob("*.plist"))
PLISTS = [p.read_bytes() for p in PLIST_FILES]
PLISTS += [  # the same real data in the other encoding, so both plistlib readers are fuzzed
    plistlib.dumps(plistlib.loads(data), fmt=fmt) for data in PLISTS for fmt in (plistlib.FMT_XML, plistlib.FMT_BINARY)
]


@st.composite
def mutated_bytes(draw: st.DrawFn, blobs: list[bytes]) -> bytes:
    """One of ``blobs`` with one to five byte-level edits."""
    data = bytearray(draw(st.sampled_from(blobs)))
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "duplicate", "set"]))
        at = draw(st.integers(0, len(data)))
        if op == "truncate":
            del data[at:]
        elif op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 256))] * draw(st.integers(1, 50))
        elif op == "set" and data:  # offsets, counts and lengths in a binary plist: extreme values
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.sampled_from([0x00, 0x0F, 0x7F, 0x80, 0xFF]))
    return bytes(data)


@FUZZ
@given(
    data=mutated_bytes(PLISTS) | mutated([p.decode("utf-8") for p in PLISTS if p.startswith(b"<?xml")]).map(str.encode)
)
def test_known_networks_parser_never_raises_and_gives_valid_logs(data: bytes) -> None:
    result = known_networks.parse_known_networks(data)
    assert isinstance(result, known_networks.KnownNetworks)
    assert result.status in known_networks.STATUSES
    assert (result.last_joined is not None) <= (result.status == "ok")
    valid_log(widgets.agent_log("INFO", "known networks", result.as_data()))


# --------------------------------------------------------------------------- identity


@FUZZ
@given(
    ioreg=mutated(fixtures("health/ioreg_c_*")),
    hardware=mutated(fixtures("health/system_profiler_*hardware*", "health/system_profiler_SPHardware*")),
    sw_vers=mutated(fixtures("health/sw_vers_*")),
    sysctl=mutated(fixtures("health/sysctl_*")),
    hostname=JUNK,
)
def test_identity_parsers_never_raise_and_give_a_valid_machine(
    ioreg: str, hardware: str, sw_vers: str, sysctl: str, hostname: str
) -> None:
    platform = identity.parse_ioreg_platform(ioreg)
    from_json = identity.parse_sp_hardware_json(hardware)
    from_text = identity.parse_sp_hardware_text(hardware)
    os_info = identity.parse_sw_vers(sw_vers)
    brand = identity.cpu_brand(identity.parse_sysctl(sysctl))
    assert brand is None or isinstance(brand, str)
    assert isinstance(identity.parse_os_release(sw_vers), dict)
    for hw in (from_json, from_text):
        machine = identity.build_identity(
            serial_number=platform.serial_number or hw.serial_number,
            hostname=hostname,
            model=platform.model or hw.model_identifier,
            os_version=os_info.display(),
            fallback_id=platform.platform_uuid or hw.platform_uuid,
        )
        MachineInfo.model_validate_json(json.dumps(machine.as_machine(), ensure_ascii=False))


# --------------------------------------------------------------------------- every parser, every capture

ALL_TEXTS = fixtures("*/*")
EVERY_PARSER: list[Callable[[str], Any]] = [
    *(p[1] for p in WIFI_PARSERS),
    *(p[1] for p in HEALTH_PARSERS),
    health.parse_pmset_thermlog,
    lambda t: ping._parse(t, "1.1.1.1"),
    lambda t: processes._parse_ps(t, NOW),
    speedtest._parse_text,
    ookla._parse,
    smc._parse,
    lambda t: known_networks.parse_known_networks(t.encode("utf-8", errors="surrogatepass")),
    identity.parse_ioreg_platform,
    identity.parse_sp_hardware_json,
    identity.parse_sp_hardware_text,
    identity.parse_sw_vers,
    identity.parse_os_release,
    identity.parse_sysctl,
]


@pytest.mark.parametrize("index", range(len(ALL_TEXTS)))
def test_each_parser_takes_every_other_commands_output(index: int) -> None:
    """A wrong command's output (one tool answering in place of another) is garbage to the parser, not a crash."""
    for parse in EVERY_PARSER:
        parse(ALL_TEXTS[index])
