"""Known-answer tests for wire contract v1, tied to docs/protocol.md.

The literal values below are the worked example of the protocol document.
Each test rebuilds them with the real contract code, and reads the document's
marked blocks (``<!-- vector:NAME -->`` and ``<!-- example:NAME -->`` followed
by a fenced block) so the document cannot drift from the code. The
standalone examples of the document are executed and their output is opened
by the server-side code. Pure: no database, no Redis, no network.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from atlas.contract import (
    BATCH_KEY_INFO,
    ContractError,
    DecryptionError,
    Key,
    Keyring,
    SchemaError,
    associated_data,
    decode_content,
    derive_key,
    format_timestamp,
    key_id,
    open_envelope,
    parse_body,
    parse_envelope,
    seal,
)
from atlas.core.config import Settings
from atlas.ingest.intake import read_batch

from ..fix_services import API_KEY as SERVER_API_KEY
from .protocol_doc import BATCH_ID, CREATED_AT, DOC_PATH, PLAINTEXT, marked_blocks

# The worked example of docs/protocol.md, section 14.
KEY_RAW = bytes(range(32))
KEY_B64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
KEY_SHA256 = "630dcd2966c4336691125448bbb25b4ff412a49c732db2c8abc1b8581bd710dd"
KID = "630dcd2966c43366"
NONCE = bytes(range(0xA0, 0xAC))
NONCE_B64 = "oKGio6Slpqeoqaqr"
AAD = b"atlas-widget-logs/v1\n630dcd2966c43366\n6f1c2a4e-8b3d-4f5a-9c7e-2d1b0a9f8e7d\n2026-11-28T16:00:00Z\nnone"
TAG_HEX = "03cfac4a6f4bdf2b982527c0afd19fb7"
CIPHERTEXT_B64 = (
    "nToRTCaja9EHR72oJRehvRjFN3XN3iZOpiwRwkztTEDgM2rK7RMQEGvZPIkkQ8XPdzZ0C1aUIjxwHzgbkUennJbP4B1ZxIi/mpeSeuq87oDv"
    "SJuWn4qoO6w4eqzluGG25+tY323P4v684SQj8f2JQUt9UJzwUONdQr+ywZo2nSDnPZISvCblexVj3MZzKaDipOieSZLylf+iu9iH3K5bReQi"
    "PYCDRHE0rihKRQq8wr4BQ4/rawnAHLigRxdsrC91SRpupQ+2yM/JBjvtPU1f0CGdhYVPQeKa3/Fq03D360paaWYQjFfsBvqPcgVgJ2ITbsun"
    "U6toUs4l6+JISRFf+3NYrPOwuNuQA4FtpxdSArQaPSg93smwS58CNODAgaoctXlokxoiSeLRTTxJg8PvO6s18ndvB7fCUJoWj/3ixnf35DHh"
    "0EQbJr3pSSW1drHEHqrwdPJsDcR0Pea+HGWpPmMpk2L4BAR6iaRt6FGZJ7OwwHVz8VRvpddwLH2txenLGPuTDNhzpy5KYPBZHped8iXTKbbj"
    "DrUhCMKEpAkXF0+le2IfD+W8w20+AdLtKOEOat663gPEpxXBfafMlRRNh3iM24mPqfSDubTkbppZZbWos8k0VnXrVQC/gECzPJrLLdr7J+hs"
    "TeTvUV18lUVBFyevxdEVu+cpjSFyiZu6M3E8aqgDz6xKb0vfK5glJ8Cv0Z+3"
)
ENVELOPE = {
    "v": 1,
    "alg": "AES-256-GCM",
    "kid": KID,
    "batch_id": BATCH_ID,
    "created_at": CREATED_AT,
    "compression": "none",
    "nonce": NONCE_B64,
    "ciphertext": CIPHERTEXT_B64,
}
# Section 14.2: the same inputs sealed under a per-batch key.
SALT = bytes(range(0xC0, 0xE0))
SALT_B64 = "wMHCw8TFxsfIycrLzM3Oz9DR0tPU1dbX2Nna29zd3t8="
BATCH_KEY_HEX = "12bc47dd020c0c86125f68504d1e2cf1a5d0d660e0275fb8ae837c9f4e764085"
BATCH_KEY_B64 = "ErxH3QIMDIYSX2hQTR4s8aXQ1mDgJ1+4roN8n052QIU="
SALTED_TAG_HEX = "7505fb82bf5a9cbd97de8fbd99c827b8"
SALTED_CIPHERTEXT_B64 = (
    "vmv1ih2Rm6BnLKvT9rj8xgL55x28PMNzKjhtGiG/pIcV3WMvTPQYj76xWMapA8gy5ziudDXnprdFYU24jw54rLNu8JlaOSOmaXDsjEXHqHuL"
    "byPpcXEUAoc6WLuTB+c44glMH1EWZ+2y4Si240ONXRZm7ZL4M9O/EaxFPlHYEJZ4mAp9EY4vI/b2lbnWpi12ZXqgjEjzY8gvr7WIpYTI0eB8"
    "VrxKGpueQRe5YipBmLkaKBntKzKc6+AvUT0lDcV6QTwO63tTyMbr/IT8gayDKZINgJoxEwGAh8J5kSXWMY5sDxUfVnN7FZhA9GqD3Ohqvlee"
    "vunQxCVMxK8TdsxjRxMNXNRTZh2JPOtKyf4gtBNlPyDvkrGmCYc7NDade1HSTWJBPH1AcLsNb1wdNd27E8/iielwr/5B144GaKYnO/QzuQxT"
    "GLlQTJOVQeth/jz9w0JTFZJwp0gHIR8e5n2QnfGU5j2R5OY9Y6zGeU5c8Bnbgoz34s03nui1DYc+6lLV1z7lWTcqIEYM4ObXD8PwsxUaR6UW"
    "EPJM1kZ7LYQ9vVNpPVa5sMSdXrgmvqo9/KSIpHmUcQtRCNntBvyTokofXVfXYbTp/rYsTogunsGj0M6wiqZVwjE7C2H3PxGJ26cmYUPequ3t"
    "P+CFDWY8MhHQGtiSq433U1O27GkpS0tZUn2aRK51BfuCv1qcvZfej72ZyCe4"
)
SALTED_ENVELOPE = {
    "v": 1,
    "alg": "AES-256-GCM",
    "kid": KID,
    "batch_id": BATCH_ID,
    "created_at": CREATED_AT,
    "compression": "none",
    "nonce": NONCE_B64,
    "salt": SALT_B64,
    "ciphertext": SALTED_CIPHERTEXT_B64,
}
VECTOR_TIME = datetime(2026, 11, 28, 16, 0, tzinfo=UTC)
API_KEY = "protocol-vector-api-key-0123456789"


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC_PATH.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def blocks(doc: str) -> dict[str, str]:
    """Every marked fenced block of the document, by ``vector:NAME`` / ``example:NAME``."""
    return marked_blocks(doc)


@pytest.fixture(scope="module")
def key() -> Key:
    return Key.from_base64(KEY_B64, allow_weak=True)  # public: a configuration refuses it


def _settings(**overrides) -> Settings:
    return Settings(api_keys=(API_KEY,), keyring=Keyring([Key.from_base64(KEY_B64, allow_weak=True)]), **overrides)


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """RFC 5869 written out on hmac, independent of the code under test: extract, then one expand block."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def _run_example(source: str, name: str = "protocol_example") -> dict:
    namespace: dict = {"__name__": name}
    exec(compile(source, str(DOC_PATH), "exec"), namespace)  # noqa: S102 - the document's own example
    return namespace


