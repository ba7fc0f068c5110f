"""Wire contract v1: sealing a batch into an envelope, and opening one.

Pure functions over bytes and dicts, no I/O, so the agent, the ingest
service, the tests and a third-party implementer all read the same code.
docs/protocol.md is the prose form of this module.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import DecryptionError, EnvelopeError, PayloadTooLargeError, UnknownKeyError
from .keys import BATCH_KEY_INFO, KID_HEX_CHARS, SALT_BYTES, Key, Keyring

WIRE_VERSION = 1
"""The only envelope version this code reads and writes."""

ALGORITHM = "AES-256-GCM"
"""The only ``alg`` value of v1."""

AAD_LABEL = "atlas-widget-logs/v1"
"""First line of the associated data, binding the ciphertext to this contract."""

COMPRESSIONS = ("gzip", "none")
"""Allowed values of ``compression``."""

WIDGET_LOGS_PATH = "/api/fleet/widget-logs"
"""Where a sender POSTs a batch (docs/protocol.md, section 3)."""

WIDGET_LOGS_V2_PATH = "/api/fleet/v2/widget-logs"
"""Where an enrolled device POSTs a v2 batch, signed (docs/protocol.md, sections 17-18)."""

ENROLL_PATH = "/api/fleet/enroll"
"""Where a Mac enrolls as a device (docs/protocol.md, section 18)."""

MAX_UTC_OFFSET = timedelta(hours=14)
"""Largest offset any time zone uses (Kiribati, +14:00); PostgreSQL refuses beyond ±15:59."""

NONCE_BYTES = 12
"""AES-GCM nonce length."""

TAG_BYTES = 16
"""AES-GCM authentication tag length, appended to the ciphertext."""

ENVELOPE_FIELDS = ("v", "alg", "kid", "batch_id", "created_at", "compression", "nonce", "ciphertext")
"""Every required field of an encrypted body."""

OPTIONAL_ENVELOPE_FIELDS = ("salt",)
"""Fields an encrypted body may carry: ``salt`` selects a per-batch key (docs/protocol.md section 4.1)."""

PLAINTEXT_BODY_FIELDS = ("v", "batch_id", "created_at", "machine", "logs")
"""Every field of an unencrypted body, all required."""

_KID_RE = re.compile(rf"[0-9a-f]{{{KID_HEX_CHARS}}}")
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_RFC3339_RE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})")


@dataclass(frozen=True)
class Envelope:
    """The header fields of an encrypted body, checked, and its decoded bytes."""

    kid: str
    batch_id: str
    created_at: str
    compression: str
    nonce: bytes
    ciphertext: bytes
    salt: bytes | None = None
    """None: a legacy envelope, sealed directly under the shared key."""

    @property
    def batch_uuid(self) -> uuid.UUID:
        return uuid.UUID(self.batch_id)

    def associated_data(self) -> bytes:
        return associated_data(self.kid, self.batch_id, self.created_at, self.compression)


def associated_data(kid: str, batch_id: str, created_at: str, compression: str) -> bytes:
    """The AEAD associated data: five lines joined by "\\n", as UTF-8."""
    return "\n".join((AAD_LABEL, kid, batch_id, created_at, compression)).encode("utf-8")


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, whole seconds: ``2026-11-28T16:00:00Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: object, field: str) -> datetime:
    """Parse an RFC 3339 date-time with an explicit offset into an aware datetime."""
    if not isinstance(text, str) or not _RFC3339_RE.fullmatch(text):
        raise EnvelopeError(field, "must be an RFC 3339 date-time with offset, e.g. 2026-11-28T16:00:00Z")
    normalised = text.upper()
    if "." in normalised:  # Python keeps microseconds only
        head, _, tail = normalised.partition(".")
        digits = re.match(r"\d+", tail).group(0)  # type: ignore[union-attr]
        normalised = f"{head}.{digits[:6].ljust(6, '0')}{tail[len(digits) :]}"
    try:
        moment = datetime.fromisoformat(normalised)
        moment.astimezone(UTC)  # year 1 with a positive offset has no UTC form
    except (ValueError, OverflowError):
        raise EnvelopeError(field, "is not a valid date-time") from None
    offset = moment.utcoffset()
    if offset is not None and abs(offset) > MAX_UTC_OFFSET:
        raise EnvelopeError(field, "has a UTC offset beyond ±14:00, which no time zone uses")
    return moment


def parse_batch_id(text: object) -> str:
    """Check a batch_id is a hyphenated UUID; return it as sent."""
    if not isinstance(text, str) or not _UUID_RE.fullmatch(text):
        raise EnvelopeError("batch_id", "must be a UUID such as 1b4e28ba-2fa1-11d2-883f-0016d3cca427")
    return text


def check_version(value: object) -> None:
    if type(value) is not int or value != WIRE_VERSION:
        raise EnvelopeError("v", f"unsupported version; this server speaks v{WIRE_VERSION}")


def check_created_at_window(created_at: datetime, *, now: datetime, max_age: timedelta, max_future: timedelta) -> None:
    """Reject a batch created too long ago, or too far in the future, for replay safety."""
    if created_at < now - max_age:
        raise EnvelopeError("created_at", f"is older than the accepted window of {_human(max_age)}")
    if created_at > now + max_future:
        raise EnvelopeError("created_at", f"is more than {_human(max_future)} in the future")


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} seconds"


def parse_body(body: bytes) -> dict[str, Any]:
    """Parse a request body into a JSON object, or raise EnvelopeError."""
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise EnvelopeError("body", "is not valid UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise EnvelopeError("body", "must be a JSON object")
    return obj


def is_encrypted_body(obj: dict[str, Any]) -> bool:
    """True when a body is meant as an envelope rather than a plaintext batch."""
    return "ciphertext" in obj or "alg" in obj or "nonce" in obj or "kid" in obj


def _b64(obj: dict[str, Any], field: str) -> bytes:
    value = obj.get(field)
    if not isinstance(value, str):
        raise EnvelopeError(field, "must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError(field, "is not valid standard base64") from None


def _check_fields(obj: dict[str, Any], expected: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    missing = [f for f in expected if f not in obj]
    if missing:
        raise EnvelopeError(missing[0], "is required")
    extra = sorted(str(k) for k in obj if k not in expected and k not in optional)
    if extra:
        raise EnvelopeError(extra[0], "is not a field of contract v1")


def parse_envelope(obj: dict[str, Any]) -> Envelope:
    """Check an encrypted body's fields and decode its base64; no decryption yet."""
    check_version(obj.get("v"))
    _check_fields(obj, ENVELOPE_FIELDS, OPTIONAL_ENVELOPE_FIELDS)
    if obj["alg"] != ALGORITHM:
        raise EnvelopeError("alg", f"unsupported algorithm; v1 uses {ALGORITHM}")
    kid = obj["kid"]
    if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
        raise EnvelopeError("kid", f"must be {KID_HEX_CHARS} lowercase hex characters")
    batch_id = parse_batch_id(obj["batch_id"])
    created_at = obj["created_at"]
    parse_timestamp(created_at, "created_at")
    compression = obj["compression"]
    if compression not in COMPRESSIONS:
        raise EnvelopeError("compression", 'must be "gzip" or "none"')
    nonce = _b64(obj, "nonce")
    if len(nonce) != NONCE_BYTES:
        raise EnvelopeError("nonce", f"must decode to {NONCE_BYTES} bytes")
    if not any(nonce):
        raise EnvelopeError("nonce", "must not be all zero bytes: draw 12 fresh random bytes for every seal")
    salt = None
    if "salt" in obj:
        salt = _b64(obj, "salt")
        if len(salt) != SALT_BYTES:
            raise EnvelopeError("salt", f"must decode to {SALT_BYTES} bytes")
        if not any(salt):
            raise EnvelopeError("salt", "must not be all zero bytes: draw 32 fresh random bytes for every seal")
    ciphertext = _b64(obj, "ciphertext")
    if len(ciphertext) < TAG_BYTES:
        raise EnvelopeError("ciphertext", f"is shorter than the {TAG_BYTES}-byte tag")
    return Envelope(kid, batch_id, created_at, compression, nonce, ciphertext, salt)


