"""Known-answer tests for wire contract v2, tied to docs/protocol.md section 17.

The literal values below are the document's v2 examples. The X25519 envelope is rebuilt with an independent
RFC 9180 implementation (``hpke_reference``) from its fixed ephemeral key, since ``cryptography`` draws that key
itself; the hybrid envelope, which ML-KEM's randomised encapsulation makes unreproducible, is opened both by the
contract code and by hand (X-Wing written out). The document's marked blocks must equal these values, and its
standalone sealing example must produce envelopes the contract opens. Pure: no database, no network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid

import pytest

from atlas.contract import (
    SUITE_HYBRID,
    SUITE_X25519,
    DecryptionError,
    HpkeKeyring,
    HpkePrivateKey,
    HpkePublicKey,
    decode_content,
    info_v2,
    open_v2,
    parse_envelope_v2,
)

from . import hpke_reference as ref
from .protocol_doc import BATCH_ID, CREATED_AT, DOC_PATH, PLAINTEXT, marked_blocks

DEVICE_ID = "d3b07384-d9a0-4c3e-8f1a-2b5c6d7e8f90"

# Section 17.7.1: x25519, reproducible.
X_PRIVATE = bytes(range(0x20, 0x40))
X_PRIVATE_B64 = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="
X_PUBLIC_HEX = "358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254"
X_PUBLIC_B64 = "NYBy1jZYgNGu6jKa35EhODhR7SGijjt16WXQ0s0WYlQ="
X_KID = "a0289810032eb417"
X_EPHEMERAL = bytes(range(0x80, 0xA0))
X_ENC_HEX = "493e82fc74464a59268817623d2053c5eb8e2cc4a988b4fee179ec6b010d531d"
X_INFO = (
    b"atlas-widget-logs/v2\nx25519\na0289810032eb417\nd3b07384-d9a0-4c3e-8f1a-2b5c6d7e8f90\n6f1c2a4e-8b3d-4f5a-9c7e-2d1b0a9f8e7d\n"
    b"2026-11-28T16:00:00Z\nnone"
)
X_TAG_HEX = "5821174a2ecaa56cb576bb473ee67785"
X_CIPHERTEXT_B64 = (
    "cw4aZj0Heamc6Stgc5649+nb5QNNJNG6Yuy7+9znt9am4a5nFubskSZedOO65aJhVsbC6m0mtZ2NIf92hVcO356bobZoM6pCbhw/s1AOsG58"
    "errljX1w9i8pigYbatB3Gv+EJLQReagsxU1GnMLhILFRR+slln3XFcv8v5gP0N81fujQ0hva+3JCFnjGaZAUizn4jJi95Qc1FwQ97alvFG1G"
    "+jaLXiU+aHzG8jO+/t0rxQIfY//Qkh4zeqWUVkiH+oKfqAUIeFlRAtVQLRWKVJLih8Q33SB4fBMyVy5+88iBSQv0fcN6OFyZ4DxcFLefSRJ6"
    "pyzbtnU1CwhNhiYNke2mp+xtrPamJVL+/tBa+Y36hUOfFOx6xmyK6uVTT//hHnkOToCG6ibA1LIpMZJ5TH0jOszi18G4GPiBn5H1zeF2Vg3z"
    "7YZMEjCrF3OSf0a2UX35aNwynLxm/jrfVFDBHxiTzNatfRt+wSsv/ZcbFa7n0dkNTSqPm0e8eD7638/rnRFdcS+VHYgtoMekQbGBny9dcm4U"
    "5uIbQ4dGhM4Ule+NCxXV4OOVRIoZ4qZlXE5jz4y9o5pQaTEcjavUlGh//4u2V9r7vpuoxfWUcPOk/MEuqVML57wQaJA3iyttGfBuMveSdyfL"
    "v/p4GUhywRRRbfr2EklVyKm+eWOCRaO1pjkEoU5YIRdKLsqlbLV2u0c+5neF"
)
X_ENVELOPE = {
    "v": 2,
    "suite": "x25519",
    "kid": X_KID,
    "device_id": DEVICE_ID,
    "batch_id": BATCH_ID,
    "created_at": CREATED_AT,
    "compression": "none",
    "enc": base64.b64encode(bytes.fromhex(X_ENC_HEX)).decode("ascii"),
    "ciphertext": X_CIPHERTEXT_B64,
}

# Section 17.7.2: mlkem768-x25519, to open.
H_SEED = bytes(range(0x60, 0x80))
H_SEED_B64 = "YGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn8="
H_KID = "d13209d86547a31a"
H_PUBLIC_B64 = (
    "j+NIKHG1iLVqmTNJcWymvuM27MuyItGMP2BUuyA+sGd+geaTOWsL53Oslkuk+HUWVgCrWsQb0pRQjLRjgyZg8nEf1mh0xGIdleIQKSKHtnEf"
    "VJRGU1xxdEszycWOWkHKGby4m4cysuqVpvkZdIAoZaZMq1xYqnszHrdqw+QXPZqdMyUXsoZtD0qiZ9eXCou7r7FnQRySy8Z2ZNOxjfACoPyR"
    "gPkjBGZ6cjuMZdAH9NaWxKRNyrBFgJgy/2cEbEkVuWwT0JMQDIAlCzI+/rXO7fV9oZNZADFEJHSFgZCs3AhAdQWMYIuSjIxFRJrLncmz+DIf"
    "VjxILkSuXYWh1eUpFmuBLneRxvCueEYVGOK821eR0suyByxS0lVKq9N9cYBaiktQ+TaqkmPB9DK49gM/8nsLVhu1APSIMYt3jEGTqexhrmxg"
    "Osk/IRlUv7RHuzcg7Ls0v0Yz/WaKhpp75QAYusYkhrsCLVILseaK4PVzkwcTeuEVXjI4xedXq+UYO5dDO1hR/GwKfMHM7iF6/vtNgDINRGm0"
    "fCU0JaI/XxBlWdKjAzFp/tWguYwCvXiFFkaonLlH+Il8jIlWxLabOfpy5jZDkgma+pdcpjixvENOPEDN8Ei7mlKlBtdDviBPGCRInlVmo3C7"
    "cFhxH4uG3/WSdvrGAQSQUca27ug7SMYCMWqk7nkWuUgFOqiEfQOfg2GViKwxKVoqYPcvdDS+H7l9kdOP5zcgJ6tolluTI9GGOsddAnluorFH"
    "ExoWk1mwhDUII4nAEpB6nWQFOZWwk9ojGaoQ5dy6wucH0aWDyONGguJI7/uVF4rCRuQraEqhflvMZBB/t7MpdHkXijA8T4ERYWsLIhaf4HtK"
    "ZaOj7cJt3Js5tqmxmeNJSGe2j/OtjxWnAgbFFYulDurKT+VYJ2GS0UTFJbp5aYWd41TKTEGzP6bE7Vi0F8wZdMmAyXkTI6By3LCMxReUwOa6"
    "ftR4A5slnnK+kzs8vzC3i5mbD/kZwXyUUmK4UhSymkLGlBUj2UqtX4EL/TZlp3YExZu+/npraGyWn4CpVmJZ0Vi87BegEKucLhRepiIqD8Oc"
    "gBjCaboJZkIT2Yt9YopR7wRYsHoqcMakwkxhEpRqguC0MCalImzNhdKi1TgDnBo1UxEbQkZ4DEMix3yBP6WiRQBSOBIFXNtsUaXBUDwXvVJo"
    "pet54Lxt9HwCPpGCBcPOcpFENTZsXugf28GN5dlzxUFCC2o7gmwMpUiy2jwfnlB672ylhOZNuBFQWiIULemOibeHmEEjwEp4/ahnKQBpoDiy"
    "oUpnL/DBf+KKg6ml26aapDF1qfFCoYc6hMBvxEpAX2iD5KWfbhmKwJQjJupX7GlsbSyO5QAO45mG5ZADPfUacagG+yVojVwbOGgEMdcANYpx"
    "L6dTO0II9DuI3uiIzENQR9cPiONQsaZCnCx18wiuWLmN/zchfMMugBAe2abLtLNYk5xxKaxefjR4e9aLTlEYvxUGQUQTUroGFdobYzYxFFMN"
    "+2cGbcYEL9FFhhBQKyGlUGpL70vWzl1z6JDXF6FTP9JckD/98wlSsXgSMU35cehV0r89iaiswqcqTpsfeY0zh4BZXEb/2qTjn2/1CFJZHnHz"
    "Jw=="
)
H_ENVELOPE = {
    "v": 2,
    "suite": "mlkem768-x25519",
    "kid": H_KID,
    "device_id": DEVICE_ID,
    "batch_id": BATCH_ID,
    "created_at": CREATED_AT,
    "compression": "none",
    "enc": (
        "TpcrlZyqS0V8erG16rnqyrG/1Zd/3acf8thYViB1sdCUMi3yEFxWemcCbQCBlX/rIzn5XOE5b7OT0NQquasJfYsU6E1YwWoq83Dq"
        "YbS5GBJe69i7TgIGKKyxBZAeC0/9Jc40qKJyQcIwuFeXEIXTy7BDtuKMGIoJUQSjwIslXAscjGWKGc5khBi9B/AXem7VXmcwCF6X"
        "YdzMeSy0Ar1mZUHYX2hdSj3odIW5JG7h/1+je9LW3yvGtmfqeVGrOy4D8vOqn0aQc7kCNep3CYXIW+cnEraSbq6ywEm9dHH8kcYC"
        "F1j7Ut3dZZr9NI1cHc7orgMYEm2R18J759nGwTgsgYg7TFR1iGxp67uCOx3hngrcNVSWr2tFga07qkJ5EXqbUcRDChgalme/AlEX"
        "4EBaEqjDIGPUkn72gOMwoeWHifTMQ6jYxsIKdPbQIZ1OhACXrgAukvX+wZ11VtEjM/bHTlDRpMqYP/fV8xqnOFM9qF0SFeaJEijQ"
        "J8rQGacYRk7Sksrb5Dv12FYj074MG4+UbvngR5cvfoukhibK+7E3e5l3XtfS+guqAu32so0K0+i/AEXug2qq0UV49lQqzZjHho4r"
        "r1HwD4f6kHVHMGLlworzlTdHuDEjmZNQaW+UqK7GoHnpsQofJFzDvdbV3vohTFxo9AUE9wQGNaM1qQRuhImzJmk5g3mwM2AsMXBW"
        "ARsUCY1zdFwih0w6YNslrejMEMcrs53uctHNevBO0QyqEgE1f+VCdTs3MxPIzueaYV2q+RksSMk4QZAutqKIog/6U4qg+Z2jFc1o"
        "M3LtKXcVUYWliaADGSM06fWEbs/C6Gyvgl7wWPhSpP2MQguo9dvPvFaXKDp1S4yzC3FhezktCwjpAMjNezsVJSjoJWmj5t4Tegpo"
        "DNp5Wtd0zkPSMGdSuGTX7r4sPvGJsRmcuM1lEvNDZT8YBGT+7s/yVQFuKoJCoDyP5TPl7AlPo0q9eubxYo5o0PtxPIeG5fjxBGKY"
        "JX8uPxA+cgYLWrIvasC4OBXxg3iBXBrLGYCnJlA1tYehxQVl8lEp/zf7fJUMQA2TDfplH+Rkkqg6XxWfgDqdcf9DDy5P/lTglp9L"
        "kwoSwgcbNzoza1WMSLAKv4PVHrKVYYnDeyIMbE7+PFgmTxewMWmNH1mgVdkD5ukFvxN9xzCQDpScgtX0AYBIB9K3OiF9lAguvfD4"
        "eZ/6elqOerCZDEWchmlHqbwixF33gZjLsgrDsPNqJ4j43JWckPvuvnxiDMAF5NB4q27M4bKv3WNbnzgsDdIoV5yhfMy6ZvfZU8HC"
        "F6WblZhZsiX9gh1fN6uj7evjqDSgmXgaHLfIgLfznpWxI785yB9griyZVq0eL75XvoXNYqxwT0nRsaz4xxZoUPV67H58sRniG3wp"
        "CoT4X2h3yJ/OvL3xGa+9RsvD+tIxoL8Z86s+n5jR0jM+FriWvJ4Ouo/jnH6if6icmTHZmXw2FswC3i74HmCu8J0zWVTeIw=="
    ),
    "ciphertext": (
        "YtBAjy98bLbPaw4SaDiI06G6p/cUW43sEUVc02IxK9izreB3cVwCxHCzlmbPzGamRzNHEiu1ac4sh5d4cDjYRc2fCcVzabwFXRgK"
        "cKEz8cnOLousA42uwq40bRZgCudRIGDEf1enrdGgQ6OVT1V6/B39DvgMYSmSAVUQybyETiziCWjkgg/Iew3XIWD1kE8ny+siSbeR"
        "dRFTlYpvCYu9gHa8TnJmRSgo1m6okfAU0448kiFw4k5NTsYZBisStKCxK4ZycSWSkZNDDJqKY82ZCjxGp2lV6BxHtY5JrdAnbqqZ"
        "I1XC31ZknUh8Yj1zvKGWUKNyclrmOnIQtscTDP5uz0KxSqmedphd6xKcXIEveJlJV2pONhSmpKCttuhx6bsxlp4YlEDieNaMGX/E"
        "MI4I2s6v51Kgmv5Wz/zPOFx2s9VBHo3ChTp55R0af9CfSm/uSFGOm7m13K0mz3rDWsTv0o2CK5rpnIcAg306bn1QKC/TMA6SZeSM"
        "n2yrw1oTIZZf2OuS6VcOuWDbppfi8JlPQ/hWZ11SWyV9WFPlWJA5/pnP4NG13UoYwx0lYjyzPYaxAAqeCbgRwSirP0+M1qeS6JW3"
        "63VAOExQkcXUXhD+w+6ldcmemwn6bAJ1F7DPBcV2BMMTudGFeUm0KTddCAT3fJ6QIYpyHtAs9br2hX/uXyFa2JKNZ/eX1V72HcGh"
        "dE83hwV6"
    ),
}


@pytest.fixture(scope="module")
def blocks() -> dict[str, str]:
    return marked_blocks(DOC_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def x_key() -> HpkePrivateKey:
    return HpkePrivateKey(SUITE_X25519, X_PRIVATE)


@pytest.fixture(scope="module")
def h_key() -> HpkePrivateKey:
    return HpkePrivateKey(SUITE_HYBRID, H_SEED)


def test_x25519_key_and_kid(x_key: HpkePrivateKey) -> None:
    assert base64.b64decode(X_PRIVATE_B64) == X_PRIVATE
    assert x_key.public.raw.hex() == X_PUBLIC_HEX
    assert base64.b64decode(X_PUBLIC_B64).hex() == X_PUBLIC_HEX
    assert hashlib.sha256(bytes.fromhex(X_PUBLIC_HEX)).hexdigest()[:16] == X_KID == x_key.kid


def test_hybrid_key_and_kid(h_key: HpkePrivateKey) -> None:
    mlkem_key, x_part = ref.xwing_expand(H_SEED)
    public = mlkem_key.public_key().public_bytes_raw() + x_part.public_key().public_bytes_raw()
    assert len(public) == 1216
    assert h_key.public.raw == public == base64.b64decode(H_PUBLIC_B64)
    assert hashlib.sha256(public).hexdigest()[:16] == H_KID == h_key.kid


def test_info_layout() -> None:
    assert info_v2(SUITE_X25519, X_KID, DEVICE_ID, BATCH_ID, CREATED_AT, "none") == X_INFO
    assert parse_envelope_v2(X_ENVELOPE).info() == X_INFO
    assert len(X_INFO) == 144
    assert not X_INFO.endswith(b"\n")


def test_x25519_envelope_is_rfc9180_with_the_fixed_ephemeral_key() -> None:
    """A second implementation of RFC 9180 reproduces the envelope exactly from the fixed ephemeral key."""
    enc, ciphertext = ref.seal_x25519(X_EPHEMERAL, bytes.fromhex(X_PUBLIC_HEX), X_INFO, PLAINTEXT)
    assert enc.hex() == X_ENC_HEX
    assert base64.b64encode(ciphertext).decode("ascii") == X_CIPHERTEXT_B64
    assert len(ciphertext) == len(PLAINTEXT) + 16
    assert ciphertext[-16:].hex() == X_TAG_HEX
    assert ref.open_x25519(X_PRIVATE, enc, X_INFO, ciphertext) == PLAINTEXT


def test_contract_opens_the_x25519_vector(x_key: HpkePrivateKey) -> None:
    opened = open_v2(HpkeKeyring([x_key]), X_ENVELOPE, device_id=DEVICE_ID)
    assert opened == PLAINTEXT
    assert decode_content(opened).machine.serial_number == "C02ZK1ABMD6T"


def test_hybrid_vector_opens_by_the_contract_and_by_hand(h_key: HpkePrivateKey) -> None:
    assert open_v2(HpkeKeyring([h_key]), H_ENVELOPE, device_id=DEVICE_ID) == PLAINTEXT
    envelope = parse_envelope_v2(H_ENVELOPE)
    assert len(envelope.enc) == 1120
    assert ref.open_xwing(H_SEED, envelope.enc, envelope.info(), envelope.ciphertext) == PLAINTEXT


@pytest.mark.parametrize("which", ["x25519", "hybrid"])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kid", "0000000000000000"),
        ("device_id", "d3b07384-d9a0-4c3e-8f1a-2b5c6d7e8f91"),
        ("batch_id", BATCH_ID.upper()),
        ("created_at", "2026-11-28T16:00:01Z"),
        ("compression", "gzip"),
    ],
)
def test_vectors_refuse_any_changed_header(x_key, h_key, which: str, field: str, value: str) -> None:
    key, envelope = (x_key, X_ENVELOPE) if which == "x25519" else (h_key, H_ENVELOPE)
    changed = dict(envelope, **{field: value})
    keyring = HpkeKeyring([key, HpkePrivateKey(key.suite, bytes(32), "")])
    if field == "kid":  # a kid the server holds, but the envelope was not sealed to it
        changed["kid"] = HpkePrivateKey(key.suite, bytes(32)).kid
    with pytest.raises(DecryptionError):
        open_v2(keyring, changed, device_id=changed["device_id"])


def test_document_blocks_equal_the_vectors(blocks: dict[str, str]) -> None:
    assert blocks["vector:v2-x25519-private-key"] == X_PRIVATE_B64
    assert blocks["vector:v2-x25519-public-key"] == X_PUBLIC_B64
    assert blocks["vector:v2-x25519-kid"] == X_KID
    assert blocks["vector:v2-x25519-info"].encode("utf-8") == X_INFO
    assert blocks["vector:v2-x25519-ciphertext"] == X_CIPHERTEXT_B64
    assert json.loads(blocks["vector:v2-x25519-envelope"]) == X_ENVELOPE
    assert blocks["vector:v2-hybrid-private-key"] == H_SEED_B64
    assert blocks["vector:v2-hybrid-public-key"] == H_PUBLIC_B64
    assert blocks["vector:v2-hybrid-kid"] == H_KID
    assert json.loads(blocks["vector:v2-hybrid-envelope"]) == H_ENVELOPE
    assert blocks["vector:plaintext"].encode("utf-8") == PLAINTEXT


def test_document_states_the_derived_values() -> None:
    flowed = " ".join(DOC_PATH.read_text(encoding="utf-8").split())
    for text in (
        X_PRIVATE.hex(),
        X_PUBLIC_HEX,
        X_EPHEMERAL.hex(),
        X_ENC_HEX,
        X_TAG_HEX,
        X_INFO.hex(),
        H_SEED.hex(),
        f"exactly these {len(X_INFO)} bytes",
        f'{{"suite": "x25519", "kid": "{X_KID}", "public_key": "{X_PUBLIC_B64}"}}',
        "`kem_id` | public key",
        "`0x647a`",
        "`0x0020`",
        "5c2e2f2f5e5c",
        '"format": "atlas-hpke-keyring/1"',
    ):
        assert text in flowed, text


def test_documented_public_key_object_is_what_the_code_gives(x_key: HpkePrivateKey) -> None:
    assert x_key.public.to_json() == {"suite": "x25519", "kid": X_KID, "public_key": X_PUBLIC_B64}
    assert HpkePublicKey.from_json(x_key.public.to_json()) == x_key.public


@pytest.mark.parametrize("suite", [SUITE_HYBRID, SUITE_X25519])
@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_standalone_example_seals_what_the_contract_opens(blocks: dict[str, str], suite: str, compression: str) -> None:
    namespace: dict = {"__name__": "protocol_example_v2"}
    exec(compile(blocks["example:seal-v2"], str(DOC_PATH), "exec"), namespace)  # noqa: S102 - the document's example
    key = HpkePrivateKey.generate(suite)
    batch_id = str(uuid.uuid4())
    envelope = namespace["seal_batch_v2"](key.public.to_json(), PLAINTEXT, DEVICE_ID, batch_id, CREATED_AT, compression)
    assert list(envelope) == list(X_ENVELOPE)
    assert open_v2(HpkeKeyring([key]), envelope, device_id=DEVICE_ID) == PLAINTEXT
    with pytest.raises(ValueError, match="not the key this kid names"):
        namespace["load_public_key"](dict(key.public.to_json(), kid="0" * 16))