# --- the vector, rebuilt with the contract code ------------------------------------------------


def test_key_and_kid(key: Key) -> None:
    assert base64.b64encode(KEY_RAW).decode("ascii") == KEY_B64
    assert len(KEY_B64) == 44
    assert hashlib.sha256(KEY_RAW).hexdigest() == KEY_SHA256
    assert key_id(KEY_RAW) == KID
    assert key.kid == KID
    assert key.raw == KEY_RAW


def test_associated_data() -> None:
    assert associated_data(KID, BATCH_ID, CREATED_AT, "none") == AAD
    assert len(AAD) == 100
    assert not AAD.endswith(b"\n")


def test_seal_reproduces_the_vector(key: Key) -> None:
    envelope = seal(
        PLAINTEXT, key, batch_id=BATCH_ID, created_at=CREATED_AT, compression="none", nonce=NONCE, legacy=True
    )
    assert envelope == ENVELOPE
    assert list(envelope) == ["v", "alg", "kid", "batch_id", "created_at", "compression", "nonce", "ciphertext"]
    sealed = base64.b64decode(CIPHERTEXT_B64)
    assert len(PLAINTEXT) == 515
    assert len(sealed) == len(PLAINTEXT) + 16
    assert sealed[-16:].hex() == TAG_HEX
    assert base64.b64decode(NONCE_B64) == NONCE