def parse_plaintext_header(obj: dict[str, Any]) -> tuple[str, datetime]:
    """Check an unencrypted body's fields; return its batch_id (as sent) and created_at."""
    check_version(obj.get("v"))
    _check_fields(obj, PLAINTEXT_BODY_FIELDS)
    return parse_batch_id(obj["batch_id"]), parse_timestamp(obj["created_at"], "created_at")


def open_envelope(envelope: Envelope, keyring: Keyring, *, max_plaintext_bytes: int) -> bytes:
    """Decrypt and decompress an envelope, returning the plaintext JSON bytes."""
    key = keyring.get(envelope.kid)
    if key is None:
        raise UnknownKeyError("kid", f"no configured key has id {envelope.kid}")
    if envelope.salt is None:  # legacy: sealed under the shared key itself
        aead = keyring.aead(key.kid) or key.aead()
    else:
        aead = key.derive_aead(envelope.salt, BATCH_KEY_INFO)
    try:
        data = aead.decrypt(envelope.nonce, envelope.ciphertext, envelope.associated_data())
    except InvalidTag:
        raise DecryptionError("ciphertext", "authentication failed: wrong key, or the envelope was altered") from None
    if envelope.compression == "gzip":
        return gunzip_bounded(data, max_plaintext_bytes)
    if len(data) > max_plaintext_bytes:
        raise PayloadTooLargeError("ciphertext", f"plaintext exceeds {max_plaintext_bytes} bytes")
    return data


