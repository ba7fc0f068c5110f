"""Property tests of the wire-contract decoder: whatever arrives, only the documented errors leave.

``read_batch`` and the contract functions it is built from (``parse_body``,
``parse_envelope``, ``open_envelope``, ``decode_content``, ``validate_content``)
may return a result or raise one of the ``ContractError`` subclasses, each with
its documented HTTP status and string ``field`` / ``detail``. Anything else
(KeyError, TypeError, ValueError, UnicodeError, RecursionError, pydantic's
ValidationError...) escaping is a bug: the ingest service would answer 500.
A changed envelope header or ciphertext must never be accepted, and a valid
batch must come back exactly as it was sealed.

Pure: no database, no Redis, no network. Keys are fixed so that failures
replay from Hypothesis' example database.
"""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import json
import string
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi.responses import JSONResponse
from hypothesis import HealthCheck, event, example, given, note, settings
from hypothesis import strategies as st

from atlas.contract import (
    ALGORITHM,
    LEVELS,
    LOG_MAX_AFTER_BATCH,
    LOG_MAX_BEFORE_BATCH,
    WIDGET_TYPES,
    BatchContent,
    ContractError,
    DecryptionError,
    Envelope,
    EnvelopeError,
    Key,
    PayloadTooLargeError,
    SchemaError,
    SchemaViolation,
    UnknownKeyError,
    associated_data,
    decode_content,
    is_encrypted_body,
    open_envelope,
    parse_body,
    parse_envelope,
    parse_timestamp,
    seal,
    validate_content,
)
from atlas.contract.envelope import ENVELOPE_FIELDS, PLAINTEXT_BODY_FIELDS
from atlas.core.config import Settings, settings_from_mapping
from atlas.ingest.intake import Accepted, read_batch

# --------------------------------------------------------------------------- fixtures as constants


def fixed_key(label: str) -> str:
    """A deterministic AES-256 key in the configuration format (standard base64 of 32 bytes)."""
    return base64.b64encode(hashlib.sha256(label.encode()).digest()).decode("ascii")


KEY_A_B64 = fixed_key("atlas property tests: current key")
KEY_B_B64 = fixed_key("atlas property tests: older key")
UNKNOWN_B64 = fixed_key("atlas property tests: key the server does not have")
KEY_A, KEY_B, UNKNOWN_KEY = (Key.from_base64(k) for k in (KEY_A_B64, KEY_B_B64, UNKNOWN_B64))
API_KEY = "property-tests-api-key-0123456789"

NOW = datetime(2026, 11, 28, 16, 0, 0, tzinfo=UTC)
CREATED_AT = "2026-11-28T16:00:00Z"
BATCH_ID = "6f1c2a4e-8b3d-4f5a-9c7e-2d1b0a9f8e7d"


def make_settings(**server: Any) -> Settings:
    return settings_from_mapping({"server": {"api_key": API_KEY, **server}}, {})


ENCRYPTED_ONLY = make_settings(encryption_key=KEY_A_B64, encryption_keys=[KEY_B_B64])
WITH_PLAINTEXT = make_settings(encryption_key=KEY_A_B64, encryption_keys=[KEY_B_B64], allow_plaintext=True)
NO_KEYS = make_settings()  # no payload key: plaintext bodies are the only kind accepted
TIGHT = make_settings(
    encryption_key=KEY_A_B64,
    encryption_keys=[KEY_B_B64],
    allow_plaintext=True,
    max_plaintext_bytes=2048,
    max_logs_per_batch=3,
)
ALL_SETTINGS = st.sampled_from([ENCRYPTED_ONLY, WITH_PLAINTEXT, NO_KEYS, TIGHT])
KEYED_SETTINGS = st.sampled_from([ENCRYPTED_ONLY, WITH_PLAINTEXT, TIGHT])

MACHINE = {
    "machine_id": "7D3F9A2E-5B1C-4E8A-9F60-2C4D8B1A3E57",
    "serial_number": "C02ZK1ABMD6T",
    "hostname": "studio-12.example.com",
    "model": "Mac14,13",
    "os_version": "15.1",
    "agent_version": "1.0.0",
}
SAMPLE = {
    "machine": MACHINE,
    "logs": [
        {
            "timestamp": "2026-11-28T15:59:30Z",
            "level": "INFO",
            "widget_type": "ping",
            "message": "Ping 1.1.1.1: 0% loss",
            "data": {"target": "1.1.1.1", "loss_pct": 0.0, "rtt_ms": {"avg": 11.4}, "seen": [1, None, True]},
        },
        {"timestamp": "2026-11-28T15:59:31.25+01:00", "level": "WARNING", "widget_type": "health", "message": "é ☃ 😀"},
    ],
}
SAMPLE_BYTES = json.dumps(SAMPLE).encode("utf-8")

# Every documented error, with the status the ingest service answers with.
DOCUMENTED = {
    EnvelopeError: 400,
    UnknownKeyError: 400,
    DecryptionError: 400,
    PayloadTooLargeError: 413,
    SchemaError: 422,
}

B64_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
HEX = "0123456789abcdefABCDEF"
TIME_CHARS = "0123456789-:.TtZz+ "

# --------------------------------------------------------------------------- checking outcomes


