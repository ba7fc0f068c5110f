"""Contract v2: HPKE sealing and opening, the bound fields, the bounds, hostile envelopes, keys and keyrings.

Pure: the contract code only, no database or network. The known-answer vectors are in test_protocol_vectors_v2.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import stat
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.contract import (
    DEFAULT_SUITE,
    ENVELOPE_V2_FIELDS,
    SUITE_HYBRID,
    SUITE_X25519,
    SUITES,
    ContractError,
    DecryptionError,
    DeviceMismatchError,
    EnvelopeError,
    HpkeKeyring,
    HpkePrivateKey,
    HpkePublicKey,
    KeyFormatError,
    PayloadTooLargeError,
    UnknownKeyError,
    open_v2,
    parse_envelope_v2,
    seal_v2,
    select_public_key,
)

DEVICE = "dev-7f3a"
OTHER_DEVICE = "dev-0b91"
CREATED_AT = "2026-11-28T16:00:00Z"
PLAINTEXT = json.dumps({"machine": {"machine_id": "M-1"}, "logs": [{"message": "x" * 300}] * 20}).encode()


@pytest.fixture(scope="module", params=sorted(SUITES))
def key(request) -> HpkePrivateKey:
    return HpkePrivateKey.generate(request.param)


@pytest.fixture(scope="module")
def keys() -> dict[str, HpkePrivateKey]:
    return {suite: HpkePrivateKey.generate(suite) for suite in SUITES}


def sealed(key: HpkePrivateKey, compression: str = "gzip", **overrides) -> dict:
    args = {"device_id": DEVICE, "batch_id": str(uuid.uuid4()), "created_at": CREATED_AT, **overrides}
    return seal_v2(key.public, PLAINTEXT, compression=compression, **args)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_round_trip(key: HpkePrivateKey, compression: str) -> None:
    envelope = sealed(key, compression)
    assert list(envelope) == list(ENVELOPE_V2_FIELDS)
    assert (envelope["v"], envelope["suite"], envelope["kid"]) == (2, key.suite, key.kid)
    assert len(base64.b64decode(envelope["enc"])) == SUITES[key.suite].enc_bytes
    assert open_v2(HpkeKeyring([key]), envelope, device_id=DEVICE) == PLAINTEXT
    assert open_v2(HpkeKeyring([key]), parse_envelope_v2(envelope), device_id=DEVICE) == PLAINTEXT


def test_gzip_is_applied_before_sealing(key: HpkePrivateKey) -> None:
    plain, packed = sealed(key, "none"), sealed(key, "gzip")
    assert len(base64.b64decode(packed["ciphertext"])) == len(gzip.compress(PLAINTEXT, 6, mtime=0)) + 16
    assert len(base64.b64decode(plain["ciphertext"])) == len(PLAINTEXT) + 16


def test_every_seal_is_fresh(key: HpkePrivateKey) -> None:
    batch_id = str(uuid.uuid4())
    first, second = (sealed(key, batch_id=batch_id) for _ in range(2))
    assert first["enc"] != second["enc"]
    assert first["ciphertext"] != second["ciphertext"]


def test_default_suite_is_the_hybrid_post_quantum_one() -> None:
    assert DEFAULT_SUITE == SUITE_HYBRID
    assert HpkePrivateKey.generate().suite == SUITE_HYBRID
    assert SUITES[SUITE_HYBRID].kem_id == 0x647A


def test_a_rotated_keyring_opens_batches_sealed_to_the_old_key(keys) -> None:
    old, new = keys[SUITE_HYBRID], HpkePrivateKey.generate(SUITE_HYBRID)
    spooled = sealed(old)
    ring = HpkeKeyring([old]).with_new_key(new)
    assert ring.current == new
    assert [k.kid for k in ring.public_keys()] == [new.kid, old.kid]
    assert open_v2(ring, spooled, device_id=DEVICE) == PLAINTEXT
    assert open_v2(ring, sealed(new), device_id=DEVICE) == PLAINTEXT


# --- bound fields --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device_id", OTHER_DEVICE),
        ("batch_id", "6f1c2a4e-8b3d-4f5a-9c7e-2d1b0a9f8e7d"),
        ("created_at", "2026-11-28T16:00:01Z"),
        ("created_at", "2026-11-28T16:00:00+00:00"),
        ("compression", "none"),
    ],
)
def test_a_changed_header_field_fails_authentication(key: HpkePrivateKey, field: str, value: str) -> None:
    """Even a sender that rewrites device_id to its own (authenticated) id cannot open another's batch."""
    envelope = dict(sealed(key), **{field: value})
    with pytest.raises(DecryptionError):
        open_v2(HpkeKeyring([key]), envelope, device_id=envelope["device_id"])


