"""Known-answer tests of the v2 request signature, tied to docs/protocol.md section 18.3.

The literal values are the document's. Ed25519 is deterministic (RFC 8032), so the signature is reproduced
exactly; RFC 8032's own first test vector shows the primitive is plain Ed25519. Pure: no database, no network.
"""

from __future__ import annotations

import base64
import json

import pytest

from atlas.contract import (
    DeviceAuthError,
    DeviceKey,
    canonical_request,
    check_clock,
    parse_signed_headers,
    sign_request,
    verify_request,
)

from .protocol_doc import DOC_PATH, marked_blocks
from .test_protocol_vectors_v2 import DEVICE_ID, X_ENVELOPE

PRIVATE = bytes(range(0x40, 0x60))
PRIVATE_B64 = "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8="
PUBLIC_HEX = "2543b92ff1095511476adc8369db6ddc933665a11978dda1404ee1066ca9559d"
PUBLIC_B64 = "JUO5L/EJVRFHatyDadtt3JM2ZaEZeN2hQE7hBmypVZ0="
PATH = "/api/fleet/v2/widget-logs"
TIMESTAMP = 1795881600  # 2026-11-28T16:00:00Z
BODY_SHA256 = "ef199d1b2c49a9521bcf74450cbf5576735a4d17727cffb30303a48156d5ce17"
SIGNED = f"atlas-request/v2\n{DEVICE_ID}\nPOST\n{PATH}\n{TIMESTAMP}\n{BODY_SHA256}".encode()
SIGNATURE_HEX = (
    "184fb2ed41f6ab03c77e0e091514d3d3baa083e2eba0b08c89e6961187925bcf"
    "cb3099969265fade51342d137d261a8f0134750029b4a9642eff0b17e7171f07"
)
SIGNATURE_B64 = "GE+y7UH2qwPHfg4JFRTT07qgg+LroLCMieaWEYeSW8/LMJmWkmX63lE0LRN9JhqPATR1ACm0qWQu/wsX5xcfBw=="


def body() -> bytes:
    return json.dumps(X_ENVELOPE, separators=(",", ":")).encode("utf-8")


def test_rfc8032_first_vector_signs_as_the_rfc_says() -> None:
    key = DeviceKey(bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
    assert key.public_raw.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert key.private.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
        "d25bf5f0595bbe24655141438e7a100b"
    )


def test_vector_reproduces() -> None:
    key = DeviceKey(PRIVATE)
    assert base64.b64encode(PRIVATE).decode() == PRIVATE_B64
    assert key.public_raw.hex() == PUBLIC_HEX
    assert key.public_b64 == PUBLIC_B64
    assert len(body()) == 984
    assert canonical_request(DEVICE_ID, "post", PATH, str(TIMESTAMP), body()) == SIGNED
    headers = sign_request(key, DEVICE_ID, "POST", PATH, body(), timestamp=TIMESTAMP)
    assert headers == {"Atlas-Device": DEVICE_ID, "Atlas-Timestamp": str(TIMESTAMP), "Atlas-Signature": SIGNATURE_B64}
    assert base64.b64decode(SIGNATURE_B64).hex() == SIGNATURE_HEX
    verify_request(base64.b64decode(PUBLIC_B64), parse_signed_headers(headers), "POST", PATH, body())


def test_document_blocks_equal_the_vector() -> None:
    doc = DOC_PATH.read_text(encoding="utf-8")
    blocks = marked_blocks(doc)
    assert blocks["vector:device-private-key"] == PRIVATE_B64
    assert blocks["vector:device-public-key"] == PUBLIC_B64
    assert blocks["vector:device-signed-string"].encode() == SIGNED
    assert blocks["vector:device-signature"] == SIGNATURE_B64
    flowed = " ".join(doc.split())
    for text in (PUBLIC_HEX, SIGNATURE_HEX, f"Atlas-Timestamp: {TIMESTAMP}", "(984 bytes)", "**300 seconds**"):
        assert text in flowed


@pytest.mark.parametrize(
    "change",
    [
        {"method": "PUT"},
        {"path": "/api/fleet/enroll"},
        {"timestamp": TIMESTAMP + 1},
        {"body": b" " + body()},
        {"device_id": "another-device"},
    ],
)
def test_any_changed_part_fails_verification(change: dict) -> None:
    parts = {"method": "POST", "path": PATH, "timestamp": TIMESTAMP, "body": body(), "device_id": DEVICE_ID}
    headers = sign_request(DeviceKey(PRIVATE), DEVICE_ID, "POST", PATH, body(), timestamp=TIMESTAMP)
    parts.update(change)
    headers = dict(headers, **{"Atlas-Timestamp": str(parts["timestamp"]), "Atlas-Device": parts["device_id"]})
    with pytest.raises(DeviceAuthError, match="does not verify"):
        verify_request(
            bytes.fromhex(PUBLIC_HEX), parse_signed_headers(headers), parts["method"], parts["path"], parts["body"]
        )


def test_another_devices_key_fails_verification() -> None:
    headers = sign_request(DeviceKey.generate(), DEVICE_ID, "POST", PATH, body(), timestamp=TIMESTAMP)
    with pytest.raises(DeviceAuthError):
        verify_request(bytes.fromhex(PUBLIC_HEX), parse_signed_headers(headers), "POST", PATH, body())


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({}, "Atlas-Device"),
        ({"Atlas-Device": "x y", "Atlas-Timestamp": "1", "Atlas-Signature": SIGNATURE_B64}, "Atlas-Device"),
        ({"Atlas-Device": "d", "Atlas-Timestamp": "-5", "Atlas-Signature": SIGNATURE_B64}, "Atlas-Timestamp"),
        ({"Atlas-Device": "d", "Atlas-Timestamp": "1"}, "Atlas-Signature"),
        ({"Atlas-Device": "d", "Atlas-Timestamp": "1", "Atlas-Signature": "AAAA"}, "Atlas-Signature"),
        ({"Atlas-Device": "d", "Atlas-Timestamp": "1", "Atlas-Signature": "not base64!"}, "Atlas-Signature"),
    ],
)
def test_malformed_headers_are_refused_naming_the_header(headers: dict, field: str) -> None:
    with pytest.raises(DeviceAuthError) as caught:
        parse_signed_headers(headers)
    assert caught.value.field == field
    assert caught.value.status == 401


def test_clock_window_is_300_seconds_either_way() -> None:
    signed = parse_signed_headers(sign_request(DeviceKey(PRIVATE), DEVICE_ID, "POST", PATH, b"", timestamp=TIMESTAMP))
    check_clock(signed, now=TIMESTAMP + 300)
    check_clock(signed, now=TIMESTAMP - 300)
    for now in (TIMESTAMP + 301, TIMESTAMP - 301):
        with pytest.raises(DeviceAuthError, match="clock skew"):
            check_clock(signed, now=now)