def check_error(exc: ContractError) -> None:
    """A raised error is one of the documented ones, and carries what the service renders."""
    assert type(exc) in DOCUMENTED, f"undocumented ContractError subclass {type(exc).__name__}"
    assert exc.status == DOCUMENTED[type(exc)]
    assert isinstance(exc.field, str)
    assert isinstance(exc.reason, str)
    assert isinstance(exc.detail, str)
    assert exc.detail == f"{exc.field}: {exc.reason}"
    if isinstance(exc, SchemaError):
        assert exc.violations
        assert all(isinstance(v, SchemaViolation) for v in exc.violations)
        # What the ingest service answers: JSONResponse encodes as UTF-8, so no lone surrogates.
        JSONResponse({"detail": [v.as_dict() for v in exc.violations]}, status_code=exc.status)
    JSONResponse({"detail": exc.detail, "field": exc.field}, status_code=exc.status)


def attempt(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``func``: its result, or the ContractError it raised. Anything else propagates and fails the test."""
    try:
        return func(*args, **kwargs)
    except ContractError as exc:
        check_error(exc)
        return exc


def check_accepted(result: Accepted, config: Settings) -> None:
    assert isinstance(result.content, BatchContent)
    assert result.batch_id == str(uuid.UUID(result.batch_id))
    assert NOW - config.created_at_max_age <= result.created_at <= NOW + config.created_at_max_future
    assert len(result.content.logs) <= config.max_logs_per_batch
    if result.kid is None:
        assert config.accepts_plaintext
    else:
        assert result.kid in config.keyring


def read(body: bytes, config: Settings) -> Accepted | ContractError:
    """``read_batch`` with the fixed clock; also run its building blocks on the same body."""
    result = attempt(read_batch, body, config, now=NOW)
    if isinstance(result, Accepted):
        check_accepted(result, config)
    else:
        assert isinstance(result, ContractError)
    parsed = attempt(parse_body, body)
    if isinstance(parsed, dict):
        envelope = attempt(parse_envelope, parsed)
        if isinstance(envelope, Envelope):
            plaintext = attempt(open_envelope, envelope, config.keyring, max_plaintext_bytes=config.max_plaintext_bytes)
            if isinstance(plaintext, bytes):
                attempt(decode_content, plaintext, max_logs=config.max_logs_per_batch)
        if not is_encrypted_body(parsed):
            attempt(validate_content, parsed, max_logs=config.max_logs_per_batch)
    return result


def assert_content(content: BatchContent, expected: dict[str, Any]) -> None:
    """The decoded content is what was sent: machine, and each log's fields and instant."""
    assert content.machine.model_dump() == expected["machine"]
    assert len(content.logs) == len(expected["logs"])
    for got, want in zip(content.logs, expected["logs"], strict=True):
        assert got.level == want["level"]
        assert got.widget_type == want["widget_type"]
        assert got.message == want["message"]
        assert got.data == want.get("data", {})
        sent = want["timestamp"]
        sent = parse_timestamp(sent, "timestamp") if isinstance(sent, str) else sent
        assert got.timestamp == sent
        assert got.timestamp.utcoffset() == sent.utcoffset()


def dumps(value: Any, *, ensure_ascii: bool = True) -> str:
    """json.dumps that can also write integers longer than Python's 4300-digit str() limit."""
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return json.dumps(value, ensure_ascii=ensure_ascii)
    finally:
        sys.set_int_max_str_digits(limit)


def sealed(
    plaintext: bytes,
    key: Key = KEY_A,
    *,
    batch_id: str = BATCH_ID,
    compression: str = "gzip",
    created_at: str = CREATED_AT,
) -> dict[str, Any]:
    return seal(plaintext, key, batch_id=batch_id, created_at=created_at, compression=compression)


def body_of(obj: Any) -> bytes:
    return dumps(obj).encode("utf-8")


# --------------------------------------------------------------------------- strategies

ANY_CHAR = st.characters()  # every code point, lone surrogates and NUL included
ANY_TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=24),
    st.sampled_from(
        ["", "\x00", "\ud800", "\udfff", "a\udc80b", "\U0010ffff", "\\u0000", "1", "NaN", "gzip", CREATED_AT]
    ),
)
# Built by map: Hypothesis itself cannot repr() an int over 4300 digits when it describes a strategy.
HUGE_INTS = st.sampled_from(
    [(2, 63, 1), (2, 63, -1), (2, 64, 1), (10, 100, 1), (10, 4299, 1), (10, 4299, -1), (10, 4300, 1), (10, 5000, -1)]
).map(lambda t: t[2] * t[0] ** t[1])
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), HUGE_INTS, st.floats(), ANY_TEXT)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)
HUGE_STRINGS = st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "😀", "\x00"]), st.integers(8000, 70_000))

# Values that are the right shape for some field, so generated dicts get past the first checks.
FIELD_VALUES = st.sampled_from(
    [
        1,
        ALGORITHM,
        KEY_A.kid,
        KEY_B.kid,
        UNKNOWN_KEY.kid,
        BATCH_ID,
        BATCH_ID.upper(),
        CREATED_AT,
        "gzip",
        "none",
        base64.b64encode(bytes(12)).decode(),
        base64.b64encode(bytes(40)).decode(),
        MACHINE,
        SAMPLE["logs"],
        [],
        {},
    ]
).map(copy.deepcopy)  # callers mutate what they draw
FIELD_NAMES = st.sampled_from(sorted(set(ENVELOPE_FIELDS) | set(PLAINTEXT_BODY_FIELDS)))
BODY_SHAPED = st.dictionaries(FIELD_NAMES | ANY_TEXT, FIELD_VALUES | JSON_VALUES, max_size=10)

# Text the schema accepts: no NUL, no lone surrogates.
CLEAN_CHAR = st.characters(codec="utf-8", exclude_characters="\x00")


