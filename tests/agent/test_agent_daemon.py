"""The agent as IT admins run it: collect, store, send to the real server, show live, export decrypted."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from atlas.agent.config import load_agent_config
from atlas.agent.daemon import Agent
from atlas.contract import generate_encryption_key
from atlas.contract.export import CSV_COLUMNS
from atlas.live_widgets import start_live_widget_server

from ..fix_processes import BIN, free_port, service_env
from ..fix_services import API_KEY


def write_config(tmp_path: Path, **values) -> Path:
    config = {
        "data_dir": str(tmp_path / "data"),
        "ping_targets": ["127.0.0.1"],  # loopback only: tests never reach the internet
        "speedtest_interval_seconds": 0,  # speed tests are tested against a loopback server in test_speedtest.py
        "network_interval_seconds": 0,  # the layered checks have loopback targets in test_network_daemon.py
        "live_port": 0,
        **values,
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_collected_logs_reach_postgresql(tmp_path, ingest, keys, drain, db):
    path = write_config(
        tmp_path,
        fleet_server=ingest.url,
        api_key=API_KEY,
        encryption_key=keys["current"],
        machine_id=f"agent-e2e-{tmp_path.name[-12:]}",
    )
    agent = Agent(load_agent_config(path))
    try:
        collected = agent.collect()
        agent.send()
    finally:
        agent.sender.close()
    assert {e["widget_type"] for e in collected} == {"wifi", "ping", "health", "processes"}
    drain()
    rows = db.execute(
        "SELECT widget_type, message FROM widget_logs WHERE machine_id = %s ORDER BY id", (agent.identity.machine_id,)
    ).fetchall()
    assert rows == [(e["widget_type"], e["message"]) for e in collected]
    assert agent.store.status()["sent_batches"] == 1


def test_live_widget_server_shows_every_widget(tmp_path, keys):
    path = write_config(tmp_path, encryption_key=keys["current"])
    server = start_live_widget_server(port=free_port(), config=str(path), block=False)
    try:
        deadline = time.monotonic() + 30
        widgets = {}
        while time.monotonic() < deadline and not {"wifi", "health", "processes"} <= widgets.keys():
            widgets = httpx.get(server.url + "api/widgets", timeout=5).json()["widgets"]
            time.sleep(0.2)
        assert {"wifi", "health", "processes", "ping:127.0.0.1"} <= widgets.keys()
        status = httpx.get(server.url + "api/status", timeout=5).json()
        assert status["encryption"] is True
        assert status["fleet_server"] is None
        page = httpx.get(server.url, timeout=5)
        assert page.headers["content-type"].startswith("text/html")
        assert "Atlas live widgets" in page.text
        ping = httpx.get(server.url + "api/widgets/ping", timeout=5).json()
        assert ping[0]["data"]["status"] == "ok"
        assert httpx.get(server.url + "api/widgets/nope", timeout=5).status_code == 404
    finally:
        server.stop()


def test_live_widgets_command_line(tmp_path, keys):
    """``python3 -m atlas.live_widgets`` with the flags existing scripts pass (no fleet server: live only)."""
    port = free_port()
    path = write_config(tmp_path)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "atlas.live_widgets",
            "--port",
            str(port),
            "--machine-id",
            "my-mac-01",
            "--encryption-key",
            keys["current"],
            "--config",
            str(path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=service_env(),
    )
    try:
        status = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and status is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2).json()
            except httpx.TransportError:
                time.sleep(0.2)
        assert status is not None
        assert status["machine"]["machine_id"] == "my-mac-01"
        assert status["encryption"] is True
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert keys["current"] not in output


@pytest.fixture
def filled_store(tmp_path, keys):
    path = write_config(tmp_path, encryption_key=keys["current"])
    agent = Agent(load_agent_config(path))
    agent.collect()
    return path, agent


def run_agent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN / "atlas-agent", *args], capture_output=True, text=True, timeout=60, check=False, env=service_env()
    )


def test_export_csv_is_decrypted_with_the_server_columns(filled_store, tmp_path):
    path, agent = filled_store
    out = tmp_path / "export.csv"
    result = run_agent("export", "--config", str(path), "--format", "csv", "-o", str(out))
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS
    stored = list(agent.store.iter_logs())
    assert [(r[3], r[4], r[5]) for r in rows[1:]] == [(s.level, s.widget_type, s.message) for s in stored]
    assert all(json.loads(r[6]) == s.data for r, s in zip(rows[1:], stored, strict=True))
    assert f"Exported {len(stored)} logs" in result.stderr


def test_export_json_filters_by_type(filled_store):
    path, _ = filled_store
    result = run_agent("export", "--config", str(path), "--format", "json", "--type", "ping")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["widget_type"] for r in records] == ["ping"]
    assert set(records[0]) == {"id", "serial_number", "timestamp", "level", "widget_type", "message", "data"}


def test_export_with_the_wrong_key_is_a_clear_error(filled_store, tmp_path):
    path, _ = filled_store
    config = yaml.safe_load(path.read_text())
    config["encryption_key"] = generate_encryption_key()
    path.write_text(yaml.safe_dump(config))
    result = run_agent("export", "--config", str(path))
    assert result.returncode == 1
    assert "not configured" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_and_bad_config(filled_store, tmp_path):
    path, _ = filled_store
    result = run_agent("status", "--config", str(path))
    assert json.loads(result.stdout)["unbatched_logs"] >= 4
    bad = tmp_path / "bad.yaml"
    bad.write_text("encryption_key: not-a-key\n")
    result = run_agent("status", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "atlas-agent: configuration error: encryption_key: key is not valid standard base64"
    )


def test_agent_killed_repeatedly_loses_nothing_and_duplicates_nothing(tmp_path, ingest, keys, drain, db):
    """SIGKILL the running agent at arbitrary points (collecting, sealing, sending), again and again:
    every log it stored reaches PostgreSQL exactly once."""
    import signal

    machine_id = f"agent-kill-{tmp_path.name[-12:]}"
    path = write_config(
        tmp_path,
        fleet_server=ingest.url,
        api_key=API_KEY,
        encryption_key=keys["current"],
        machine_id=machine_id,
        collect_interval_seconds=1,
        send_interval_seconds=1,
    )
    rng = __import__("random").Random(11)
    for _ in range(6):
        proc = subprocess.Popen(
            [BIN / "atlas-agent", "run", "--config", str(path)],
            env=service_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(3.0, 7.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    final = Agent(load_agent_config(path))  # a last, clean run delivers whatever is left
    try:
        final.send()
    finally:
        final.sender.close()
    status = final.store.status()
    assert status["pending_batches"] == 0
    assert status["unbatched_logs"] == 0
    stored = list(final.store.iter_logs())
    assert len(stored) >= 8  # several rounds collected before their kill
    drain()
    rows = db.execute(
        "SELECT timestamp, widget_type, message FROM widget_logs WHERE machine_id = %s", (machine_id,)
    ).fetchall()
    assert len(rows) == len(stored)
    assert sorted((r[1], r[2]) for r in rows) == sorted((s.widget_type, s.message) for s in stored)
