"""The fleet list: which machines match a search, in what order, and their latest readings.

The request's parameters are parsed into a ``FleetQuery`` by pure code;
``load_fleet`` runs three statements: the status counts of the matches, one page
of machines, and the latest Wi-Fi and speed-test logs of just that page (LATERAL
lookups on the ``(machine_id, "timestamp")`` index), opened through one
``machine.LogContent`` (they may be encrypted at rest). So a page costs the same
with 10 machines or 10,000. Sort columns and directions come from a whitelist
and are composed with ``psycopg.sql``; user text is only ever a bound parameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import psycopg
from psycopg import sql

from atlas.contract import MACHINE_FIELDS, Keyring, MachineFields

from . import extract
from .machine import LogContent, content_columns

PAGE_SIZE = 50
"""Machines per page of the fleet list."""

MAX_SEARCH_CHARS = 100
"""Longer searches are cut to this many characters."""

LATEST_LOOKBACK = timedelta(days=2)
"""How far before a machine's last contact the fleet list looks for its latest Wi-Fi and speed test.

Bounds the index scan for a machine that never runs speed tests (``speedtest_interval_seconds: 0``)."""

SORTS: Mapping[str, sql.Composable] = {
    "serial": sql.SQL("serial_number"),
    "hostname": sql.SQL("lower(hostname)"),
    "model": sql.SQL("model"),
    "os": sql.SQL("os_version"),
    "last_seen": sql.SQL("last_seen"),
    "protocol": sql.SQL("coalesce(protocol, 1)"),
}
"""Sort keys a request may name, and the column each sorts by."""

DEFAULT_SORT = "hostname"
STATUSES = ("online", "stale", "offline")


def status_of(last_seen: datetime, now: datetime, online_within: timedelta, stale_within: timedelta) -> str:
    """``online`` if heard from within ``online_within``, ``stale`` within ``stale_within``, else ``offline``."""
    age = now - last_seen
    if age <= online_within:
        return "online"
    if age <= stale_within:
        return "stale"
    return "offline"


def escape_like(text: str) -> str:
    """``text`` for an ILIKE pattern with ``ESCAPE '\\'``: its ``%``, ``_`` and ``\\`` match literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _page_number(value: str | None) -> int:
    try:
        return max(1, min(int(value or "1"), 1_000_000))
    except ValueError:
        return 1


@dataclass(frozen=True)
class FleetQuery:
    """What the fleet list was asked for; every field already checked."""

    q: str = ""
    sort: str = DEFAULT_SORT
    descending: bool = False
    status: str = ""
    page: int = 1

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> FleetQuery:
        """Parse query parameters; anything unknown falls back to the default instead of failing."""
        sort = params.get("sort", DEFAULT_SORT)
        status = params.get("status", "")
        return cls(
            q=" ".join(params.get("q", "").split())[:MAX_SEARCH_CHARS],
            sort=sort if sort in SORTS else DEFAULT_SORT,
            descending=params.get("dir") == "desc",
            status=status if status in STATUSES else "",
            page=_page_number(params.get("page")),
        )

    def url(self, **changes: Any) -> str:
        """The fleet-list URL of this query with some fields changed (``/?q=...&sort=...``)."""
        query = replace(self, **changes)
        params = {
            "q": query.q,
            "status": query.status,
            "sort": query.sort if query.sort != DEFAULT_SORT else "",
            "dir": "desc" if query.descending else "",
            "page": str(query.page) if query.page > 1 else "",
        }
        encoded = urlencode({k: v for k, v in params.items() if v})
        return "/?" + encoded if encoded else "/"

    def sort_url(self, key: str) -> str:
        """Sort by ``key``; the column already sorted by flips direction."""
        descending = not self.descending if key == self.sort else key == "last_seen"
        return self.url(sort=key, descending=descending, page=1)


@dataclass
class FleetRow:
    machine: MachineFields
    last_seen: datetime
    status: str
    ssid: str | None = None
    rssi_dbm: float | None = None
    wifi_state: str | None = None
    download_mbps: float | None = None
    upload_mbps: float | None = None
    speedtest_status: str | None = None
    protocol: int | None = None
    """The wire contract of its newest batch: 1 (shared keys) or 2 (an enrolled device); None: not yet known."""


@dataclass
class FleetPage:
    query: FleetQuery
    rows: list[FleetRow]
    total: int
    counts: dict[str, int] = field(default_factory=dict)
    matching: int = 0
    """Machines matching the search, before the status filter."""

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / PAGE_SIZE))


def _conditions(
    query: FleetQuery, now: datetime, online: timedelta, stale: timedelta
) -> tuple[sql.Composable, dict[str, Any]]:
    """The WHERE clause of the search alone (without the status filter), and its parameters."""
    params: dict[str, Any] = {"online_since": now - online, "stale_since": now - stale}
    if not query.q:
        return sql.SQL("TRUE"), params
    params["pattern"] = "%" + escape_like(query.q) + "%"
    columns = ("serial_number", "hostname", "model", "os_version", "machine_id")
    clause = sql.SQL(" OR ").join(
        sql.SQL("{} ILIKE %(pattern)s ESCAPE '\\'").format(sql.Identifier(c)) for c in columns
    )
    return sql.SQL("({})").format(clause), params


_STATUS_CLAUSES = {
    "online": sql.SQL("last_seen >= %(online_since)s"),
    "stale": sql.SQL("last_seen < %(online_since)s AND last_seen >= %(stale_since)s"),
    "offline": sql.SQL("last_seen < %(stale_since)s"),
}