def test_an_envelope_of_another_device_is_refused_before_decryption(key: HpkePrivateKey) -> None:
    with pytest.raises(DeviceMismatchError) as raised:
        open_v2(HpkeKeyring([key]), sealed(key), device_id=OTHER_DEVICE)
    assert raised.value.status == 403
    assert raised.value.field == "device_id"


def test_a_kid_of_another_server_key_fails_authentication(key: HpkePrivateKey) -> None:
    """The wrong private key: the kid swapped to another key the server holds, of the same suite."""
    other = HpkePrivateKey.generate(key.suite)
    envelope = dict(sealed(key), kid=other.kid)
    with pytest.raises(DecryptionError):
        open_v2(HpkeKeyring([key, other]), envelope, device_id=DEVICE)


def test_a_key_the_server_does_not_hold_is_unknown(key: HpkePrivateKey) -> None:
    with pytest.raises(UnknownKeyError):
        open_v2(HpkeKeyring([HpkePrivateKey.generate(key.suite)]), sealed(key), device_id=DEVICE)


def test_a_changed_suite_is_refused(keys) -> None:
    with pytest.raises(EnvelopeError, match="enc: must decode to 1120 bytes"):
        open_v2(HpkeKeyring(keys.values()), dict(sealed(keys[SUITE_X25519]), suite=SUITE_HYBRID), device_id=DEVICE)
    hybrid = dict(sealed(keys[SUITE_HYBRID]), kid=keys[SUITE_X25519].kid)
    with pytest.raises(EnvelopeError, match="is of suite x25519"):
        open_v2(HpkeKeyring(keys.values()), hybrid, device_id=DEVICE)


@pytest.mark.parametrize("field", ["enc", "ciphertext"])
@pytest.mark.parametrize("position", [0, -1])
def test_a_flipped_bit_of_enc_or_ciphertext_fails_authentication(key, field: str, position: int) -> None:
    envelope = sealed(key)
    raw = bytearray(base64.b64decode(envelope[field]))
    raw[position] ^= 0x01
    with pytest.raises(DecryptionError):
        open_v2(HpkeKeyring([key]), dict(envelope, **{field: b64(bytes(raw))}), device_id=DEVICE)


def test_a_truncated_ciphertext_fails_authentication(key: HpkePrivateKey) -> None:
    envelope = sealed(key)
    raw = base64.b64decode(envelope["ciphertext"])
    with pytest.raises(DecryptionError):
        open_v2(HpkeKeyring([key]), dict(envelope, ciphertext=b64(raw[:-1])), device_id=DEVICE)


def test_a_low_order_x25519_point_is_a_decryption_error(keys) -> None:
    key = keys[SUITE_X25519]
    for point in (bytes(32), b"\x01" + bytes(31)):
        with pytest.raises(DecryptionError):
            open_v2(HpkeKeyring([key]), dict(sealed(key), enc=b64(point)), device_id=DEVICE)


def test_enc_and_ciphertext_of_two_envelopes_do_not_mix(key: HpkePrivateKey) -> None:
    batch_id = str(uuid.uuid4())
    first, second = sealed(key, batch_id=batch_id), sealed(key, batch_id=batch_id)
    with pytest.raises(DecryptionError):
        open_v2(HpkeKeyring([key]), dict(first, enc=second["enc"]), device_id=DEVICE)


# --- bounds --------------------------------------------------------------------------------------


def test_seal_refuses_a_plaintext_past_the_limit(keys) -> None:
    with pytest.raises(PayloadTooLargeError):
        seal_v2(
            keys[SUITE_X25519].public,
            b"x" * 1001,
            device_id=DEVICE,
            batch_id=str(uuid.uuid4()),
            created_at=CREATED_AT,
            max_plaintext_bytes=1000,
        )


@pytest.mark.parametrize(
    "change",
    [{"device_id": "a\nb"}, {"batch_id": "nope"}, {"created_at": "2026-11-28 16:00"}, {"compression": "br"}],
)
def test_seal_refuses_bad_arguments(keys, change: dict) -> None:
    args = {"device_id": DEVICE, "batch_id": str(uuid.uuid4()), "created_at": CREATED_AT, **change}
    with pytest.raises(ValueError):  # noqa: PT011 - each argument has its own message
        seal_v2(keys[SUITE_X25519].public, PLAINTEXT, **args)


def test_an_uncompressed_plaintext_past_the_limit_is_refused_before_decryption(keys) -> None:
    key = keys[SUITE_X25519]
    envelope = sealed(key, "none")
    with pytest.raises(PayloadTooLargeError):
        open_v2(HpkeKeyring([key]), envelope, device_id=DEVICE, max_plaintext_bytes=len(PLAINTEXT) - 1)
    tampered = dict(envelope, ciphertext=b64(os.urandom(len(PLAINTEXT) + 16)))  # no decryption needed to refuse
    with pytest.raises(PayloadTooLargeError):
        open_v2(HpkeKeyring([key]), tampered, device_id=DEVICE, max_plaintext_bytes=len(PLAINTEXT) - 1)
    assert open_v2(HpkeKeyring([key]), envelope, device_id=DEVICE, max_plaintext_bytes=len(PLAINTEXT)) == PLAINTEXT