def test_vector_matches_plain_aes_gcm() -> None:
    """The vector is plain AES-256-GCM over the plaintext with the AAD, nothing more."""
    assert AESGCM(KEY_RAW).encrypt(NONCE, PLAINTEXT, AAD) == base64.b64decode(CIPHERTEXT_B64)


def test_batch_key_is_hkdf_sha256_of_the_shared_key() -> None:
    assert derive_key(KEY_RAW, SALT, BATCH_KEY_INFO) == _hkdf_sha256(KEY_RAW, SALT, b"atlas v1 batch key")
    assert derive_key(KEY_RAW, SALT, BATCH_KEY_INFO).hex() == BATCH_KEY_HEX
    assert base64.b64decode(BATCH_KEY_B64).hex() == BATCH_KEY_HEX
    assert base64.b64decode(SALT_B64) == SALT


def test_seal_reproduces_the_salted_vector(key: Key) -> None:
    envelope = seal(
        PLAINTEXT, key, batch_id=BATCH_ID, created_at=CREATED_AT, compression="none", nonce=NONCE, salt=SALT
    )
    assert envelope == SALTED_ENVELOPE
    assert list(envelope) == ["v", "alg", "kid", "batch_id", "created_at", "compression", "nonce", "salt", "ciphertext"]
    sealed = base64.b64decode(SALTED_CIPHERTEXT_B64)
    assert len(sealed) == len(PLAINTEXT) + 16
    assert sealed[-16:].hex() == SALTED_TAG_HEX
    assert AESGCM(bytes.fromhex(BATCH_KEY_HEX)).encrypt(NONCE, PLAINTEXT, AAD) == sealed, "same AAD as without salt"


def test_seal_draws_a_fresh_salt_each_time(key: Key) -> None:
    first, second = (seal(PLAINTEXT, key, batch_id=BATCH_ID, created_at=CREATED_AT) for _ in range(2))
    assert len(base64.b64decode(first["salt"])) == 32
    assert first["salt"] != second["salt"]
    assert first["nonce"] != second["nonce"]


def test_server_intake_accepts_both_forms() -> None:
    for envelope, legacy in ((SALTED_ENVELOPE, False), (ENVELOPE, True)):
        accepted = read_batch(json.dumps(envelope).encode("utf-8"), _settings(), now=VECTOR_TIME)
        assert (accepted.batch_id, accepted.kid, accepted.legacy_key) == (BATCH_ID, KID, legacy)
        assert len(accepted.content.logs) == 2


@pytest.mark.parametrize(
    "salt",
    [
        base64.b64encode(bytes(range(0xC1, 0xE1))).decode("ascii"),  # another salt
        "wMHCw8TFxsfIycrLzM3Oz9DR0tPU1dbX2Nna29zd3t4=",  # its last bit flipped
        None,  # removed: the server then opens it with the shared key itself
    ],
)
def test_changed_salt_fails_authentication(salt: str | None) -> None:
    envelope = {k: v for k, v in SALTED_ENVELOPE.items() if k != "salt"}
    if salt is not None:
        envelope["salt"] = salt
    with pytest.raises(DecryptionError):
        read_batch(json.dumps(envelope).encode("utf-8"), _settings(), now=VECTOR_TIME)


def test_salt_added_to_a_legacy_envelope_fails_authentication() -> None:
    with pytest.raises(DecryptionError):
        read_batch(json.dumps(dict(ENVELOPE, salt=SALT_B64)).encode("utf-8"), _settings(), now=VECTOR_TIME)


def test_open_envelope_returns_the_plaintext(key: Key) -> None:
    opened = open_envelope(parse_envelope(ENVELOPE), Keyring([key]), max_plaintext_bytes=Settings.max_plaintext_bytes)
    assert opened == PLAINTEXT
    content = decode_content(opened)
    assert content.machine.machine_id == "7D3F9A2E-5B1C-4E8A-9F60-2C4D8B1A3E57"
    assert [(log.level, log.widget_type) for log in content.logs] == [("INFO", "ping"), ("WARNING", "wifi")]
    assert content.logs[1].timestamp == datetime(2026, 11, 28, 15, 59, 45, 250000, tzinfo=UTC)


