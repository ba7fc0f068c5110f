"""Enroll secrets and enrolled devices (contract v2), in PostgreSQL.

An enroll secret lets a Mac enroll: it is shown once, only its SHA-256 is kept (32 random bytes need no slow
hash). Enrolling records a device with the Ed25519 public key that signs its requests; the same hardware
enrolling again replaces its old device, which stops authenticating. Revoking or replacing a device sends
``NOTIFY atlas_devices, '<device_id>'`` in the same transaction, so every ingest process drops it from its
cache before its next request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
from psycopg import sql

DEVICES_CHANNEL = "atlas_devices"
"""The LISTEN/NOTIFY channel a revoked or replaced device id is sent on."""

SECRET_PREFIX = "atlas_enroll_"  # noqa: S105 - a prefix, not a secret
"""Every enroll secret starts with this, so a leaked one is recognisable."""

MAX_SECRET_CHARS = 128
MAX_NAME_CHARS = 64


class EnrollRefused(Exception):
    """Enrollment refused; ``status`` and a reason that never says which secrets exist."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class EnrollSecret:
    """An enroll secret as listed: never the secret itself."""

    id: int
    name: str
    created_at: datetime
    expires_at: datetime | None
    max_uses: int | None
    uses: int
    revoked_at: datetime | None


@dataclass(frozen=True)
class Device:
    """An enrolled device: who it speaks for, and the key that signs its requests."""

    device_id: str
    machine_id: str
    hardware_uuid: str
    serial_number: str
    hostname: str
    public_key: bytes
    enrolled_at: datetime
    last_seen_at: datetime | None
    revoked_at: datetime | None
    replaced_by: str | None

    @property
    def live(self) -> bool:
        return self.revoked_at is None and self.replaced_by is None

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "replaced" if self.replaced_by is not None else "live"


_DEVICE_COLUMNS = (
    "device_id::text, machine_id, hardware_uuid, serial_number, hostname, public_key, enrolled_at, last_seen_at,"
    " revoked_at, replaced_by::text"
)
_SECRET_COLUMNS = "id, name, created_at, expires_at, max_uses, uses, revoked_at"  # noqa: S105 - column names


def _q(template: str) -> sql.Composed:
    """A query with ``{device}`` or ``{secret}`` standing for the columns a Device or an EnrollSecret reads."""
    return sql.SQL(template).format(device=sql.SQL(_DEVICE_COLUMNS), secret=sql.SQL(_SECRET_COLUMNS))


def secret_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def create_enroll_secret(
    conn: psycopg.Connection,
    name: str | None = None,
    *,
    expires_in: timedelta | None = None,
    max_uses: int | None = None,
) -> tuple[str, EnrollSecret]:
    """A new enroll secret (shown only now) and its row; ValueError for a bad name or limit, or a name in use."""
    label = (name or f"secret-{secrets.token_hex(4)}").strip()
    if not 1 <= len(label) <= MAX_NAME_CHARS or not label.isprintable():
        raise ValueError(f"name: 1 to {MAX_NAME_CHARS} printable characters")
    if max_uses is not None and max_uses < 1:
        raise ValueError("uses: must be at least 1")
    if expires_in is not None and expires_in <= timedelta(0):
        raise ValueError("expires-in: must be more than 0 days")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    try:
        row = conn.execute(
            _q(
                "INSERT INTO enroll_secrets (name, secret_hash, expires_at, max_uses)"
                " VALUES (%s, %s, now() + %s, %s) RETURNING {secret}"
            ),
            (label, secret_digest(secret), expires_in, max_uses),
        ).fetchone()
    except psycopg.errors.UniqueViolation:
        raise ValueError(f"name: an enroll secret named {label!r} exists already") from None
    assert row is not None
    return secret, EnrollSecret(*row)


def list_enroll_secrets(conn: psycopg.Connection) -> list[EnrollSecret]:
    return [EnrollSecret(*row) for row in conn.execute(_q("SELECT {secret} FROM enroll_secrets ORDER BY id"))]


def revoke_enroll_secret(conn: psycopg.Connection, name: str) -> bool:
    """Revoke the secret called ``name``; False if there is no live one of that name."""
    row = conn.execute(
        "UPDATE enroll_secrets SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL RETURNING id", (name,)
    ).fetchone()
    return row is not None


