"""The export format both export tools write (server exporter and ``atlas-agent export``).

CSV columns are ``ID,Serial Number,Timestamp,Level,Widget Type,Message,Data``
(Data is the JSON object as a string); JSON and NDJSON use the same fields in
snake_case. Agent-reported text (SSIDs, process names) comes from machines
that may be compromised, so every cell that a spreadsheet would read as a
formula is neutralised with a leading apostrophe.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from itertools import chain
from typing import Any

CSV_COLUMNS = ("ID", "Serial Number", "Timestamp", "Level", "Widget Type", "Message", "Data")
"""The CSV header, exactly."""

JSON_FIELDS = ("id", "serial_number", "timestamp", "level", "widget_type", "message", "data")
"""The same fields in JSON and NDJSON exports."""

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
"""First characters that make a spreadsheet evaluate a cell (with their full-width forms)."""


def neutralise(cell: str) -> str:
    """Prefix a cell that would start a formula with an apostrophe, so it is shown as text."""
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell


def format_export_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC: ``2026-11-28T16:00:00Z``, with ``.ffffff`` only when there is a fraction."""
    utc = moment.astimezone(UTC)
    fraction = f".{utc.microsecond:06d}" if utc.microsecond else ""
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


def record(
    log_id: int, serial_number: str, timestamp: str, level: str, widget_type: str, message: str, data: Any
) -> dict[str, Any]:
    """One exported log as a JSON object."""
    return dict(zip(JSON_FIELDS, (log_id, serial_number, timestamp, level, widget_type, message, data), strict=True))


def csv_cells(rec: dict[str, Any]) -> list[str]:
    data = rec["data"] if isinstance(rec["data"], str) else json.dumps(rec["data"], ensure_ascii=False)
    cells = [
        str(rec["id"]),
        rec["serial_number"],
        rec["timestamp"],
        rec["level"],
        rec["widget_type"],
        rec["message"],
        data,
    ]
    return [neutralise(c) for c in cells]


def csv_lines(records: Iterable[dict[str, Any]]) -> Iterable[str]:
    """The header, then one line per record: RFC 4180 quoting, LF line ends (as PostgreSQL's COPY writes).

    The writer's line terminator is CRLF, so that a cell holding a bare CR is quoted too (csv quotes only the
    terminator's characters: with LF alone, ``x\\r=1+1`` went out bare and a reader began a row with ``=1+1``);
    each line's CRLF then becomes LF.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for cells in chain([CSV_COLUMNS], map(csv_cells, records)):  # lazily: an export may hold millions
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(cells)
        yield buffer.getvalue()[:-2] + "\n"
