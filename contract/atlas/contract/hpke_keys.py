"""HPKE key pairs of the server (wire contract v2), their public form for agents, and the keyring file.

A suite fixes the whole HPKE ciphersuite (RFC 9180): the KEM varies, the KDF is always HKDF-SHA256 and the
AEAD always AES-256-GCM. ``mlkem768-x25519`` (the default) is the hybrid post-quantum KEM of
draft-ietf-hpke-pq, X-Wing, KEM id 0x647a; ``x25519`` is DHKEM(X25519, HKDF-SHA256), KEM id 0x0020.

Either private key is 32 bytes. For X25519 they are the X25519 private key itself; for the hybrid they are
the X-Wing seed, SHAKE256-expanded to 96 bytes: the 64-byte ML-KEM-768 seed (d || z), then the X25519 private
key. A public key's id (``kid``) is the first 16 hex characters of SHA-256 over its serialised bytes.
docs/protocol.md (section 17) describes all of it; this module is its code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.hpke import (
    AEAD,
    KDF,
    KEM,
    MLKEM768X25519PrivateKey,
    MLKEM768X25519PublicKey,
    Suite,
)

from .errors import KeyFormatError
from .keys import KID_HEX_CHARS, KeysById

SUITE_HYBRID = "mlkem768-x25519"
"""Hybrid post-quantum suite: X-Wing (ML-KEM-768 with X25519), HKDF-SHA256, AES-256-GCM. The default."""

SUITE_X25519 = "x25519"
"""Classical suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM. The configurable fallback."""

DEFAULT_SUITE = SUITE_HYBRID

PRIVATE_KEY_BYTES = 32
"""Both suites serialise a private key as 32 bytes (the X25519 key, or the X-Wing seed)."""

KEYRING_FORMAT = "atlas-hpke-keyring/1"
"""The ``format`` field of a keyring file."""

MAX_KEYRING_BYTES = 1 << 20
"""Largest keyring file read; a keyring holds a handful of keys of about 200 bytes each."""

MAX_KEYRING_KEYS = 64
"""Most keys a keyring holds (rotation keeps two or three)."""

_KID_RE = re.compile(rf"[0-9a-f]{{{KID_HEX_CHARS}}}")
_XWING_MLKEM_SEED_BYTES = 64


@dataclass(frozen=True)
class HpkeSuite:
    """One ciphersuite of wire contract v2."""

    name: str
    kem: KEM
    kem_id: int
    public_key_bytes: int
    enc_bytes: int

    @cached_property
    def hpke(self) -> Suite:
        return Suite(self.kem, KDF.HKDF_SHA256, AEAD.AES_256_GCM)


KDF_ID = 0x0001
"""HKDF-SHA256 in the HPKE registry."""

AEAD_ID = 0x0002
"""AES-256-GCM in the HPKE registry."""

SUITES: dict[str, HpkeSuite] = {
    SUITE_HYBRID: HpkeSuite(SUITE_HYBRID, KEM.MLKEM768_X25519, 0x647A, 1184 + 32, KEM.MLKEM768_X25519.enc_length()),
    SUITE_X25519: HpkeSuite(SUITE_X25519, KEM.X25519, 0x0020, 32, KEM.X25519.enc_length()),
}
"""Every suite, by name."""


def get_suite(name: object) -> HpkeSuite:
    """The suite called ``name``, or KeyFormatError."""
    if not isinstance(name, str) or name not in SUITES:
        raise KeyFormatError(f"suite must be one of {', '.join(SUITES)}")
    return SUITES[name]


def hpke_key_id(public_bytes: bytes) -> str:
    """Key id of a serialised HPKE public key: the first 16 hex characters of its SHA-256."""
    return hashlib.sha256(public_bytes).hexdigest()[:KID_HEX_CHARS]


def _b64decode(text: object, what: str) -> bytes:
    if not isinstance(text, str) or len(text) > 4 * MAX_KEYRING_BYTES:
        raise KeyFormatError(f"{what} must be a string of standard base64")
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError(f"{what} is not valid standard base64") from None


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _xwing_expand(seed: bytes) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
    expanded = hashlib.shake_256(seed).digest(_XWING_MLKEM_SEED_BYTES + 32)
    mlkem_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:_XWING_MLKEM_SEED_BYTES])
    return mlkem_key, x25519.X25519PrivateKey.from_private_bytes(expanded[_XWING_MLKEM_SEED_BYTES:])


@dataclass(frozen=True)
class HpkePublicKey:
    """A server public key as agents receive it: its suite and serialised bytes."""

    suite: str
    raw: bytes

    def __post_init__(self) -> None:
        spec = get_suite(self.suite)
        if len(self.raw) != spec.public_key_bytes:
            raise KeyFormatError(f"a {self.suite} public key is {spec.public_key_bytes} bytes, not {len(self.raw)}")
        self.key  # noqa: B018 - parses the key once, refusing a malformed ML-KEM key

    @property
    def kid(self) -> str:
        return hpke_key_id(self.raw)

    @cached_property
    def key(self) -> Any:
        """The key as a ``cryptography`` object, for ``Suite.encrypt``."""
        try:
            if self.suite == SUITE_X25519:
                return x25519.X25519PublicKey.from_public_bytes(self.raw)
            return MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(self.raw[:1184]),
                x25519.X25519PublicKey.from_public_bytes(self.raw[1184:]),
            )
        except ValueError:
            raise KeyFormatError(f"not a valid {self.suite} public key") from None

    def to_json(self) -> dict[str, str]:
        """``{"suite", "kid", "public_key"}``: what the server hands to agents."""
        return {"suite": self.suite, "kid": self.kid, "public_key": _b64(self.raw)}

    @classmethod
    def from_json(cls, obj: object) -> HpkePublicKey:
        """Read ``to_json``'s form, checking that the kid matches the key."""
        if not isinstance(obj, dict) or set(obj) != {"suite", "kid", "public_key"}:
            raise KeyFormatError('a public key is an object of exactly "suite", "kid" and "public_key"')
        key = cls(get_suite(obj["suite"]).name, _b64decode(obj["public_key"], "public_key"))
        if obj["kid"] != key.kid:
            raise KeyFormatError("kid does not match the public key")
        return key


