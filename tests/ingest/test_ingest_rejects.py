"""Every bad request gets its status and a reason, and leaves nothing queued or stored."""

from __future__ import annotations

import base64
import gzip
import json
import os
import socket
import struct
import uuid
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest

from atlas.contract import Key, SchemaError, associated_data, generate_encryption_key, seal
from atlas.core.config import Settings
from atlas.core.queue import accepted_marker
from atlas.ingest.intake import read_batch

from .. import batches
from ..fix_services import API_KEY


@pytest.fixture
def nothing_kept(db, redis, settings: Settings):
    """Check a batch left no row and no "accepted" marker (a marker is only written with its job)."""

    def check(batch_id: str) -> None:
        count = "SELECT count(*) FROM {} WHERE batch_id::text = lower(%s)"
        assert db.execute(count.format("batches"), (batch_id,)).fetchone() == (0,)
        assert db.execute(count.format("widget_logs"), (batch_id,)).fetchone() == (0,)
        assert not redis.exists(accepted_marker(settings, batch_id))

    return check


def tamper(field: str, value: object) -> Callable[[dict], dict]:
    """A change setting ``field`` to ``value``; a callable value is called when the test runs."""

    def change(envelope: dict) -> dict:
        return {**envelope, field: value() if callable(value) else value}

    return change


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def flip_ciphertext_bit(envelope: dict) -> dict:
    raw = bytearray(base64.b64decode(envelope["ciphertext"]))
    raw[0] ^= 1
    return {**envelope, "ciphertext": b64(bytes(raw))}


def flip_tag_bit(envelope: dict) -> dict:
    raw = bytearray(base64.b64decode(envelope["ciphertext"]))
    raw[-1] ^= 0x80
    return {**envelope, "ciphertext": b64(bytes(raw))}


# (name, change to a valid envelope, expected status, expected field)
ENVELOPE_CASES = [
    ("batch_id changed", tamper("batch_id", str(uuid.uuid4())), 400, "ciphertext"),
    ("created_at changed", tamper("created_at", lambda: batches.now_stamp(timedelta(seconds=-1))), 400, "ciphertext"),
    ("compression changed", tamper("compression", "none"), 400, "ciphertext"),
    ("nonce changed", tamper("nonce", b64(os.urandom(12))), 400, "ciphertext"),
    ("ciphertext bit flipped", flip_ciphertext_bit, 400, "ciphertext"),
    ("tag bit flipped", flip_tag_bit, 400, "ciphertext"),
    ("unknown kid", tamper("kid", "0123456789abcdef"), 400, "kid"),
    ("kid not hex", tamper("kid", "not-a-kid-at-all"), 400, "kid"),
    ("v = 2", tamper("v", 2), 400, "v"),
    ("v as string", tamper("v", "1"), 400, "v"),
    ("alg", tamper("alg", "AES-128-GCM"), 400, "alg"),
    ("compression unknown", tamper("compression", "brotli"), 400, "compression"),
    ("nonce not base64", tamper("nonce", "!!!not base64!!!"), 400, "nonce"),
    ("nonce wrong length", tamper("nonce", b64(b"12345678")), 400, "nonce"),
    ("ciphertext not base64", tamper("ciphertext", "abc$"), 400, "ciphertext"),
    ("ciphertext too short", tamper("ciphertext", b64(b"short")), 400, "ciphertext"),
    ("batch_id not a uuid", tamper("batch_id", "batch-1"), 400, "batch_id"),
    ("created_at not RFC 3339", tamper("created_at", "28/11/2026 16:00"), 400, "created_at"),
    ("created_at without zone", tamper("created_at", "2026-11-28T16:00:00"), 400, "created_at"),
    ("created_at 8 days old", tamper("created_at", lambda: batches.now_stamp(timedelta(days=-8))), 400, "created_at"),
    (
        "created_at 10 minutes ahead",
        tamper("created_at", lambda: batches.now_stamp(timedelta(minutes=10))),
        400,
        "created_at",
    ),
    ("missing nonce", lambda e: {k: v for k, v in e.items() if k != "nonce"}, 400, "nonce"),
    ("extra field", tamper("machine_id", "x"), 400, "machine_id"),
]