def clean_text(min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(CLEAN_CHAR, min_size=min_size, max_size=max_size)


CLEAN_STRINGS = clean_text() | st.sampled_from(["\\u0000", "\\", '"', "\u2028", "😀"])
CLEAN_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(-(10**300), 10**300),
        st.floats(allow_nan=False, allow_infinity=False),
        CLEAN_STRINGS,
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(CLEAN_STRINGS, inner, max_size=4),
    max_leaves=10,
)


@st.composite
def timestamps(draw: st.DrawFn) -> tuple[str, datetime]:
    """An RFC 3339 date-time with an explicit offset, and the instant it denotes: within the window the
    contract allows around the batch's created_at (``NOW``), from a day before to 5 minutes after."""
    earliest = (NOW - LOG_MAX_BEFORE_BATCH).replace(tzinfo=None)
    latest = (NOW + LOG_MAX_AFTER_BATCH).replace(tzinfo=None) - timedelta(seconds=1)  # room for a fraction
    utc = draw(st.datetimes(min_value=earliest, max_value=latest)).replace(microsecond=0)
    offset = draw(st.integers(-14 * 60, 14 * 60))  # the contract refuses offsets no time zone uses
    moment = utc + timedelta(minutes=offset)  # the local time written
    fraction = draw(st.text("0123456789", min_size=0, max_size=9))
    t = draw(st.sampled_from("Tt"))
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}{t}"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    if fraction:
        text += "." + fraction
    if offset == 0 and draw(st.booleans()):
        text += draw(st.sampled_from("Zz"))
    else:
        sign = "-" if offset < 0 or (offset == 0 and draw(st.booleans())) else "+"
        text += f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    micro = int(fraction[:6].ljust(6, "0")) if fraction else 0
    instant = moment.replace(microsecond=micro, tzinfo=timezone(timedelta(minutes=offset)))
    return text, instant


@st.composite
def valid_logs(draw: st.DrawFn) -> dict[str, Any]:
    text, instant = draw(timestamps())
    log: dict[str, Any] = {
        "timestamp": text,
        "level": draw(st.sampled_from(LEVELS)),
        "widget_type": draw(st.sampled_from(WIDGET_TYPES)),
        "message": draw(clean_text(max_size=120) | st.builds(lambda c, n: c * n, CLEAN_CHAR, st.integers(8000, 8192))),
    }
    if draw(st.booleans()):
        log["data"] = draw(st.dictionaries(CLEAN_STRINGS, CLEAN_JSON, max_size=5))
    # The instant rides along under a key the wire never sees; callers strip it.
    log["_instant"] = instant
    return log


@st.composite
def valid_batches(draw: st.DrawFn, max_logs: int = 20) -> tuple[dict[str, Any], dict[str, Any]]:
    """A batch as sent (JSON-ready) and as expected back (timestamps as instants)."""
    machine = {
        "machine_id": draw(clean_text(1, 128)),
        "serial_number": draw(clean_text(1, 64)),
        "hostname": draw(clean_text(0, 255)),
        "model": draw(clean_text(0, 128)),
        "os_version": draw(clean_text(0, 128)),
        "agent_version": draw(clean_text(0, 64)),
    }
    logs = draw(st.lists(valid_logs(), max_size=max_logs))
    sent = {"machine": machine, "logs": [{k: v for k, v in log.items() if k != "_instant"} for log in logs]}
    expected = {
        "machine": dict(machine),
        "logs": [{**{k: v for k, v in log.items() if k != "_instant"}, "timestamp": log["_instant"]} for log in logs],
    }
    return sent, expected


def slots(obj: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key-or-index) of a JSON value, outermost first."""
    if isinstance(obj, dict):
        for k in list(obj):
            yield obj, k
            yield from slots(obj[k])
    elif isinstance(obj, list):
        for i in range(len(obj)):
            yield obj, i
            yield from slots(obj[i])


DEEP_LEAVES = ["0", "null", '"x"', "[]", "{}", '"\\u0000"', '"\\\\u0000"']
"""JSON text at the bottom of a deep nest; the last two are a NUL and the six characters backslash-u0000."""


@st.composite
def mutated_batch_text(draw: st.DrawFn) -> tuple[str, int]:
    """A valid batch with keys dropped, values of wrong types, extra keys, huge strings, deep nests.

    Returns the JSON text and the deepest nest spliced in.
    """
    batch, _ = draw(valid_batches(max_logs=3))
    nests: dict[str, str] = {}
    depth = 0
    for _ in range(draw(st.integers(1, 3))):
        places = list(slots(batch))
        op = draw(st.sampled_from(["delete", "replace", "add", "deep", "huge"])) if places else "add"
        if op == "add":
            containers = [batch] + [c[k] for c, k in places if isinstance(c[k], dict | list)]
            target = draw(st.sampled_from(containers))
            if isinstance(target, dict):
                target[draw(ANY_TEXT | FIELD_NAMES | st.just("data"))] = draw(JSON_VALUES)
            else:
                target.append(draw(JSON_VALUES))
            continue
        container, key = draw(st.sampled_from(places))
        if op == "delete":
            del container[key]
        elif op == "replace":
            container[key] = draw(JSON_VALUES | FIELD_VALUES)
        elif op == "huge":
            container[key] = draw(HUGE_STRINGS)
        else:
            levels = draw(st.integers(1, 3000))
            depth = max(depth, levels)
            opener, closer = draw(st.sampled_from([("[", "]"), ('{"k":', "}")]))
            token = f"@@nest{len(nests)}@@"
            nests[token] = opener * levels + draw(st.sampled_from(DEEP_LEAVES)) + closer * levels
            container[key] = token
    text = dumps(batch, ensure_ascii=draw(st.booleans()))
    for token, nest in nests.items():
        text = text.replace(json.dumps(token), nest)
    return text, depth


@st.composite
def text_edit(draw: st.DrawFn, value: str, alphabet: str) -> str:
    """A small edit of a string: one character replaced, inserted or deleted, case changed, or padding."""
    kind = draw(st.sampled_from(["replace", "insert", "delete", "case", "pad"]))
    if not value:
        kind = "insert"
    if kind == "replace":
        i = draw(st.integers(0, len(value) - 1))
        return value[:i] + draw(st.sampled_from(alphabet)) + value[i + 1 :]
    if kind == "insert":
        i = draw(st.integers(0, len(value)))
        return value[:i] + draw(st.sampled_from(alphabet)) + value[i:]
    if kind == "delete":
        i = draw(st.integers(0, len(value) - 1))
        return value[:i] + value[i + 1 :]
    if kind == "case":
        return draw(st.sampled_from([str.upper, str.lower, str.swapcase]))(value)
    pad = draw(st.sampled_from([" ", "\n", "\t", "\x00", "\u200b", "=", "==", "\ud800"]))
    return pad + value if draw(st.booleans()) else value + pad


def noncanonical_b64(value: str, delta: int) -> str:
    """The same bytes in base64 with some of the final character's unused bits set."""
    stripped = value.rstrip("=")
    pad = len(value) - len(stripped)
    if pad == 0:
        return value
    unused_bits = 4 if pad == 2 else 2
    last = B64_ALPHABET.index(stripped[-1])
    return stripped[:-1] + B64_ALPHABET[last ^ (delta % (2**unused_bits - 1) + 1)] + "=" * pad


