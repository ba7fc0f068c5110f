"""The agent commands of the earlier Atlas's set-up guide, run as that guide writes them."""

from __future__ import annotations

import contextlib
import csv
import io
import subprocess
import sys
import time
from pathlib import Path

import httpx

from atlas.contract import generate_encryption_key, parse_key
from atlas.contract.export import CSV_COLUMNS

from ..fix_processes import BIN, free_port, service_env
from ..fix_services import API_KEY
from .test_agent_daemon import write_config

SEED_KEY_SNIPPET = (
    "import sys; sys.path.insert(0, '.'); "
    "from fleet_agent.encryption import generate_encryption_key; "
    "generate_encryption_key()"
)
"""Step 1 of the guide: ``cd fleet-agent; python3 -c "..."``, which prints the key to save."""


def run_seed_key_snippet(python: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-c", SEED_KEY_SNIPPET],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=service_env(),
    )


def test_the_guides_key_snippet_prints_a_new_key(tmp_path: Path) -> None:
    folder = tmp_path / "fleet-agent"
    folder.mkdir()
    first, second = (run_seed_key_snippet(sys.executable, folder) for _ in range(2))
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    key = first.stdout.strip()
    assert first.stdout == key + "\n"
    assert len(parse_key(key)) == 32
    assert second.stdout.strip() != key


LIVE_SCRIPT = """
import sys, time
from atlas.live_widgets import start_live_widget_server

server = start_live_widget_server(
    port=0, fleet_server=sys.argv[1], machine_id="my-mac-01", api_key=sys.argv[2], encryption_key=sys.argv[3],
    config=sys.argv[4], block=False,
)
deadline = time.monotonic() + 60
while time.monotonic() < deadline and not server.agent.store.status()["sent_batches"]:
    time.sleep(0.2)
server.stop()
"""
"""Step 3 of the guide, programmatic: a script that configures no logging of its own."""


def test_start_live_widget_server_prints_its_start_up_lines_without_logging_set_up(
    tmp_path: Path, ingest, keys
) -> None:
    config = write_config(tmp_path, send_interval_seconds=300)
    proc = subprocess.run(
        [sys.executable, "-c", LIVE_SCRIPT, ingest.url, API_KEY, keys["current"], str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=service_env(),
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert f"Widget log collector initialized (sends every 5 minutes to {ingest.url})" in lines
    assert "Widget log encryption enabled (AES-256-GCM)" in lines
    assert any(line.startswith("Live widgets on http://127.0.0.1:") for line in lines)
    assert any(line.startswith("Sent ") and line.endswith(" widget logs to fleet server") for line in lines)
    assert keys["current"] not in proc.stderr + proc.stdout
    assert API_KEY not in proc.stderr + proc.stdout


def test_logging_the_caller_configured_is_left_alone(tmp_path: Path, keys) -> None:
    script = (
        "import logging, sys; logging.basicConfig(level=logging.WARNING, format='configured: %(message)s'); "
        "from atlas.live_widgets import start_live_widget_server; "
        "start_live_widget_server(port=0, encryption_key=sys.argv[1], config=sys.argv[2], block=False).stop()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, keys["current"], str(write_config(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=service_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Live widgets on" not in proc.stderr


def run_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "atlas-agent", *args], capture_output=True, text=True, timeout=60, check=False, env=service_env()
    )


def live_widgets_until_collected(config: Path, key: str) -> None:
    """``python3 -m atlas.live_widgets --encryption-key KEY`` (the key only on its command line) until it stored."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "atlas.live_widgets",
            "--port",
            str(port),
            "--encryption-key",
            key,
            "--config",
            str(config),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=service_env(),
    )
    try:
        deadline = time.monotonic() + 60
        widgets: dict = {}
        while time.monotonic() < deadline and not {"wifi", "health", "processes"} <= widgets.keys():
            with contextlib.suppress(httpx.TransportError):
                widgets = httpx.get(f"http://127.0.0.1:{port}/api/widgets", timeout=2).json()["widgets"]
            time.sleep(0.2)
        assert {"wifi", "health", "processes"} <= widgets.keys()
    finally:
        proc.terminate()
        proc.wait(30)


def test_export_takes_the_key_the_live_widget_server_was_started_with(tmp_path: Path, keys) -> None:
    config = write_config(tmp_path)  # no key in the file: the guide passes it as --encryption-key
    live_widgets_until_collected(config, keys["current"])
    out = tmp_path / "exports" / "logs.csv"
    out.parent.mkdir()

    refused = run_agent("export", "--config", str(config), "-o", str(out))
    assert refused.returncode == 1
    assert "not configured" in refused.stderr
    assert "atlas-agent export --encryption-key KEY" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert list(out.parent.iterdir()) == []  # no header-only file, no temporary left behind

    done = run_agent("export", "--config", str(config), "--encryption-key", keys["current"], "-o", str(out))
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert {"wifi", "health", "processes"} <= {row[4] for row in rows[1:]}
    assert f"Exported {len(rows) - 1} logs to {out}" in done.stderr
    assert [p.name for p in out.parent.iterdir()] == ["logs.csv"]
    assert keys["current"] not in done.stderr + done.stdout


def test_a_failed_export_leaves_the_previous_file_as_it_was(tmp_path: Path, keys) -> None:
    config = write_config(tmp_path)
    live_widgets_until_collected(config, keys["current"])
    out = tmp_path / "logs.json"
    out.write_text("the export of yesterday\n")
    wrong = write_config(tmp_path, encryption_key=generate_encryption_key())
    failed = run_agent("export", "--config", str(wrong), "--format", "json", "-o", str(out))
    assert failed.returncode == 1
    assert out.read_text() == "the export of yesterday\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".logs.json")) == []