def test_server_intake_accepts_the_vector() -> None:
    body = json.dumps(ENVELOPE).encode("utf-8")
    accepted = read_batch(body, _settings(), now=VECTOR_TIME)
    assert accepted.batch_id == BATCH_ID
    assert accepted.kid == KID
    assert accepted.created_at == VECTOR_TIME
    assert len(accepted.content.logs) == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kid", "630dcd2966c43367"),
        ("batch_id", BATCH_ID.upper()),
        ("batch_id", "6f1c2a4e-8b3d-4f5a-9c7e-2d1b0a9f8e7e"),
        ("created_at", "2026-11-28T16:00:01Z"),
        ("created_at", "2026-11-28T16:00:00+00:00"),
        ("compression", "gzip"),
        ("nonce", base64.b64encode(bytes(range(0xA1, 0xAD))).decode("ascii")),
        ("ciphertext", "A" + CIPHERTEXT_B64[1:]),
    ],
)
def test_any_change_fails_authentication(key: Key, field: str, value: str) -> None:
    envelope = parse_envelope(dict(ENVELOPE, **{field: value}))
    with pytest.raises(InvalidTag):  # even with the right key, since the kid is in the associated data
        key.aead().decrypt(envelope.nonce, envelope.ciphertext, envelope.associated_data())
    if field != "kid":
        with pytest.raises(DecryptionError):
            open_envelope(envelope, Keyring([key]), max_plaintext_bytes=Settings.max_plaintext_bytes)


# --- the document, compared with the vector ----------------------------------------------------


def test_document_blocks_equal_the_vector(blocks: dict[str, str]) -> None:
    assert blocks["vector:key"] == KEY_B64
    assert blocks["vector:kid"] == KID
    assert blocks["vector:nonce"] == NONCE_B64
    assert blocks["vector:plaintext"].encode("utf-8") == PLAINTEXT
    assert blocks["vector:aad"].encode("utf-8") == AAD
    assert blocks["vector:ciphertext"] == CIPHERTEXT_B64
    assert json.loads(blocks["vector:envelope"]) == ENVELOPE


def test_document_envelope_is_what_the_code_produces(blocks: dict[str, str], key: Key) -> None:
    documented = json.loads(blocks["vector:envelope"])
    produced = seal(
        PLAINTEXT, key, batch_id=BATCH_ID, created_at=CREATED_AT, compression="none", nonce=NONCE, legacy=True
    )
    assert documented == produced
    assert list(documented) == list(produced)
    opened = open_envelope(parse_envelope(documented), Keyring([key]), max_plaintext_bytes=len(PLAINTEXT))
    assert opened == blocks["vector:plaintext"].encode("utf-8")


def test_document_salted_vector_is_what_the_code_produces(blocks: dict[str, str], key: Key) -> None:
    assert blocks["vector:salt"] == SALT_B64
    assert blocks["vector:batch-key"] == BATCH_KEY_B64
    assert blocks["vector:salted-ciphertext"] == SALTED_CIPHERTEXT_B64
    documented = json.loads(blocks["vector:salted-envelope"])
    produced = seal(
        PLAINTEXT, key, batch_id=BATCH_ID, created_at=CREATED_AT, compression="none", nonce=NONCE, salt=SALT
    )
    assert documented == produced == SALTED_ENVELOPE
    assert list(documented) == list(produced)
    opened = open_envelope(parse_envelope(documented), Keyring([key]), max_plaintext_bytes=len(PLAINTEXT))
    assert opened == blocks["vector:plaintext"].encode("utf-8")


def test_document_states_the_derived_values(doc: str) -> None:
    flowed = " ".join(doc.split())
    for text in (
        KEY_RAW.hex(),
        KEY_SHA256,
        NONCE.hex(),
        AAD.hex(),
        TAG_HEX,
        SALT.hex(),
        BATCH_KEY_HEX,
        SALTED_TAG_HEX,
        'info = "atlas v1 batch key"',
        'info = "atlas v1 store record key"',
        hashlib.sha256(KEY_B64.encode("ascii")).hexdigest()[:16],  # the "hashing the text" pitfall
        f"exactly these {len(PLAINTEXT)} bytes",
        f"exactly these {len(AAD)} bytes",
        f"{len(PLAINTEXT) + 16} bytes, the {len(PLAINTEXT)} bytes of ciphertext",
        f"`batch_id`: `{BATCH_ID}`",
        f"`created_at`: `{CREATED_AT}`",
        "`compression`: `none`",
    ):
        assert text in flowed, text


# --- the standalone sealing example of the document --------------------------------------------


