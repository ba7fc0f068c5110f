"""Encryption at rest: sealed rows in PostgreSQL, readable exports, clear errors, and rotate-db-key.

These tests use a database of their own: once sealed rows exist, a server
without the database key refuses exports from that database, which must not
touch the other tests.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from atlas.contract import Key, Keyring, generate_encryption_key, validate_content
from atlas.core.accounts import create_token, create_user
from atlas.core.atrest import AtRestError, epoch_micros, new_data_key, open_log, seal_log, unwrap_data_key
from atlas.core.atrest import wrap_data_key as wrap
from atlas.core.config import ConfigError, settings_from_mapping
from atlas.core.db import connect
from atlas.core.queue import queued_batch
from atlas.worker.store import persist_batches

from .. import batches
from ..fix_processes import BIN, ServerProcess, service_env
from ..fix_services import own_database

SECRET_WORDS = ("Office-5G-Secret", "PrivateProcessName", "Ping 10.1.2.3")


@pytest.fixture(scope="module")
def atrest_url() -> Iterator[str]:
    with own_database("_atrest") as url:
        yield url


@pytest.fixture(scope="module")
def db_keys() -> dict[str, str]:
    return {"a": generate_encryption_key(), "b": generate_encryption_key(), "wrong": generate_encryption_key()}


@pytest.fixture(scope="module")
def token(atrest_url: str) -> str:
    with psycopg.connect(atrest_url, autocommit=True) as conn:
        return create_token(conn, create_user(conn, f"exp-{uuid.uuid4().hex[:6]}", "x" * 16), "atrest")


@pytest.fixture(scope="module")
def exporter_with(
    start_server: Callable[..., ServerProcess], server_config: dict[str, Any], atrest_url: str
) -> Callable[..., ServerProcess]:
    started: dict[tuple, ServerProcess] = {}

    def start(*keys: str) -> ServerProcess:
        if keys not in started:
            server = {**server_config["server"]}
            if keys:
                server["db_encryption_key"] = keys[0]
                server["db_encryption_keys"] = list(keys[1:])
            config = {**server_config, "server": server, "database": {"url": atrest_url}}
            started[keys] = start_server("exporter", config)
        return started[keys]

    return start


def secret_batch(machine_id: str) -> dict[str, Any]:
    logs = batches.logs(6)
    for i, log in enumerate(logs):
        log["message"] = f"{SECRET_WORDS[i % 3]} #{i}"
        log["data"] = {"ssid": SECRET_WORDS[0], "process": SECRET_WORDS[1], "n": i, "nested": {"x": [1, 2.5]}}
    return {"machine": batches.machine(machine_id, serial_number="C02ATREST01"), "logs": logs}


def store(url: str, content: dict[str, Any], db_key: str | None) -> str:
    batch = queued_batch(
        validate_content(content),
        batch_id=str(uuid.uuid4()),
        created_at=datetime.now(UTC),
        received_at=datetime.now(UTC),
        kid=None,
    )
    with connect(url) as conn:
        persist_batches(conn, [batch], Key.from_base64(db_key) if db_key else None)
    return batch["batch_id"]


def export(server: ServerProcess, token: str, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{server.url}/api/exports/logs", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


def test_sealing_binds_content_to_its_row_and_batch() -> None:
    key = Key.from_base64(generate_encryption_key())
    data_key = new_data_key()
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(data_key)
    sealed = seal_log(aead, "b1", "m1", 1_000_000, "INFO", "wifi", "hello", '{"a":1}')
    assert b"hello" not in sealed
    assert open_log(aead, "b1", "m1", 1_000_000, "INFO", "wifi", sealed) == ("hello", '{"a":1}')
    for moved in (("b2", "m1", 1_000_000, "INFO"), ("b1", "m2", 1_000_000, "INFO"), ("b1", "m1", 1_000_001, "INFO")):
        with pytest.raises(AtRestError):
            open_log(aead, *moved, "wifi", sealed)
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(AtRestError):
        open_log(aead, "b1", "m1", 1_000_000, "INFO", "wifi", bytes(tampered))
    wrapped = wrap(key, "b1", data_key)
    assert unwrap_data_key(Keyring([key]), key.kid, "b1", wrapped) == data_key
    with pytest.raises(AtRestError, match="does not open"):
        unwrap_data_key(Keyring([key]), key.kid, "b2", wrapped)
    with pytest.raises(AtRestError, match=r"server\.db_encryption_key"):
        unwrap_data_key(Keyring(), key.kid, "b1", wrapped)
    assert epoch_micros(datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)) == 1_000_005


def test_database_key_settings(db_keys) -> None:
    env = {"FLEET_DB_ENCRYPTION_KEY": db_keys["a"]}
    settings = settings_from_mapping({"server": {"db_encryption_keys": [db_keys["b"]]}}, env)
    assert [k.kid for k in settings.db_keyring] == [
        Key.from_base64(db_keys["a"]).kid,
        Key.from_base64(db_keys["b"]).kid,
    ]
    with pytest.raises(ConfigError, match=r"server\.db_encryption_key: must differ from the payload key"):
        settings_from_mapping({"server": {"encryption_key": db_keys["a"], "db_encryption_key": db_keys["a"]}}, {})
    with pytest.raises(ConfigError, match=r"server\.db_encryption_key"):
        settings_from_mapping({"server": {"db_encryption_key": "c2hvcnQ="}}, {})


def test_stored_sealed_and_exported_as_sent(atrest_url, db_keys, exporter_with, token) -> None:
    machine_id = f"atrest-{uuid.uuid4().hex[:8]}"
    content = secret_batch(machine_id)
    batch_id = store(atrest_url, content, db_keys["a"])
    with psycopg.connect(atrest_url) as conn:
        rows = conn.execute(
            "SELECT message, data, sealed FROM widget_logs WHERE machine_id = %s", (machine_id,)
        ).fetchall()
        dump = conn.execute(
            "SELECT string_agg(coalesce(message, '') || coalesce(data::text, '') || encode(sealed, 'escape'), '')"
            " FROM widget_logs WHERE machine_id = %s",
            (machine_id,),
        ).fetchone()[0]
        kid = conn.execute("SELECT dek_kid FROM batches WHERE batch_id = %s", (batch_id,)).fetchone()[0]
    assert len(rows) == 6
    assert all(message is None and data is None and sealed for message, data, sealed in rows)
    assert not any(word in dump for word in SECRET_WORDS)
    assert kid == Key.from_base64(db_keys["a"]).kid

    server = exporter_with(db_keys["a"])
    exported = json.loads(export(server, token, machine_id=machine_id, format="json").content)
    assert [(e["message"], e["data"]) for e in exported] == [(g["message"], g["data"]) for g in content["logs"]]
    ndjson = [json.loads(line) for line in export(server, token, machine_id=machine_id, format="ndjson").iter_lines()]
    assert ndjson == exported
    table = list(csv.reader(io.StringIO(export(server, token, machine_id=machine_id).text, newline="")))
    assert table[0] == ["ID", "Serial Number", "Timestamp", "Level", "Widget Type", "Message", "Data"]
    assert [(r[5], json.loads(r[6])) for r in table[1:]] == [(g["message"], g["data"]) for g in content["logs"]]
    assert [r[2] for r in table[1:]] == [e["timestamp"] for e in exported]
    # Every path carries the same columns: JSON the machine and its hostname, CSV them when asked for.
    assert all((e["machine_id"], e["hostname"]) == (machine_id, "studio-mac.local") for e in exported)
    extended = list(csv.reader(io.StringIO(export(server, token, machine_id=machine_id, columns="extended").text)))
    assert extended[0] == [*table[0], "Machine ID", "Hostname"]
    assert [r[:7] for r in extended[1:]] == table[1:]
    assert all(r[7:] == [machine_id, "studio-mac.local"] for r in extended[1:])


def test_a_server_without_the_key_refuses_clearly(atrest_url, db_keys, exporter_with, token) -> None:
    store(atrest_url, secret_batch(f"atrest-{uuid.uuid4().hex[:8]}"), db_keys["a"])
    for server in (exporter_with(), exporter_with(db_keys["wrong"])):
        response = export(server, token, format="csv")
        assert response.status_code == 503
        head = httpx.head(f"{server.url}/api/exports/logs", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert head.status_code == 503  # HEAD answers as GET would, before counting anything
        assert "server.db_encryption_key" in response.json()["detail"]
        with psycopg.connect(atrest_url) as conn:
            audited = conn.execute("SELECT status, error FROM export_audit ORDER BY id DESC LIMIT 1").fetchone()
        assert audited[0] == "failed"
        assert "server.db_encryption_key" in audited[1]
        assert not any(word in response.text for word in SECRET_WORDS)
        assert "Traceback" not in server.logs()


def _rotate(config_path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [BIN / "atlas-server", "rotate-db-key", "--config", config_path, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=service_env(),
        text=True,
    )


def test_rotation_interrupted_then_resumed_loses_nothing(atrest_url, db_keys, exporter_with, token, tmp_path) -> None:
    machine_id = f"atrest-rot-{uuid.uuid4().hex[:8]}"
    sent = []
    for i in range(120):  # some stored in the clear, some under key A
        content = secret_batch(machine_id)
        for log in content["logs"]:
            log["message"] += f" b{i}"
        store(atrest_url, content, db_keys["a"] if i % 2 else None)
        sent += [(g["message"], g["data"]) for g in content["logs"]]
    config = tmp_path / "rotate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"db_encryption_key": db_keys["b"], "db_encryption_keys": [db_keys["a"]]},
                "database": {"url": atrest_url},
            }
        )
    )
    b_kid = Key.from_base64(db_keys["b"]).kid

    def under_b() -> int:
        with psycopg.connect(atrest_url) as conn:
            return conn.execute("SELECT count(*) FROM batches WHERE dek_kid = %s", (b_kid,)).fetchone()[0]

    first = _rotate(config, "--chunk", "1")
    deadline = time.monotonic() + 60
    while under_b() < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    first.stdout.close()
    midway = under_b()
    assert midway >= 10

    both = exporter_with(db_keys["b"], db_keys["a"])
    half = json.loads(export(both, token, machine_id=machine_id, format="json").content)
    assert [(e["message"], e["data"]) for e in half] == sent  # mid-rotation: everything readable

    during: list[tuple[str, Any]] = []

    def keep_storing() -> None:  # the workers go on storing, under the new key, while rotation runs
        for i in range(30):
            content = secret_batch(machine_id)
            for log in content["logs"]:
                log["message"] += f" during {i}"
            store(atrest_url, content, db_keys["b"])
            during.extend((g["message"], g["data"]) for g in content["logs"])

    worker = threading.Thread(target=keep_storing)
    worker.start()
    second = _rotate(config, "--chunk", "50", "--progress", "always")
    out, _ = second.communicate(timeout=120)
    worker.join(60)
    sent += during
    assert second.returncode == 0, out
    assert "Done: every stored batch is under database key" in out
    assert f"Database key {Key.from_base64(db_keys['a']).kid} is no longer used" in out
    with psycopg.connect(atrest_url) as conn:
        left = conn.execute("SELECT count(*) FROM batches WHERE dek_kid IS DISTINCT FROM %s", (b_kid,)).fetchone()[0]
        clear = conn.execute("SELECT count(*) FROM widget_logs WHERE sealed IS NULL").fetchone()[0]
        kids = [r[0] for r in conn.execute("SELECT kid FROM db_key_ids")]
    assert (left, clear, kids) == (0, 0, [b_kid])
    only_b = exporter_with(db_keys["b"])
    after = json.loads(export(only_b, token, machine_id=machine_id, format="json").content)
    assert [(e["message"], e["data"]) for e in after] == sent
