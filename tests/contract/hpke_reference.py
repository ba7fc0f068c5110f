"""RFC 9180 base mode and the X-Wing KEM written out on primitives, independent of ``atlas.contract``.

Only for the known-answer tests: it seals with a fixed ephemeral key (which ``cryptography``'s HPKE does not
allow) and opens hybrid envelopes by hand, so the vectors of docs/protocol.md are checked against a second
implementation of the same RFCs.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEM_X25519 = 0x0020
KEM_XWING = 0x647A
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_256_GCM = 0x0002
XWING_LABEL = b"\\.//^\\"


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, b"HPKE-v1" + suite_id + label + ikm)


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return _expand(prk, struct.pack(">H", length) + b"HPKE-v1" + suite_id + label + info, length)


def key_schedule(kem_id: int, shared_secret: bytes, info: bytes) -> tuple[bytes, bytes]:
    """RFC 9180 section 5.1, mode_base, HKDF-SHA256 and AES-256-GCM: (key, base_nonce)."""
    suite_id = b"HPKE" + struct.pack(">HHH", kem_id, KDF_HKDF_SHA256, AEAD_AES_256_GCM)
    psk_id_hash = _labeled_extract(suite_id, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(suite_id, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret = _labeled_extract(suite_id, shared_secret, b"secret", b"")
    return (
        _labeled_expand(suite_id, secret, b"key", context, 32),
        _labeled_expand(suite_id, secret, b"base_nonce", context, 12),
    )


def dhkem_x25519_shared_secret(dh: bytes, enc: bytes, pk_r: bytes) -> bytes:
    """RFC 9180 section 4.1, DHKEM(X25519, HKDF-SHA256): ExtractAndExpand over enc || pkR."""
    suite_id = b"KEM" + struct.pack(">H", KEM_X25519)
    eae_prk = _labeled_extract(suite_id, b"", b"eae_prk", dh)
    return _labeled_expand(suite_id, eae_prk, b"shared_secret", enc + pk_r, 32)


def seal_x25519(sk_e: bytes, pk_r: bytes, info: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
    """Single-shot base-mode seal with the ephemeral private key ``sk_e``: (enc, ciphertext)."""
    ephemeral = x25519.X25519PrivateKey.from_private_bytes(sk_e)
    enc = ephemeral.public_key().public_bytes_raw()
    dh = ephemeral.exchange(x25519.X25519PublicKey.from_public_bytes(pk_r))
    key, nonce = key_schedule(KEM_X25519, dhkem_x25519_shared_secret(dh, enc, pk_r), info)
    return enc, AESGCM(key).encrypt(nonce, plaintext, b"")


def xwing_expand(seed: bytes) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
    """X-Wing's decapsulation key from its 32-byte seed: SHAKE256 to 96 bytes, ML-KEM seed then X25519 key."""
    expanded = hashlib.shake_256(seed).digest(96)
    return mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]), x25519.X25519PrivateKey.from_private_bytes(
        expanded[64:]
    )


def open_xwing(seed: bytes, enc: bytes, info: bytes, ciphertext: bytes) -> bytes:
    """Single-shot base-mode open under X-Wing: enc is the ML-KEM ciphertext (1088 bytes), then the X25519 one."""
    sk_m, sk_x = xwing_expand(seed)
    ct_m, ct_x = enc[:1088], enc[1088:]
    ss_m = sk_m.decapsulate(ct_m)
    ss_x = sk_x.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
    pk_x = sk_x.public_key().public_bytes_raw()
    shared_secret = hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + XWING_LABEL).digest()
    key, nonce = key_schedule(KEM_XWING, shared_secret, info)
    return AESGCM(key).decrypt(nonce, ciphertext, b"")


def open_x25519(sk_r: bytes, enc: bytes, info: bytes, ciphertext: bytes) -> bytes:
    """Single-shot base-mode open under DHKEM(X25519, HKDF-SHA256)."""
    recipient = x25519.X25519PrivateKey.from_private_bytes(sk_r)
    dh = recipient.exchange(x25519.X25519PublicKey.from_public_bytes(enc))
    pk_r = recipient.public_key().public_bytes_raw()
    key, nonce = key_schedule(KEM_X25519, dhkem_x25519_shared_secret(dh, enc, pk_r), info)
    return AESGCM(key).decrypt(nonce, ciphertext, b"")