def test_standalone_example_reproduces_the_vector(blocks: dict[str, str]) -> None:
    example = _run_example(blocks["example:seal"])
    assert example["key_id"](KEY_RAW) == KID
    assert example["batch_key"](KEY_RAW, SALT).hex() == BATCH_KEY_HEX
    envelope = example["seal_batch"](
        KEY_B64, PLAINTEXT, BATCH_ID, CREATED_AT, compression="none", nonce=NONCE, salt=SALT
    )
    assert envelope == SALTED_ENVELOPE


def test_standalone_example_output_is_opened_by_the_server(blocks: dict[str, str]) -> None:
    seal_batch = _run_example(blocks["example:seal"])["seal_batch"]
    now = datetime(2026, 11, 28, 16, 0, tzinfo=UTC)  # the example's logs are dated just before
    batch_id = str(uuid.uuid4())
    first = seal_batch(KEY_B64, PLAINTEXT, batch_id, format_timestamp(now))
    second = seal_batch(KEY_B64, PLAINTEXT, batch_id, format_timestamp(now))
    assert first["compression"] == "gzip"
    assert first["nonce"] != second["nonce"], "every seal draws a fresh nonce"
    assert first["salt"] != second["salt"], "and a fresh salt"
    for envelope in (first, second):
        accepted = read_batch(json.dumps(envelope).encode("utf-8"), _settings(), now=now)
        assert accepted.batch_id == batch_id
        assert accepted.kid == KID
        assert [log.widget_type for log in accepted.content.logs] == ["ping", "wifi"]


def test_standalone_example_main(blocks: dict[str, str], monkeypatch, capsys) -> None:
    monkeypatch.setenv("FLEET_ENCRYPTION_KEY", KEY_B64)
    _run_example(blocks["example:seal"], name="__main__")
    body = capsys.readouterr().out.strip().encode("utf-8")
    accepted = read_batch(body, _settings(), now=datetime.now(UTC))
    assert accepted.kid == KID
    assert [(log.widget_type, log.message) for log in accepted.content.logs] == [
        ("agent", "hello from a third-party agent")
    ]


# --- error messages the document lists ---------------------------------------------------------


def _seal_raw(data: bytes, compression: str, batch_id: str = BATCH_ID) -> dict:
    """An envelope around ``data`` exactly as given, whatever ``compression`` claims."""
    aad = associated_data(KID, batch_id, CREATED_AT, compression)
    return dict(
        ENVELOPE,
        batch_id=batch_id,
        compression=compression,
        ciphertext=base64.b64encode(AESGCM(KEY_RAW).encrypt(NONCE, data, aad)).decode("ascii"),
    )


def _body(**changes) -> bytes:
    envelope = {k: v for k, v in {**ENVELOPE, **changes}.items() if v is not _DROP}
    return json.dumps(envelope).encode("utf-8")


_DROP = object()
_PLAIN_BODY = {"v": 1, "batch_id": BATCH_ID, "created_at": CREATED_AT, **json.loads(PLAINTEXT)}


