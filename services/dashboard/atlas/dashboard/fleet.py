"""The fleet list: which machines match a search, in what order, and their latest readings.

The request's parameters are parsed into a ``FleetQuery`` by pure code;
``load_fleet`` runs these statements: the models and OS versions to filter by,
the status counts of the matches, one page of machines, and the latest Wi-Fi,
speed-test and problem (WARNING or ERROR) logs of just that page (LATERAL lookups
on the ``(machine_id, "timestamp")`` indexes), opened through one
``machine.LogContent`` (they may be encrypted at rest). So a page costs the same
with 10 machines or 10,000. Sort columns and directions come from a whitelist
and are composed with ``psycopg.sql``; user text is only ever a bound parameter.

Model, OS and status are columns of ``machines``. The SSID and the latest
problem are not: they live in the logs, where the SSID may be sealed at rest,
so SQL cannot compare it. A search by either runs the same latest-log lookups
on the machines matching everything else, in the sort order, at most
``SCAN_LIMIT`` of them, and keeps those whose decoded latest Wi-Fi log and
latest problem match, counted and paged in Python. Its cost is bounded by
``SCAN_LIMIT`` index probes whatever the fleet's size, and it reads exactly what
the fleet list shows; past ``SCAN_LIMIT`` candidates the page says that only
the first ones were searched. (A copy of the SSID on ``machines``, kept by the
worker, would be cheaper still but would store in clear what at-rest
encryption seals.)
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

PROBLEMS: Mapping[str, str] = {
    "any": "Any problem",
    "error": "Latest problem an ERROR",
    "warning": "Latest problem a WARNING",
    "none": "No problem",
}
"""The latest-problem filter: its values and labels. A problem is a WARNING or ERROR log within
``LATEST_LOOKBACK`` of the machine's last contact."""

PROBLEM_LEVELS = ("WARNING", "ERROR")

SCAN_LIMIT = 2000
"""At most this many machines (those matching the other filters, in the sort order) are searched by SSID
or latest problem."""

MAX_OPTIONS = 200
"""The model and OS filters offer at most this many values (the most common)."""


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
    model: str = ""
    os: str = ""
    ssid: str = ""
    problem: str = ""

    @property
    def scanned(self) -> bool:
        """True if a filter reads the logs (SSID, latest problem), not just ``machines``."""
        return bool(self.ssid or self.problem)

    @property
    def filtered(self) -> bool:
        return bool(self.q or self.status or self.model or self.os or self.ssid or self.problem)

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> FleetQuery:
        """Parse query parameters; anything unknown falls back to the default instead of failing."""
        sort = params.get("sort", DEFAULT_SORT)
        status = params.get("status", "")
        problem = params.get("problem", "")
        return cls(
            q=" ".join(params.get("q", "").split())[:MAX_SEARCH_CHARS],
            sort=sort if sort in SORTS else DEFAULT_SORT,
            descending=params.get("dir") == "desc",
            status=status if status in STATUSES else "",
            page=_page_number(params.get("page")),
            model=params.get("model", "").strip()[:MAX_SEARCH_CHARS],
            os=params.get("os", "").strip()[:MAX_SEARCH_CHARS],
            ssid=params.get("ssid", "").strip()[:MAX_SEARCH_CHARS],
            problem=problem if problem in PROBLEMS else "",
        )

    def url(self, **changes: Any) -> str:
        """The fleet-list URL of this query with some fields changed (``/?q=...&sort=...``)."""
        query = replace(self, **changes)
        params = {
            "q": query.q,
            "model": query.model,
            "os": query.os,
            "ssid": query.ssid,
            "problem": query.problem,
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
    problem_level: str | None = None
    problem_at: datetime | None = None
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
    models: list[tuple[str, int]] = field(default_factory=list)
    """The models to filter by, with how many machines each (the most common ``MAX_OPTIONS``)."""
    os_versions: list[tuple[str, int]] = field(default_factory=list)
    scan_truncated: bool = False
    """The SSID or problem filter searched only the first ``SCAN_LIMIT`` candidates."""

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / PAGE_SIZE))


def _conditions(
    query: FleetQuery, now: datetime, online: timedelta, stale: timedelta
) -> tuple[sql.Composable, dict[str, Any]]:
    """The WHERE clause of the search and the model and OS filters (not status, SSID or problem), and its
    parameters."""
    params: dict[str, Any] = {"online_since": now - online, "stale_since": now - stale}
    clauses: list[sql.Composable] = []
    if query.q:
        params["pattern"] = "%" + escape_like(query.q) + "%"
        columns = ("serial_number", "hostname", "model", "os_version", "machine_id")
        clause = sql.SQL(" OR ").join(
            sql.SQL("{} ILIKE %(pattern)s ESCAPE '\\'").format(sql.Identifier(c)) for c in columns
        )
        clauses.append(sql.SQL("({})").format(clause))
    for column, value in (("model", query.model), ("os_version", query.os)):
        if value:
            params[column] = value
            clauses.append(sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(column)))
    if not clauses:
        return sql.SQL("TRUE"), params
    return sql.SQL(" AND ").join(clauses), params


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

