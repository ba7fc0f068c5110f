"""The record schema of wire contract v1: one machine and its widget logs.

These models validate what arrives (the decrypted plaintext, or an
unencrypted body where the server allows one) and describe what the agent
builds. Every string is bounded, and whatever PostgreSQL could not store
(NUL characters, lone surrogates, NaN) is rejected here, at the door, so a
queued batch can always be persisted.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, TypedDict

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .envelope import parse_timestamp
from .errors import EnvelopeError, SchemaError, SchemaViolation

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
"""Log levels, in increasing severity."""

WIDGET_TYPES = ("wifi", "speedtest", "ping", "health", "processes", "network", "roam", "agent")
"""The widgets a log can come from; ``agent`` is the agent's own reports. ``network`` (layered checks) and
``roam`` (access-point changes) came after the first six: a v1 agent never sends them, and the server
stores any type listed here."""

MAX_LOGS_PER_BATCH = 5000
"""Default bound on the number of logs in one batch."""

MAX_MESSAGE_CHARS = 8192
"""Bound on a log's message."""

MAX_DATA_BYTES = 65536
"""Bound on a log's ``data`` object, serialised as compact UTF-8 JSON."""

MAX_DATA_DEPTH = 32
"""Bound on how deeply a log's ``data`` nests objects and arrays."""

LOG_MAX_BEFORE_BATCH = timedelta(days=1)
"""How long before its batch's ``created_at`` a log may be dated. The agent keeps to it when it seals a spool of
old logs: a batch spans at most this much log time, and is dated at most this long after its oldest log."""

LOG_MAX_AFTER_BATCH = timedelta(minutes=5)
"""How long after its batch's ``created_at`` a log may be dated (the Mac's clock stepping back while it runs)."""

Level = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
WidgetType = Literal["wifi", "speedtest", "ping", "health", "processes", "network", "roam", "agent"]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


_NO_NUL = BeforeValidator(lambda v: _no_nul(v) if isinstance(v, str) else v)


def _rfc3339(value: object) -> datetime:
    try:
        return parse_timestamp(value, "timestamp")
    except EnvelopeError as exc:
        raise ValueError(exc.reason) from None


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} seconds"


def check_log_time(timestamp: datetime, created_at: datetime) -> None:
    """Refuse a log dated outside [created_at - LOG_MAX_BEFORE_BATCH, created_at + LOG_MAX_AFTER_BATCH].

    A log dated in 2099 would stay a machine's "latest" reading for ever, and one dated days before the
    batch that carries it is not history an agent keeps (``docs/protocol.md``, section 6).
    """
    if timestamp < created_at - LOG_MAX_BEFORE_BATCH:
        raise ValueError(f"is more than {_human(LOG_MAX_BEFORE_BATCH)} before the batch's created_at")
    if timestamp > created_at + LOG_MAX_AFTER_BATCH:
        raise ValueError(f"is more than {_human(LOG_MAX_AFTER_BATCH)} after the batch's created_at")


class MachineInfo(BaseModel):
    """Who sent the batch. ``machine_id`` is the fleet-wide identity."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    machine_id: Annotated[str, StringConstraints(min_length=1, max_length=128), _NO_NUL]
    serial_number: Annotated[str, StringConstraints(min_length=1, max_length=64), _NO_NUL]
    hostname: Annotated[str, StringConstraints(max_length=255), _NO_NUL]
    model: Annotated[str, StringConstraints(max_length=128), _NO_NUL]
    os_version: Annotated[str, StringConstraints(max_length=128), _NO_NUL]
    agent_version: Annotated[str, StringConstraints(max_length=64), _NO_NUL]


class MachineFields(TypedDict):
    """``MachineInfo`` as plain JSON (the job payload, a fleet row): its keys, in order (a test holds them equal)."""

    machine_id: str
    serial_number: str
    hostname: str
    model: str
    os_version: str
    agent_version: str


MACHINE_FIELDS: tuple[str, ...] = tuple(MachineInfo.model_fields)
"""The machine object's keys in wire order, ``machine_id`` first: the identity columns of ``machines``."""

MACHINE_MAX_CHARS: dict[str, int] = {
    name: next(m.max_length for m in info.metadata if hasattr(m, "max_length"))
    for name, info in MachineInfo.model_fields.items()
}
"""The longest each machine field may be, in characters."""


class LogEntry(BaseModel):
    """One widget log: when, how severe, which widget, what it said, and its data."""

    model_config = ConfigDict(extra="forbid", strict=True)

    timestamp: Annotated[datetime, BeforeValidator(_rfc3339)]
    level: Level
    widget_type: WidgetType
    message: Annotated[str, StringConstraints(max_length=MAX_MESSAGE_CHARS), _NO_NUL]
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("timestamp", mode="after")
    @classmethod
    def _within_the_batch(cls, value: datetime, info: ValidationInfo) -> datetime:
        """With the batch's ``created_at`` in the validation context, the log must be dated near it."""
        created_at = (info.context or {}).get("created_at")
        if created_at is not None:
            check_log_time(value, created_at)
        return value

    @model_validator(mode="after")
    def _check_data(self) -> LogEntry:
        text, size = _compact_json(self.data)
        if _may_break_structure(text):
            _check_structure(self.data)
        if size > MAX_DATA_BYTES:
            raise ValueError(f"data is {size} bytes as JSON; at most {MAX_DATA_BYTES} allowed")
        return self

    @property
    def data_json(self) -> str:
        """``data`` as compact JSON (written again: a private attribute to keep it cost more per log)."""
        return _compact_json(self.data)[0]