@st.composite
def b64_edit(draw: st.DrawFn, value: str) -> str:
    """A change to the bytes behind a base64 field, or a different spelling of the same bytes."""
    raw = bytearray(base64.b64decode(value))
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "random", "noncanonical"]))
    if kind == "noncanonical":
        return noncanonical_b64(value, draw(st.integers(0, 14)))
    if kind == "flip":
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif kind == "extend":
        raw += draw(st.binary(min_size=1, max_size=16))
    else:
        raw = bytearray(draw(st.binary(min_size=len(raw), max_size=len(raw))))
    return base64.b64encode(bytes(raw)).decode("ascii")


AUTHENTICATED = ("kid", "batch_id", "created_at", "compression", "nonce", "ciphertext")
WINDOW_TIMES = [
    "2026-11-28T16:00:00z",
    "2026-11-28t16:00:00Z",
    "2026-11-28T16:00:00+00:00",
    "2026-11-28T16:00:00-00:00",
    "2026-11-28T16:00:00.0Z",
    "2026-11-28T16:00:00.000000000Z",
    "2026-11-28T17:00:00+01:00",
    "2026-11-28T10:30:00-05:30",
    "2026-11-28T15:59:59Z",
    "2026-11-28T16:00:01Z",
    "2026-11-28T16:04:59Z",
    "2026-11-21T16:00:00Z",
    "2026-11-28T16:05:01Z",
    "1970-01-01T00:00:00Z",
]


def field_edits(field: str, value: str, original: str) -> st.SearchStrategy[Any]:
    """Plausible replacements for one envelope field: most still parse, so they reach authentication."""
    if field == "v":
        return st.sampled_from([1, 1.0, True, "1", 2, 0, -1, None, [1], 2**64])
    if field == "alg":
        return st.sampled_from([ALGORITHM, ALGORITHM.lower(), "AES-128-GCM", "A256GCM", ""]) | text_edit(
            ALGORITHM, string.ascii_letters + "-0123456789"
        )
    if field == "kid":
        return st.sampled_from([KEY_A.kid, KEY_B.kid, UNKNOWN_KEY.kid]) | text_edit(value, HEX)
    if field == "batch_id":
        return st.one_of(
            st.uuids().map(str),
            text_edit(value, HEX + "-"),
            st.sampled_from([value.upper(), value.lower(), "{" + value + "}", value.replace("-", "")]),
        )
    if field == "created_at":
        return st.sampled_from(WINDOW_TIMES) | text_edit(value, TIME_CHARS)
    if field == "compression":
        return st.sampled_from(["gzip", "none", "GZIP", "None", "deflate", ""]) | text_edit(value, string.ascii_letters)
    return b64_edit(original) | text_edit(value, B64_ALPHABET + "=")


# --------------------------------------------------------------------------- 1. arbitrary bytes

VALID_BODIES = [
    body_of(sealed(SAMPLE_BYTES, KEY_A, compression="gzip")),
    body_of(sealed(SAMPLE_BYTES, KEY_B, compression="none")),
    body_of({"v": 1, "batch_id": BATCH_ID, "created_at": CREATED_AT, **SAMPLE}),
]


