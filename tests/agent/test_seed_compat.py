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

from atlas.agent.store import LocalStore
from atlas.contract import Keyring, generate_encryption_key, parse_key
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


STEP_2_CONFIG = """server:
  encryption_key: "{key}"
"""
"""Step 2 of the guide, verbatim but for the key: the server's config.yaml, with only the payload key."""


def run_live_widgets(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atlas.live_widgets", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=service_env(),
    )


def test_the_guides_step_2_config_given_to_the_agent_says_what_the_agent_needs(tmp_path: Path, keys) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(STEP_2_CONFIG.format(key=keys["current"]))
    for result in (run_agent("run", "--config", str(config)), run_live_widgets("--config", str(config))):
        assert result.returncode == 2, result.stderr
        message = result.stderr.strip()
        assert message.endswith(
            f"configuration error: --config: {config} has a server: section, so it is the fleet server's "
            "config.yaml (atlas-server), not the agent's. The agent reads these settings at the top level of its "
            "own file: fleet_server (the server's address, https://HOST:8768), api_key (one of the server's "
            "server.api_key; make one on the server with `atlas-server keygen --api-key`) and encryption_key "
            "(the same key as the server's server.encryption_key, made with `atlas-server keygen`)"
        )
        assert keys["current"] not in result.stderr
        assert "Traceback" not in result.stderr


def test_a_fleet_server_without_an_api_key_names_the_key_and_the_command(tmp_path: Path, ingest, keys) -> None:
    config = write_config(tmp_path, fleet_server=ingest.url, encryption_key=keys["current"])
    for result in (run_agent("run", "--config", str(config)), run_live_widgets("--config", str(config))):
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().endswith(
            "configuration error: api_key: not set; sending to a fleet server needs one of its API keys "
            "(its config.yaml's server.api_key, made on the server with `atlas-server keygen --api-key`): "
            "set api_key, or pass --api-key"
        )


def test_a_fleet_server_without_an_encryption_key_names_the_key_and_the_command(tmp_path: Path, ingest) -> None:
    config = write_config(tmp_path, fleet_server=ingest.url, api_key=API_KEY)
    result = run_live_widgets("--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "encryption_key: not set" in result.stderr
    assert "server.encryption_key, made with `atlas-server keygen`" in result.stderr
    assert API_KEY not in result.stderr


def test_atlas_agent_run_without_a_fleet_server_says_nothing_is_sent(tmp_path: Path, keys) -> None:
    config = write_config(tmp_path, encryption_key=keys["current"])
    proc = subprocess.Popen(
        [BIN / "atlas-agent", "run", "--config", str(config)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=service_env(),
    )
    store = tmp_path / "data" / "atlas-agent.db"
    try:
        deadline = time.monotonic() + 60  # the line comes before the first collection is stored
        while time.monotonic() < deadline and not (
            store.exists() and LocalStore(store, Keyring.from_base64([keys["current"]])).status()["unbatched_logs"]
        ):
            time.sleep(0.2)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[1]
    assert (
        "No fleet_server set: logs are kept in the local store and nothing is sent "
        f"(set fleet_server: https://HOST:8768 and api_key in {config})"
    ) in output
