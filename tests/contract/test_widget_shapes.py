"""The widget data shapes: docs/protocol.md section 6.4 is written from them, and their keys read back."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from atlas.contract import (
    WIDGET_DATA,
    WIDGET_TYPES,
    HealthData,
    PingData,
    WifiData,
    decode_content,
    key_paths,
    measure,
    widget_keys,
)
from atlas.contract.widgets import describe
from tests import batches

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
SECTION = re.compile(r"<!-- widget-data: begin[^>]*-->\n(.*?)<!-- widget-data: end -->", re.DOTALL)


def test_the_protocol_documents_the_shapes_as_they_are_defined() -> None:
    found = SECTION.search(PROTOCOL.read_text(encoding="utf-8"))
    assert found, "docs/protocol.md lacks the widget-data markers"
    assert found.group(1) == describe(), "regenerate section 6.4 with atlas.contract.widgets.describe()"


def test_every_widget_but_the_agent_has_a_shape() -> None:
    assert set(WIDGET_DATA) == set(WIDGET_TYPES) - {"agent"}


def test_nested_keys_are_measured_through_lists_and_mappings() -> None:
    assert measure(WifiData, "rssi_dbm").bounds == (-120, 0)
    assert measure(HealthData, "psutil", "disks", "percent").unit == "%"
    assert measure(PingData, "rtt_ms", "avg").legacy is False
    assert measure(PingData, "rtt_ms").legacy is True
    assert "rtt_ms" not in widget_keys(PingData)
    assert "rtt_ms" in widget_keys(PingData, legacy=True)
    with pytest.raises(KeyError):
        measure(WifiData, "rssi")
    with pytest.raises(KeyError):
        measure(HealthData, "psutil", "memory", "percent", "deeper")
    with pytest.raises(ValueError, match="no range"):
        _ = measure(WifiData, "ssid").bounds


def test_every_range_is_ordered() -> None:
    for shape in WIDGET_DATA.values():
        for keys, found in key_paths(shape):
            if found.low is not None or found.high is not None:
                low, high = found.bounds
                assert low < high, keys


def test_the_ingest_still_accepts_keys_no_shape_names() -> None:
    log = {**batches.logs(1)[0], "data": {"rssi_dbm": "not a number", "made_up": [1, {"x": None}]}}
    content = decode_content(json.dumps({"machine": batches.machine(), "logs": [log]}).encode())
    assert content.logs[0].data["made_up"] == [1, {"x": None}]