@st.composite
def mutated_bodies(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A valid body with a few bytes flipped, set, inserted or deleted; returns (original, mutated)."""
    base = draw(st.sampled_from(VALID_BODIES))
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "set" and data:
            data[i] = draw(st.sampled_from(b'"{}[],:\\0 \x00\x80\xff'))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[i : i + draw(st.integers(1, 8))]
        else:
            del data[i:]
    return base, bytes(data)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=512), config=ALL_SETTINGS)
@example(body=b"", config=ENCRYPTED_ONLY)
@example(body=b"\xef\xbb\xbf{}", config=WITH_PLAINTEXT)
@example(body=b'{"v": 1e999}', config=WITH_PLAINTEXT)
@example(body=b'{"v": ' + b"9" * 5000 + b"}", config=WITH_PLAINTEXT)
@example(body=b'"\\ud800"', config=ENCRYPTED_ONLY)
@example(body=b"[" * 100_000, config=ENCRYPTED_ONLY)
def test_arbitrary_bytes_raise_only_contract_errors(body: bytes, config: Settings) -> None:
    read(body, config)


@settings(max_examples=300, deadline=None)
@given(pair=mutated_bodies(), config=ALL_SETTINGS)
def test_mutated_body_bytes_raise_only_contract_errors(pair: tuple[bytes, bytes], config: Settings) -> None:
    original, body = pair
    result = read(body, config)
    if isinstance(result, Accepted) and result.kid is not None:
        # Only changes JSON ignores (whitespace, escapes) may survive: the envelope is the same by value.
        assert parse_envelope(json.loads(body)) == parse_envelope(json.loads(original))
        assert_content(result.content, SAMPLE)


# --------------------------------------------------------------------------- 2. arbitrary JSON values


@settings(max_examples=300, deadline=None)
@given(
    value=JSON_VALUES | BODY_SHAPED,
    ensure_ascii=st.booleans(),
    encoding=st.sampled_from(["utf-8", "utf-16", "utf-32"]),
    config=ALL_SETTINGS,
)
@example(value={"v": "\ud800", "kid": 1}, ensure_ascii=True, encoding="utf-8", config=ENCRYPTED_ONLY)
@example(value={"v": 10**5000}, ensure_ascii=True, encoding="utf-8", config=WITH_PLAINTEXT)
@example(value={"v": float("nan"), "machine": {}}, ensure_ascii=True, encoding="utf-8", config=NO_KEYS)
@example(value={"\x00": "\ud800"}, ensure_ascii=False, encoding="utf-8", config=NO_KEYS)
def test_arbitrary_json_bodies_raise_only_contract_errors(
    value: Any, ensure_ascii: bool, encoding: str, config: Settings
) -> None:
    body = dumps(value, ensure_ascii=ensure_ascii).encode(encoding, "surrogatepass")
    read(body, config)


# --------------------------------------------------------------------------- 3. tampered envelopes


def base_envelope(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A valid envelope of a small batch, sealed with a key the server has; also the batch itself."""
    key = draw(st.sampled_from([KEY_A, KEY_B]))
    # A message of varying length varies the ciphertext length, so base64 padding varies too.
    content = json.loads(SAMPLE_BYTES)
    content["logs"][0]["message"] += "!" * draw(st.integers(0, 5))
    batch_id = str(draw(st.uuids()))
    batch_id = batch_id.upper() if draw(st.booleans()) else batch_id
    compression = draw(st.sampled_from(["gzip", "none"]))
    envelope = sealed(json.dumps(content).encode(), key, batch_id=batch_id, compression=compression)
    return envelope, content


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), config=KEYED_SETTINGS)
def test_tampered_envelopes_are_rejected(data: st.DataObject, config: Settings) -> None:
    envelope, content = base_envelope(data.draw)
    original = parse_envelope(envelope)
    baseline = read(body_of(envelope), config)
    assert isinstance(baseline, Accepted), baseline

    mutated = dict(envelope)
    first_field = ""
    # The first change is a plausible edit of an authenticated field, so that most cases reach
    # decryption; up to two more changes of any kind follow.
    for n in range(data.draw(st.integers(1, 3), label="number of changes")):
        op = "edit" if n == 0 else data.draw(st.sampled_from(["edit", "replace", "delete", "add"]), label="op")
        if op == "add":
            mutated[data.draw(ANY_TEXT | FIELD_NAMES, label="added field")] = data.draw(JSON_VALUES, label="value")
            continue
        field = data.draw(st.sampled_from(AUTHENTICATED if n == 0 else ENVELOPE_FIELDS), label="field")
        first_field = field if n == 0 else first_field
        if op == "delete":
            mutated.pop(field, None)
        elif op == "replace":
            mutated[field] = data.draw(JSON_VALUES | FIELD_VALUES, label="replacement")
        else:
            current = mutated.get(field)
            current = current if isinstance(current, str) and current else envelope[field]
            mutated[field] = data.draw(field_edits(field, current, envelope[field]), label="edit")
    body = dumps(mutated, ensure_ascii=data.draw(st.booleans(), label="ensure_ascii")).encode("utf-8", "surrogatepass")
    result = read(body, config)

    if isinstance(result, ContractError):
        event(f"{first_field} changed first: {type(result).__name__} on {result.field[:20]!r}")
        return
    assert result.kid is not None, "a tampered envelope was taken for a plaintext batch"
    # Accepted: every authenticated field and the ciphertext must be unchanged by value.
    accepted_envelope = parse_envelope(json.loads(body))
    assert accepted_envelope == original, f"tampered envelope accepted: {mutated!r}"
    assert result.batch_id == envelope["batch_id"].lower()
    assert_content(result.content, content)
    if {f: mutated.get(f) for f in ENVELOPE_FIELDS} != {f: envelope[f] for f in ENVELOPE_FIELDS}:
        event("accepted: same bytes, different base64 spelling")
    else:
        event("accepted: no-op change")


SWAPPED_COMPRESSION = {"gzip": "none", "none": "gzip"}


