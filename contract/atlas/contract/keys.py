"""AES-256 keys as users write them, their key ids, and keyrings for rotation.

A key is 32 random bytes written as standard base64 (44 characters). Its key
id (``kid``) is the first 16 hex characters of SHA-256 over the raw 32 bytes,
so a receiver can pick the right key without trying each one and without the
id revealing anything about the key.

A configured key seals nothing itself in the current format: each batch and
each agent store record gets its own key, HKDF-SHA256 of the configured key
over a random 32-byte salt (``derive_aead``), so no key comes near the 2^32
random-nonce limit of NIST SP 800-38D however large the fleet.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import KeyFormatError, WeakKeyError

KEY_BYTES = 32
"""AES-256 key length in bytes."""

KID_HEX_CHARS = 16
"""Length of a key id: the leading hex characters of SHA-256 of the raw key."""

SALT_BYTES = 32
"""Length of the random salt a per-batch or per-record key is derived over."""

BATCH_KEY_INFO = b"atlas v1 batch key"
"""HKDF ``info`` of the key that seals one batch (the envelope's ``salt``)."""

STORE_RECORD_KEY_INFO = b"atlas v1 store record key"
"""HKDF ``info`` of the key that seals one record of the agent's local store."""


def weak_key_reason(raw: bytes) -> str | None:
    """Why ``raw`` is an obviously weak key, or None.

    Refused: every byte differing from the one before by the same amount, which covers the all-zero key,
    any key of one repeated byte, and the documentation's example key ``0x00, 0x01, ..., 0x1f``. A random
    key has this shape with probability 2^-240.
    """
    if raw == bytes(KEY_BYTES):
        return "key is all zero bytes"
    if raw == bytes(range(KEY_BYTES)):
        return "key is the documentation's public example key"
    steps = {(b - a) % 256 for a, b in itertools.pairwise(raw)}
    if len(steps) == 1:
        return "key is a regular byte pattern, not random"
    return None


def generate_encryption_key() -> str:
    """Return a new random AES-256 key as standard base64 (44 characters)."""
    raw = os.urandom(KEY_BYTES)
    if weak_key_reason(raw):  # only a broken random source produces one
        raise WeakKeyError("the system random generator returned a weak key; refusing it")
    return base64.b64encode(raw).decode("ascii")


def parse_key(text: str, *, allow_weak: bool = False) -> bytes:
    """Decode a base64 key, raising KeyFormatError unless it is exactly 32 bytes.

    A weak key (``weak_key_reason``) raises WeakKeyError; ``allow_weak`` exists for
    the known-answer vectors of docs/protocol.md only. The message never repeats the key itself.
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
    reason = None if allow_weak else weak_key_reason(raw)
    if reason:
        raise WeakKeyError(f"{reason}; generate one with `atlas-server keygen`")
    return raw


def key_id(raw: bytes) -> str:
    """Return the key id of a raw 32-byte key."""
    return hashlib.sha256(raw).hexdigest()[:KID_HEX_CHARS]


def derive_key(raw: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) of a configured key: ikm=raw, salt=salt, info=info, 32 bytes out."""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"salt must be {SALT_BYTES} bytes")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(raw)


class _Identified(Protocol):
    @property
    def kid(self) -> str: ...


_K = TypeVar("_K", bound=_Identified)


@dataclass(frozen=True)
class Key:
    """One AES-256-GCM key with its id; its repr never shows the key bytes."""

    kid: str
    raw: bytes = field(repr=False)

    @classmethod
    def from_base64(cls, text: str, *, allow_weak: bool = False) -> Key:
        raw = parse_key(text, allow_weak=allow_weak)
        return cls(kid=key_id(raw), raw=raw)

    def aead(self) -> AESGCM:
        """AES-GCM under this key itself: only for v1 envelopes and store rows without a salt."""
        return AESGCM(self.raw)

    def derive_aead(self, salt: bytes, info: bytes) -> AESGCM:
        """AES-GCM under the key derived from this one over ``salt`` for the purpose ``info``."""
        return AESGCM(derive_key(self.raw, salt, info))


class KeysById(Generic[_K]):
    """Keys by kid, in the order given (the current one first), without duplicates: the part every keyring shares."""

    def __init__(self, keys: Iterable[_K] = ()) -> None:
        self._keys: dict[str, _K] = {}
        for key in keys:
            self._keys.setdefault(key.kid, key)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[_K]:
        return iter(self._keys.values())

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kids={list(self._keys)})"

    @property
    def current(self) -> _K | None:
        """The key new data is sealed with (or, for HPKE, sealed to): the first one given."""
        return next(iter(self._keys.values()), None)

    def get(self, kid: str) -> _K | None:
        return self._keys.get(kid)


class Keyring(KeysById[Key]):
    """Keys by kid: the current one first, then older ones still accepted.

    Decryption looks keys up by kid, so adding a new key and later removing
    the old one rotates keys without downtime.
    """

    def __init__(self, keys: Iterable[Key] = ()) -> None:
        super().__init__(keys)
        self._aeads: dict[str, AESGCM] = {kid: key.aead() for kid, key in self._keys.items()}

    @classmethod
    def from_base64(cls, texts: Iterable[str]) -> Keyring:
        return cls(Key.from_base64(t) for t in texts)

    def aead(self, kid: str) -> AESGCM | None:
        return self._aeads.get(kid)
