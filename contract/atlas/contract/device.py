"""Wire contract v2: a device's key, and the signature that authenticates each of its requests.

An enrolled device holds an Ed25519 key pair; the server knows its public key by device id. Every v2 request
carries three headers: ``Atlas-Device`` (the device id), ``Atlas-Timestamp`` (unix seconds) and
``Atlas-Signature`` (base64 of the Ed25519 signature over ``canonical_request``). The server verifies the
signature with the device's key and refuses a timestamp more than ``MAX_CLOCK_SKEW_SECONDS`` from its clock;
within that window a replay carries the same batch ids, which are idempotent. docs/protocol.md (section 18)
is the prose form of this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .envelope_v2 import parse_device_id
from .errors import DeviceAuthError, EnvelopeError, KeyFormatError

SIGNATURE_LABEL = "atlas-request/v2"
"""First line of the signed string, binding the signature to this contract."""

HEADER_DEVICE = "Atlas-Device"
HEADER_TIMESTAMP = "Atlas-Timestamp"
HEADER_SIGNATURE = "Atlas-Signature"

MAX_CLOCK_SKEW_SECONDS = 300
"""Most seconds a request's timestamp may differ from the server's clock, either way."""

DEVICE_KEY_BYTES = 32
"""An Ed25519 private key (its seed) and public key are both 32 bytes."""

SIGNATURE_BYTES = 64

_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
_PATH_RE = re.compile(r"/[\x21-\x7e]{0,1023}")


def _raw_public(public_key: bytes | Ed25519PublicKey) -> Ed25519PublicKey:
    if isinstance(public_key, Ed25519PublicKey):
        return public_key
    if not isinstance(public_key, bytes) or len(public_key) != DEVICE_KEY_BYTES:
        raise KeyFormatError(f"a device public key is {DEVICE_KEY_BYTES} bytes (raw Ed25519)")
    return Ed25519PublicKey.from_public_bytes(public_key)


@dataclass(frozen=True)
class DeviceKey:
    """A device's Ed25519 private key (32 raw bytes, never in its repr)."""

    raw: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != DEVICE_KEY_BYTES:
            raise KeyFormatError(f"a device key is {DEVICE_KEY_BYTES} bytes (raw Ed25519 private key)")

    @classmethod
    def generate(cls) -> DeviceKey:
        return cls(Ed25519PrivateKey.generate().private_bytes_raw())

    @property
    def private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.raw)

    @property
    def public_raw(self) -> bytes:
        """The 32-byte public key the device sends at enrollment."""
        return self.private.public_key().public_bytes_raw()

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode("ascii")


def body_digest(body: bytes) -> str:
    """Lowercase hex SHA-256 of the request body, as bytes sent (an empty body included)."""
    return hashlib.sha256(body).hexdigest()


def canonical_request(device_id: str, method: str, path: str, timestamp: str, body: bytes) -> bytes:
    """The signed string: six lines joined by "\\n", no trailing newline, as UTF-8.

    ``atlas-request/v2``, the device id, the upper-case method, the path (no query, no host), the timestamp
    as sent, and the hex SHA-256 of the body.
    """
    lines = (SIGNATURE_LABEL, device_id, method.upper(), path, timestamp, body_digest(body))
    return "\n".join(lines).encode("utf-8")


def sign_request(
    key: DeviceKey, device_id: str, method: str, path: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """The three headers that authenticate a request of ``device_id``; ``timestamp`` defaults to now."""
    parse_device_id(device_id)
    if not _PATH_RE.fullmatch(path):
        raise ValueError("path must start with / and hold printable ASCII only")
    stamp = str(int(time.time()) if timestamp is None else int(timestamp))
    signature = key.private.sign(canonical_request(device_id, method, path, stamp, body))
    return {
        HEADER_DEVICE: device_id,
        HEADER_TIMESTAMP: stamp,
        HEADER_SIGNATURE: base64.b64encode(signature).decode("ascii"),
    }


@dataclass(frozen=True)
class SignedRequest:
    """The credential headers of a request, checked for form; not yet verified."""

    device_id: str
    timestamp: str
    signature: bytes


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    if value is None:
        raise DeviceAuthError(name, "header is required")
    return value


def parse_signed_headers(headers: Mapping[str, str]) -> SignedRequest:
    """Read the three headers (case-insensitive mapping, or one with the exact or lower-case names)."""
    try:
        device_id = parse_device_id(_header(headers, HEADER_DEVICE))
    except EnvelopeError as exc:
        raise DeviceAuthError(HEADER_DEVICE, exc.reason) from None
    timestamp = _header(headers, HEADER_TIMESTAMP)
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise DeviceAuthError(HEADER_TIMESTAMP, "must be unix seconds (decimal digits)")
    text = _header(headers, HEADER_SIGNATURE)
    if len(text) > 100:
        raise DeviceAuthError(HEADER_SIGNATURE, "must be base64 of a 64-byte Ed25519 signature")
    try:
        signature = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DeviceAuthError(HEADER_SIGNATURE, "is not valid standard base64") from None
    if len(signature) != SIGNATURE_BYTES:
        raise DeviceAuthError(HEADER_SIGNATURE, "must be base64 of a 64-byte Ed25519 signature")
    return SignedRequest(device_id, timestamp, signature)


def check_clock(signed: SignedRequest, *, now: float | None = None, skew: int = MAX_CLOCK_SKEW_SECONDS) -> None:
    """Refuse a timestamp more than ``skew`` seconds from ``now`` (default: this clock)."""
    now = time.time() if now is None else now
    if abs(int(signed.timestamp) - now) > skew:
        raise DeviceAuthError(HEADER_TIMESTAMP, f"clock skew: more than {skew} s from the server's clock")


def verify_request(
    public_key: bytes | Ed25519PublicKey, signed: SignedRequest, method: str, path: str, body: bytes
) -> None:
    """Verify the signature with the device's public key; DeviceAuthError if it does not hold."""
    try:
        _raw_public(public_key).verify(
            signed.signature, canonical_request(signed.device_id, method, path, signed.timestamp, body)
        )
    except InvalidSignature:
        raise DeviceAuthError(HEADER_SIGNATURE, "does not verify with the device's key") from None