@pytest.mark.parametrize("message_padding", range(3))
def test_noncanonical_base64_is_the_same_ciphertext_or_rejected(message_padding: int) -> None:
    """Setting unused bits of the last base64 character spells the same bytes: accepted only as those bytes."""
    content = json.loads(SAMPLE_BYTES)
    content["logs"][0]["message"] += "!" * message_padding
    envelope = sealed(json.dumps(content).encode(), compression="none")
    for delta in range(15):
        respelled = {**envelope, "ciphertext": noncanonical_b64(envelope["ciphertext"], delta)}
        result = read(body_of(respelled), ENCRYPTED_ONLY)
        if isinstance(result, Accepted):
            assert parse_envelope(respelled) == parse_envelope(envelope)
            assert_content(result.content, content)
        else:
            assert type(result) is EnvelopeError


def flip_b64(value: str, index: int) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode("ascii")


def with_field(field: str, change: Callable[[Any], Any]) -> Callable[[dict], dict]:
    return lambda envelope: {**envelope, field: change(envelope[field])}


def b64_bytes(change: Callable[[bytes], bytes]) -> Callable[[str], str]:
    return lambda text: base64.b64encode(change(base64.b64decode(text))).decode("ascii")


@pytest.mark.parametrize("compression", ["gzip", "none"])
@pytest.mark.parametrize(
    ("change", "error"),
    [
        pytest.param(with_field("batch_id", str.upper), DecryptionError, id="batch_id upper case"),
        pytest.param(
            with_field("batch_id", lambda b: str(uuid.UUID(int=uuid.UUID(b).int ^ 1))), DecryptionError, id="batch_id"
        ),
        pytest.param(with_field("created_at", lambda _: "2026-11-28T16:00:00z"), DecryptionError, id="created_at z"),
        pytest.param(with_field("created_at", lambda _: "2026-11-28t16:00:00Z"), DecryptionError, id="created_at t"),
        pytest.param(
            with_field("created_at", lambda _: "2026-11-28T16:00:00+00:00"), DecryptionError, id="created_at +00:00"
        ),
        pytest.param(
            with_field("created_at", lambda _: "2026-11-28T16:00:00.000Z"), DecryptionError, id="created_at .000"
        ),
        pytest.param(
            with_field("created_at", lambda _: "2026-11-28T17:00:00+01:00"), DecryptionError, id="created_at +01:00"
        ),
        pytest.param(with_field("created_at", lambda _: "2026-11-28T16:00:01Z"), DecryptionError, id="created_at +1s"),
        pytest.param(with_field("compression", SWAPPED_COMPRESSION.get), DecryptionError, id="compression"),
        pytest.param(with_field("kid", lambda _: KEY_B.kid), DecryptionError, id="kid of another key"),
        pytest.param(with_field("kid", lambda _: UNKNOWN_KEY.kid), UnknownKeyError, id="unknown kid"),
        pytest.param(with_field("nonce", lambda n: flip_b64(n, 0)), DecryptionError, id="nonce bit"),
        pytest.param(with_field("ciphertext", lambda c: flip_b64(c, 0)), DecryptionError, id="ciphertext bit"),
        pytest.param(with_field("ciphertext", lambda c: flip_b64(c, -1)), DecryptionError, id="tag bit"),
        pytest.param(with_field("ciphertext", b64_bytes(lambda b: b[:-1])), DecryptionError, id="ciphertext cut"),
        pytest.param(with_field("ciphertext", b64_bytes(lambda b: b + bytes(3))), DecryptionError, id="ciphertext+3"),
        pytest.param(with_field("ciphertext", b64_bytes(lambda b: b[:15])), EnvelopeError, id="shorter than tag"),
    ],
)
def test_each_authenticated_field_is_bound(
    change: Callable[[dict], dict], error: type[ContractError], compression: str
) -> None:
    envelope = sealed(SAMPLE_BYTES, KEY_A, compression=compression)
    result = read(body_of(change(envelope)), WITH_PLAINTEXT)
    assert type(result) is error


# --------------------------------------------------------------------------- 4. any plaintext in a valid envelope


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plaintext=st.one_of(
        st.binary(max_size=300),
        st.builds(lambda v, a: dumps(v, ensure_ascii=a).encode("utf-8", "surrogatepass"), JSON_VALUES, st.booleans()),
        mutated_batch_text().map(lambda pair: pair[0].encode("utf-8", "surrogatepass")),
    ),
    key=st.sampled_from([KEY_A, KEY_B]),
    compression=st.sampled_from(["gzip", "none"]),
    config=st.sampled_from([ENCRYPTED_ONLY, TIGHT]),
)
@example(plaintext=b"[" * 5000 + b"]" * 5000, key=KEY_A, compression="gzip", config=ENCRYPTED_ONLY)
@example(plaintext=b"\x00" * 100_000, key=KEY_A, compression="gzip", config=TIGHT)
@example(plaintext=b"\x00" * 3000, key=KEY_B, compression="none", config=TIGHT)
@example(plaintext=b'{"machine": {}, "logs": 1e999}', key=KEY_A, compression="none", config=ENCRYPTED_ONLY)
@example(plaintext=b'"\\ud800"', key=KEY_A, compression="none", config=ENCRYPTED_ONLY)
@example(
    plaintext=SAMPLE_BYTES.replace(b'"1.1.1.1"', b"9" * 5000, 1), key=KEY_A, compression="none", config=ENCRYPTED_ONLY
)
def test_arbitrary_plaintext_in_a_valid_envelope(
    plaintext: bytes, key: Key, compression: str, config: Settings
) -> None:
    envelope = sealed(plaintext, key, compression=compression)
    result = read(body_of(envelope), config)
    attempt(decode_content, plaintext, max_logs=config.max_logs_per_batch)
    if isinstance(result, Accepted):
        assert result.kid == key.kid
        assert len(plaintext) <= config.max_plaintext_bytes
        try:
            expected = json.loads(plaintext)
        except ValueError:  # e.g. an integer longer than json's limit but within pydantic's
            return
        assert_content(result.content, expected)
    else:
        event(f"rejected: {type(result).__name__}")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutation=mutated_batch_text(), config=st.sampled_from([WITH_PLAINTEXT, NO_KEYS, TIGHT]))
