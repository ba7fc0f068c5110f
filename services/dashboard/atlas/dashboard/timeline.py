"""Long chart ranges: logs averaged into time buckets of one width, one average per bucket and line.

Every log of the window counts, whatever minute it falls on. Clear logs are summed and counted in PostgreSQL,
grouped by ``date_bin(width, "timestamp", start)`` over one machine's rows of the window (the
``(machine_id, "timestamp")`` index of each day partition), so a week of per-minute logs costs a few
thousand aggregate rows, not tens of thousands of decoded ones. Each number is read in SQL by ``number_sql``
with the paths and bounds of its ``extract.NumberAt``: a JSON number within the field's bounds, anything else
NULL (never a cast error). Logs encrypted at rest can only be read in Python: of those, the first
``SEALED_PER_BUCKET`` of each widget type in each bucket are opened and added to the same sums, which bounds
the decryption work of a page. A bucket's point sits at its midpoint, as with ``charts.bucket_average``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql

from . import extract

SEALED_PER_BUCKET = 3
"""Logs encrypted at rest opened per widget type and bucket, the first ones: at most 3 x 2,016 x 4 logs for a
week, far fewer to open than the 60,000 logs of a week collected every minute; with three ping targets,
one minute's pings."""

Line = tuple[str, extract.NumberAt]
"""(widget type, number) of one chart line."""


def number_sql(number: extract.NumberAt) -> sql.Composable:
    """``number`` read from the ``data`` column as float8: the first path holding a JSON number in bounds, else NULL.

    Nested CASEs, so a string or an object is never cast (PostgreSQL does not promise the order of AND).
    """
    low, high = number.bounds
    reads = [
        sql.SQL(
            "CASE WHEN jsonb_typeof({at}) = 'number' THEN CASE WHEN {at}::numeric BETWEEN {low} AND {high}"
            " THEN {at}::float8 END END"
        ).format(at=sql.SQL("(data #> {})").format(sql.Literal(list(keys))), low=low, high=high)
        for keys in number.paths
    ]
    return reads[0] if len(reads) == 1 else sql.SQL("coalesce({})").format(sql.SQL(", ").join(reads))


@dataclass
class Buckets:
    """Sums and counts of each line's values in each bucket of [start, end)."""

    start: datetime
    end: datetime
    width: timedelta
    lines: Sequence[Line]
    sums: dict[tuple[int, int], list[float]] = field(default_factory=dict)
    """(line index, bucket index) -> [sum, count]."""

    def add(self, line: int, bucket: int, total: float, count: int) -> None:
        if count:
            found = self.sums.setdefault((line, bucket), [0.0, 0])
            found[0] += total
            found[1] += count

    def bucket_of(self, when: datetime) -> int:
        return (when - self.start) // self.width

    def points(self, line: int) -> list[tuple[datetime, float]]:
        """(bucket midpoint, average) of each bucket holding a value of ``line``, in time order."""
        found = sorted((bucket, s) for (index, bucket), s in self.sums.items() if index == line)
        return [(self.start + self.width * bucket + self.width / 2, total / count) for bucket, (total, count) in found]


def _window(buckets: Buckets, machine_id: str, *, sealed: bool) -> tuple[sql.Composable, dict[str, Any]]:
    where = sql.SQL(
        'machine_id = %(id)s AND "timestamp" >= %(start)s AND "timestamp" < %(end)s'
        " AND widget_type = ANY(%(types)s) AND sealed IS {} NULL"
    ).format(sql.SQL("NOT" if sealed else ""))
    types = sorted({kind for kind, _ in buckets.lines})
    return where, {"id": machine_id, "start": buckets.start, "end": buckets.end, "types": types, "width": buckets.width}


def clear_query(buckets: Buckets, machine_id: str) -> tuple[sql.Composed, dict[str, Any]]:
    """One row per bucket: its start, then the sum and count of each line's values among the clear logs.

    ``OFFSET 0`` keeps the subquery apart, so each row is reduced to its bucket and numbers before grouping: a
    hash of a few thousand buckets, instead of sorting the whole rows (``data`` included) by bucket.
    """
    where, params = _window(buckets, machine_id, sealed=False)
    values = [
        sql.SQL("CASE WHEN widget_type = {} THEN {} END AS {}").format(
            kind, number_sql(number), sql.Identifier(f"v{i}")
        )
        for i, (kind, number) in enumerate(buckets.lines)
    ]
    totals = [sql.SQL("sum({v}), count({v})").format(v=sql.Identifier(f"v{i}")) for i in range(len(buckets.lines))]
    query = sql.SQL(
        'SELECT bin, {totals} FROM (SELECT date_bin(%(width)s, "timestamp", %(start)s) AS bin, {values}'
        " FROM widget_logs WHERE {where} OFFSET 0) AS readings GROUP BY bin"
    ).format(totals=sql.SQL(", ").join(totals), values=sql.SQL(", ").join(values), where=where)
    return query, params


def add_clear(buckets: Buckets, rows: Sequence[Sequence[Any]]) -> None:
    """Add the rows of ``clear_query``."""
    for row in rows:
        bucket = buckets.bucket_of(row[0])
        for line in range(len(buckets.lines)):
            total, count = row[1 + 2 * line], row[2 + 2 * line]
            buckets.add(line, bucket, total or 0.0, count)


def sealed_query(buckets: Buckets, machine_id: str, columns: sql.Composable) -> tuple[sql.Composed, dict[str, Any]]:
    """``columns`` of the first ``SEALED_PER_BUCKET`` sealed logs of each widget type in each bucket."""
    where, params = _window(buckets, machine_id, sealed=True)
    query = sql.SQL(
        "SELECT {columns} FROM (SELECT *, row_number() OVER (PARTITION BY widget_type,"
        ' date_bin(%(width)s, "timestamp", %(start)s) ORDER BY "timestamp", id) AS nth'
        " FROM widget_logs WHERE {where}) AS sealed_logs WHERE nth <= %(per_bucket)s"
    ).format(columns=columns, where=where)
    return query, params | {"per_bucket": SEALED_PER_BUCKET}


def add_opened(buckets: Buckets, rows: Sequence[tuple[str, datetime, Mapping[str, Any]]]) -> None:
    """Add (widget type, timestamp, decoded data) rows, read with the lines' ``NumberAt`` in Python."""
    for kind, when, data in rows:
        bucket = buckets.bucket_of(when)
        for line, (line_kind, number) in enumerate(buckets.lines):
            if line_kind == kind:
                value = number(data)
                if value is not None:
                    buckets.add(line, bucket, value, 1)