_PAGE_BY_ID = sql.SQL("SELECT {columns} FROM machines WHERE machine_id = ANY(%(ids)s::text[])").format(
    columns=_PAGE_COLUMNS
)
_CANDIDATES = sql.SQL("SELECT machine_id, last_seen FROM machines WHERE {where} ORDER BY {order} LIMIT %(limit)s")

_OPTIONS = sql.SQL(
    "SELECT {column}, count(*) FROM machines WHERE {column} <> '' GROUP BY {column}"
    " ORDER BY count(*) DESC, {column} LIMIT %(limit)s"
)

_LATEST_WIDGET = sql.SQL("""
LEFT JOIN LATERAL (
    SELECT {columns} FROM widget_logs
    WHERE machine_id = m.machine_id AND widget_type = {widget_type}
      AND "timestamp" >= m.last_seen - %(lookback)s
    ORDER BY "timestamp" DESC LIMIT 1
) {alias} ON TRUE
""")

_LATEST_PROBLEM = sql.SQL("""
LEFT JOIN LATERAL (
    SELECT level, "timestamp" FROM widget_logs
    WHERE machine_id = m.machine_id AND level IN ('WARNING', 'ERROR')
      AND "timestamp" >= m.last_seen - %(lookback)s
    ORDER BY "timestamp" DESC LIMIT 1
) p ON TRUE
""")
"""Over the partial index ``widget_logs_machine_problem_idx``: one probe per machine, however quiet."""


def _latest_statement(widget_types: tuple[str, ...]) -> sql.Composed:
    """Each listed machine's id, its latest log of each of ``widget_types`` (``content_columns()`` each, all
    NULL if none), then the level and time of its latest problem (NULL, NULL if none)."""
    aliases = [sql.Identifier(f"w{i}") for i in range(len(widget_types))]
    return sql.SQL(
        'SELECT m.machine_id, {selected} p.level, p."timestamp"'
        " FROM unnest(%(ids)s::text[], %(seen)s::timestamptz[]) AS m (machine_id, last_seen) {joins} {problem}"
    ).format(
        selected=sql.SQL("").join(sql.SQL("{}.*, ").format(a) for a in aliases),
        joins=sql.SQL("").join(
            _LATEST_WIDGET.format(columns=content_columns(), widget_type=sql.Literal(t), alias=a)
            for t, a in zip(widget_types, aliases, strict=True)
        ),
        problem=_LATEST_PROBLEM,
    )


_CONTENT_WIDTH = 8
"""The columns ``content_columns()`` selects; "timestamp" is the sixth."""

_LATEST = _latest_statement(("wifi", "speedtest"))
"""The latest Wi-Fi log, speed test and problem of each machine of a page."""

_SCAN = _latest_statement(("wifi",))
"""The latest Wi-Fi log and problem of each candidate of an SSID or problem search."""


@dataclass
class Latest:
    wifi: dict[str, Any] | None = None
    speed: dict[str, Any] | None = None
    problem_level: str | None = None
    problem_at: datetime | None = None


def _lookup_latest(
    conn: psycopg.Connection,
    content: LogContent,
    statement: sql.Composed,
    machines: list[tuple[str, datetime]],
) -> dict[str, Latest]:
    """Machine id -> its ``Latest``, for (machine id, last seen) pairs, from ``_LATEST`` or ``_SCAN``."""
    if not machines:
        return {}
    rows = conn.execute(
        statement,
        {"ids": [m for m, _ in machines], "seen": [s for _, s in machines], "lookback": LATEST_LOOKBACK},
    ).fetchall()
    width = _CONTENT_WIDTH
    kinds = (len(rows[0]) - 3) // width if rows else 0
    found = [
        (row[0], kind, row[1 + kind * width : 1 + (kind + 1) * width])
        for row in rows
        for kind in range(kinds)
        if row[1 + kind * width + 5] is not None  # its "timestamp": NULL when the machine has no such log
    ]
    opened = content.open([stored for _, _, stored in found])
    latest = {row[0]: Latest(problem_level=row[-2], problem_at=row[-1]) for row in rows}
    for (machine_id, kind, _), (_, data) in zip(found, opened, strict=True):
        if kind == 0:
            latest[machine_id].wifi = data
        else:
            latest[machine_id].speed = data
    return latest


def matches_latest(query: FleetQuery, latest: Latest) -> bool:
    """Whether a machine's latest Wi-Fi log and problem pass the SSID and problem filters (pure)."""
    if query.ssid:
        ssid = extract.text(latest.wifi.get("ssid"), 64) if latest.wifi is not None else None
        if ssid != query.ssid:
            return False
    if query.problem == "none":
        return latest.problem_level is None
    if query.problem == "any":
        return latest.problem_level is not None
    if query.problem:
        return latest.problem_level == query.problem.upper()
    return True


