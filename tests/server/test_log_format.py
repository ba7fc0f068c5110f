"""Logs are one line per event, text or JSON lines, and never hold a secret or a log's content."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from atlas.contract import generate_encryption_key
from atlas.core.config import settings_from_mapping
from atlas.server import cli
from atlas.server.logs import (
    REDACTED,
    JsonFormatter,
    RedactQueryTokens,
    RedactSecrets,
    TextFormatter,
    configure_logging,
    logging_config,
    redact_query,
    secret_values,
)

from .. import batches
from ..fix_processes import ServerProcess
from ..fix_services import API_KEY

SECRET = "s3cr3t-value-" + uuid.uuid4().hex


def record(msg: str, *args: Any, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError(f"failed\nwith {SECRET}")
        except RuntimeError as error:
            exc_info = (type(error), error, error.__traceback__)
    rec = logging.LogRecord("atlas.test", logging.ERROR, __file__, 1, msg, args, exc_info)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_hold_time_level_logger_message_extras_and_the_traceback() -> None:
    line = JsonFormatter().format(record("Stored %d batch(es)\nsecond line", 3, exc=True, batch_id="b-1"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "atlas.test"
    assert entry["message"] == "Stored 3 batch(es)\nsecond line"
    assert entry["batch_id"] == "b-1"
    assert entry["time"].endswith("Z")
    assert "T" in entry["time"]
    assert entry["exc_info"].startswith("Traceback")
    assert "RuntimeError: failed" in entry["exc_info"]


def test_text_stays_the_familiar_format_on_one_line() -> None:
    line = TextFormatter().format(record("Stored %d\nforged INFO line", 3, exc=True))
    assert "\n" not in line
    assert " ERROR atlas.test: Stored 3\\nforged INFO line\\nTraceback" in line


def test_secrets_are_redacted_from_message_arguments_extras_and_tracebacks() -> None:
    redact = RedactSecrets([SECRET, "short"])
    rec = record("key %s in message", SECRET, exc=True, detail=f"extra {SECRET}")
    assert redact.filter(rec)
    line = JsonFormatter().format(rec)
    assert SECRET not in line
    assert line.count(REDACTED) == 3
    rec = record("short words stay")
    redact.filter(rec)
    assert rec.getMessage() == "short words stay"  # too short to be one of our secrets


def test_secret_values_cover_every_configured_secret() -> None:
    payload, database_key = generate_encryption_key(), generate_encryption_key()
    settings = settings_from_mapping(
        {
            "server": {"api_key": API_KEY, "encryption_key": payload, "db_encryption_key": database_key},
            "database": {"url": "postgresql://atlas:db-password-0123456@db:5432/atlas"},
            "redis": {"url": "redis://:redis-password-0123456@redis:6379/0"},
            "dashboard": {"secret_key": "k" * 40},
        },
        env={},
    )
    values = set(secret_values(settings))
    assert {API_KEY, payload, database_key, "k" * 40, "db-password-0123456", "redis-password-0123456"} <= values


def test_log_format_is_an_option_of_every_configured_command() -> None:
    parser = cli.build_parser()
    for command in ("migrate", "worker", "failed", "keys"):
        assert parser.parse_args([command, "--log-format", "json"]).log_format == "json"
    for command in ("ingest", "exporter", "dashboard"):
        assert parser.parse_args([command, "--log-format", "text"]).log_format == "text"
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--log-format", "xml"])


def test_a_bad_log_format_in_the_environment_is_a_configuration_error(monkeypatch, capsys) -> None:
    monkeypatch.setenv("ATLAS_LOG_FORMAT", "xml")
    assert cli.main(["keygen"]) == 2
    assert "ATLAS_LOG_FORMAT" in capsys.readouterr().err


def test_uvicorn_loggers_go_through_our_handler() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        config = configure_logging("json")
        assert config == logging_config("json")
        for name in ("uvicorn.error", "uvicorn.access"):
            logger = logging.getLogger(name)
            assert not logger.handlers
            assert logger.propagate
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


@pytest.fixture(scope="module")
def json_ingest(start_server: Callable[..., ServerProcess], server_config: dict[str, Any]) -> ServerProcess:
    return start_server("ingest", server_config, env={"ATLAS_LOG_FORMAT": "json"})


def test_ingest_logs_json_lines_without_secrets_or_content(json_ingest: ServerProcess, keys: dict[str, str]) -> None:
    marker = uuid.uuid4().hex
    body = batches.content(3)
    for i, log in enumerate(body["logs"]):
        log["message"] = f"private message {marker} #{i}"
        log["data"] = {"ssid": f"private-ssid-{marker}", "seq": i}
    good = batches.sealed(body, keys["current"])
    url = f"{json_ingest.url}/api/fleet/widget-logs"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.post(url, json=good, headers=auth, timeout=30).status_code == 202
    assert httpx.post(url, json=good, headers=auth, timeout=30).status_code == 200
    wrong_key = "wrong-api-key-" + marker
    assert httpx.post(url, json=good, headers={"Authorization": f"Bearer {wrong_key}"}, timeout=30).status_code == 401
    bad_body = b'{"not": "an envelope", "message": "private ' + marker.encode() + b'"}'
    response = httpx.post(url, content=bad_body, headers={**auth, "Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 400
    unknown = batches.sealed(body, generate_encryption_key())
    assert httpx.post(url, json=unknown, headers=auth, timeout=30).status_code == 400
    assert httpx.get(f"{json_ingest.url}/metrics", timeout=10).status_code == 200

    lines = [line for line in json_ingest.logs().splitlines() if line.strip()]
    entries = []
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        entries.append(entry)
    text = "\n".join(lines)
    for secret in (API_KEY, keys["current"], keys["previous"], wrong_key, marker):
        assert secret not in text
    loggers = {e["logger"] for e in entries}
    assert {"atlas.ingest", "uvicorn.error", "uvicorn.access"} <= loggers
    assert any(e["message"].startswith("Successfully decrypted widget logs payload") for e in entries)
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    assert {e["status"] for e in access} >= {202, 200, 401, 400}
    assert all(e["path"] in ("/healthz", "/api/fleet/widget-logs", "/metrics") for e in access)


def test_token_like_query_parameters_are_blanked_in_access_lines() -> None:
    assert redact_query("/api/exports/logs?format=csv&token=atlas_abc&since=1") == (
        f"/api/exports/logs?format=csv&token={REDACTED}&since=1"
    )
    assert redact_query("/x?access_token=a&API_KEY=b&%6Bey=c&keys=d&token") == (
        f"/x?access_token={REDACTED}&API_KEY={REDACTED}&%6Bey={REDACTED}&keys=d&token={REDACTED}"
    )
    assert redact_query("/healthz") == "/healthz"
    access = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "",
        0,
        '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4:5", "GET", "/?key=v", "1.1", 200),
        None,
    )
    assert RedactQueryTokens().filter(access)
    assert TextFormatter().format(access).endswith(f'1.2.3.4:5 - "GET /?key={REDACTED} HTTP/1.1" 200')


def test_a_token_in_the_query_string_is_not_logged(json_ingest: ServerProcess) -> None:
    secret = "atlas_" + uuid.uuid4().hex
    answer = httpx.get(f"{json_ingest.url}/healthz?token={secret}&api_key={secret}x&probe=1", timeout=10)
    assert answer.status_code == 200
    text = json_ingest.logs()
    assert secret not in text
    paths = [e["path"] for e in map(json.loads, text.splitlines()) if e.get("path", "").endswith("probe=1")]
    assert paths == [f"/healthz?token={REDACTED}&api_key={REDACTED}&probe=1"]
