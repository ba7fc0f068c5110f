"""Export rows through Python, opening what is encrypted at rest.

Every CSV export comes from here, clear or sealed, so that one writer
(``atlas.contract.export.CsvWriter``, which ``atlas-agent export`` uses too)
quotes and neutralises every CSV the fleet writes. JSON and NDJSON come from
here only when some stored content is sealed (``atlas.core.atrest``);
otherwise PostgreSQL's COPY writes them. Rows come from a server-side cursor a
page at a time, sealed ones are opened with their batch's data key, and each
JSON row is written as the same line COPY would write, so ``stream.frame``
wraps both sources alike.
"""

from __future__ import annotations

import json
from collections.abc import Generator

import psycopg
from psycopg import sql

from atlas.contract import CSV_COLUMNS, EXTENDED_CSV_COLUMNS, CsvWriter, Keyring
from atlas.core.content import ContentReader

from .query import LOGS_WITH_HOSTS, TIMESTAMP_SQL, ColumnSet, ExportFilters, where_clause
from .stream import RowCount

PAGE_ROWS = 2000
"""Rows fetched from the server-side cursor at a time."""

SELECT = sql.SQL(
    "SELECT id, serial_number, {ts}, level, widget_type, message, data::text, sealed, batch_id::text,"
    ' machine_id, "timestamp", hostname FROM {logs}{where} ORDER BY id'
)

_dumps = json.JSONEncoder(ensure_ascii=False).encode


def decrypted_lines(
    conn: psycopg.Connection,
    fmt: str,
    filters: ExportFilters,
    keyring: Keyring,
    count: RowCount,
    columns: ColumnSet = "default",
) -> Generator[bytes, None, None]:
    """The export's lines (CSV with its header, or one JSON object a line), decrypted.

    JSON carries every field of ``SERVER_JSON_FIELDS``; CSV the seven ``CSV_COLUMNS``, or with ``columns``
    ``extended`` the ``EXTENDED_CSV_COLUMNS``.
    """
    where, params = where_clause(filters)
    reader = ContentReader(conn, keyring)
    writer = CsvWriter()
    extended = columns == "extended"
    if fmt == "csv":
        yield writer.header(EXTENDED_CSV_COLUMNS if extended else CSV_COLUMNS).encode()
    with conn.transaction(), conn.cursor(name="atlas_export") as cursor:
        cursor.itersize = PAGE_ROWS
        cursor.execute(SELECT.format(ts=TIMESTAMP_SQL, logs=LOGS_WITH_HOSTS, where=where), params)
        while page := cursor.fetchmany(PAGE_ROWS):
            reader.prefetch({row[8] for row in page if row[7] is not None})
            opened = [
                (
                    log_id,
                    serial,
                    ts,
                    level,
                    widget_type,
                    *(
                        reader.open(batch_id, machine_id, moment, level, widget_type, sealed)
                        if sealed is not None
                        else (message, data)
                    ),
                    machine_id,
                    hostname,
                )
                for (
                    log_id,
                    serial,
                    ts,
                    level,
                    widget_type,
                    message,
                    data,
                    sealed,
                    batch_id,
                    machine_id,
                    moment,
                    hostname,
                ) in page
            ]
            count.rows += len(opened)
            if fmt == "csv":  # a page at a time: one write per page, not per row
                if extended:
                    yield writer.lines([(*row[:8], row[8] or "") for row in opened]).encode()
                else:
                    yield writer.lines([row[:7] for row in opened]).encode()
                continue
            lines = [
                f'{{"id": {log_id}, "serial_number": {_dumps(serial)}, "timestamp": "{ts}",'
                f' "level": {_dumps(level)}, "widget_type": {_dumps(widget_type)},'
                f' "message": {_dumps(message)}, "data": {data},'
                f' "machine_id": {_dumps(machine_id)}, "hostname": {_dumps(hostname)}}}\n'
                for log_id, serial, ts, level, widget_type, message, data, machine_id, hostname in opened
            ]
            if fmt == "json":  # stream.frame puts the commas between rows
                yield from (line.encode() for line in lines)
            else:
                yield "".join(lines).encode()