def _options(conn: psycopg.Connection, column: str) -> list[tuple[str, int]]:
    rows = conn.execute(_OPTIONS.format(column=sql.Identifier(column)), {"limit": MAX_OPTIONS}).fetchall()
    return sorted(((str(value), int(count)) for value, count in rows), key=lambda r: r[0].lower())


def _fleet_row(m: tuple[Any, ...], now: datetime, online_within: timedelta, stale_within: timedelta) -> FleetRow:
    """A row of ``_PAGE_COLUMNS``: the machine fields, ``last_seen``, ``protocol``."""
    return FleetRow(
        MachineFields(**dict(zip(MACHINE_FIELDS, m[:-2], strict=True))),  # type: ignore[typeddict-item]
        m[-2],
        status=status_of(m[-2], now, online_within, stale_within),
        protocol=m[-1],
    )


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
    content = LogContent(conn, Keyring() if keyring is None else keyring)
    where, params = _conditions(query, now, online_within, stale_within)
    direction = sql.SQL("DESC" if query.descending else "ASC")
    order = sql.SQL("{} {}, machine_id {}").format(SORTS[query.sort], direction, direction)
    options = (_options(conn, "model"), _options(conn, "os_version"))
    if query.scanned:
        return _load_scanned(conn, content, query, where, order, params, now, online_within, stale_within, options)
    row = conn.execute(_COUNTS.format(where), params).fetchone()
    online, stale, offline, matching = (int(v) for v in row) if row else (0, 0, 0, 0)
    counts = {"online": online, "stale": stale, "offline": offline}
    total = counts[query.status] if query.status else matching
    pages = max(1, math.ceil(total / PAGE_SIZE))
    query = replace(query, page=min(query.page, pages))
    if query.status:
        where = sql.SQL("{} AND {}").format(where, _STATUS_CLAUSES[query.status])
    params.update(limit=PAGE_SIZE, offset=(query.page - 1) * PAGE_SIZE)
    machines = conn.execute(_PAGE.format(columns=_PAGE_COLUMNS, where=where, order=order), params).fetchall()
    rows = [_fleet_row(m, now, online_within, stale_within) for m in machines]
    latest = _lookup_latest(conn, content, _LATEST, [(r.machine["machine_id"], r.last_seen) for r in rows])
    for r in rows:
        add_latest(r, latest.get(r.machine["machine_id"], Latest()))
    return FleetPage(query, rows, total, counts, matching, *options)


def _load_scanned(
    conn: psycopg.Connection,
    content: LogContent,
    query: FleetQuery,
    where: sql.Composable,
    order: sql.Composable,
    params: dict[str, Any],
    now: datetime,
    online_within: timedelta,
    stale_within: timedelta,
    options: tuple[list[tuple[str, int]], list[tuple[str, int]]],
) -> FleetPage:
    """``load_fleet`` with an SSID or problem filter: the first ``SCAN_LIMIT`` machines matching the rest,
    filtered, counted and paged on their latest logs."""
    params.update(limit=SCAN_LIMIT + 1)
    candidates = conn.execute(_CANDIDATES.format(where=where, order=order), params).fetchall()
    truncated = len(candidates) > SCAN_LIMIT
    candidates = candidates[:SCAN_LIMIT]
    scanned = _lookup_latest(conn, content, _SCAN, [(m, s) for m, s in candidates])
    kept = [(m, s) for m, s in candidates if matches_latest(query, scanned.get(m, Latest()))]
    statuses = [(m, status_of(s, now, online_within, stale_within)) for m, s in kept]
    counts = {status: sum(1 for _, s in statuses if s == status) for status in STATUSES}
    listed = [m for m, s in statuses if not query.status or s == query.status]
    total = len(listed)
    query = replace(query, page=min(query.page, max(1, math.ceil(total / PAGE_SIZE))))
    ids = listed[(query.page - 1) * PAGE_SIZE : query.page * PAGE_SIZE]
    found = {m[0]: m for m in conn.execute(_PAGE_BY_ID, {"ids": ids}).fetchall()}
    rows = [_fleet_row(found[i], now, online_within, stale_within) for i in ids if i in found]
    latest = _lookup_latest(conn, content, _LATEST, [(r.machine["machine_id"], r.last_seen) for r in rows])
    for r in rows:
        add_latest(r, latest.get(r.machine["machine_id"], Latest()))
    return FleetPage(query, rows, total, counts, len(kept), *options, scan_truncated=truncated)


def add_latest(row: FleetRow, latest: Latest) -> None:
    """Fill a row's latest Wi-Fi, speed-test and problem columns from decoded ``data``."""
    wifi, speed = latest.wifi, latest.speed
    if wifi is not None:
        row.ssid = extract.text(wifi.get("ssid"), 64)
        row.rssi_dbm = extract.wifi_rssi(wifi)
        row.wifi_state = extract.text(wifi.get("state"), 32)
    if speed is not None:
        row.download_mbps = extract.speed_down(speed)
        row.upload_mbps = extract.speed_up(speed)
        row.speedtest_status = extract.text(speed.get("status"), 16)
    row.problem_level, row.problem_at = latest.problem_level, latest.problem_at