@dataclass(frozen=True)
class HpkePrivateKey:
    """A server private key: its suite, 32 secret bytes (never in its repr) and when it was made."""

    suite: str
    raw: bytes = field(repr=False)
    created_at: str = ""

    def __post_init__(self) -> None:
        get_suite(self.suite)
        if not isinstance(self.raw, bytes) or len(self.raw) != PRIVATE_KEY_BYTES:
            raise KeyFormatError(f"a {self.suite} private key is {PRIVATE_KEY_BYTES} bytes")

    @classmethod
    def generate(cls, suite: str = DEFAULT_SUITE) -> HpkePrivateKey:
        return cls(get_suite(suite).name, os.urandom(PRIVATE_KEY_BYTES), _now())

    @cached_property
    def key(self) -> Any:
        """The key as a ``cryptography`` object, for ``Suite.decrypt``."""
        if self.suite == SUITE_X25519:
            return x25519.X25519PrivateKey.from_private_bytes(self.raw)
        return MLKEM768X25519PrivateKey(*_xwing_expand(self.raw))

    @cached_property
    def public(self) -> HpkePublicKey:
        if self.suite == SUITE_X25519:
            return HpkePublicKey(self.suite, self.key.public_key().public_bytes_raw())
        mlkem_key, x_key = _xwing_expand(self.raw)
        raw = mlkem_key.public_key().public_bytes_raw() + x_key.public_key().public_bytes_raw()
        return HpkePublicKey(self.suite, raw)

    @property
    def kid(self) -> str:
        return self.public.kid

    def to_json(self) -> dict[str, str]:
        return {"suite": self.suite, "kid": self.kid, "private_key": _b64(self.raw), "created_at": self.created_at}

    @classmethod
    def from_json(cls, obj: object) -> HpkePrivateKey:
        if not isinstance(obj, dict) or set(obj) - {"created_at"} != {"suite", "kid", "private_key"}:
            raise KeyFormatError('a keyring entry has "suite", "kid", "private_key" and optionally "created_at"')
        created_at = obj.get("created_at", "")
        if not isinstance(created_at, str) or len(created_at) > 64:
            raise KeyFormatError("created_at must be a short string")
        key = cls(get_suite(obj["suite"]).name, _b64decode(obj["private_key"], "private_key"), created_at)
        if obj["kid"] != key.kid:
            raise KeyFormatError(f"kid {str(obj['kid'])[:32]!r} does not match the private key")
        return key


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class HpkeKeyring(KeysById[HpkePrivateKey]):
    """The server's HPKE private keys by kid: the current one (what agents are told to use) first.

    Several keys are held during a rotation: the new one seals from the agents' next request on, the old one
    opens what they spooled before.
    """

    def public_keys(self) -> list[HpkePublicKey]:
        """The public keys to hand to agents, the current one first."""
        return [key.public for key in self]

    def with_new_key(self, key: HpkePrivateKey) -> HpkeKeyring:
        """A keyring with ``key`` as the current key and every key of this one after it."""
        return HpkeKeyring([key, *self])

    def to_json(self) -> dict[str, Any]:
        return {"format": KEYRING_FORMAT, "keys": [key.to_json() for key in self]}

    @classmethod
    def from_json(cls, obj: object) -> HpkeKeyring:
        if not isinstance(obj, dict) or obj.get("format") != KEYRING_FORMAT or set(obj) != {"format", "keys"}:
            raise KeyFormatError(f'a keyring is an object with "format": "{KEYRING_FORMAT}" and "keys"')
        keys = obj["keys"]
        if not isinstance(keys, list) or len(keys) > MAX_KEYRING_KEYS:
            raise KeyFormatError(f"keys must be a list of at most {MAX_KEYRING_KEYS} entries")
        return cls(HpkePrivateKey.from_json(entry) for entry in keys)

    @classmethod
    def load(cls, path: str | Path) -> HpkeKeyring:
        """Read a keyring file; KeyFormatError (naming the file, never a key) if it is not one."""
        path = Path(path)
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_KEYRING_BYTES + 1)
        except OSError as exc:
            raise KeyFormatError(f"{path}: cannot read the keyring: {exc.strerror}") from None
        if len(data) > MAX_KEYRING_BYTES:
            raise KeyFormatError(f"{path}: larger than {MAX_KEYRING_BYTES} bytes, not a keyring")
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise KeyFormatError(f"{path}: not JSON") from None
        try:
            return cls.from_json(obj)
        except KeyFormatError as exc:
            raise KeyFormatError(f"{path}: {exc}") from None

    def save(self, path: str | Path) -> None:
        """Write the keyring atomically, readable by its owner only (mode 600)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                fd = -1
                json.dump(self.to_json(), handle, indent=2)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)  # whatever the umask
            os.replace(tmp, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            tmp.unlink(missing_ok=True)
            raise


def select_public_key(keys: Iterable[HpkePublicKey], suite: str = DEFAULT_SUITE) -> HpkePublicKey | None:
    """The key an agent seals to: the server's first key of ``suite``, else its first key of any suite."""
    keys = list(keys)
    return next((k for k in keys if k.suite == suite), keys[0] if keys else None)