@pytest.mark.parametrize(
    ("change", "status", "field"), [c[1:] for c in ENVELOPE_CASES], ids=[c[0] for c in ENVELOPE_CASES]
)
def test_envelope_violations(ingest, keys, nothing_kept, change, status, field):
    envelope = batches.sealed(batches.content(2), keys["current"])
    response = ingest.post(change(envelope))
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert response.json()["detail"].startswith(f"{field}: ")
    nothing_kept(envelope["batch_id"])


def test_swapped_ciphertexts_fail(ingest, keys, nothing_kept):
    first = batches.sealed(batches.content(2), keys["current"])
    second = batches.sealed(batches.content(2), keys["current"])
    for a, b in ((first, second), (second, first)):
        response = ingest.post({**a, "ciphertext": b["ciphertext"], "nonce": b["nonce"]})
        assert response.status_code == 400
        assert "authentication failed" in response.json()["detail"]
    nothing_kept(first["batch_id"])
    nothing_kept(second["batch_id"])


def test_removed_key_is_rejected(ingest, nothing_kept):
    envelope = batches.sealed(batches.content(1), generate_encryption_key())
    response = ingest.post(envelope)
    assert response.status_code == 400
    assert response.json() == {"detail": f"kid: no configured key has id {envelope['kid']}", "field": "kid"}
    nothing_kept(envelope["batch_id"])


def sealed_raw(plaintext: bytes, key_b64: str, compression: str = "none") -> dict:
    return seal(
        plaintext,
        Key.from_base64(key_b64),
        batch_id=str(uuid.uuid4()),
        created_at=batches.now_stamp(),
        compression=compression,
    )


@pytest.mark.parametrize(
    ("plaintext", "status", "expect"),
    [
        (b"not json at all", 400, "not valid UTF-8 JSON"),
        (b"\xff\xfe{}", 400, "not valid UTF-8 JSON"),
        (b"[1, 2, 3]", 422, None),
        (b'{"machine": {}, "logs": []}', 422, None),
    ],
    ids=["not json", "not utf-8", "array", "empty machine"],
)
def test_plaintext_not_json_or_wrong_shape(ingest, keys, nothing_kept, plaintext, status, expect):
    envelope = sealed_raw(plaintext, keys["current"])
    response = ingest.post(envelope)
    assert response.status_code == status, response.text
    if expect:
        assert expect in response.json()["detail"]
    nothing_kept(envelope["batch_id"])


def break_log(**change) -> Callable[[dict], dict]:
    def apply(body: dict) -> dict:
        body["logs"][0].update(change)
        return body

    return apply


SCHEMA_CASES = [
    ("level unknown", break_log(level="FATAL"), ["logs", 0, "level"]),
    ("widget_type unknown", break_log(widget_type="bluetooth"), ["logs", 0, "widget_type"]),
    ("message too long", break_log(message="x" * 8193), ["logs", 0, "message"]),
    ("message with NUL", break_log(message="a\x00b"), ["logs", 0, "message"]),
    ("data not an object", break_log(data=[1, 2]), ["logs", 0, "data"]),
    ("data with NUL", break_log(data={"ssid": "a\x00"}), ["logs", 0]),
    ("data too large", break_log(data={"blob": "x" * 70000}), ["logs", 0]),
    ("timestamp as epoch", break_log(timestamp=1764345600), ["logs", 0, "timestamp"]),
    ("timestamp without zone", break_log(timestamp="2026-11-28T16:00:00"), ["logs", 0, "timestamp"]),
    ("unknown log field", break_log(severity="x"), ["logs", 0, "severity"]),
    ("machine_id empty", lambda b: {**b, "machine": {**b["machine"], "machine_id": ""}}, ["machine", "machine_id"]),
    (
        "serial missing",
        lambda b: {**b, "machine": {k: v for k, v in b["machine"].items() if k != "serial_number"}},
        ["machine", "serial_number"],
    ),
    ("hostname too long", lambda b: {**b, "machine": {**b["machine"], "hostname": "h" * 256}}, ["machine", "hostname"]),
    ("too many logs", lambda b: {**b, "logs": batches.logs(5001)}, ["logs"]),
]


