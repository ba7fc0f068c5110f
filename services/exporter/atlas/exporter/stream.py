"""Turning a running COPY into the bytes of an export: framing, chunking, gzip, counting.

Each function takes and returns an iterator, so an export of any size holds
one chunk in memory at a time. They run in a worker thread (the response
iterates them through ``run_in_threadpool``), never on the event loop.
"""

from __future__ import annotations

import zlib
from collections.abc import Generator, Iterable, Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import Buffer

GZIP_LEVEL = 3
"""zlib level for gzip responses: most of level 6's ratio on log text at about twice its speed."""


class RowCount:
    """Rows written so far; read by the audit log when the stream ends, however it ends."""

    def __init__(self) -> None:
        self.rows = 0


def copy_out(
    conn: psycopg.Connection, statement: sql.Composed, params: dict[str, Any], count: RowCount
) -> Generator[Buffer, None, None]:
    """The rows of a ``COPY ... TO STDOUT``, one line each, as PostgreSQL wrote them (psycopg's memoryviews).

    Stopped early (the client went away, or a later step failed), the COPY is
    cancelled on the server: otherwise PostgreSQL would go on writing rows
    nobody reads, and the connection would never come back to the pool.
    """
    with conn.cursor() as cursor, cursor.copy(statement, params) as copy:
        try:
            for row in copy:
                count.rows += 1
                yield row
        except BaseException:
            conn.cancel_safe(timeout=5)
            raise


def frame(rows: Iterable[Buffer], fmt: str) -> Iterator[Buffer]:
    """Wrap export lines as the format: CSV (its header first) and NDJSON as they are, JSON as an array."""
    if fmt == "json":
        separator = b"[\n"
        for row in rows:
            yield separator
            yield row[:-1]  # the line's own "\n" moves after the comma
            separator = b",\n"
        yield b"\n]\n" if separator == b",\n" else b"[]\n"
    else:
        yield from rows


def chunked(parts: Iterable[Buffer], size: int) -> Iterator[bytes]:
    """Join small pieces into chunks of about ``size`` bytes (fewer, larger writes to the socket)."""
    buffer: list[Buffer] = []
    held = 0
    for part in parts:
        buffer.append(part)
        held += len(part)
        if held >= size:
            yield b"".join(buffer)
            buffer.clear()
            held = 0
    if buffer:
        yield b"".join(buffer)


def gzipped(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Compress a stream as one gzip member; a stream cut short lacks the trailer, so gunzip reports it."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    for chunk in chunks:
        out = compressor.compress(chunk)
        if out:
            yield out
    yield compressor.flush()