def test_mutated_plaintext_bodies_raise_only_contract_errors(mutation: tuple[str, int], config: Settings) -> None:
    text, _ = mutation
    # The header fields go first, the mutated batch's keys after them (a duplicate key wins, as in json).
    head = f'{{"v": 1, "batch_id": "{BATCH_ID}", "created_at": "{CREATED_AT}"'
    body_text = head + ("}" if text == "{}" else ", " + text[1:])
    result = read(body_text.encode("utf-8", "surrogatepass"), config)
    if isinstance(result, Accepted):
        assert result.kid is None


# --------------------------------------------------------------------------- 5. round trip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=valid_batches(),
    key=st.sampled_from([KEY_A, KEY_B]),
    compression=st.sampled_from(["gzip", "none"]),
    ensure_ascii=st.booleans(),
    batch_id=st.uuids().map(str),
    config=st.sampled_from([ENCRYPTED_ONLY, WITH_PLAINTEXT]),
)
def test_valid_batches_round_trip_sealed(
    batch: tuple[dict, dict], key: Key, compression: str, ensure_ascii: bool, batch_id: str, config: Settings
) -> None:
    sent, expected = batch
    plaintext = json.dumps(sent, ensure_ascii=ensure_ascii).encode("utf-8")
    note(f"plaintext: {plaintext[:500]!r}")
    envelope = sealed(plaintext, key, batch_id=batch_id, compression=compression)
    result = read(body_of(envelope), config)
    assert isinstance(result, Accepted), f"{type(result).__name__}: {getattr(result, 'detail', '')}"
    assert result.kid == key.kid
    assert result.batch_id == batch_id
    assert result.created_at == NOW
    assert_content(result.content, expected)
    assert_content(decode_content(plaintext), expected)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=valid_batches(), batch_id=st.uuids().map(str), config=st.sampled_from([WITH_PLAINTEXT, NO_KEYS]))
def test_valid_batches_round_trip_unencrypted(batch: tuple[dict, dict], batch_id: str, config: Settings) -> None:
    sent, expected = batch
    body = json.dumps({"v": 1, "batch_id": batch_id.upper(), "created_at": CREATED_AT, **sent}).encode("utf-8")
    result = read(body, config)
    assert isinstance(result, Accepted), f"{type(result).__name__}: {getattr(result, 'detail', '')}"
    assert result.kid is None
    assert result.batch_id == batch_id
    assert_content(result.content, expected)


# --------------------------------------------------------------------------- 6. corrupted gzip, correctly encrypted


def encrypt_raw(payload: bytes, key: Key, compression: str, nonce: bytes) -> dict[str, Any]:
    """An envelope around ``payload`` exactly as given: no compression step, correct associated data."""
    aad = associated_data(key.kid, BATCH_ID, CREATED_AT, compression)
    return {
        "v": 1,
        "alg": ALGORITHM,
        "kid": key.kid,
        "batch_id": BATCH_ID,
        "created_at": CREATED_AT,
        "compression": compression,
        "nonce": base64.b64encode(nonce).decode("ascii"),
        "ciphertext": base64.b64encode(AESGCM(key.raw).encrypt(nonce, payload, aad)).decode("ascii"),
    }


@settings(max_examples=300, deadline=None)
@given(data=st.data(), config=st.sampled_from([ENCRYPTED_ONLY, TIGHT]))
def test_corrupted_gzip_raises_only_contract_errors(data: st.DataObject, config: Settings) -> None:
    plaintext = data.draw(st.sampled_from([SAMPLE_BYTES, b"{}", b"", b"\x00" * 50_000]), label="plaintext")
    compressed = bytearray(gzip.compress(plaintext, compresslevel=data.draw(st.integers(0, 9)), mtime=0))
    kind = data.draw(st.sampled_from(["flip", "flip", "truncate", "append", "second member"]), label="kind")
    if kind == "flip":
        where = data.draw(st.integers(0, len(compressed) - 1), label="offset")
        compressed[where] ^= data.draw(st.integers(1, 255), label="xor")
        region = "header" if where < 10 else "trailer" if where >= len(compressed) - 8 else "deflate"
    elif kind == "truncate":
        del compressed[data.draw(st.integers(0, len(compressed) - 1), label="cut") :]
        region = "truncated"
    elif kind == "append":
        compressed += data.draw(st.binary(min_size=1, max_size=20), label="garbage")
        region = "appended"
    else:
        compressed += gzip.compress(b"{}", mtime=0)
        region = "second member"
    nonce = data.draw(st.binary(min_size=12, max_size=12), label="nonce")
    result = read(body_of(encrypt_raw(bytes(compressed), KEY_A, "gzip", nonce)), config)
    if isinstance(result, Accepted):
        # Only bytes gzip does not check (mtime, XFL, OS, the FTEXT flag, trailing pad bits) may change.
        assert_content(result.content, json.loads(plaintext))
        event(f"accepted after a change in the {region}")
    else:
        event(f"{region}: {type(result).__name__}")


# --------------------------------------------------------------------------- deep nesting, swept