_ORJSON_SURE_BYTES = MAX_DATA_BYTES * 2 // 3
"""orjson writes some floats longer or shorter than json.dumps (``0.00001`` against ``1e-05``), by at
most a factor of 1.4; below this size both are surely under MAX_DATA_BYTES, so orjson's text may
decide. Above it json.dumps' text decides, as it always has."""


def _compact_json(data: dict[str, Any]) -> tuple[str, int]:
    """``data`` as compact JSON text and its UTF-8 size; ValueError for NaN, Infinity or lone surrogates.

    orjson writes it several times faster than json.dumps, which matters at
    every log of every batch. It writes NaN as ``null`` and refuses integers
    beyond 64 bits, lone surrogates and extreme nesting, so any ``null``, refusal
    or size near the limit takes json.dumps' exact path, whose errors and size are
    the documented ones. orjson also writes some floats differently
    (``0.00001``): the same JSON value.
    """
    try:
        raw = orjson.dumps(data)
    except orjson.JSONEncodeError:
        raw = None
    if raw is not None and b"null" not in raw and len(raw) <= _ORJSON_SURE_BYTES:
        return raw.decode("utf-8"), len(raw)
    try:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (ValueError, RecursionError):
        _check_structure(data)  # NUL and depth are reported first, as the walk finds them
        raise ValueError("data must not contain NaN or Infinity") from None
    try:
        return text, len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("data must be valid Unicode (no lone surrogates)") from None


def _may_break_structure(text: str) -> bool:
    """Whether compact JSON ``text`` could hold a NUL or nest deeper than MAX_DATA_DEPTH.

    False is certain, and almost every log gets it, so the walk below runs
    rarely: json.dumps writes a NUL as the escape ``\\u0000`` (a literal
    backslash-u text comes out as ``\\\\u0000``, which also contains it, hence
    "may"), and nesting cannot go deeper than the number of ``{`` and ``[``,
    counted inside strings too.
    """
    return "\\u0000" in text or text.count("{") + text.count("[") > MAX_DATA_DEPTH


def _check_structure(data: dict[str, Any]) -> None:
    """Refuse nesting deeper than MAX_DATA_DEPTH and NUL characters, without recursion."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise ValueError("data must not contain NUL characters")
        elif isinstance(value, dict | list):
            if depth > MAX_DATA_DEPTH:
                raise ValueError(f"data is nested more than {MAX_DATA_DEPTH} levels deep")
            if isinstance(value, dict):
                stack.extend((k, depth) for k in value)
                stack.extend((v, depth + 1) for v in value.values())
            else:
                stack.extend((v, depth + 1) for v in value)


class BatchContent(BaseModel):
    """The plaintext of an envelope: the machine and its logs."""

    model_config = ConfigDict(extra="forbid", strict=True)

    machine: MachineInfo
    logs: list[LogEntry]

    @field_validator("logs", mode="before")
    @classmethod
    def _bound_count(cls, value: Any, info: ValidationInfo) -> Any:
        """Count before validating each log, so a huge list is refused cheaply."""
        limit = (info.context or {}).get("max_logs", MAX_LOGS_PER_BATCH)
        if isinstance(value, list) and len(value) > limit:
            raise ValueError(f"at most {limit} logs per batch, got {len(value)}")
        return value


def _violations(exc: ValidationError) -> list[SchemaViolation]:
    return [
        SchemaViolation(tuple(err["loc"]), err["msg"], err["type"])
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def decode_content(
    raw: bytes, *, max_logs: int = MAX_LOGS_PER_BATCH, created_at: datetime | None = None
) -> BatchContent:
    """Validate decrypted plaintext JSON bytes.

    With ``created_at`` (the batch's), every log must be dated within its window (``check_log_time``).
    Raises EnvelopeError (400) when the bytes are not JSON, SchemaError (422)
    when the JSON breaks the schema.
    """
    try:
        content = BatchContent.model_validate_json(raw, context={"max_logs": max_logs, "created_at": created_at})
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise EnvelopeError("ciphertext", "decrypted plaintext is not valid UTF-8 JSON") from None
        raise SchemaError(_violations(exc)) from None
    return content


def validate_content(
    obj: dict[str, Any], *, max_logs: int = MAX_LOGS_PER_BATCH, created_at: datetime | None = None
) -> BatchContent:
    """Validate the machine and logs of an already-parsed unencrypted body (``created_at``: as decode_content)."""
    try:
        content = BatchContent.model_validate(
            {"machine": obj.get("machine"), "logs": obj.get("logs")},
            context={"max_logs": max_logs, "created_at": created_at},
        )
    except ValidationError as exc:
        raise SchemaError(_violations(exc)) from None
    return content
