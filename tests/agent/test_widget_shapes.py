"""The collectors send the contract's widget data shapes: the same keys, in the same order."""

from __future__ import annotations

import dataclasses

import pytest

from atlas.agent.collectors import health, ping, processes, speedtest, wifi
from atlas.agent.widgets import health_log, ping_log, processes_log, speedtest_log, wifi_log
from atlas.contract import (
    WIDGET_DATA,
    BatteryDetails,
    ClusterReading,
    CpuPower,
    HealthData,
    PingData,
    ProcessesData,
    ProcessRow,
    SmcSensors,
    SpeedtestData,
    ThermalLimits,
    WifiData,
    widget_keys,
)

PAIRS = [
    (wifi.WifiReading, WifiData),
    (ping.PingResult, PingData),
    (speedtest.SpeedtestResult, SpeedtestData),
    (processes.ProcessesResult, ProcessesData),
    (processes.ProcessInfo, ProcessRow),
    (health.HealthReading, HealthData),
    (health.SmcSensors, SmcSensors),
    (health.CpuPower, CpuPower),
    (health.ClusterReading, ClusterReading),
    (health.ThermalLimits, ThermalLimits),
    (health.BatteryDetails, BatteryDetails),
]


@pytest.mark.parametrize(("reading", "shape"), PAIRS, ids=[r.__name__ for r, _ in PAIRS])
def test_each_collector_result_has_the_keys_of_its_contract_shape(reading: type, shape: type) -> None:
    assert tuple(f.name for f in dataclasses.fields(reading)) == widget_keys(shape)


def test_the_logs_the_agent_builds_carry_only_contract_keys() -> None:
    sample = {"cpu_percent": 5.0, "memory": {"total": 8, "used": 4, "available": 4, "percent": 50.0}}
    row = processes.ProcessInfo(pid=1, name="launchd", command="launchd --token=x")
    logs = [
        wifi_log(wifi.WifiReading(state="connected", ssid="office", rssi_dbm=-60, noise_dbm=-90)),
        ping_log(ping.PingResult(target="1.1.1.1", status="ok", sent=3, received=3, loss_pct=0.0)),
        speedtest_log(speedtest.SpeedtestResult(status="ok", timestamp="2026-01-01T00:00:00Z", download_mbps=9.5)),
        health_log(
            health.HealthReading(
                psutil=sample,
                smc=health.SmcSensors(fans_rpm=[1200.0]),
                cpu_power=health.CpuPower(clusters={"E": health.ClusterReading(frequency_mhz=1000.0)}),
                thermal_limits=health.ThermalLimits(),
                battery=health.BatteryDetails(percent=80.0),
                unavailable={"pmset": "missing"},
            )
        ),
        processes_log(processes.ProcessesResult(status="ok", source="psutil", top_cpu=(row,), top_memory=(row,))),
    ]
    for log in logs:
        shape = WIDGET_DATA[log["widget_type"]]
        assert set(log["data"]) <= set(widget_keys(shape)), log["widget_type"]
    health_data = logs[3]["data"]
    assert set(health_data["smc"]) == set(widget_keys(SmcSensors))
    assert set(health_data["cpu_power"]["clusters"]["E"]) == set(widget_keys(ClusterReading))
    assert set(health_data["battery"]) == set(widget_keys(BatteryDetails))
    assert set(logs[4]["data"]["top_cpu"][0]) == set(widget_keys(ProcessRow))
