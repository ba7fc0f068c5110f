"""``widget_logs`` partitions: one per UTC day of ``timestamp``, made ahead, dropped whole after retention.

Migration 4 turned ``widget_logs`` into a table partitioned by range of
``"timestamp"``: the rows from before became one partition (``widget_logs_before``,
up to the migration's next midnight), each later day has its own
(``widget_logs_pYYYYMMDD``), and a default partition takes timestamps no day
covers (an agent whose clock is far off), so nothing is ever refused.

``ensure_partitions`` creates the days ahead (``atlas-server migrate``,
``atlas-server partitions`` and every worker do it). ``drop_expired`` removes
whole partitions older than the retention: a ``DROP TABLE``, not millions of
``DELETE``\\ s and a vacuum. The default partition is never dropped; its rows older than the retention are
deleted (there are few: only timestamps no day's partition covers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

PREFIX = "widget_logs_p"
DEFAULT_PARTITION = "widget_logs_default"
DAYS_AHEAD = 14
"""Days of partitions kept ready beyond today."""

LOCK_ID = 0x41544C50  # "ATLP"
"""Advisory lock held while partitions are created or dropped, so concurrent workers take turns."""

_BOUND = re.compile(r"FOR VALUES FROM \((?P<lo>[^)]*)\) TO \((?P<hi>[^)]*)\)")


@dataclass(frozen=True)
class Partition:
    name: str
    lower: datetime | None  # None: MINVALUE
    upper: datetime | None  # None: the default partition
    rows: int  # PostgreSQL's estimate

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_PARTITION


def _bound(text: str) -> datetime | None:
    text = text.strip()
    if text.upper() == "MINVALUE":
        return None
    return datetime.fromisoformat(text.strip("'"))


def list_partitions(conn: psycopg.Connection) -> list[Partition]:
    """Every partition of widget_logs, oldest first, the default partition last."""
    conn.execute("SET TIME ZONE 'UTC'")
    rows = conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), greatest(c.reltuples, 0)::bigint"
        " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'widget_logs'::regclass"
    ).fetchall()
    found = []
    for name, bound, estimate in rows:
        match = _BOUND.search(bound or "")
        if match:
            found.append(Partition(name, _bound(match["lo"]), _bound(match["hi"]), int(estimate)))
        else:
            found.append(Partition(name, None, None, int(estimate)))
    return sorted(found, key=lambda p: (p.upper is None, p.upper or datetime.min.replace(tzinfo=UTC)))


def _midnight(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _create_day(conn: psycopg.Connection, day: datetime) -> str:
    """One day's partition. Rows of that day already in the default partition (the days ahead ran out) move in."""
    name, upper = f"{PREFIX}{day:%Y%m%d}", day + timedelta(days=1)
    table = sql.Identifier(name)
    stray = conn.execute(
        'SELECT EXISTS (SELECT 1 FROM widget_logs_default WHERE "timestamp" >= %s AND "timestamp" < %s)', (day, upper)
    ).fetchone()
    if stray and stray[0]:
        conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE widget_logs INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(table)
        )
        conn.execute(
            sql.SQL(
                'WITH moved AS (DELETE FROM widget_logs_default WHERE "timestamp" >= %s AND "timestamp" < %s'
                " RETURNING *) INSERT INTO {} SELECT * FROM moved"
            ).format(table),
            (day, upper),
        )
        conn.execute(
            sql.SQL("ALTER TABLE widget_logs ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                table, sql.Literal(day), sql.Literal(upper)
            )
        )
    else:
        conn.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF widget_logs FOR VALUES FROM ({}) TO ({})").format(
                table, sql.Literal(day), sql.Literal(upper)
            )
        )
    return name


def ensure_partitions(conn: psycopg.Connection, now: datetime | None = None, days_ahead: int = DAYS_AHEAD) -> list[str]:
    """Create the daily partitions missing after the newest one, up to ``days_ahead`` days past today."""
    now = now or datetime.now(UTC)
    created = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
        uppers = [p.upper for p in list_partitions(conn) if p.upper is not None]
        day = max(uppers, default=_midnight(now))
        last = _midnight(now) + timedelta(days=days_ahead + 1)
        while day < last:
            created.append(_create_day(conn, day))
            day += timedelta(days=1)
    return created


def drop_expired(conn: psycopg.Connection, retention_days: int, now: datetime | None = None) -> list[str]:
    """Drop the partitions whose every row is older than ``retention_days`` days; returns their names.

    A partition goes only when its upper bound is at or before midnight
    ``retention_days`` days ago, so no row younger than the retention is
    dropped. Each drop waits at most 5 s for its lock (an export streaming from
    it), and is left for the next run otherwise.
    """
    if retention_days <= 0:
        return []
    cutoff = _midnight(now or datetime.now(UTC)) - timedelta(days=retention_days)
    dropped = []
    for partition in list_partitions(conn):
        if partition.upper is None or partition.upper > cutoff:
            continue
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
                conn.execute("SET LOCAL lock_timeout = '5s'")  # an export streaming from it: try next time
                conn.execute(
                    sql.SQL("ALTER TABLE widget_logs DETACH PARTITION {}").format(sql.Identifier(partition.name))
                )
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(partition.name)))
        except psycopg.errors.LockNotAvailable:
            continue
        dropped.append(partition.name)
    # Late rows of days already dropped, or from clocks far in the past, sit in the default partition.
    conn.execute(sql.SQL('DELETE FROM {} WHERE "timestamp" < %s').format(sql.Identifier(DEFAULT_PARTITION)), (cutoff,))
    return dropped
