"""A batch claiming another machine's machine_id cannot take over its identity (real ingest, worker, PostgreSQL).

Every Mac holds the fleet's keys, so until per-device credentials exist a batch can claim any machine_id. The
worker orders identity by when ingest accepted a batch, never by the created_at an agent chooses; the serial
number set by a machine's first batch never changes; and a batch claiming the machine_id with another serial
changes nothing of the machine (not its last_seen), stores none of its logs, and is shown to operators on the
machine's page.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import psycopg

from .. import batches
from ..fix_dashboard import Browserless
from ..fix_processes import IngestServer

FUTURE = timedelta(minutes=4, seconds=50)
"""Just inside ingest's default bound on created_at (5 minutes ahead)."""


def send(ingest: IngestServer, keys: dict[str, str], content: dict[str, Any], created_at: datetime) -> None:
    logs = batches.logs(2, start=created_at - timedelta(minutes=1))
    body = {
        **content,
        "logs": [{**log, "message": f"{content['machine']['hostname']} {log['message']}"} for log in logs],
    }
    envelope = batches.sealed(body, keys["current"], created_at=batches.format_timestamp(created_at))
    answer = ingest.post(envelope)
    assert answer.status_code == 202, answer.text


def identity(db: psycopg.Connection, machine_id: str) -> tuple:
    return db.execute(
        "SELECT serial_number, hostname, os_version, last_seen FROM machines WHERE machine_id = %s", (machine_id,)
    ).fetchone()


def messages(db: psycopg.Connection, machine_id: str) -> list[str]:
    rows = db.execute("SELECT message FROM widget_logs WHERE machine_id = %s ORDER BY id", (machine_id,))
    return [r[0] for r in rows]


def test_a_forged_batch_cannot_take_over_another_machines_identity(
    ingest: IngestServer, keys: dict[str, str], drain, db: psycopg.Connection, viewer: Browserless
) -> None:
    machine_id = f"mac-{uuid.uuid4().hex[:12]}"
    real = {"machine": batches.machine(machine_id, serial_number="C02REAL0001", hostname="real-mac.local")}
    send(ingest, keys, real, datetime.now(UTC))
    drain()
    serial, hostname, _, seen = identity(db, machine_id)
    assert (serial, hostname) == ("C02REAL0001", "real-mac.local")

    # Another serial, created_at near the future bound: changes nothing, not even last_seen; logs not stored.
    forged = batches.machine(machine_id, serial_number="C02EVIL0666", hostname="evil.local", os_version="evil OS")
    send(ingest, keys, {"machine": forged}, datetime.now(UTC) + FUTURE)
    drain()
    assert identity(db, machine_id) == ("C02REAL0001", "real-mac.local", "macOS 15.5 (24F74)", seen)
    assert not any("evil" in m for m in messages(db, machine_id))
    conflict = db.execute(
        "SELECT serial_number, hostname, log_count FROM identity_conflicts WHERE machine_id = %s", (machine_id,)
    ).fetchall()
    assert conflict == [("C02EVIL0666", "evil.local", 2)]

    # The right serial (it is no secret) and a future created_at: it moves the hostname only until the
    # real Mac's next batch, which is received later although it is created earlier.
    same_serial = batches.machine(machine_id, serial_number="C02REAL0001", hostname="evil-too.local")
    send(ingest, keys, {"machine": same_serial}, datetime.now(UTC) + FUTURE)
    drain()
    assert identity(db, machine_id)[1] == "evil-too.local"
    send(ingest, keys, real, datetime.now(UTC))
    drain()
    assert identity(db, machine_id)[:3] == ("C02REAL0001", "real-mac.local", "macOS 15.5 (24F74)")

    page = viewer.get(f"/machines/{quote(machine_id, safe='')}")
    assert page.status_code == 200
    assert "Identity conflicts" in page.text
    assert "C02EVIL0666" in page.text
    assert "1 batch claimed this machine id with another serial number" in page.text
    assert "their 2 logs were not stored" in page.text


def test_a_machine_without_conflicts_shows_none(
    ingest: IngestServer, keys: dict[str, str], drain, db: psycopg.Connection, viewer: Browserless
) -> None:
    machine_id = f"mac-{uuid.uuid4().hex[:12]}"
    send(ingest, keys, {"machine": batches.machine(machine_id)}, datetime.now(UTC))
    drain()
    page = viewer.get(f"/machines/{quote(machine_id, safe='')}")
    assert page.status_code == 200
    assert "Identity conflicts" not in page.text