_COUNTS = sql.SQL(
    "SELECT count(*) FILTER (WHERE last_seen >= %(online_since)s),"
    " count(*) FILTER (WHERE last_seen < %(online_since)s AND last_seen >= %(stale_since)s),"
    " count(*) FILTER (WHERE last_seen < %(stale_since)s),"
    " count(*) FROM machines WHERE {}"
)

_PAGE = sql.SQL("SELECT {columns} FROM machines WHERE {where} ORDER BY {order} LIMIT %(limit)s OFFSET %(offset)s")
_PAGE_COLUMNS = sql.SQL(", ").join(map(sql.Identifier, (*MACHINE_FIELDS, "last_seen", "protocol")))
"""The machine fields, then ``last_seen`` and ``protocol``."""

_LATEST = sql.SQL("""
SELECT m.machine_id, w.*, s.*
FROM unnest(%(ids)s::text[], %(seen)s::timestamptz[]) AS m (machine_id, last_seen)
LEFT JOIN LATERAL (
    SELECT {columns} FROM widget_logs
    WHERE machine_id = m.machine_id AND widget_type = 'wifi' AND "timestamp" >= m.last_seen - %(lookback)s
    ORDER BY "timestamp" DESC LIMIT 1
) w ON TRUE
LEFT JOIN LATERAL (
    SELECT {columns} FROM widget_logs
    WHERE machine_id = m.machine_id AND widget_type = 'speedtest' AND "timestamp" >= m.last_seen - %(lookback)s
    ORDER BY "timestamp" DESC LIMIT 1
) s ON TRUE
""").format(columns=content_columns())
"""Each listed machine's latest Wi-Fi log, then its latest speed test: ``content_columns()`` each, all NULL if none."""


def load_fleet(
    conn: psycopg.Connection,
    query: FleetQuery,
    *,
    now: datetime,
    online_within: timedelta,
    stale_within: timedelta,
    keyring: Keyring | None = None,
) -> FleetPage:
    """One page of the fleet list with status counts and each listed machine's latest readings.

    ``keyring``: the database keys (``Settings.db_keyring``) that open logs encrypted at rest; without the
    key of a listed machine's latest log, ``machine.ContentLocked``.
    """
    where, params = _conditions(query, now, online_within, stale_within)
    row = conn.execute(_COUNTS.format(where), params).fetchone()
    online, stale, offline, matching = (int(v) for v in row) if row else (0, 0, 0, 0)
    counts = {"online": online, "stale": stale, "offline": offline}
    total = counts[query.status] if query.status else matching
    pages = max(1, math.ceil(total / PAGE_SIZE))
    query = replace(query, page=min(query.page, pages))
    if query.status:
        where = sql.SQL("{} AND {}").format(where, _STATUS_CLAUSES[query.status])
    direction = sql.SQL("DESC" if query.descending else "ASC")
    order = sql.SQL("{} {}, machine_id {}").format(SORTS[query.sort], direction, direction)
    params.update(limit=PAGE_SIZE, offset=(query.page - 1) * PAGE_SIZE)
    machines = conn.execute(_PAGE.format(columns=_PAGE_COLUMNS, where=where, order=order), params).fetchall()
    rows = [
        FleetRow(
            MachineFields(**dict(zip(MACHINE_FIELDS, m[:-2], strict=True))),  # type: ignore[typeddict-item]
            m[-2],
            status=status_of(m[-2], now, online_within, stale_within),
            protocol=m[-1],
        )
        for m in machines
    ]
    if rows:
        latest = conn.execute(
            _LATEST,
            {
                "ids": [r.machine["machine_id"] for r in rows],
                "seen": [r.last_seen for r in rows],
                "lookback": LATEST_LOOKBACK,
            },
        ).fetchall()
        by_id = _latest_data(LogContent(conn, Keyring() if keyring is None else keyring), latest)
        for r in rows:
            wifi, speed = by_id.get(r.machine["machine_id"], (None, None))
            add_latest(r, wifi, speed)
    return FleetPage(query, rows, total, counts, matching)


def _latest_data(
    content: LogContent, latest: list[tuple[Any, ...]]
) -> dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None]]:
    """Machine id -> (decoded data of its latest Wi-Fi log, of its latest speed test), from ``_LATEST``'s rows."""
    found = [
        (row[0], kind, stored)
        for row in latest
        for kind, stored in enumerate((row[1:9], row[9:17]))
        if stored[5] is not None  # its "timestamp": NULL when the machine has no such log
    ]
    opened = content.open([stored for _, _, stored in found])
    by_id: dict[str, list[dict[str, Any] | None]] = {row[0]: [None, None] for row in latest}
    for (machine_id, kind, _), (_, data) in zip(found, opened, strict=True):
        by_id[machine_id][kind] = data
    return {machine_id: (wifi, speed) for machine_id, (wifi, speed) in by_id.items()}


def add_latest(row: FleetRow, wifi: Mapping[str, Any] | None, speed: Mapping[str, Any] | None) -> None:
    """Fill a row's latest Wi-Fi and speed-test columns from decoded ``data``."""
    if wifi is not None:
        row.ssid = extract.text(wifi.get("ssid"), 64)
        row.rssi_dbm = extract.wifi_rssi(wifi)
        row.wifi_state = extract.text(wifi.get("state"), 32)
    if speed is not None:
        row.download_mbps = extract.speed_down(speed)
        row.upload_mbps = extract.speed_up(speed)
        row.speedtest_status = extract.text(speed.get("status"), 16)
