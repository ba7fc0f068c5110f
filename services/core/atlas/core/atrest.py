"""Encryption at rest: envelope encryption of widget-log content under the database key.

Each stored batch gets its own random 256-bit data key. A log's ``message``
and ``data`` are sealed with AES-256-GCM under that data key; the data key is
wrapped (AES-256-GCM again) under the database key (``server.db_encryption_key``)
and kept in the batch's row with the database key's id. Rotating the
database key therefore re-wraps one small value per batch and never touches
the logs.

Associated data binds each ciphertext to where it belongs, so a sealed log
moved to another batch or machine, or to a row of another time, level or
widget type, or a wrapped key moved to another batch, fails to open instead of
showing the wrong content (two logs of one batch that share all of those could
be swapped undetected):

* wrapped data key: ``atlas-dek/v1``, batch_id, database key id;
* sealed log: ``atlas-log/v1``, batch_id, machine_id, timestamp (µs since
  the epoch), level, widget_type;
* sealed queue job (the batches between ingest and worker, sealed directly
  under the database key): ``atlas-queue/v1``, database key id, the batch_ids.

Pure functions: no I/O.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from atlas.contract import Key, Keyring

from .errors import AtRestError

NONCE_BYTES = 12
DATA_KEY_BYTES = 32
SETTING = "server.db_encryption_key"
"""The setting an operator must look at when a database key is missing."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def epoch_micros(moment: datetime) -> int:
    """Whole microseconds since 1970-01-01 UTC: the same integer whether read from the queue or PostgreSQL."""
    return (moment - _EPOCH) // _MICROSECOND


def new_data_key() -> bytes:
    return os.urandom(DATA_KEY_BYTES)


def _key_aad(batch_id: str, kid: str) -> bytes:
    return f"atlas-dek/v1\n{batch_id}\n{kid}".encode()


def wrap_data_key(kek: Key, batch_id: str, data_key: bytes) -> bytes:
    """The data key sealed under the database key: nonce + ciphertext + tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + kek.aead().encrypt(nonce, data_key, _key_aad(batch_id, kek.kid))


def _database_aead(keyring: Keyring, kid: str, sealed_what: str) -> AESGCM:
    """The AEAD of database key ``kid``; AtRestError naming the setting if it is not configured."""
    aead = keyring.aead(kid)
    if aead is None:
        raise AtRestError(
            f"{sealed_what} database key id {kid}, which is not configured"
            f" (set {SETTING}, or add it to server.db_encryption_keys)"
        )
    return aead


def unwrap_data_key(keyring: Keyring, kid: str, batch_id: str, wrapped: bytes) -> bytes:
    """The data key of a batch; AtRestError naming the setting if its database key is not configured."""
    aead = _database_aead(keyring, kid, "stored logs are encrypted under")
    try:
        return aead.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _key_aad(batch_id, kid))
    except InvalidTag:
        raise AtRestError(f"the data key of batch {batch_id} does not open under database key id {kid}") from None


def _log_aad(batch_id: str, machine_id: str, micros: int, level: str, widget_type: str) -> bytes:
    return f"atlas-log/v1\n{batch_id}\n{machine_id}\n{micros}\n{level}\n{widget_type}".encode()


def seal_log(
    aead: AESGCM, batch_id: str, machine_id: str, micros: int, level: str, widget_type: str, message: str, data: str
) -> bytes:
    """A log's message and data (JSON text) sealed together.

    The record schema refuses NUL in text, so a NUL byte separates the two.
    """
    nonce = os.urandom(NONCE_BYTES)
    plaintext = message.encode() + b"\x00" + data.encode()
    return nonce + aead.encrypt(nonce, plaintext, _log_aad(batch_id, machine_id, micros, level, widget_type))


def open_log(
    aead: AESGCM, batch_id: str, machine_id: str, micros: int, level: str, widget_type: str, sealed: bytes
) -> tuple[str, str]:
    """(message, data JSON text) of a sealed log; AtRestError if it was altered or moved."""
    aad = _log_aad(batch_id, machine_id, micros, level, widget_type)
    try:
        plaintext = aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except InvalidTag:
        raise AtRestError(f"a stored log of batch {batch_id} does not open (altered, or moved)") from None
    message, _, data = plaintext.decode().partition("\x00")
    return message, data


def _job_aad(kid: str, batch_ids: list[str]) -> bytes:
    return "\n".join(["atlas-queue/v1", kid, *batch_ids]).encode()


def seal_job(key: Key, batch_ids: list[str], plaintext: bytes) -> bytes:
    """A queue job's batches sealed under the database key: nonce + ciphertext + tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + key.aead().encrypt(nonce, plaintext, _job_aad(key.kid, batch_ids))


def open_job(keyring: Keyring, kid: str, batch_ids: list[str], sealed: bytes) -> bytes:
    """The batches of a sealed queue job; AtRestError if its key is not configured or it was altered."""
    aead = _database_aead(keyring, kid, "a queued job is sealed under")
    try:
        return aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _job_aad(kid, batch_ids))
    except InvalidTag:
        raise AtRestError(f"a queued job does not open under database key id {kid} (altered)") from None
