"""Health collector: parsers against real captured outputs (tests/fixtures/health, see
/work/shared/fixtures/SOURCES.md), psutil sampling on this machine, and the runner."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from atlas.agent.collectors import health, identity
from atlas.contract.schema import LogEntry

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "health"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- powermetrics smc


def test_smc_intel_idle_fan0() -> None:
    smc = health.parse_powermetrics_smc(fixture("powermetrics_smc_intel_idle_fan0.txt"))
    assert smc.cpu_die_temp_c == 55.99
    assert smc.gpu_die_temp_c is None
    assert smc.fans_rpm == [0.0]
    assert smc.cpu_thermal_level == 0
    assert smc.io_thermal_level == 0
    assert smc.gpu_thermal_level is None
    assert smc.cpu_plimit == 0.0
    assert smc.gpu_plimit == 0.0
    assert smc.prochots == 0
    assert smc.thermal_pressure is None
    assert smc.invalid_keys == 0
    assert smc.dropped == []


def test_smc_intel_fan0_dropped_on_fanless_model() -> None:
    smc = health.parse_powermetrics_smc(fixture("powermetrics_smc_intel_idle_fan0.txt"), model="MacBook10,1")
    assert smc.fans_rpm == []
    assert smc.dropped == ["Fan: 0.0 rpm"]
    assert smc.cpu_die_temp_c == 55.99


def test_smc_hackintosh_invalid_key() -> None:
    smc = health.parse_powermetrics_smc(fixture("powermetrics_smc_hackintosh_invalid_key.txt"))
    assert smc.invalid_keys == 9
    assert smc.cpu_die_temp_c is None
    assert smc.gpu_die_temp_c is None
    assert smc.fans_rpm == []
    assert smc.cpu_thermal_level is None
    assert smc.prochots is None


def test_smc_sentinels_hand_written() -> None:
    # Hand-written edge case (not a capture): sentinel values an invalid SMC key can yield.
    text = (
        "**** SMC sensors ****\n\n"
        "Fan: 65535 rpm\n"
        "Fan: 1200 rpm\n"
        "CPU die temperature: -127.00 C\n"
        "GPU die temperature: 255.00 C\n"
        "Invalid key detected!\n"
    )
    smc = health.parse_powermetrics_smc(text)
    assert smc.fans_rpm == [1200.0]
    assert smc.cpu_die_temp_c is None
    assert smc.gpu_die_temp_c is None
    assert smc.invalid_keys == 1
    assert smc.dropped == ["Fan: 65535.0 rpm", "CPU die temperature: -127.0", "GPU die temperature: 255.0"]


def test_smc_gpu_die_and_thermal_pressure_hand_written() -> None:
    # Hand-written edge case (no real capture of these two lines in the fixtures).
    smc = health.parse_powermetrics_smc("GPU die temperature: 48.50 C\nCurrent pressure level: Nominal\n")
    assert smc.gpu_die_temp_c == 48.5
    assert smc.thermal_pressure == "Nominal"


def test_smc_sampler_absent_from_cpu_power_capture() -> None:
    smc = health.parse_powermetrics_smc(fixture("powermetrics_cpu_power_m1_macbookair10.1_monterey12.6.txt"))
    assert smc.cpu_die_temp_c is None
    assert smc.fans_rpm == []
    assert smc.invalid_keys == 0


# --------------------------------------------------------------------------- powermetrics cpu_power


def test_cpu_power_m1_last_sample() -> None:
    cpu = health.parse_powermetrics_cpu(fixture("powermetrics_cpu_power_m1_macbookair10.1_monterey12.6.txt"))
    assert cpu.machine_model == "MacBookAir10,1"
    assert cpu.os_build == "21G115"
    assert cpu.boot_time == "Fri Nov 10 09:43:28 2023"
    assert cpu.samples == 10
    assert sorted(cpu.clusters) == ["E", "P"]
    assert cpu.clusters["E"].power_mw == 138.0
    assert cpu.clusters["E"].frequency_mhz == 1814.0
    assert cpu.clusters["E"].active_residency_pct == 55.21
    assert cpu.clusters["E"].idle_residency_pct == 44.79
    assert cpu.clusters["P"].power_mw == 101.0
    assert cpu.clusters["P"].frequency_mhz == 751.0
    assert cpu.clusters["P"].active_residency_pct == 14.56
    assert cpu.clusters["P"].idle_residency_pct == 85.44
    assert cpu.cpu_frequency_mhz == {
        "0": 1762.0,
        "1": 1700.0,
        "2": 1726.0,
        "3": 1697.0,
        "4": 906.0,
        "5": 902.0,
        "6": 940.0,
        "7": 870.0,
    }
    assert cpu.gpu_frequency_mhz is None
    assert cpu.ane_power_mw == 0.0
    assert cpu.dram_power_mw == 83.0
    assert cpu.cpu_power_mw == 239.0
    assert cpu.gpu_power_mw == 9.0
    assert cpu.package_power_mw == 321.0


def test_cpu_power_p0_p1_clusters_grep_excerpt() -> None:
    cpu = health.parse_powermetrics_cpu(fixture("powermetrics_text_grep_frequency_apple_silicon_p0_p1_clusters.txt"))
    assert cpu.samples == 0
    assert sorted(cpu.clusters) == ["E", "P0", "P1"]
    assert cpu.clusters["E"].frequency_mhz == 1797.0
    assert cpu.clusters["P0"].frequency_mhz == 902.0
    assert cpu.clusters["P1"].frequency_mhz == 714.0
    assert cpu.clusters["P0"].power_mw is None
    assert len(cpu.cpu_frequency_mhz) == 10
    assert cpu.cpu_frequency_mhz["0"] == 1826.0
    assert cpu.cpu_frequency_mhz["9"] == 1020.0
    assert cpu.gpu_frequency_mhz == 72.0
    assert cpu.cpu_power_mw is None
    assert cpu.package_power_mw is None
    assert cpu.machine_model is None


def test_cpu_power_watts_unit_hand_written() -> None:
    # Hand-written edge case: a power printed in W is converted to mW.
    assert health.parse_powermetrics_cpu("CPU Power: 1.5 W\n").cpu_power_mw == 1500.0


# --------------------------------------------------------------------------- pmset


def test_pmset_therm_intel_12cpu() -> None:
    therm = health.parse_pmset_therm(fixture("pmset_g_therm_intel_12cpu.txt"))
    assert therm.cpu_scheduler_limit == 100
    assert therm.cpu_available_cpus == 12
    assert therm.cpu_speed_limit == 100
    assert therm.thermal_warning_level is None
    assert therm.performance_warning_level is None
    assert therm.recorded_at == "2021-05-02T11:51:57+08:00"
    assert len(therm.notes) == 2


def test_pmset_therm_apple_silicon_records_no_limits() -> None:
    therm = health.parse_pmset_therm(fixture("pmset_g_therm_apple_silicon_m1pro_monterey12.1.txt"))
    assert therm.cpu_scheduler_limit is None
    assert therm.cpu_available_cpus is None
    assert therm.cpu_speed_limit is None
    assert therm.thermal_warning_level is None
    assert therm.performance_warning_level is None
    assert therm.recorded_at is None
    assert therm.notes == [
        "Note: No thermal warning level has been recorded",
        "Note: No performance warning level has been recorded",
        "Note: No CPU power status has been recorded",
    ]


def test_pmset_thermlog_throttled() -> None:
    events = health.parse_pmset_thermlog(fixture("pmset_g_thermlog_intel_throttled_excerpt.txt"))
    assert len(events) == 1
    assert events[0].timestamp == "2020-06-26T12:30:37+02:00"
    assert events[0].event == "CPU Power notify"
    assert events[0].values == {"CPU_Scheduler_Limit": 40, "CPU_Available_CPUs": 8, "CPU_Speed_Limit": 28}


def test_pmset_therm_on_thermlog_takes_last_block() -> None:
    therm = health.parse_pmset_therm(fixture("pmset_g_thermlog_intel_throttled_excerpt.txt"))
    assert therm.cpu_scheduler_limit == 40
    assert therm.cpu_available_cpus == 8
    assert therm.cpu_speed_limit == 28


def test_pmset_thermlog_apple_silicon_has_no_events() -> None:
    assert health.parse_pmset_thermlog(fixture("pmset_g_therm_apple_silicon_m1pro_monterey12.1.txt")) == []


# --------------------------------------------------------------------------- battery


def test_sp_power_intel_charging() -> None:
    bat = health.parse_sp_power_text(fixture("system_profiler_SPPowerDataType_text_charging.txt"))
    assert bat.cycle_count == 125
    assert bat.condition == "Normal"
    assert bat.charging is True
    assert bat.fully_charged is False
    assert bat.charge_remaining_mah == 3798
    assert bat.full_charge_capacity_mah == 4069
    assert bat.percent == 93.3
    assert bat.amperage_ma == 1227
    assert bat.voltage_mv == 12997
    assert bat.installed is True
    assert bat.external_connected is True
    assert bat.charger_wattage_w == 60
    assert bat.max_capacity_pct is None
    assert bat.design_capacity_mah is None


def test_sp_power_elcapitan_discharging() -> None:
    bat = health.parse_sp_power_text(fixture("system_profiler_SPPowerDataType_text_elcapitan10.11.txt"))
    assert bat.cycle_count == 552
    assert bat.condition == "Normal"
    assert bat.charging is False
    assert bat.fully_charged is False
    assert bat.charge_remaining_mah == 4552
    assert bat.full_charge_capacity_mah == 6078
    assert bat.percent == 74.9
    assert bat.amperage_ma == -2169
    assert bat.voltage_mv == 7921
    assert bat.external_connected is False
    assert bat.charger_wattage_w is None


def test_sp_power_m1_inside_full_report() -> None:
    bat = health.parse_sp_power_text(fixture("system_profiler_text_hardware_memory_power_m1_bigsur11.0.txt"))
    assert bat.cycle_count == 1
    assert bat.condition == "Normal"
    assert bat.max_capacity_pct == 100.0
    assert bat.percent == 100.0
    assert bat.charging is False
    assert bat.fully_charged is True
    assert bat.external_connected is True
    assert bat.charger_wattage_w == 100
    assert bat.charge_remaining_mah is None
    assert bat.full_charge_capacity_mah is None
    assert bat.amperage_ma is None


def test_sp_power_absent_in_hardware_only_report() -> None:
    bat = health.parse_sp_power_text(fixture("system_profiler_hardware_detaillevel_mini_m1pro_m2pro.txt"))
    assert bat == health.BatteryDetails()


def test_ioreg_battery_mojave_grep() -> None:
    bat = health.parse_ioreg_battery(fixture("ioreg_rn_AppleSmartBattery_grep_capacity_mojave.txt"))
    assert bat.cycle_count == 200
    assert bat.full_charge_capacity_mah == 6077
    assert bat.design_capacity_mah == 6559
    assert bat.max_capacity_pct == 92.7
    assert bat.percent is None
    assert bat.charging is None


def test_ioreg_battery_percent_scale_hand_written() -> None:
    # Hand-written edge case (not a capture): newer macOS reports MaxCapacity as a percentage,
    # the raw mAh values separately, and Amperage as an unsigned 64-bit two's complement.
    text = (
        '  "MaxCapacity" = 100\n'
        '  "CurrentCapacity" = 87\n'
        '  "AppleRawMaxCapacity" = 4316\n'
        '  "DesignCapacity" = 4382\n'
        '  "Amperage" = 18446744073709550616\n'
        '  "IsCharging" = No\n'
        '  "Temperature" = 3051\n'
    )
    bat = health.parse_ioreg_battery(text)
    assert bat.percent == 87.0
    assert bat.full_charge_capacity_mah == 4316
    assert bat.max_capacity_pct == 100.0
    assert bat.amperage_ma == -1000
    assert bat.charging is False
    assert bat.temperature_c == 30.51


# --------------------------------------------------------------------------- every fixture, every parser of its kind

PARSERS: dict[str, list[Callable[[str], Any]]] = {
    "powermetrics_": [health.parse_powermetrics_smc, health.parse_powermetrics_cpu],
    "pmset_": [health.parse_pmset_therm, health.parse_pmset_thermlog],
    "ioreg_rn_AppleSmartBattery": [health.parse_ioreg_battery],
    "ioreg_c_IOPlatformExpertDevice": [identity.parse_ioreg_platform],
    "sw_vers_": [identity.parse_sw_vers],
    "sysctl_": [identity.parse_sysctl],
    "system_profiler_SPHardwareDataType_json": [identity.parse_sp_hardware_json],
    "system_profiler_SPPowerDataType_text": [health.parse_sp_power_text],
    "system_profiler_hardware_": [identity.parse_sp_hardware_text],
    "system_profiler_text_hardware_memory_power": [identity.parse_sp_hardware_text, health.parse_sp_power_text],
}
ALL_PARSERS = sorted({p for ps in PARSERS.values() for p in ps}, key=lambda p: p.__name__)


def parsers_for(name: str) -> list[Callable[[str], Any]]:
    return [p for prefix, ps in PARSERS.items() if name.startswith(prefix) for p in ps]


def test_fixture_directory_holds_the_health_fixtures() -> None:
    assert len(list(FIXTURES.iterdir())) >= 23


@pytest.mark.parametrize("path", sorted(FIXTURES.iterdir()), ids=lambda p: p.name)
def test_every_fixture_parses_with_its_parsers(path: Path) -> None:
    parsers = parsers_for(path.name)
    assert parsers, f"no parser kind for {path.name}"
    text = path.read_text(encoding="utf-8")
    for parser in parsers:
        parser(text)
    for parser in ALL_PARSERS:  # and no parser raises on another kind's output
        parser(text)


ODD_INPUTS = ["", "\n\n", "\x00\x00", ":", "= = =", "{", "[]", '{"SPHardwareDataType": [1]}', "ÿ" * 50, "[" * 5000]


@pytest.mark.parametrize("text", ODD_INPUTS, ids=range(len(ODD_INPUTS)))
@pytest.mark.parametrize("parser", ALL_PARSERS, ids=lambda p: p.__name__)
def test_parsers_never_raise_on_odd_input(parser: Callable[[str], Any], text: str) -> None:
    parser(text)


# --------------------------------------------------------------------------- psutil, for real


def test_sample_psutil_on_this_machine() -> None:
    data = health.sample_psutil(interval=0.2)
    cores = psutil.cpu_count()
    assert "errors" not in data
    assert isinstance(data["cpu_percent"], float)
    assert 0.0 <= data["cpu_percent"] <= 100.0
    assert len(data["cpu_percent_per_core"]) == cores
    assert all(0.0 <= p <= 100.0 for p in data["cpu_percent_per_core"])
    assert 0.0 <= sum(data["cpu_percent_per_core"]) <= 100.0 * cores
    assert len(data["load_average"]) == 3
    assert all(x >= 0 for x in data["load_average"])
    assert data["memory"]["total"] > 0
    assert 0 <= data["memory"]["available"] <= data["memory"]["total"]
    assert 0.0 <= data["memory"]["percent"] <= 100.0
    assert data["swap"]["total"] >= 0
    assert len(data["disks"]) >= 1
    for mountpoint, disk in data["disks"].items():
        assert mountpoint.startswith("/")
        assert disk["fstype"] not in health.PSEUDO_FSTYPES
        assert disk["total"] > 0
        assert 0.0 <= disk["percent"] <= 100.0
    assert data["uptime_seconds"] > 0
    assert data["battery"] is None or 0.0 <= data["battery"]["percent"] <= 100.0
    json.dumps(data, allow_nan=False)


def test_disk_filter() -> None:
    assert health._disk_is_volume("/", "apfs")
    assert health._disk_is_volume("/System/Volumes/Data", "apfs")
    assert health._disk_is_volume("/Volumes/Backup", "hfs")
    assert not health._disk_is_volume("/System/Volumes/VM", "apfs")
    assert not health._disk_is_volume("/System/Volumes/Preboot", "apfs")
    assert not health._disk_is_volume("/dev", "devfs")
    assert not health._disk_is_volume("/snap/core/1", "squashfs")


# --------------------------------------------------------------------------- runner

MAC_OUTPUTS = {
    "powermetrics": "powermetrics_smc_intel_idle_fan0.txt",
    "pmset": "pmset_g_therm_intel_12cpu.txt",
    "ioreg": "ioreg_rn_AppleSmartBattery_grep_capacity_mojave.txt",
    "system_profiler": "system_profiler_SPPowerDataType_text_charging.txt",
}


def fake_mac(argv: Sequence[str]) -> str:
    """Serve captured outputs (from several different Macs) by command name."""
    if argv[0] == "sysctl":
        raise FileNotFoundError("sysctl")
    return fixture(MAC_OUTPUTS[argv[0]])


def fake_psutil() -> dict[str, Any]:
    return {"cpu_percent": 3.5, "battery": {"percent": 50.0, "power_plugged": True, "seconds_left": None}}


def test_collect_health_darwin_intel_root_with_captured_outputs() -> None:
    reading = health.collect_health(
        fake_mac, platform="darwin", machine="x86_64", is_root=True, psutil_sampler=fake_psutil
    )
    assert reading.smc is not None
    assert reading.smc.cpu_die_temp_c == 55.99
    assert reading.smc.fans_rpm == [0.0]
    assert reading.cpu_power is None
    assert reading.thermal_limits is not None
    assert reading.thermal_limits.cpu_speed_limit == 100
    assert reading.battery is not None
    assert reading.battery.cycle_count == 200
    assert reading.unavailable == {}
    data = reading.as_data()
    assert data["smc"]["cpu_die_temp_c"] == 55.99
    assert data["thermal_limits"]["cpu_available_cpus"] == 12
    assert data["battery"]["design_capacity_mah"] == 6559
    LogEntry.model_validate(
        {"timestamp": "2026-01-01T00:00:00Z", "level": "INFO", "widget_type": "health", "message": "", "data": data}
    )


def test_collect_health_apple_silicon_not_root() -> None:
    calls: list[list[str]] = []

    def run(argv: Sequence[str]) -> str:
        calls.append(list(argv))
        if argv[0] == "pmset":
            return fixture("pmset_g_therm_apple_silicon_m1pro_monterey12.1.txt")
        raise subprocess.CalledProcessError(1, list(argv))

    reading = health.collect_health(run, platform="darwin", machine="arm64", is_root=False, psutil_sampler=dict)
    assert reading.unavailable == {"powermetrics": "needs root"}
    assert reading.thermal_limits is not None
    assert reading.thermal_limits.cpu_speed_limit is None
    assert reading.battery is None
    assert calls == [["pmset", "-g", "therm"]]


def test_collect_health_never_raises_when_commands_are_missing() -> None:
    def missing(argv: Sequence[str]) -> str:
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    def broken_psutil() -> dict[str, Any]:
        raise RuntimeError("psutil exploded")

    reading = health.collect_health(
        missing, platform="darwin", machine="arm64", is_root=True, psutil_sampler=broken_psutil
    )
    assert set(reading.unavailable) == {"psutil", "powermetrics", "pmset"}
    assert reading.unavailable["pmset"].startswith("FileNotFoundError")
    assert reading.smc is None
    assert reading.as_data()["unavailable"]["psutil"] == "RuntimeError: psutil exploded"


def test_collect_health_battery_falls_back_to_system_profiler() -> None:
    def run(argv: Sequence[str]) -> str:
        if argv[0] == "ioreg":
            raise subprocess.TimeoutExpired(list(argv), 20)
        return fake_mac(argv)

    reading = health.collect_health(run, platform="darwin", machine="x86_64", is_root=False, psutil_sampler=fake_psutil)
    assert reading.battery is not None
    assert reading.battery.cycle_count == 125
    assert "ioreg_battery" in reading.unavailable


def test_collect_health_linux_for_real() -> None:
    reading = health.collect_health()
    data = reading.as_data()
    assert data["psutil"]["memory"]["total"] > 0
    assert "smc" not in data
    json.dumps(data, allow_nan=False)


def test_as_data_replaces_nan() -> None:
    reading = health.HealthReading(psutil={"x": float("nan"), "y": (1, 2)})
    assert reading.as_data() == {"psutil": {"x": None, "y": [1, 2]}}
