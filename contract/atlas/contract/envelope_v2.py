"""Wire contract v2: sealing a batch to the server's HPKE public key (RFC 9180), and opening it.

Pure functions over bytes and dicts, like v1. The HPKE ``info`` binds the suite, the key id, the device id, the
batch id, created_at and compression, so a sealed batch opens only under the device and batch it was sealed
for. docs/protocol.md (section 17) is the prose form of this module.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import re
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag

from .envelope import COMPRESSIONS, gunzip_bounded, parse_batch_id, parse_timestamp
from .errors import DecryptionError, DeviceMismatchError, EnvelopeError, PayloadTooLargeError, UnknownKeyError
from .hpke_keys import SUITES, HpkeKeyring, HpkePublicKey
from .keys import KID_HEX_CHARS

WIRE_VERSION_V2 = 2
"""The ``v`` of a v2 envelope."""

INFO_LABEL_V2 = "atlas-widget-logs/v2"
"""First line of the HPKE ``info``, binding the ciphertext to this contract."""

ENVELOPE_V2_FIELDS = ("v", "suite", "kid", "device_id", "batch_id", "created_at", "compression", "enc", "ciphertext")
"""Every field of a v2 envelope, all required, in the order ``seal_v2`` writes them."""

TAG_BYTES = 16
"""AES-256-GCM tag length, the least an HPKE ciphertext holds."""

MAX_DEVICE_ID_CHARS = 64
DEFAULT_MAX_CIPHERTEXT_BYTES = 5 * 1024 * 1024
"""Largest ciphertext ``parse_envelope_v2`` decodes by default: the server's default body limit."""

DEFAULT_MAX_PLAINTEXT_BYTES = 2 * 1024 * 1024
"""Largest (decompressed) plaintext by default, as the server's ``max_plaintext_bytes``."""

_MAX_HEADER_CHARS = 64
"""Longest value of a header field other than ``enc`` and ``ciphertext``; checked before any parsing."""

_DEVICE_ID_RE = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_DEVICE_ID_CHARS}}}")
_KID_RE = re.compile(rf"[0-9a-f]{{{KID_HEX_CHARS}}}")