@pytest.mark.parametrize(("change", "loc"), [c[1:] for c in SCHEMA_CASES], ids=[c[0] for c in SCHEMA_CASES])
def test_schema_violations_are_422_with_reasons(ingest, keys, nothing_kept, change, loc):
    body = change(batches.content(2))
    envelope = batches.sealed(body, keys["current"])
    response = ingest.post(envelope)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(v["loc"][: len(loc)] == loc and v["msg"] for v in detail), detail
    assert "x" * 100 not in response.text  # the offending input is not echoed back
    nothing_kept(envelope["batch_id"])


OUTSIDE_THE_WINDOW = pytest.mark.parametrize(
    ("when", "reason"),
    [
        ("2099-01-01T00:00:00Z", "is more than 5 minutes after the batch's created_at"),
        (timedelta(days=-3), "is more than 1 day before the batch's created_at"),
        (timedelta(days=-1, seconds=-1), "is more than 1 day before the batch's created_at"),
        (timedelta(minutes=5, seconds=1), "is more than 5 minutes after the batch's created_at"),
    ],
    ids=["2099", "3 days before", "1 day 1 s before", "5 min 1 s after"],
)


def content_with_a_log_at(when: str | timedelta, created_at: datetime) -> dict:
    body = batches.content(3)
    body["logs"][1]["timestamp"] = when if isinstance(when, str) else batches.format_timestamp(created_at + when)
    return body


@OUTSIDE_THE_WINDOW
def test_a_log_dated_outside_its_batchs_window_is_refused(
    ingest, keys, nothing_kept, when: str | timedelta, reason: str
):
    """A log dated in 2099 would stay a machine's latest reading; one days before its batch is no history."""
    created_at = datetime.now(UTC).replace(microsecond=0)
    body = content_with_a_log_at(when, created_at)
    envelope = batches.sealed(body, keys["current"], created_at=batches.format_timestamp(created_at))
    response = ingest.post(envelope)
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == [
        {"loc": ["logs", 1, "timestamp"], "msg": f"Value error, {reason}", "type": "value_error"}
    ]
    nothing_kept(envelope["batch_id"])


@OUTSIDE_THE_WINDOW
def test_a_plaintext_log_dated_outside_its_batchs_window_is_refused(make_settings, when: str | timedelta, reason: str):
    created_at = datetime.now(UTC).replace(microsecond=0)
    body = batches.plaintext_body(
        content_with_a_log_at(when, created_at), created_at=batches.format_timestamp(created_at)
    )
    with pytest.raises(SchemaError) as refused:
        read_batch(json.dumps(body).encode(), make_settings(server={"allow_plaintext": True}), now=created_at)
    assert [v.as_dict() for v in refused.value.violations] == [
        {"loc": ["logs", 1, "timestamp"], "msg": f"Value error, {reason}", "type": "value_error"}
    ]


@pytest.mark.parametrize("offset", [timedelta(days=-1), timedelta(minutes=5)], ids=["1 day before", "5 min after"])
def test_a_log_dated_at_the_edge_of_its_batchs_window_is_accepted(ingest, keys, offset: timedelta):
    created_at = datetime.now(UTC).replace(microsecond=0)
    body = batches.content(2)
    body["logs"][0]["timestamp"] = batches.format_timestamp(created_at + offset)
    response = ingest.post(batches.sealed(body, keys["current"], created_at=batches.format_timestamp(created_at)))
    assert response.status_code == 202, response.text