NEST_BODIES: dict[str, Callable[[str], bytes]] = {
    "envelope v": lambda nest: f'{{"kid": "{KEY_A.kid}", "v": {nest}}}'.encode(),
    "plaintext v": lambda nest: f'{{"v": {nest}, "batch_id": "{BATCH_ID}"}}'.encode(),
    "envelope extra field": lambda nest: body_of(sealed(SAMPLE_BYTES))[:-1] + b', "x": ' + nest.encode() + b"}",
    "plaintext machine": lambda nest: (
        f'{{"v": 1, "batch_id": "{BATCH_ID}", "created_at": "{CREATED_AT}", "machine": {nest}, "logs": []}}'.encode()
    ),
    "plaintext data": lambda nest: (
        f'{{"v": 1, "batch_id": "{BATCH_ID}", "created_at": "{CREATED_AT}", "machine": {json.dumps(MACHINE)}, '
        f'"logs": [{{"timestamp": "{CREATED_AT}", "level": "INFO", "widget_type": "ping", "message": "", '
        f'"data": {{"a": {nest}}}}}]}}'
    ).encode(),
    "sealed data": lambda nest: body_of(
        sealed(
            (
                f'{{"machine": {json.dumps(MACHINE)}, "logs": [{{"timestamp": "{CREATED_AT}", "level": "INFO", '
                f'"widget_type": "ping", "message": "", "data": {{"a": {nest}}}}}]}}'
            ).encode()
        )
    ),
}
DEPTHS = sorted({*range(1, 60, 7), *range(150, 260, 3), *range(300, 1200, 4), *range(1200, 3001, 100)})


@pytest.mark.parametrize("place", list(NEST_BODIES))
def test_nesting_depth_sweep(place: str) -> None:
    """Every depth around the JSON parsers' and the interpreter's recursion limits, outside Hypothesis.

    Hypothesis raises the recursion limit while it runs a test; this sweep runs at the
    interpreter's own limit, as the ingest service does. The last leaf is the text
    backslash-u0000, which sends the schema's NUL check through the whole of ``data``.
    """
    accepted = 0
    for depth in DEPTHS:
        for opener, leaf, closer in (("[", "0", "]"), ('{"k": ', "{}", "}"), ("[", '"\\\\u0000"', "]")):
            nest = opener * depth + leaf + closer * depth
            for config in (WITH_PLAINTEXT, ENCRYPTED_ONLY):
                accepted += isinstance(read(NEST_BODIES[place](nest), config), Accepted)
    if place in ("plaintext data", "sealed data"):
        assert accepted > 0


# --------------------------------------------------------------------------- regressions: bugs these properties found
#
# Each failed at 250e674 with an exception other than a ContractError (or an error the service
# could not render). The smallest inputs are kept here so that they run on every change.


def plaintext_body_with_nested_data(depth: int, leaf: str) -> bytes:
    nest = "[" * depth + leaf + "]" * depth
    return (
        f'{{"v": 1, "batch_id": "{BATCH_ID}", "created_at": "{CREATED_AT}", "machine": {json.dumps(MACHINE)}, '
        f'"logs": [{{"timestamp": "{CREATED_AT}", "level": "INFO", "widget_type": "ping", "message": "", '
        f'"data": {{"a": {nest}}}}}]}}'
    ).encode()


@pytest.mark.parametrize("leaf", ['"\\u0000"', '"\\\\u0000"'], ids=["NUL", "backslash-u0000 text"])
@pytest.mark.parametrize("config", [WITH_PLAINTEXT, NO_KEYS], ids=["allow_plaintext", "no-key"])
def test_deep_data_with_nul_text_in_a_plaintext_body(leaf: str, config: Settings) -> None:
    """Was RecursionError: the NUL check recursed two frames per level (itself and an any() generator)."""
    body = plaintext_body_with_nested_data(600, leaf)
    json.loads(body)  # well within what the JSON parser reads
    assert isinstance(read(body, config), ContractError | Accepted)


def test_validate_content_with_deeply_nested_python_data() -> None:
    """Was RecursionError from json.dumps in LogEntry._check_data: the depth of data was not bounded."""
    nest: Any = 0
    for _ in range(5000):
        nest = [nest]
    log = {"timestamp": CREATED_AT, "level": "INFO", "widget_type": "ping", "message": "", "data": {"a": nest}}
    assert isinstance(attempt(validate_content, {"machine": MACHINE, "logs": [log]}), ContractError)


@pytest.mark.parametrize("version", [10**5000, -(10**4300)], ids=["10**5000", "-(10**4300)"])
def test_parse_envelope_with_a_huge_integer_version(version: int) -> None:
    """Was ValueError: check_version put repr(value) in its reason, and an int over 4300 digits has none."""
    envelope = sealed(SAMPLE_BYTES)
    assert isinstance(attempt(parse_envelope, {**envelope, "v": version}), EnvelopeError)


@pytest.mark.parametrize(
    "body",
    [
        body_of({**sealed(SAMPLE_BYTES), "\ud800": 1}),
        body_of({"v": 1, "batch_id": BATCH_ID, "created_at": CREATED_AT, **SAMPLE, "\udfff": 1}),
        body_of({"v": 1, "batch_id": BATCH_ID, "created_at": CREATED_AT, **SAMPLE, "x" * 1_000_000: 1}),
    ],
    ids=["envelope", "plaintext body", "huge field name"],
)
def test_error_renders_as_the_service_sends_it(body: bytes) -> None:
    """Was UnicodeEncodeError in JSONResponse (HTTP 500): a lone surrogate in a field name reached .field."""
    result = read(body, WITH_PLAINTEXT)
    assert isinstance(result, EnvelopeError)  # read() has rendered it, as the service does
