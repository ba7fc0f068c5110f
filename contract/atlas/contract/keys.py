"""AES-256 keys as users write them, their key ids, and keyrings for rotation.

A key is 32 random bytes written as standard base64 (44 characters). Its key
id (``kid``) is the first 16 hex characters of SHA-256 over the raw 32 bytes,
so a receiver can pick the right key without trying each one and without the
id revealing anything about the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import KeyFormatError

KEY_BYTES = 32
"""AES-256 key length in bytes."""

KID_HEX_CHARS = 16
"""Length of a key id: the leading hex characters of SHA-256 of the raw key."""


def generate_encryption_key() -> str:
    """Return a new random AES-256 key as standard base64 (44 characters)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def parse_key(text: str) -> bytes:
    """Decode a base64 key, raising KeyFormatError unless it is exactly 32 bytes.

    The message never repeats the key itself.
    """
    if not isinstance(text, str):
        raise KeyFormatError("key must be a string of standard base64")
    stripped = text.strip()
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("key is not valid standard base64") from None
    if len(raw) != KEY_BYTES:
        raise KeyFormatError(f"key decodes to {len(raw)} bytes, AES-256 needs {KEY_BYTES}")
    return raw


def key_id(raw: bytes) -> str:
    """Return the key id of a raw 32-byte key."""
    return hashlib.sha256(raw).hexdigest()[:KID_HEX_CHARS]


@dataclass(frozen=True)
class Key:
    """One AES-256-GCM key with its id; its repr never shows the key bytes."""

    kid: str
    raw: bytes = field(repr=False)

    @classmethod
    def from_base64(cls, text: str) -> Key:
        raw = parse_key(text)
        return cls(kid=key_id(raw), raw=raw)

    def aead(self) -> AESGCM:
        return AESGCM(self.raw)


class Keyring:
    """Keys by kid: the current one first, then older ones still accepted.

    Decryption looks keys up by kid, so adding a new key and later removing
    the old one rotates keys without downtime.
    """

    def __init__(self, keys: Iterable[Key] = ()) -> None:
        self._keys: dict[str, Key] = {}
        self._aeads: dict[str, AESGCM] = {}
        for key in keys:
            if key.kid not in self._keys:
                self._keys[key.kid] = key
                self._aeads[key.kid] = key.aead()

    @classmethod
    def from_base64(cls, texts: Iterable[str]) -> Keyring:
        return cls(Key.from_base64(t) for t in texts)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._keys.values())

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __repr__(self) -> str:
        return f"Keyring(kids={list(self._keys)})"

    @property
    def current(self) -> Key | None:
        """The key new data is sealed with: the first one given."""
        return next(iter(self._keys.values()), None)

    def aead(self, kid: str) -> AESGCM | None:
        return self._aeads.get(kid)
