"""What an export will hold, known before it is streamed: the device it is of, and how many rows.

``HEAD /api/exports/logs`` answers with these (``X-Atlas-Row-Count``), and the
dashboard's export page shows them before the download starts. The count
uses the export's own WHERE clause, so the same indexes, and is bounded by a
statement timeout: past it the count is unknown (None), never a slow answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors, sql

from .query import ExportFilters, count_statement, where_clause

COUNT_TIMEOUT_MS = 5000
"""Longest a row count may take; past it the count is left unknown."""

SAMPLE_ROWS = 1000
"""Rows whose content is measured to estimate an export's size."""

ROW_OVERHEAD_BYTES = {"csv": 90, "json": 150, "ndjson": 150}
"""Bytes a row takes in each format besides its message and data (id, serial, time, level, type, quoting)."""


@dataclass(frozen=True)
class Machine:
    machine_id: str
    hostname: str


@dataclass(frozen=True)
class Scope:
    """The device an export of one machine or one serial is of, and every machine holding that serial."""

    serial_number: str | None = None
    machines: tuple[Machine, ...] = ()

    @property
    def shared(self) -> bool:
        """True when the serial is held by more than one machine (virtual machines, a logic-board swap)."""
        return len(self.machines) > 1


def scope_of(conn: psycopg.Connection, filters: ExportFilters) -> Scope:
    """The serial of the export's device (from the machine when only machine_id is given) and its machines."""
    serial = filters.serial_number
    if serial is None and filters.machine_id is not None:
        row = conn.execute("SELECT serial_number FROM machines WHERE machine_id = %s", (filters.machine_id,)).fetchone()
        serial = row[0] if row else None
    if serial is None:
        return Scope()
    rows = conn.execute(
        "SELECT machine_id, hostname FROM machines WHERE serial_number = %s ORDER BY first_seen, machine_id",
        (serial,),
    ).fetchall()
    return Scope(serial, tuple(Machine(machine_id, hostname) for machine_id, hostname in rows))


def _bounded(
    conn: psycopg.Connection, statement: sql.Composed, params: dict[str, Any], timeout_ms: int
) -> tuple[Any, ...] | None:
    """The first row of ``statement``, or None if it ran longer than ``timeout_ms`` (the bound is local to it)."""
    try:
        with conn.transaction():
            conn.execute("SELECT set_config('statement_timeout', %s, true)", (f"{int(timeout_ms)}ms",))
            return conn.execute(statement, params).fetchone()
    except errors.QueryCanceled:
        return None


def count_rows(conn: psycopg.Connection, filters: ExportFilters, timeout_ms: int = COUNT_TIMEOUT_MS) -> int | None:
    """The number of rows the export holds now, or None if counting them takes longer than ``timeout_ms``."""
    statement, params = count_statement(filters)
    row = _bounded(conn, statement, params, timeout_ms)
    return None if row is None else int(row[0])


SAMPLE_SQL = (
    "SELECT avg(coalesce(octet_length(message), 0) + coalesce(octet_length(data::text), 0)"
    " + coalesce(octet_length(sealed), 0)) FROM (SELECT message, data, sealed FROM widget_logs{where} LIMIT {n}) s"
)


def content_bytes(conn: psycopg.Connection, filters: ExportFilters, timeout_ms: int = COUNT_TIMEOUT_MS) -> float | None:
    """The average bytes of message and data in a sample of the export's rows (None: no rows, or too slow)."""
    where, params = where_clause(filters)
    statement = sql.SQL(SAMPLE_SQL).format(where=where, n=sql.Literal(SAMPLE_ROWS))
    row = _bounded(conn, statement, params, timeout_ms)
    return None if row is None or row[0] is None else float(row[0])


def estimated_bytes(fmt: str, rows: int, content: float | None) -> int | None:
    """About how many bytes an export of ``rows`` rows takes before gzip, given ``content_bytes``."""
    if rows == 0:
        return 0
    return None if content is None else int(rows * (content + ROW_OVERHEAD_BYTES[fmt]))
