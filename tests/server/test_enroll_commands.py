"""``atlas-server enroll-secret`` and ``atlas-server devices``, run as commands against a real PostgreSQL."""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from atlas.contract import DeviceKey
from atlas.core.devices import DEVICES_CHANNEL, EnrollRefused, enroll_device, find_device

from ..fix_processes import BIN, service_env


@pytest.fixture
def config(tmp_path: Path, server_config: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(server_config))
    return path


def atlas_server(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [BIN / "atlas-server", *args[:2], "--config", str(config), *args[2:]]
    return subprocess.run(command, capture_output=True, text=True, env=service_env(), timeout=60, check=False)


def create_secret(config: Path, *extra: str) -> str:
    done = atlas_server(config, "enroll-secret", "create", *extra)
    assert done.returncode == 0, done.stderr
    secret = done.stdout.strip().splitlines()[-1]
    assert secret.startswith("atlas_enroll_")
    return secret


def test_a_secret_is_shown_once_and_only_its_hash_is_kept(config: Path, db: psycopg.Connection) -> None:
    name = f"mdm-{uuid.uuid4().hex[:8]}"
    secret = create_secret(config, "--name", name, "--uses", "3", "--expires-in", "30")
    row = db.execute("SELECT secret_hash, max_uses, expires_at > now() FROM enroll_secrets WHERE name = %s", (name,))
    stored = row.fetchone()
    assert stored == (hashlib.sha256(secret.encode()).digest(), 3, True)
    listed = atlas_server(config, "enroll-secret", "list")
    assert listed.returncode == 0
    line = next(line for line in listed.stdout.splitlines() if line.startswith(name))
    assert "0/3" in line
    assert secret not in listed.stdout
    assert secret.removeprefix("atlas_enroll_")[:12] not in listed.stdout


def test_a_name_in_use_is_refused(config: Path) -> None:
    name = f"dup-{uuid.uuid4().hex[:8]}"
    create_secret(config, "--name", name)
    again = atlas_server(config, "enroll-secret", "create", "--name", name)
    assert again.returncode == 1
    assert "exists already" in again.stderr


def test_zero_uses_is_refused_by_the_parser(config: Path) -> None:
    done = atlas_server(config, "enroll-secret", "create", "--uses", "0")
    assert done.returncode == 2
    assert "at least 1" in done.stderr


def test_a_revoked_secret_enrolls_nothing(config: Path, db: psycopg.Connection) -> None:
    name = f"rev-{uuid.uuid4().hex[:8]}"
    secret = create_secret(config, "--name", name)
    done = atlas_server(config, "enroll-secret", "revoke", name)
    assert done.returncode == 0
    assert f"Revoked enroll secret {name!r}" in done.stdout
    with pytest.raises(EnrollRefused) as refused:
        enroll(db, secret)
    assert refused.value.status == 401
    assert atlas_server(config, "enroll-secret", "revoke", name).returncode == 1


def enroll(db: psycopg.Connection, secret: str, hardware: str | None = None, machine: str | None = None):
    return enroll_device(
        db,
        secret,
        hardware_uuid=hardware or str(uuid.uuid4()).upper(),
        serial_number="C02TEST" + uuid.uuid4().hex[:5].upper(),
        machine_id=machine or str(uuid.uuid4()).upper(),
        hostname="mac.example.com",
        public_key=DeviceKey.generate().public_raw,
    )


def test_devices_revoke_revokes_one_device_and_notifies(
    config: Path, db: psycopg.Connection, database_url: str
) -> None:
    secret = create_secret(config)
    device, _ = enroll(db, secret)
    other, _ = enroll(db, secret)
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {DEVICES_CHANNEL}")
        done = atlas_server(config, "devices", "revoke", device.device_id)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"Revoked device {device.device_id}")
        notes = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    assert notes == [device.device_id]
    assert find_device(db, device.device_id).state == "revoked"
    assert find_device(db, other.device_id).state == "live"
    listed = atlas_server(config, "devices", "list").stdout
    assert f"{device.device_id}" in listed
    assert next(line for line in listed.splitlines() if line.startswith(device.device_id)).endswith("revoked")
    again = atlas_server(config, "devices", "revoke", device.device_id)
    assert again.returncode == 1
    assert "revoked already" in again.stderr
    unknown = atlas_server(config, "devices", "revoke", "not-a-device")
    assert unknown.returncode == 1
    assert "not a known device id" in unknown.stderr


def test_used_up_and_expired_secrets_are_refused(config: Path, db: psycopg.Connection) -> None:
    once = create_secret(config, "--uses", "1")
    enroll(db, once)
    with pytest.raises(EnrollRefused, match="not valid"):
        enroll(db, once)
    name = f"exp-{uuid.uuid4().hex[:8]}"
    expired = create_secret(config, "--name", name, "--expires-in", "1")
    db.execute("UPDATE enroll_secrets SET expires_at = now() - interval '1 second' WHERE name = %s", (name,))
    with pytest.raises(EnrollRefused, match="not valid"):
        enroll(db, expired)
    assert db.execute("SELECT uses FROM enroll_secrets WHERE name = %s", (name,)).fetchone() == (0,)


def test_the_same_hardware_enrolling_again_replaces_its_device(config: Path, db: psycopg.Connection) -> None:
    secret = create_secret(config)
    hardware, machine = str(uuid.uuid4()).upper(), str(uuid.uuid4()).upper()
    first, replaced = enroll(db, secret, hardware, machine)
    assert replaced is None
    second, replaced = enroll(db, secret, hardware, machine)
    assert replaced.device_id == first.device_id
    assert find_device(db, first.device_id).replaced_by == second.device_id
    assert find_device(db, second.device_id).live
    with pytest.raises(EnrollRefused) as taken:  # other hardware claiming the machine_id
        enroll(db, secret, str(uuid.uuid4()).upper(), machine)
    assert taken.value.status == 409
