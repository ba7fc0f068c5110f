"""The export audit log: who exported what, when, and how many rows left the server."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

STATUSES = ("running", "complete", "failed", "aborted")
"""``aborted``: the client went away before the end; ``failed``: the server could not finish."""


def start_export(
    conn: psycopg.Connection, *, username: str, auth: str, client: str | None, fmt: str, filters: dict[str, str]
) -> int:
    """Record an export as running; returns its audit id."""
    row = conn.execute(
        "INSERT INTO export_audit (username, auth, client, format, filters, status)"
        " VALUES (%s, %s, %s, %s, %s, 'running') RETURNING id",
        (username, auth, client, fmt, Jsonb(filters)),
    ).fetchone()
    assert row is not None
    return int(row[0])


def finish_export(conn: psycopg.Connection, audit_id: int, status: str, rows: int, error: str | None = None) -> None:
    conn.execute(
        "UPDATE export_audit SET finished_at = now(), status = %s, row_count = %s, error = %s WHERE id = %s",
        (status, rows, error, audit_id),
    )


def recent_exports(conn: psycopg.Connection, limit: int = 200) -> list[dict[str, Any]]:
    """The latest exports, newest first."""
    cursor = conn.execute(
        "SELECT id, started_at, finished_at, username, auth, client, format, filters, row_count, status, error"
        " FROM export_audit ORDER BY id DESC LIMIT %s",
        (limit,),
    )
    names = [d.name for d in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
