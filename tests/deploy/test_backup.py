"""Backup and restore as deploy/README.md gives them: pg_dump (custom format) of a database whose logs are
sealed under the database key, pg_restore into a new database, and the exporter, with the same key, gives
the same rows from the restored one; without the key it gives none."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from atlas.contract import Key, generate_encryption_key, validate_content
from atlas.core.accounts import create_token, create_user
from atlas.core.db import connect
from atlas.core.queue import queued_batch
from atlas.worker.store import persist_batches

from .. import batches
from ..fix_processes import ServerProcess
from ..fix_services import own_database

SECRET = "Office-5G-Secret"


def tool(name: str) -> str:
    """scripts/services installs PostgreSQL, which brings pg_dump and pg_restore."""
    found = shutil.which(name)
    assert found, f"{name} is not installed: run scripts/services"
    return found


def store_sealed(url: str, db_key: str, machine_id: str) -> None:
    logs = batches.logs(5)
    for i, log in enumerate(logs):
        log["message"] = f"{SECRET} #{i}"
        log["data"] = {"ssid": SECRET, "n": i}
    content = {"machine": batches.machine(machine_id), "logs": logs}
    batch = queued_batch(
        validate_content(content),
        batch_id=str(uuid.uuid4()),
        created_at=datetime.now(UTC),
        received_at=datetime.now(UTC),
        kid=None,
    )
    with connect(url) as conn:
        persist_batches(conn, [batch], Key.from_base64(db_key))


def exported(server: ServerProcess, token: str, machine_id: str) -> httpx.Response:
    return httpx.get(
        f"{server.url}/api/exports/logs",
        params={"machine_id": machine_id, "format": "json"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


@pytest.mark.slow
def test_a_dump_restored_into_a_new_database_exports_the_same_rows(
    start_server: Callable[..., ServerProcess], server_config: dict[str, Any], tmp_path: Path
) -> None:
    db_key = generate_encryption_key()
    machine_ids = [f"backup-{uuid.uuid4().hex[:8]}" for _ in range(2)]

    def exporter(url: str, key: str | None) -> ServerProcess:
        server = {k: v for k, v in server_config["server"].items() if not k.startswith("db_encryption")}
        if key:
            server["db_encryption_key"] = key
        return start_server("exporter", {**server_config, "server": server, "database": {"url": url}})

    dump = tmp_path / "atlas.dump"
    with own_database("_backup") as original:
        for machine_id in machine_ids:
            store_sealed(original, db_key, machine_id)
        with psycopg.connect(original, autocommit=True) as conn:
            token = create_token(conn, create_user(conn, f"backup-{uuid.uuid4().hex[:6]}", "x" * 16), "backup")
            sealed = conn.execute("SELECT count(*) FROM widget_logs WHERE message IS NULL AND sealed IS NOT NULL")
            assert sealed.fetchone() == (10,)
        before = {m: exported(exporter(original, db_key), token, m) for m in machine_ids}
        for answer in before.values():
            assert answer.status_code == 200, answer.text
            assert len(json.loads(answer.content)) == 5
        done = subprocess.run(
            [tool("pg_dump"), "--dbname", original, "--format", "custom", "--file", str(dump)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    assert SECRET.encode() not in dump.read_bytes(), "the dump holds the logs sealed, as the database does"

    with own_database("_restored", migrated=False) as restored:
        done = subprocess.run(
            [tool("pg_restore"), "--dbname", restored, "--no-owner", "--exit-on-error", str(dump)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        server = exporter(restored, db_key)
        for machine_id, answer in before.items():
            again = exported(server, token, machine_id)
            assert again.status_code == 200, again.text
            assert json.loads(again.content) == json.loads(answer.content)
        without_key = exported(exporter(restored, None), token, machine_ids[0])
        assert without_key.status_code != 200
        assert SECRET not in without_key.text