INFLATE_STEP = 1 << 20
"""Bytes inflated at a time: one call with the whole limit would hold the output twice (zlib's blocks, then the
joined bytes), so a gzip bomb cost twice max_plaintext_bytes; in steps it costs the limit plus one step."""


def gunzip_bounded(data: bytes, max_bytes: int) -> bytes:
    """Gunzip one gzip member, refusing it as soon as the output passes max_bytes."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    parts: list[bytes] = []
    size = 0
    pending = data
    try:
        while pending and not inflater.eof:
            part = inflater.decompress(pending, min(INFLATE_STEP, max_bytes + 1 - size))
            pending = inflater.unconsumed_tail
            parts.append(part)
            size += len(part)
            if size > max_bytes:
                raise PayloadTooLargeError("ciphertext", f"decompressed plaintext exceeds {max_bytes} bytes")
            if not part and pending:  # no progress with input left: cannot happen, but never loop forever
                break
    except zlib.error:
        raise EnvelopeError("ciphertext", "plaintext is not valid gzip") from None
    out = b"".join(parts)
    if not inflater.eof:
        raise EnvelopeError("ciphertext", "gzip stream is truncated")
    if inflater.unused_data:
        raise EnvelopeError("ciphertext", "unexpected data after the gzip stream")
    return out


def seal(
    plaintext: bytes,
    key: Key,
    *,
    batch_id: str,
    created_at: str,
    compression: str = "gzip",
    nonce: bytes | None = None,
    salt: bytes | None = None,
    legacy: bool = False,
) -> dict[str, Any]:
    """Encrypt a plaintext batch (JSON bytes) into a v1 envelope dict.

    The batch is sealed under its own key, derived from ``key`` over a fresh
    32-byte salt that the envelope carries. ``legacy=True`` seals directly under
    ``key`` with no salt, as agents before the salt did (tests only).
    ``nonce`` and ``salt`` exist for test vectors only; leave them None so each
    seal draws fresh random bytes.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}")
    if legacy and salt is not None:
        raise ValueError("a legacy envelope has no salt")
    parse_batch_id(batch_id)
    parse_timestamp(created_at, "created_at")
    if compression == "gzip":
        import gzip

        plaintext = gzip.compress(plaintext, compresslevel=6, mtime=0)
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != NONCE_BYTES or not any(nonce):
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes, not all zero")
    aead: AESGCM
    if legacy:
        aead = key.aead()
    else:
        salt = os.urandom(SALT_BYTES) if salt is None else salt
        if len(salt) != SALT_BYTES or not any(salt):
            raise ValueError(f"salt must be {SALT_BYTES} bytes, not all zero")
        aead = key.derive_aead(salt, BATCH_KEY_INFO)
    aad = associated_data(key.kid, batch_id, created_at, compression)
    ciphertext = aead.encrypt(nonce, plaintext, aad)
    envelope = {
        "v": WIRE_VERSION,
        "alg": ALGORITHM,
        "kid": key.kid,
        "batch_id": batch_id,
        "created_at": created_at,
        "compression": compression,
        "nonce": base64.b64encode(nonce).decode("ascii"),
    }
    if salt is not None:
        envelope["salt"] = base64.b64encode(salt).decode("ascii")
    envelope["ciphertext"] = base64.b64encode(ciphertext).decode("ascii")
    return envelope
