"""What an export asks for, and the SQL that lets PostgreSQL write it.

Nothing here touches the network or the database: filters are parsed and
checked, then turned into SQL. A JSON or NDJSON export of clear rows is one
``COPY (SELECT ...) TO STDOUT`` statement whose output is the export itself,
so rows never pass through Python objects: each row is built as one JSON
object in SQL, and COPY's CSV mode with a quote and delimiter byte that JSON
text can never contain (PostgreSQL escapes every control character inside
JSON strings) passes it through unchanged, one object a line. A CSV export is
written in Python (``decrypted``), by the one writer every CSV export uses.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any, Literal, get_args
from urllib.parse import quote

from psycopg import sql

from atlas.contract import LEVELS, WIDGET_TYPES

ExportFormat = Literal["csv", "json", "ndjson"]
FORMATS: tuple[str, ...] = get_args(ExportFormat)

MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "json": "application/json", "ndjson": "application/x-ndjson"}

ColumnSet = Literal["default", "extended"]
COLUMN_SETS: tuple[str, ...] = get_args(ColumnSet)
"""CSV columns: ``default`` is the seven of ``CSV_COLUMNS``; ``extended`` adds Machine ID and Hostname."""

MAX_ID_CHARS = 128
"""Longest machine_id or serial_number filter accepted (the record schema bounds them lower)."""


class FilterError(ValueError):
    """A query parameter that cannot be used; ``field`` names it, the message says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ExportFilters:
    """The rows an export contains: every filter given must hold (since inclusive, until exclusive)."""

    widget_type: str | None = None
    machine_id: str | None = None
    serial_number: str | None = None
    level: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def as_dict(self) -> dict[str, str]:
        """The filters given, as strings, for the audit log."""
        out: dict[str, str] = {}
        for name in ("widget_type", "machine_id", "serial_number", "level", "since", "until"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.isoformat() if isinstance(value, datetime) else value
        return out


def _blank_to_none(value: str | None) -> str | None:
    return value if value else None


def parse_time(value: str | None, field: str) -> datetime | None:
    """ISO 8601 date-time (``2026-11-28T10:00``, ``...Z``, ``...+01:00``) or date; no offset means UTC."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise FilterError(field, "must be an ISO 8601 date-time, e.g. 2026-11-28T10:00:00Z") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def parse_filters(
    *,
    format: str | None,
    widget_type: str | None = None,
    machine_id: str | None = None,
    serial_number: str | None = None,
    level: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> tuple[ExportFormat, ExportFilters]:
    """Check the query parameters of an export; empty strings count as absent (an HTML form sends them)."""
    fmt = (format or "csv").lower()
    if fmt not in FORMATS:
        raise FilterError("format", f"must be one of {', '.join(FORMATS)}")
    widget_type, machine_id, serial_number, level = map(_blank_to_none, (widget_type, machine_id, serial_number, level))
    if widget_type is not None and widget_type not in WIDGET_TYPES:
        raise FilterError("widget_type", f"must be one of {', '.join(WIDGET_TYPES)}")
    if level is not None:
        level = level.upper()
        if level not in LEVELS:
            raise FilterError("level", f"must be one of {', '.join(LEVELS)}")
    for name, value in (("machine_id", machine_id), ("serial_number", serial_number)):
        if value is not None and (len(value) > MAX_ID_CHARS or not value.isprintable()):
            raise FilterError(name, f"must be at most {MAX_ID_CHARS} printable characters")
    start, end = parse_time(since, "since"), parse_time(until, "until")
    if start is not None and end is not None and end <= start:
        raise FilterError("until", "must be later than since")
    filters = ExportFilters(widget_type, machine_id, serial_number, level, start, end)
    return fmt, filters  # type: ignore[return-value]


def parse_columns(columns: str | None) -> ColumnSet:
    """The ``columns`` parameter: ``default`` (or absent) or ``extended``; JSON carries every field either way."""
    chosen = (columns or "default").lower()
    if chosen not in COLUMN_SETS:
        raise FilterError("columns", f"must be one of {', '.join(COLUMN_SETS)}")
    return chosen  # type: ignore[return-value]


def where_clause(filters: ExportFilters) -> tuple[sql.Composable, dict[str, Any]]:
    """The WHERE clause (or nothing) and its parameters; values are always bound, never interpolated."""
    conditions: list[sql.Composable] = []
    params: dict[str, Any] = {}
    for column in ("widget_type", "machine_id", "serial_number", "level"):
        value = getattr(filters, column)
        if value is not None:
            conditions.append(sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(column)))
            params[column] = value
    if filters.since is not None:
        conditions.append(sql.SQL('"timestamp" >= {}').format(sql.Placeholder("since")))
        params["since"] = filters.since
    if filters.until is not None:
        conditions.append(sql.SQL('"timestamp" < {}').format(sql.Placeholder("until")))
        params["until"] = filters.until
    if not conditions:
        return sql.SQL(""), params
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions), params


TIMESTAMP_SQL = sql.SQL(
    'to_char("timestamp" AT TIME ZONE \'UTC\', CASE WHEN date_trunc(\'second\', "timestamp") = "timestamp"'
    ' THEN \'YYYY-MM-DD"T"HH24:MI:SS"Z"\' ELSE \'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\' END)'
)
"""RFC 3339 in UTC, as ``atlas.contract.export.format_export_timestamp`` writes it."""

LOGS_WITH_HOSTS = sql.SQL(
    "widget_logs LEFT JOIN (SELECT machine_id AS host_machine_id, hostname FROM machines) hosts"
    " ON hosts.host_machine_id = widget_logs.machine_id"
)
"""Each log beside its machine's hostname (NULL for a machine never seen); the WHERE clause's names stay
unambiguous."""

JSON_SELECT = sql.SQL(
    """SELECT '{{"id": ' || id || ', "serial_number": ' || to_json(serial_number)"""
    """ || ', "timestamp": "' || {ts} || '", "level": ' || to_json(level)"""
    """ || ', "widget_type": ' || to_json(widget_type) || ', "message": ' || to_json(message)"""
    """ || ', "data": ' || data::text || ', "machine_id": ' || to_json(machine_id)"""
    """ || ', "hostname": ' || coalesce(to_json(hostname)::text, 'null') || '}}'"""
).format(ts=TIMESTAMP_SQL)
"""One JSON object per row, with the fields of ``atlas.contract.export.SERVER_JSON_FIELDS`` in order."""

JSON_COPY_OPTIONS = sql.SQL("(FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')")
"""COPY's CSV mode with quote byte 0x01 and delimiter 0x02, which never occur in JSON text: each object passes
through unquoted."""


def copy_statement(fmt: ExportFormat, filters: ExportFilters) -> tuple[sql.Composed, dict[str, Any]]:
    """``COPY (SELECT ... ORDER BY id) TO STDOUT ...`` writing a JSON or NDJSON export, and its parameters."""
    if fmt == "csv":
        raise ValueError("CSV exports are written by atlas.contract.export.CsvWriter, not by COPY")
    where, params = where_clause(filters)
    statement = sql.SQL("COPY ({select} FROM {logs}{where} ORDER BY id) TO STDOUT {options}").format(
        select=JSON_SELECT, logs=LOGS_WITH_HOSTS, where=where, options=JSON_COPY_OPTIONS
    )
    return statement, params


def count_statement(filters: ExportFilters) -> tuple[sql.Composed, dict[str, Any]]:
    """``SELECT count(*)`` of the rows the export holds: the same WHERE, so the same indexes."""
    where, params = where_clause(filters)
    return sql.SQL("SELECT count(*) FROM widget_logs{where}").format(where=where), params


_UNSAFE_NAME = re.compile(r"[^\w.-]+")
"""Runs of anything but letters, digits, ``_``, ``.`` and ``-`` (any script): each becomes one ``_``."""

_NOT_ASCII_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _part(text: str) -> str:
    return _UNSAFE_NAME.sub("_", text).strip("._-")[:64] or "device"


def _ascii(name: str) -> str:
    """The name in ASCII: accents dropped (NFKD), any other character outside ``_NOT_ASCII_NAME`` a ``_``."""
    kept = "".join(
        c if c.isascii() else "" if unicodedata.combining(c) else "_" for c in unicodedata.normalize("NFKD", name)
    )
    return re.sub(r"_+", "_", _NOT_ASCII_NAME.sub("_", kept))


def _bound(moment: datetime) -> str:
    """A range bound in a file name, UTC: ``2026-12-01``, or ``2026-12-01T1030Z`` (no colons) off midnight."""
    utc = moment.astimezone(UTC)
    if utc.time() == time(0):
        return utc.date().isoformat()
    return utc.strftime("%Y-%m-%dT%H%M%SZ" if utc.second else "%Y-%m-%dT%H%MZ")


def export_filename(
    fmt: ExportFormat,
    filters: ExportFilters,
    today: date,
    serial_number: str | None = None,
    machines: int = 1,
) -> str:
    """``atlas-logs-<scope>-<range>.<ext>``, in any script (``content_disposition`` adds an ASCII fallback).

    The scope is the device's serial, the widget type, both, or ``all``. A serial held by more than one
    machine (virtual machines, a logic-board swap) says so: one machine's file adds its machine_id, a
    serial's file ``<n>-machines``. The range is ``<since>_<until>`` as given (until exclusive),
    ``since-<since>`` or ``until-<until>``, and the day of the export when there is none.
    """
    serial = serial_number or filters.serial_number or filters.machine_id
    parts = [_part(p) for p in (serial, filters.widget_type) if p]
    if machines > 1 and serial:
        shared = _part(filters.machine_id) if filters.machine_id else f"{machines}-machines"
        parts.insert(1, shared)
    scope = "-".join(parts) or "all"
    if filters.since is not None and filters.until is not None:
        span = f"{_bound(filters.since)}_{_bound(filters.until)}"
    elif filters.since is not None:
        span = f"since-{_bound(filters.since)}"
    elif filters.until is not None:
        span = f"until-{_bound(filters.until)}"
    else:
        span = today.isoformat()
    return f"atlas-logs-{scope}-{span}.{fmt}"


def content_disposition(name: str) -> str:
    """``attachment; filename="..."``, and RFC 6266's ``filename*=UTF-8''...`` when the name is not ASCII."""
    fallback = _ascii(name)
    if fallback == name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def accepts_gzip(accept_encoding: str | None) -> bool:
    """True if an Accept-Encoding header allows gzip (``gzip`` or ``*`` with a q-value above zero)."""
    for item in (accept_encoding or "").split(","):
        token, _, params = item.strip().partition(";")
        if token.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False