def test_data_with_nan_is_refused(ingest, keys, nothing_kept):
    body = batches.content(1)
    text = json.dumps(body).replace('"seq": 0', '"seq": NaN')
    envelope = sealed_raw(text.encode(), keys["current"])
    response = ingest.post(envelope)
    assert response.status_code == 422
    nothing_kept(envelope["batch_id"])


@pytest.mark.parametrize(
    ("body", "field"),
    [(b"{not json", "body"), (b"[]", "body"), (b'"string"', "body"), (b"\xff\xff", "body"), (b"{}", "body")],
)
def test_malformed_bodies(ingest, body, field):
    response = ingest.post(body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field


def test_wrong_content_type(ingest, keys):
    envelope = batches.sealed(batches.content(1), keys["current"])
    response = ingest.post(json.dumps(envelope).encode(), headers={"Content-Type": "text/plain"})
    assert response.status_code == 415


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key-0123456789"},
        {"X-API-Key": API_KEY[:-1]},
        {"Authorization": API_KEY},
        {"Authorization": "Basic " + API_KEY},
    ],
    ids=["none", "wrong bearer", "truncated x-api-key", "no scheme", "basic"],
)
def test_unauthenticated_is_401(ingest, keys, nothing_kept, headers):
    envelope = batches.sealed(batches.content(1), keys["current"])
    response = ingest.post(envelope, api_key=None, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    nothing_kept(envelope["batch_id"])


def test_oversize_body_is_413_by_content_length(ingest):
    response = ingest.post(b"{" + b" " * (5 * 1024 * 1024) + b"}")
    assert response.status_code == 413
    assert response.json()["field"] == "body"


def test_oversize_chunked_body_is_413(ingest):
    def chunks():
        for _ in range(6):
            yield b" " * (1024 * 1024)

    response = httpx.post(
        f"{ingest.url}/api/fleet/widget-logs",
        content=chunks(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413


def test_unauthenticated_large_body_is_401(ingest):
    response = ingest.post(b"{" + b" " * (20 * 1024 * 1024) + b"}", api_key="nope-nope-nope-nope")
    assert response.status_code == 401


def sealed_as_is(gzip_bytes: bytes, key_b64: str) -> dict:
    """An envelope claiming gzip around bytes sealed exactly as given (seal() would compress them)."""
    key = Key.from_base64(key_b64)
    batch_id, created_at = str(uuid.uuid4()), batches.now_stamp()
    nonce = os.urandom(12)
    ciphertext = key.aead().encrypt(nonce, gzip_bytes, associated_data(key.kid, batch_id, created_at, "gzip"))
    return {
        "v": 1,
        "alg": "AES-256-GCM",
        "kid": key.kid,
        "batch_id": batch_id,
        "created_at": created_at,
        "compression": "gzip",
        "nonce": b64(nonce),
        "ciphertext": b64(ciphertext),
    }


def test_gzip_bomb_is_413(ingest, keys, nothing_kept):
    """About 100 KB on the wire inflating to 100 MB: refused without inflating it all."""
    bomb = gzip.compress(b"{" + b" " * (100 * 1024 * 1024) + b"}", compresslevel=9)
    assert len(bomb) < 200_000
    envelope = sealed_as_is(bomb, keys["current"])
    response = ingest.post(envelope)
    assert response.status_code == 413
    assert "decompressed" in response.json()["detail"]
    nothing_kept(envelope["batch_id"])


def test_truncated_gzip_is_400(ingest, keys):
    data = gzip.compress(json.dumps(batches.content(2)).encode())[:-10]
    envelope = sealed_as_is(data, keys["current"])
    response = ingest.post(envelope)
    assert response.status_code == 400
    assert "truncated" in response.json()["detail"]


def test_reason_never_contains_key_material(ingest, keys):
    envelope = batches.sealed(batches.content(1), keys["current"])
    for change in (flip_tag_bit, tamper("kid", "0123456789abcdef"), tamper("nonce", "x")):
        text = ingest.post(change(envelope)).text
        assert keys["current"] not in text
        assert keys["previous"] not in text


@pytest.mark.parametrize(
    "stamp", ["0001-01-01T00:00:00+23:59", "2026-11-28T16:00:00+15:00", "2026-11-28T16:00:00-16:00"]
)
def test_offsets_postgresql_cannot_store_are_refused(ingest, keys, nothing_kept, stamp):
    """Offsets PostgreSQL cannot store (such as +23:59) are refused at ingest, not failed in the worker forever."""
    body = batches.content(1)
    body["logs"][0]["timestamp"] = stamp
    envelope = batches.sealed(body, keys["current"])
    response = ingest.post(envelope)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:3] == ["logs", 0, "timestamp"]
    nothing_kept(envelope["batch_id"])


def gzip_of_spaces(mib: int) -> bytes:
    """A valid gzip member inflating to ``mib`` MiB of spaces, built without compressing them all.

    After a full flush deflate starts afresh, so each 1 MiB block compresses to the same bytes: one block,
    repeated. Deflate tops out near 1:1030, so 1 GiB takes about 1 MB (100 KB only inflates to about 100 MB).
    """
    chunk = b" " * (1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflate.compress(chunk)
    deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + block * mib + deflate.flush() + struct.pack("<II", crc, (mib << 20) & 0xFFFFFFFF)


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes: what it ever held, not just what it holds now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def test_gigabyte_gzip_bomb_is_413_and_memory_stays_bounded(
    start_ingest, server_config, settings: Settings, keys, nothing_kept
):
    """About 1 MB on the wire inflating to 1 GiB: 413, and the server's peak memory grows by far less than that."""
    bomb = gzip_of_spaces(1024)
    assert len(bomb) < 1_200_000
    head = zlib.decompressobj(wbits=31).decompress(bomb, 1 << 20)
    assert head == b" " * (1 << 20)  # it really is a gzip of spaces
    server = start_ingest(server_config)  # its own process: the peak below is this test's alone
    ingest_proc = psutil.Process(server.proc.pid)
    assert not ingest_proc.children(recursive=True)  # one process serves (no uvicorn workers to measure too)
    warm_up = batches.sealed(batches.content(50), keys["current"])  # lazy imports and thread pools, not the bomb
    assert server.post(warm_up).status_code == 202
    before = peak_rss(server.proc.pid)
    envelope = sealed_as_is(bomb, keys["current"])
    response = server.post(envelope)
    assert response.status_code == 413, response.text
    assert "decompressed" in response.json()["detail"]
    growth = peak_rss(server.proc.pid) - before
    # Inflating stops one byte past max_plaintext_bytes (32 MiB); the rest is the body and its copies.
    assert growth < settings.max_plaintext_bytes + 16 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MiB"
    print(f"peak RSS growth for a 1 GiB bomb: {growth / 2**20:.1f} MiB")
    assert server.post(batches.sealed(batches.content(1), keys["current"])).status_code == 202  # still serving
    nothing_kept(envelope["batch_id"])


def raw_request(url: str, head: str, first_bytes: bytes, timeout: float = 5) -> bytes:
    """Send a request's head and only the first bytes of its body, then read what comes back."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode() + b"\r\n" + first_bytes)
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


@pytest.mark.parametrize(
    ("authorization", "length", "status"),
    [("Bearer wrong-key-0123456789", 10**9, b"401"), ("", 10**9, b"401"), (f"Bearer {API_KEY}", 10**9, b"413")],
    ids=["wrong key, 1 GB declared", "no key, 1 GB declared", "valid key, 1 GB declared"],
)
def test_refused_before_the_body_is_read(ingest, authorization: str, length: int, status: bytes):
    """The answer comes while 1 GB of body is still unsent: the server never waited to read it."""
    head = (
        "POST /api/fleet/widget-logs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n" + (f"Authorization: {authorization}\r\n" if authorization else "")
    )
    answer = raw_request(ingest.url, head, b"{" + b" " * 1024)
    assert answer.split(b" ", 2)[1] == status, answer[:200]
