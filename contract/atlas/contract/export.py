"""The export format both export tools write (server exporter and ``atlas-agent export``).

CSV columns are ``ID,Serial Number,Timestamp,Level,Widget Type,Message,Data``
(Data is the JSON object as a string); JSON and NDJSON use the same fields in
snake_case. The server's exports also carry each log's ``machine_id`` and its
machine's ``hostname``: always in JSON and NDJSON (``SERVER_JSON_FIELDS``),
and in CSV when asked for (``EXTENDED_CSV_COLUMNS``, the seven columns then
two more), so two machines sharing a serial number stay apart.

Agent-reported text (SSIDs, process names) comes from machines that may be
compromised, so every cell that a spreadsheet would read as a formula is
neutralised with a leading apostrophe.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

CSV_COLUMNS = ("ID", "Serial Number", "Timestamp", "Level", "Widget Type", "Message", "Data")
"""The CSV header, exactly."""

JSON_FIELDS = ("id", "serial_number", "timestamp", "level", "widget_type", "message", "data")
"""The same fields in JSON and NDJSON exports."""

EXTENDED_CSV_COLUMNS = (*CSV_COLUMNS, "Machine ID", "Hostname")
"""The server's optional CSV header: the seven columns, in their order, then the machine and its hostname."""

SERVER_JSON_FIELDS = (*JSON_FIELDS, "machine_id", "hostname")
"""The fields of the server's JSON and NDJSON exports (``hostname`` is null for a machine never seen)."""

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
"""First characters that make a spreadsheet evaluate a cell (with their full-width forms); each one character."""


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
    """A record's CSV cells, in ``CSV_COLUMNS`` order (``data`` as JSON text)."""
    data = rec["data"] if isinstance(rec["data"], str) else json.dumps(rec["data"], ensure_ascii=False)
    return [str(rec[name]) for name in JSON_FIELDS[:-1]] + [data]


_FORMULA_FIRST = frozenset(FORMULA_PREFIXES)
"""FORMULA_PREFIXES are single characters: a row needs neutralising if a cell's first character is one."""


class CsvWriter:
    """The one CSV writer of every export: the server's (clear or encrypted at rest) and ``atlas-agent export``.

    RFC 4180 quoting, LF line ends, and every cell that a spreadsheet would read as a formula neutralised
    (``neutralise``). Python's csv module quotes a cell only for the delimiter, the quote and the characters
    of its line terminator, so a writer ending lines with LF alone leaves a bare CR unquoted, and a reader
    starts a row at it (``x\\r=1+1`` became a row beginning ``=1+1``). A row holding a CR is therefore written
    with CRLF as the terminator, which quotes it, and its final CRLF becomes LF.
    """

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._lf = csv.writer(self._buffer, lineterminator="\n")
        self._crlf = csv.writer(self._buffer, lineterminator="\r\n")

    def header(self, columns: Sequence[str] = CSV_COLUMNS) -> str:
        """The header line (``CSV_COLUMNS`` unless given)."""
        return self.lines([columns])

    def lines(self, rows: Iterable[Sequence[object]]) -> str:
        """The CSV lines of ``rows``, each a sequence of cells (non-strings are written with ``str``)."""
        buffer = self._buffer
        buffer.seek(0)
        buffer.truncate()
        plain: list[list[str]] = []  # rows with no CR, written together (csv's writerows loops in C)
        for row in rows:
            cells = [str(cell) for cell in row]
            if not _FORMULA_FIRST.isdisjoint([cell[:1] for cell in cells]):
                cells = [neutralise(cell) for cell in cells]
            if "\r" not in "".join(cells):
                plain.append(cells)
                continue
            self._lf.writerows(plain)
            plain.clear()
            self._crlf.writerow(cells)
            buffer.seek(buffer.tell() - 2)
            buffer.write("\n")
            buffer.truncate()
        self._lf.writerows(plain)
        return buffer.getvalue()


def csv_lines(records: Iterable[dict[str, Any]]) -> Iterable[str]:
    """The header, then one line per record, lazily (an export may hold millions), as ``CsvWriter`` writes them."""
    writer = CsvWriter()
    yield writer.header()
    for rec in records:
        yield writer.lines([csv_cells(rec)])