@pytest.mark.parametrize(
    ("body", "now", "settings", "status", "documented"),
    [
        (b"nope", VECTOR_TIME, {}, 400, "body: is not valid UTF-8 JSON"),
        (b"[]", VECTOR_TIME, {}, 400, "body: must be a JSON object"),
        (
            json.dumps(_PLAIN_BODY).encode(),
            VECTOR_TIME,
            {},
            400,
            "body: encryption required: send a v1 AES-256-GCM envelope",
        ),
        (_body(nonce=_DROP), VECTOR_TIME, {}, 400, "<field>: is required"),
        (_body(extra=1), VECTOR_TIME, {}, 400, "<field>: is not a field of contract v1"),
        (_body(v=2), VECTOR_TIME, {}, 400, "v: unsupported version; this server speaks v1"),
        (_body(v="1"), VECTOR_TIME, {}, 400, "v: unsupported version; this server speaks v1"),
        (_body(alg="AES-128-GCM"), VECTOR_TIME, {}, 400, "alg: unsupported algorithm; v1 uses AES-256-GCM"),
        (_body(kid=KID.upper()), VECTOR_TIME, {}, 400, "kid: must be 16 lowercase hex characters"),
        (_body(kid="0" * 16), VECTOR_TIME, {}, 400, "kid: no configured key has id <kid>"),
        (
            _body(batch_id="batch-1"),
            VECTOR_TIME,
            {},
            400,
            "batch_id: must be a UUID such as 1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        ),
        (
            _body(created_at="2026-11-28 16:00:00Z"),
            VECTOR_TIME,
            {},
            400,
            "created_at: must be an RFC 3339 date-time with offset, e.g. 2026-11-28T16:00:00Z",
        ),
        (_body(created_at="2026-02-30T16:00:00Z"), VECTOR_TIME, {}, 400, "created_at: is not a valid date-time"),
        (
            _body(),
            VECTOR_TIME + timedelta(days=7, seconds=1),
            {},
            400,
            "created_at: is older than the accepted window of 7 days",
        ),
        (
            _body(),
            VECTOR_TIME - timedelta(minutes=5, seconds=1),
            {},
            400,
            "created_at: is more than 5 minutes in the future",
        ),
        (_body(compression="zip"), VECTOR_TIME, {}, 400, 'compression: must be "gzip" or "none"'),
        (_body(nonce=12), VECTOR_TIME, {}, 400, "<field>: must be a base64 string"),
        (_body(nonce="oKGio6Slpqeoqaq_"), VECTOR_TIME, {}, 400, "<field>: is not valid standard base64"),
        (_body(nonce="AAAA"), VECTOR_TIME, {}, 400, "nonce: must decode to 12 bytes"),
        (
            _body(nonce="AAAAAAAAAAAAAAAA"),
            VECTOR_TIME,
            {},
            400,
            "nonce: must not be all zero bytes: draw 12 fresh random bytes for every seal",
        ),
        (_body(salt=12), VECTOR_TIME, {}, 400, "<field>: must be a base64 string"),
        (_body(salt=SALT_B64[:-2] + "_="), VECTOR_TIME, {}, 400, "<field>: is not valid standard base64"),
        (_body(salt=NONCE_B64), VECTOR_TIME, {}, 400, "salt: must decode to 32 bytes"),
        (
            _body(salt=base64.b64encode(bytes(32)).decode()),
            VECTOR_TIME,
            {},
            400,
            "salt: must not be all zero bytes: draw 32 fresh random bytes for every seal",
        ),
        (_body(ciphertext="AAAA"), VECTOR_TIME, {}, 400, "ciphertext: is shorter than the 16-byte tag"),
        (
            _body(compression="gzip"),
            VECTOR_TIME,
            {},
            400,
            "ciphertext: authentication failed: wrong key, or the envelope was altered",
        ),
        (
            json.dumps(_seal_raw(PLAINTEXT, "gzip")).encode(),
            VECTOR_TIME,
            {},
            400,
            "ciphertext: plaintext is not valid gzip",
        ),
        (
            json.dumps(_seal_raw(gzip.compress(PLAINTEXT)[:-8], "gzip")).encode(),
            VECTOR_TIME,
            {},
            400,
            "ciphertext: gzip stream is truncated",
        ),
        (
            json.dumps(_seal_raw(gzip.compress(PLAINTEXT) + b"x", "gzip")).encode(),
            VECTOR_TIME,
            {},
            400,
            "ciphertext: unexpected data after the gzip stream",
        ),
        (
            json.dumps(_seal_raw(b"not json", "none")).encode(),
            VECTOR_TIME,
            {},
            400,
            "ciphertext: decrypted plaintext is not valid UTF-8 JSON",
        ),
        (
            json.dumps(_seal_raw(gzip.compress(PLAINTEXT), "gzip")).encode(),
            VECTOR_TIME,
            {"max_plaintext_bytes": 514},
            413,
            "ciphertext: decompressed plaintext exceeds <max_plaintext_bytes> bytes",
        ),
        (
            _body(),
            VECTOR_TIME,
            {"max_plaintext_bytes": 514},
            413,
            "ciphertext: plaintext exceeds <max_plaintext_bytes> bytes",
        ),
    ],
)
def test_documented_error_messages(
    doc: str, body: bytes, now: datetime, settings: dict, status: int, documented: str
) -> None:
    assert f"`{documented}`" in doc, f"{documented!r} is not in the document"
    with pytest.raises(ContractError) as raised:
        read_batch(body, _settings(**settings), now=now)
    pattern = ".+".join(re.escape(part) for part in re.split(r"<[a-z_]+>", documented))
    assert re.fullmatch(pattern, raised.value.detail), raised.value.detail
    assert raised.value.status == status


@pytest.mark.parametrize(
    ("change", "loc", "type_"),
    [
        ({"machine": {}}, ["machine", "machine_id"], "missing"),
        ({"extra": 1}, ["extra"], "extra_forbidden"),
        ({"logs": [{"level": "INFO"}]}, ["logs", 0, "timestamp"], "missing"),
        ({"machine": {**json.loads(PLAINTEXT)["machine"], "hostname": 5}}, ["machine", "hostname"], "string_type"),
        (
            {"machine": {**json.loads(PLAINTEXT)["machine"], "machine_id": "x" * 129}},
            ["machine", "machine_id"],
            "string_too_long",
        ),
        (
            {"machine": {**json.loads(PLAINTEXT)["machine"], "serial_number": ""}},
            ["machine", "serial_number"],
            "string_too_short",
        ),
    ],
)
def test_documented_schema_violations(doc: str, change: dict, loc: list, type_: str) -> None:
    plaintext = json.dumps({**json.loads(PLAINTEXT), **change}).encode("utf-8")
    with pytest.raises(SchemaError) as raised:
        read_batch(json.dumps(_seal_raw(plaintext, "none")).encode(), _settings(), now=VECTOR_TIME)
    first = raised.value.violations[0].as_dict()
    assert (first["loc"], first["type"]) == (loc, type_)
    assert f"`{type_}`" in doc


def test_schema_bounds_of_the_document() -> None:
    """The bounds the document states, at and just past each limit."""
    base = json.loads(PLAINTEXT)
    log = base["logs"][0]

    def check(**change) -> None:
        decode_content(json.dumps({**base, **change}, ensure_ascii=False).encode("utf-8"))

    check(logs=[])
    check(logs=[{k: v for k, v in log.items() if k != "data"}])  # data is optional
    check(logs=[dict(log, message="é" * 8192)])  # characters, not bytes
    check(logs=[dict(log, data={"a": "x" * (65536 - 8)})])  # exactly 65,536 bytes as compact JSON
    check(logs=[dict(log, timestamp="2026-11-28t16:00:00.123456789+05:30")])
    check(logs=[log] * 5000)
    for bad in (
        {"logs": [dict(log, message="x" * 8193)]},
        {"logs": [dict(log, data={"a": "x" * (65536 - 7)})]},
        {"logs": [dict(log, level="info")]},
        {"logs": [dict(log, widget_type="battery")]},
        {"logs": [dict(log, timestamp="2026-11-28T16:00:00")]},
        {"logs": [dict(log, timestamp="2026-12-31T23:59:60Z")]},
        {"logs": [dict(log, message="a\x00b")]},
        {"logs": [dict(log, data={"a": float("nan")})]},
        {"logs": [log] * 5001},
        {"machine": dict(base["machine"], hostname="h" * 256)},
        {"machine": dict(base["machine"], agent_version="1" * 65)},
    ):
        with pytest.raises(SchemaError):
            check(**bad)


# --- HTTP responses the document lists ---------------------------------------------------------


def fresh_plaintext() -> bytes:
    """PLAINTEXT with its logs dated a moment ago, for a batch sealed now (a log may not be a day older)."""
    moment = format_timestamp(datetime.now(UTC) - timedelta(seconds=30)).encode()
    return PLAINTEXT.replace(b"2026-11-28T15:59:30Z", moment).replace(b"2026-11-28T15:59:45.250Z", moment)


def test_documented_http_responses(doc: str, ingest, keys) -> None:
    """202, 200 duplicate, 401, 415 and 413 from the real server, as the responses table shows them."""
    batch_id = str(uuid.uuid4()).upper()
    key = Key.from_base64(keys["current"])
    body = json.dumps(
        seal(fresh_plaintext(), key, batch_id=batch_id, created_at=format_timestamp(datetime.now(UTC)))
    ).encode()
    json_headers = {"Content-Type": "application/json"}

    reply = ingest.post(body, api_key=None, headers={"Authorization": f"Bearer {SERVER_API_KEY}"})
    assert reply.status_code == 202
    assert reply.json() == {"status": "queued", "batch_id": batch_id.lower(), "accepted": 2}

    reply = ingest.post(
        body, api_key=None, headers={"Content-Type": "application/json; charset=utf-8", "X-API-Key": SERVER_API_KEY}
    )
    assert reply.status_code == 200
    assert reply.json() == {"status": "duplicate", "batch_id": batch_id.lower()}

    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"X-API-Key": SERVER_API_KEY[:-1]}):
        reply = ingest.post(body, api_key=None, headers={**json_headers, **headers})
        assert reply.status_code == 401
        assert reply.headers["www-authenticate"] == "Bearer"
        assert reply.json() == {"detail": "missing or invalid API key", "field": None}

    reply = ingest.post(body, api_key=None, headers={"Content-Type": "text/plain", "X-API-Key": SERVER_API_KEY})
    assert reply.status_code == 415
    assert reply.json() == {"detail": "Content-Type must be application/json", "field": None}

    reply = ingest.post(
        b" " * (5 * 1024 * 1024 + 1), api_key=None, headers={**json_headers, "X-API-Key": SERVER_API_KEY}
    )
    assert reply.status_code == 413
    assert reply.json() == {"detail": "body: exceeds 5242880 bytes", "field": "body"}

    for text in (
        '`{"status": "queued", "batch_id": "<lowercase batch_id>", "accepted": <number of log entries>}`',
        '`{"status": "duplicate", "batch_id": "<lowercase batch_id>"}`',
        '`{"detail": "missing or invalid API key", "field": null}`',
        '`{"detail": "Content-Type must be application/json", "field": null}`',
        '`{"detail": "body: exceeds 5242880 bytes", "field": "body"}`',
        '`{"detail": "queue unavailable, retry later", "field": null}`',
        "`Retry-After: 5`",
    ):
        assert text in doc, text