def test_a_gzip_bomb_stops_at_the_limit(keys) -> None:
    key = keys[SUITE_X25519]
    bomb = seal_v2(
        key.public,
        b"0" * (8 * 1024 * 1024),
        device_id=DEVICE,
        batch_id=str(uuid.uuid4()),
        created_at=CREATED_AT,
        max_plaintext_bytes=16 * 1024 * 1024,
    )
    assert len(bomb["ciphertext"]) < 20_000
    with pytest.raises(PayloadTooLargeError):
        open_v2(HpkeKeyring([key]), bomb, device_id=DEVICE)


def test_a_huge_ciphertext_is_refused_before_it_is_decoded(keys) -> None:
    envelope = sealed(keys[SUITE_X25519])
    with pytest.raises(PayloadTooLargeError):
        parse_envelope_v2(dict(envelope, ciphertext="A" * 4096), max_ciphertext_bytes=1024)
    with pytest.raises(PayloadTooLargeError):  # not even valid base64: the length decides first
        parse_envelope_v2(dict(envelope, ciphertext="!" * 4096), max_ciphertext_bytes=1024)


# --- hostile envelopes ---------------------------------------------------------------------------

HUGE = "x" * 10_000_000


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"v": 1}, "v"),
        ({"v": "2"}, "v"),
        ({"v": 2.0}, "v"),
        ({"v": True}, "v"),
        ({"v": None}, "v"),
        ({"suite": "x448"}, "suite"),
        ({"suite": ["x25519"]}, "suite"),
        ({"suite": HUGE}, "suite"),
        ({"kid": "ABCDEF0123456789"}, "kid"),
        ({"kid": 12}, "kid"),
        ({"kid": HUGE}, "kid"),
        ({"device_id": ""}, "device_id"),
        ({"device_id": "a" * 65}, "device_id"),
        ({"device_id": "dev\n7f3a"}, "device_id"),
        ({"device_id": "dévice"}, "device_id"),
        ({"device_id": {"id": 1}}, "device_id"),
        ({"device_id": HUGE}, "device_id"),
        ({"batch_id": "{6f1c2a4e-8b3d-4f5a-9c7e-2d1b0a9f8e7d}"}, "batch_id"),
        ({"batch_id": HUGE}, "batch_id"),
        ({"created_at": "2026-11-28T16:00:00"}, "created_at"),
        ({"created_at": 1764345600}, "created_at"),
        ({"created_at": HUGE}, "created_at"),
        ({"compression": "br"}, "compression"),
        ({"compression": ["gzip"]}, "compression"),
        ({"enc": "not base64!"}, "enc"),
        ({"enc": b64(bytes(31))}, "enc"),
        ({"enc": 5}, "enc"),
        ({"enc": HUGE}, "enc"),
        ({"ciphertext": b64(bytes(15))}, "ciphertext"),
        ({"ciphertext": "QQ"}, "ciphertext"),
        ({"ciphertext": None}, "ciphertext"),
        ({"ciphertext": HUGE}, "ciphertext"),
        ({"salt": b64(bytes(32))}, "salt"),
        ({"nonce": "AAAA"}, "nonce"),
    ],
)
def test_hostile_fields_are_contract_errors(keys, change: dict, field: str) -> None:
    key = keys[SUITE_X25519]
    with pytest.raises(ContractError) as raised:
        open_v2(HpkeKeyring([key]), {**sealed(key), **change}, device_id=DEVICE)
    assert raised.value.field == field
    assert len(raised.value.detail) < 400


@pytest.mark.parametrize("missing", ENVELOPE_V2_FIELDS)
def test_every_field_is_required(keys, missing: str) -> None:
    envelope = {k: v for k, v in sealed(keys[SUITE_X25519]).items() if k != missing}
    with pytest.raises(EnvelopeError) as raised:
        parse_envelope_v2(envelope)
    assert raised.value.field == missing


@pytest.mark.parametrize("body", [None, [], "envelope", 2, b"{}"])
def test_a_body_that_is_not_an_object_is_an_envelope_error(body) -> None:
    with pytest.raises(EnvelopeError):
        parse_envelope_v2(body)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_mangled_envelope_gives_a_contract_error_or_opens(keys, data) -> None:
    key = keys[SUITE_X25519]
    envelope = sealed(key)
    for field in data.draw(st.lists(st.sampled_from(ENVELOPE_V2_FIELDS), max_size=3, unique=True)):
        envelope[field] = data.draw(_json | st.text(max_size=80))
    with contextlib.suppress(ContractError):
        assert open_v2(HpkeKeyring([key]), envelope, device_id=DEVICE) == PLAINTEXT