def _b64_chars(n: int) -> int:
    return 4 * ((n + 2) // 3)


@dataclass(frozen=True)
class EnvelopeV2:
    """A v2 envelope's fields, checked, with ``enc`` and ``ciphertext`` decoded."""

    suite: str
    kid: str
    device_id: str
    batch_id: str
    created_at: str
    compression: str
    enc: bytes
    ciphertext: bytes

    @property
    def batch_uuid(self) -> uuid.UUID:
        return uuid.UUID(self.batch_id)

    def info(self, device_id: str | None = None) -> bytes:
        """The HPKE info, for ``device_id`` (by default the one the envelope names)."""
        return info_v2(
            self.suite,
            self.kid,
            self.device_id if device_id is None else device_id,
            self.batch_id,
            self.created_at,
            self.compression,
        )


def info_v2(suite: str, kid: str, device_id: str, batch_id: str, created_at: str, compression: str) -> bytes:
    """The HPKE info: seven lines joined by "\\n", no trailing newline, as UTF-8."""
    return "\n".join((INFO_LABEL_V2, suite, kid, device_id, batch_id, created_at, compression)).encode("utf-8")


def parse_device_id(value: object) -> str:
    """Check a device id: 1 to 64 characters of ``A-Z a-z 0-9 . _ -``; return it as sent."""
    if not isinstance(value, str) or len(value) > MAX_DEVICE_ID_CHARS or not _DEVICE_ID_RE.fullmatch(value):
        raise EnvelopeError("device_id", f"must be 1 to {MAX_DEVICE_ID_CHARS} characters of A-Z a-z 0-9 . _ -")
    return value


def _short_str(obj: dict[str, Any], name: str) -> str:
    value = obj[name]
    if not isinstance(value, str) or len(value) > _MAX_HEADER_CHARS:
        raise EnvelopeError(name, f"must be a string of at most {_MAX_HEADER_CHARS} characters")
    return value


def _b64_field(obj: dict[str, Any], name: str, max_bytes: int) -> bytes:
    value = obj[name]
    if not isinstance(value, str):
        raise EnvelopeError(name, "must be a base64 string")
    if len(value) > _b64_chars(max_bytes):
        raise PayloadTooLargeError(name, f"exceeds {max_bytes} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError(name, "is not valid standard base64") from None


def parse_envelope_v2(obj: object, *, max_ciphertext_bytes: int = DEFAULT_MAX_CIPHERTEXT_BYTES) -> EnvelopeV2:
    """Check a v2 envelope's fields and decode its base64, bounding each before it is parsed; no decryption."""
    if not isinstance(obj, dict):
        raise EnvelopeError("body", "must be a JSON object")
    if type(obj.get("v")) is not int or obj.get("v") != WIRE_VERSION_V2:
        raise EnvelopeError("v", f"must be the integer {WIRE_VERSION_V2} for a v2 envelope")
    missing = [f for f in ENVELOPE_V2_FIELDS if f not in obj]
    if missing:
        raise EnvelopeError(missing[0], "is required")
    extra = sorted(str(k) for k in obj if k not in ENVELOPE_V2_FIELDS)
    if extra:
        raise EnvelopeError(extra[0], "is not a field of contract v2")
    suite_name = _short_str(obj, "suite")
    if suite_name not in SUITES:
        raise EnvelopeError("suite", f"must be one of {', '.join(SUITES)}")
    suite = SUITES[suite_name]
    kid = _short_str(obj, "kid")
    if not _KID_RE.fullmatch(kid):
        raise EnvelopeError("kid", f"must be {KID_HEX_CHARS} lowercase hex characters")
    device_id = parse_device_id(obj["device_id"])
    batch_id = parse_batch_id(_short_str(obj, "batch_id"))
    created_at = _short_str(obj, "created_at")
    parse_timestamp(created_at, "created_at")
    compression = obj["compression"]
    if compression not in COMPRESSIONS:
        raise EnvelopeError("compression", 'must be "gzip" or "none"')
    enc = _b64_field(obj, "enc", suite.enc_bytes)
    if len(enc) != suite.enc_bytes:
        raise EnvelopeError("enc", f"must decode to {suite.enc_bytes} bytes for suite {suite.name}")
    ciphertext = _b64_field(obj, "ciphertext", max_ciphertext_bytes)
    if len(ciphertext) > max_ciphertext_bytes:
        raise PayloadTooLargeError("ciphertext", f"exceeds {max_ciphertext_bytes} bytes")
    if len(ciphertext) < TAG_BYTES:
        raise EnvelopeError("ciphertext", f"is shorter than the {TAG_BYTES}-byte tag")
    return EnvelopeV2(suite.name, kid, device_id, batch_id, created_at, compression, enc, ciphertext)


def seal_v2(
    public_key: HpkePublicKey,
    plaintext: bytes,
    *,
    device_id: str,
    batch_id: str,
    created_at: str,
    compression: str = "gzip",
    max_plaintext_bytes: int = DEFAULT_MAX_PLAINTEXT_BYTES,
) -> dict[str, Any]:
    """Seal a plaintext batch (JSON bytes) to the server's public key for ``device_id``: a v2 envelope dict.

    The suite is the public key's. Every seal draws a fresh HPKE ephemeral key, so sealing twice never gives
    the same envelope. Bad arguments raise ValueError; a plaintext past ``max_plaintext_bytes``, which the
    server would refuse, raises PayloadTooLargeError before any work.
    """
    if not isinstance(public_key, HpkePublicKey):
        raise ValueError("public_key must be an HpkePublicKey")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}")
    if len(plaintext) > max_plaintext_bytes:
        raise PayloadTooLargeError("plaintext", f"exceeds {max_plaintext_bytes} bytes")
    try:
        parse_device_id(device_id)
        parse_batch_id(batch_id)
        parse_timestamp(created_at, "created_at")
    except EnvelopeError as exc:
        raise ValueError(exc.detail) from None
    suite = SUITES[public_key.suite]
    if compression == "gzip":
        plaintext = gzip.compress(plaintext, compresslevel=6, mtime=0)
    info = info_v2(suite.name, public_key.kid, device_id, batch_id, created_at, compression)
    sealed = suite.hpke.encrypt(plaintext, public_key.key, info=info)
    enc, ciphertext = sealed[: suite.enc_bytes], sealed[suite.enc_bytes :]
    return {
        "v": WIRE_VERSION_V2,
        "suite": suite.name,
        "kid": public_key.kid,
        "device_id": device_id,
        "batch_id": batch_id,
        "created_at": created_at,
        "compression": compression,
        "enc": base64.b64encode(enc).decode("ascii"),
        "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
    }


def open_v2(
    keyring: HpkeKeyring,
    envelope: EnvelopeV2 | dict[str, Any],
    *,
    device_id: str,
    max_plaintext_bytes: int = DEFAULT_MAX_PLAINTEXT_BYTES,
) -> bytes:
    """Open a v2 envelope sent by the authenticated device ``device_id``; return the plaintext JSON bytes.

    ``device_id`` comes from the request's credential, never from the envelope: an envelope naming another
    device raises DeviceMismatchError, and the info is built from ``device_id`` so the tag could not verify
    anyway. Every failure is a ContractError.
    """
    if not isinstance(envelope, EnvelopeV2):
        envelope = parse_envelope_v2(envelope)
    if envelope.device_id != device_id:
        raise DeviceMismatchError("device_id", "names another device than the one authenticated")
    key = keyring.get(envelope.kid)
    if key is None:
        raise UnknownKeyError("kid", f"no HPKE key of this server has id {envelope.kid}")
    if key.suite != envelope.suite:
        raise EnvelopeError("suite", f"key {envelope.kid} is of suite {key.suite}")
    if envelope.compression == "none" and len(envelope.ciphertext) - TAG_BYTES > max_plaintext_bytes:
        raise PayloadTooLargeError("ciphertext", f"plaintext exceeds {max_plaintext_bytes} bytes")
    suite = SUITES[envelope.suite]
    try:
        data = suite.hpke.decrypt(envelope.enc + envelope.ciphertext, key.key, info=envelope.info(device_id))
    except (InvalidTag, ValueError):  # ValueError: an enc that is no valid KEM output (e.g. a low-order point)
        raise DecryptionError(
            "ciphertext", "authentication failed: wrong key or device, or the envelope was altered"
        ) from None
    if envelope.compression == "gzip":
        return gunzip_bounded(data, max_plaintext_bytes)
    return data
