"""From request body to validated batch: pure logic, no I/O.

Raises only the contract's errors (``atlas.contract.errors``), each mapped to
its HTTP status by the app.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from atlas.contract import (
    BatchContent,
    DeviceMismatchError,
    EnvelopeError,
    HpkeKeyring,
    check_created_at_window,
    decode_content,
    is_encrypted_body,
    open_envelope,
    open_v2,
    parse_body,
    parse_envelope,
    parse_envelope_v2,
    parse_plaintext_header,
    parse_timestamp,
    validate_content,
)
from atlas.core.config import Settings
from atlas.core.devices import Device


@dataclass(frozen=True)
class Accepted:
    """A batch that passed every check and may be queued."""

    batch_id: str
    created_at: datetime
    kid: str | None
    content: BatchContent
    legacy_key: bool = False
    """Sealed directly under the shared payload key (no salt): it used up one of that key's 2^32 seals."""
    protocol: int = 1
    """The wire contract it came in: 1, or 2 (an enrolled device's HPKE envelope)."""

    @property
    def encrypted(self) -> bool:
        return self.kid is not None


@dataclass(frozen=True)
class AlreadyAccepted:
    """A batch whose ``batch_id`` was accepted recently, recognised before it was decrypted."""

    batch_id: str


def read_batch(
    body: bytes,
    settings: Settings,
    *,
    now: datetime,
    max_plaintext_bytes: int | None = None,
    accepted_before: Callable[[str], bool] | None = None,
) -> Accepted | AlreadyAccepted:
    """Parse, authenticate-decrypt and validate one request body.

    ``max_plaintext_bytes`` lowers the settings' plaintext cap (PayloadTooLargeError past it);
    ``accepted_before(batch_id)``, asked once the header checks pass, spares the decryption of a
    batch already accepted.
    """
    obj = parse_body(body)
    cap = settings.max_plaintext_bytes if max_plaintext_bytes is None else max_plaintext_bytes
    if is_encrypted_body(obj):
        envelope = parse_envelope(obj)
        created_at = parse_timestamp(envelope.created_at, "created_at")
        _check_window(created_at, settings, now)
        if accepted_before is not None and accepted_before(envelope.batch_id.lower()):
            return AlreadyAccepted(envelope.batch_id.lower())
        plaintext = open_envelope(envelope, settings.keyring, max_plaintext_bytes=cap)
        content = decode_content(plaintext, max_logs=settings.max_logs_per_batch, created_at=created_at)
        return Accepted(envelope.batch_id.lower(), created_at, envelope.kid, content, envelope.salt is None)

    if not settings.accepts_plaintext:
        raise EnvelopeError("body", "encryption required: send a v1 AES-256-GCM envelope")
    batch_id, created_at = parse_plaintext_header(obj)
    _check_window(created_at, settings, now)
    if accepted_before is not None and accepted_before(batch_id.lower()):
        return AlreadyAccepted(batch_id.lower())
    content = validate_content(obj, max_logs=settings.max_logs_per_batch, created_at=created_at)
    return Accepted(batch_id.lower(), created_at, None, content)


def read_batch_v2(
    body: bytes,
    settings: Settings,
    keyring: HpkeKeyring,
    device: Device,
    *,
    now: datetime,
    max_plaintext_bytes: int | None = None,
    accepted_before: Callable[[str], bool] | None = None,
) -> Accepted | AlreadyAccepted:
    """Parse, open and validate a v2 body sent by the authenticated ``device``.

    The machine's identity is the device's: a plaintext naming another machine_id or serial number raises
    DeviceMismatchError (403), and so does an envelope sealed for another device.
    """
    cap = settings.max_plaintext_bytes if max_plaintext_bytes is None else max_plaintext_bytes
    envelope = parse_envelope_v2(parse_body(body), max_ciphertext_bytes=settings.max_body_bytes)
    if envelope.device_id != device.device_id:
        raise DeviceMismatchError("device_id", "names another device than the one authenticated")
    created_at = parse_timestamp(envelope.created_at, "created_at")
    _check_window(created_at, settings, now)
    batch_id = envelope.batch_id.lower()
    if accepted_before is not None and accepted_before(batch_id):
        return AlreadyAccepted(batch_id)
    plaintext = open_v2(keyring, envelope, device_id=device.device_id, max_plaintext_bytes=cap)
    content = decode_content(plaintext, max_logs=settings.max_logs_per_batch, created_at=created_at)
    if content.machine.machine_id != device.machine_id:
        raise DeviceMismatchError("machine.machine_id", "is not the machine this device enrolled as")
    if content.machine.serial_number != device.serial_number:
        raise DeviceMismatchError("machine.serial_number", "is not the serial number this device enrolled with")
    return Accepted(batch_id, created_at, envelope.kid, content, protocol=2)


def _check_window(created_at: datetime, settings: Settings, now: datetime) -> None:
    check_created_at_window(
        created_at, now=now, max_age=settings.created_at_max_age, max_future=settings.created_at_max_future
    )