# --- keys and keyrings ---------------------------------------------------------------------------


def test_private_key_bytes_never_show(key: HpkePrivateKey) -> None:
    text = repr(key) + repr(HpkeKeyring([key]))
    assert b64(key.raw) not in text
    assert key.raw.hex() not in text
    assert key.kid in text or key.kid in repr(HpkeKeyring([key]))


def test_public_key_object_round_trips(key: HpkePrivateKey) -> None:
    announced = key.public.to_json()
    assert set(announced) == {"suite", "kid", "public_key"}
    assert HpkePublicKey.from_json(json.loads(json.dumps(announced))) == key.public
    assert len(base64.b64decode(announced["public_key"])) == SUITES[key.suite].public_key_bytes


@pytest.mark.parametrize(
    "change",
    [
        {"kid": "0000000000000000"},
        {"suite": "x448"},
        {"public_key": b64(bytes(31))},
        {"public_key": "%%%"},
        {"extra": 1},
    ],
)
def test_a_bad_public_key_object_is_refused(keys, change: dict) -> None:
    with pytest.raises(KeyFormatError):
        HpkePublicKey.from_json({**keys[SUITE_X25519].public.to_json(), **change})


def test_a_hybrid_public_key_of_the_wrong_suite_length_is_refused(keys) -> None:
    with pytest.raises(KeyFormatError):
        HpkePublicKey(SUITE_HYBRID, keys[SUITE_X25519].public.raw)
    with pytest.raises(KeyFormatError):
        HpkePublicKey(SUITE_HYBRID, b"\xff" * 1216)  # not an ML-KEM-768 key


def test_select_public_key_prefers_the_suite(keys) -> None:
    published = [keys[SUITE_X25519].public, keys[SUITE_HYBRID].public]
    assert select_public_key(published) == keys[SUITE_HYBRID].public
    assert select_public_key(published, SUITE_X25519) == keys[SUITE_X25519].public
    assert select_public_key(published[1:], SUITE_X25519) == keys[SUITE_HYBRID].public
    assert select_public_key([]) is None


def test_keyring_file_round_trip_with_mode_600(tmp_path: Path, keys) -> None:
    path = tmp_path / "ring.json"
    old_umask = os.umask(0)
    try:
        HpkeKeyring(keys.values()).save(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = HpkeKeyring.load(path)
    assert [(k.suite, k.kid, k.raw) for k in loaded] == [(k.suite, k.kid, k.raw) for k in keys.values()]
    assert json.loads(path.read_text())["format"] == "atlas-hpke-keyring/1"
    assert [p.name for p in tmp_path.iterdir()] == ["ring.json"], "no temporary file left behind"
    for suite, key in keys.items():
        assert open_v2(loaded, sealed(key), device_id=DEVICE) == PLAINTEXT, suite


def _entry(key: HpkePrivateKey, **change) -> dict:
    return {"format": "atlas-hpke-keyring/1", "keys": [{**key.to_json(), **change}]}


@pytest.mark.parametrize(
    "content",
    [
        "",
        "not json",
        "[]",
        '{"format": "atlas-hpke-keyring/2", "keys": []}',
        '{"format": "atlas-hpke-keyring/1", "keys": {}}',
        '{"format": "atlas-hpke-keyring/1", "keys": [], "more": 1}',
        json.dumps({"format": "atlas-hpke-keyring/1", "keys": [None]}),
        json.dumps({"format": "atlas-hpke-keyring/1", "keys": [{}] * 65}),
        "1" * (1024 * 1024 + 1),
    ],
)
def test_a_malformed_keyring_file_is_a_key_format_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "ring.json"
    path.write_text(content)
    with pytest.raises(KeyFormatError, match=str(path)):
        HpkeKeyring.load(path)


@pytest.mark.parametrize(
    "change",
    [
        {"kid": "0000000000000000"},
        {"suite": "x448"},
        {"private_key": b64(bytes(31))},
        {"private_key": 7},
        {"created_at": ["x"]},
        {"public_key": "AAAA"},
    ],
)
def test_a_bad_keyring_entry_is_refused_without_showing_the_key(tmp_path: Path, keys, change: dict) -> None:
    key = keys[SUITE_X25519]
    path = tmp_path / "ring.json"
    path.write_text(json.dumps(_entry(key, **change)))
    with pytest.raises(KeyFormatError) as raised:
        HpkeKeyring.load(path)
    assert b64(key.raw) not in str(raised.value)


def test_a_missing_keyring_file_is_a_key_format_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFormatError, match="cannot read"):
        HpkeKeyring.load(tmp_path / "absent.json")
