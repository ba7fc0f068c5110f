"""Errors raised while reading a widget-log batch off the wire.

Every error carries the HTTP status the ingest service answers with, and a
reason that names the offending field but never key material or decrypted
content::

    ContractError                 any violation of wire contract v1 or v2
     ├── EnvelopeError            400: malformed body or header field
     │    ├── UnknownKeyError     400: no key in the keyring has this kid
     │    ├── DecryptionError     400: the GCM tag did not verify
     │    └── DeviceMismatchError 403: a v2 envelope names another device than the authenticated one
     ├── DeviceAuthError          401: a v2 request's device credential is missing, malformed, stale or wrong
     ├── PayloadTooLargeError     413: a size bound was crossed
     └── SchemaError              422: the plaintext violates the record schema

    KeyFormatError (ValueError)   a configured key is not 32 bytes of base64, or an HPKE key or keyring is malformed
     └── WeakKeyError             ... or is an obviously weak one (all zero, the documented example)
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_FIELD_CHARS = 64
"""Longest field name an error repeats; a sender's field names can be anything."""

MAX_REASON_CHARS = 300
"""Longest reason an error gives."""


def printable(text: str, limit: int) -> str:
    """``text`` made safe to echo in a JSON response: valid UTF-8 and bounded in length."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ContractError(Exception):
    """A batch that does not follow wire contract v1 or v2."""

    status: int = 400

    def __init__(self, field: str, reason: str) -> None:
        field, reason = printable(field, MAX_FIELD_CHARS), printable(reason, MAX_REASON_CHARS)
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    @property
    def detail(self) -> str:
        return f"{self.field}: {self.reason}"


class EnvelopeError(ContractError):
    """The body or one of the envelope's header fields is malformed."""


class UnknownKeyError(EnvelopeError):
    """The envelope names a key id that is not in the keyring."""


class DecryptionError(EnvelopeError):
    """Authentication failed: wrong key, or ciphertext or header tampered with."""


class DeviceMismatchError(EnvelopeError):
    """A v2 envelope was sealed for another device than the one that sent it."""

    status = 403


class DeviceAuthError(ContractError):
    """A v2 request is not authenticated as a device: headers missing or malformed, clock skew, bad signature."""

    status = 401


class PayloadTooLargeError(ContractError):
    """The body or its decompressed plaintext is larger than allowed."""

    status = 413


@dataclass(frozen=True)
class SchemaViolation:
    """One reason a plaintext batch was rejected: where, and what is wrong."""

    loc: tuple[str | int, ...]
    msg: str
    type: str = "value_error"

    def __post_init__(self) -> None:
        safe = tuple(p if isinstance(p, int) else printable(str(p), MAX_FIELD_CHARS) for p in self.loc)
        object.__setattr__(self, "loc", safe)
        object.__setattr__(self, "msg", printable(self.msg, MAX_REASON_CHARS))

    def as_dict(self) -> dict[str, object]:
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}


class SchemaError(ContractError):
    """The decrypted plaintext is JSON but does not match the record schema."""

    status = 422

    def __init__(self, violations: list[SchemaViolation]) -> None:
        self.violations = violations or [SchemaViolation((), "invalid")]
        first = self.violations[0]
        super().__init__(".".join(str(p) for p in first.loc) or "body", first.msg)


class KeyFormatError(ValueError):
    """A key is not standard base64 of exactly 32 bytes, or an HPKE key or keyring is malformed."""


class WeakKeyError(KeyFormatError):
    """A key is all zero, the documentation's example key, or another regular byte pattern."""