# --- the sender sketch of the document ---------------------------------------------------------


class _Server:
    """Answers posts from a script; an exception in the script is raised instead."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.bodies: list[bytes] = []

    def __call__(self, body: bytes):
        self.bodies.append(body)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


QUEUED = (202, None, {"status": "queued", "batch_id": BATCH_ID, "accepted": 2})
DUPLICATE = (200, None, {"status": "duplicate", "batch_id": BATCH_ID})


@pytest.mark.parametrize(
    ("answers", "outcome", "min_sleeps"),
    [
        ([QUEUED], "sent", []),
        ([DUPLICATE], "sent", []),
        ([(503, 5, None), ConnectionResetError(), TimeoutError(), QUEUED], "sent", [5, 0, 0]),
        ([(429, 30, None), (408, None, None), (502, None, None), DUPLICATE], "sent", [30, 0, 0]),
        ([(200, None, None), (200, None, {"status": "ok"}), QUEUED], "sent", [0, 0]),
        ([(400, None, {"detail": "kid: no configured key has id 0000000000000000"})], "quarantine", []),
        ([(503, 5, None), (401, None, None)], "quarantine", [5]),
        ([(413, None, None)], "quarantine", []),
        ([(422, None, {"detail": []})], "quarantine", []),
        ([(500, None, None)] * 10, "later", [0] * 10),
    ],
)
def test_sender_sketch(blocks: dict[str, str], answers: list, outcome: str, min_sleeps: list) -> None:
    deliver = _run_example(blocks["example:send"])["deliver"]
    server = _Server(*answers)
    sleeps: list[float] = []
    body = json.dumps(ENVELOPE).encode()
    assert deliver(server, body, sleep=sleeps.append, base=1.0, cap=600.0) == outcome
    assert server.bodies == [body] * len(server.bodies), "always the same bytes"
    assert not server.answers
    assert len(sleeps) == len(min_sleeps)
    for attempt, (slept, least) in enumerate(zip(sleeps, min_sleeps, strict=True)):
        assert least <= slept <= max(least, min(600.0, 2.0**attempt))


def test_sender_sketch_against_the_real_server(blocks: dict[str, str], ingest, keys) -> None:
    """The document's standard-library sender delivers to a real ingest server."""
    example = _run_example(blocks["example:send"])
    url = f"{ingest.url}/api/fleet/widget-logs"
    post = example["make_post"](url, SERVER_API_KEY, timeout=10)
    key = Key.from_base64(keys["current"])
    body = json.dumps(
        seal(fresh_plaintext(), key, batch_id=str(uuid.uuid4()), created_at=format_timestamp(datetime.now(UTC)))
    )
    status, _, reply = post(body.encode())
    assert (status, reply["status"], reply["accepted"]) == (202, "queued", 2)
    assert example["deliver"](post, body.encode(), sleep=lambda _: None) == "sent"  # the duplicate counts as sent
    assert post(body.encode())[:1] == (200,)
    wrong = example["make_post"](url, "not-the-api-key-0123456789", timeout=10)
    assert wrong(body.encode()) == (401, None, None)
    assert example["deliver"](wrong, body.encode(), sleep=lambda _: None) == "quarantine"


def test_parse_body_of_vector_is_an_envelope() -> None:
    assert parse_envelope(parse_body(json.dumps(ENVELOPE).encode())).associated_data() == AAD