def _use_secret(conn: psycopg.Connection, secret: str) -> int:
    """Count one use of ``secret`` atomically and return its id, or EnrollRefused (401) for any unusable secret."""
    refused = EnrollRefused(401, "enroll_secret: not valid (unknown, expired, used up or revoked)")
    if not secret.startswith(SECRET_PREFIX) or len(secret) > MAX_SECRET_CHARS:
        raise refused
    digest = secret_digest(secret)
    row = conn.execute(
        "UPDATE enroll_secrets SET uses = uses + 1 WHERE secret_hash = %s AND revoked_at IS NULL"
        " AND (expires_at IS NULL OR expires_at > now()) AND (max_uses IS NULL OR uses < max_uses)"
        " RETURNING id, secret_hash",
        (digest,),
    ).fetchone()
    if row is None or not hmac.compare_digest(bytes(row[1]), digest):
        raise refused
    return int(row[0])


def enroll_device(
    conn: psycopg.Connection,
    secret: str,
    *,
    hardware_uuid: str,
    serial_number: str,
    machine_id: str,
    hostname: str,
    public_key: bytes,
) -> tuple[Device, Device | None]:
    """Enroll a device; return it and the device it replaced (same hardware), if any.

    One transaction: the secret's use is counted only if the device is recorded. A machine_id held by a live
    device of other hardware is refused (409); the same hardware re-enrolling keeps its machine_id.
    """
    with conn.transaction():
        secret_id = _use_secret(conn, secret)
        old = conn.execute(
            _q(
                "SELECT {device} FROM devices WHERE revoked_at IS NULL AND replaced_by IS NULL"
                " AND (hardware_uuid = %s OR machine_id = %s) FOR UPDATE"
            ),
            (hardware_uuid, machine_id),
        ).fetchall()
        replaced = None
        for found in old:
            device = Device(*found)
            if device.hardware_uuid != hardware_uuid:
                raise EnrollRefused(409, "machine_id: enrolled by another Mac (other hardware_uuid)")
            replaced = device
        device_id = str(uuid.uuid4())
        if replaced is not None:  # a reinstalled Mac: the old credential stops working now
            conn.execute("UPDATE devices SET replaced_by = %s WHERE device_id = %s", (device_id, replaced.device_id))
            conn.execute("SELECT pg_notify(%s, %s)", (DEVICES_CHANNEL, replaced.device_id))
        try:
            row = conn.execute(
                _q(
                    "INSERT INTO devices (device_id, machine_id, hardware_uuid, serial_number, hostname, public_key,"
                    " enroll_secret_id) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {device}"
                ),
                (device_id, machine_id, hardware_uuid, serial_number, hostname, public_key, secret_id),
            ).fetchone()
        except psycopg.errors.UniqueViolation:  # the same Mac, or machine_id, enrolling twice at once
            raise EnrollRefused(409, "machine_id: another enrollment of this Mac is under way; retry") from None
        assert row is not None
    return Device(*row), replaced


def find_device(conn: psycopg.Connection, device_id: str) -> Device | None:
    try:
        uuid.UUID(device_id)
    except ValueError:
        return None
    row = conn.execute(_q("SELECT {device} FROM devices WHERE device_id = %s"), (device_id,)).fetchone()
    return Device(*row) if row else None


def list_devices(conn: psycopg.Connection) -> list[Device]:
    return [Device(*row) for row in conn.execute(_q("SELECT {device} FROM devices ORDER BY enrolled_at"))]


def revoke_device(conn: psycopg.Connection, device_id: str) -> Device | None:
    """Revoke a device; its next request gets 401. None if no device has that id or it is revoked already."""
    try:
        uuid.UUID(device_id)
    except ValueError:
        return None
    with conn.transaction():
        row = conn.execute(
            _q("UPDATE devices SET revoked_at = now() WHERE device_id = %s AND revoked_at IS NULL RETURNING {device}"),
            (device_id,),
        ).fetchone()
        if row is not None:
            conn.execute("SELECT pg_notify(%s, %s)", (DEVICES_CHANNEL, str(row[0])))
    return Device(*row) if row else None
