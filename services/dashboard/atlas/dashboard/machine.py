"""One machine's page: identity, the latest log of each widget, charts and a page of logs over one range.

Queries select rows; every number and string is read out of ``data`` in Python
(``extract``), never with SQL's ``->>``. A log's ``message`` and ``data`` may be
encrypted at rest (``atlas.core.atrest``): every query reading them selects
``content_columns()`` and hands those to one ``LogContent`` per request, which
passes clear rows through and opens sealed ones with the database keys
(``server.db_encryption_key``); a key that is missing or wrong raises
``ContentLocked``, a 503 naming the setting, never ciphertext. Charts are built
by pure functions from (widget type, timestamp, data) rows and averaged into
buckets; every range but the day preset is averaged into buckets by ``timeline``
instead (in SQL for clear logs), every clear log counted. The range and the log
filters come from ``machinequery``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from markupsafe import Markup
from psycopg import sql
from starlette.exceptions import HTTPException

from atlas.contract import LEVELS, MACHINE_FIELDS, Keyring
from atlas.core.atrest import SETTING
from atlas.core.content import ContentReader
from atlas.core.errors import AtRestError

from . import extract, timeline
from .charts import Series, bucket_average, line_chart
from .machinequery import PRESETS, Cursor, LogFilter, Window, like_pattern, preset_window

RECENT_LOGS = 100
"""Logs listed on a page of the machine page's log list."""

SEARCH_CHUNK = 500
"""Logs read at a time while searching."""

SEARCH_OPEN_LIMIT = 5000
"""Logs encrypted at rest opened to search one page: past it the page shows what it found and where it stopped."""

SAME_SERIAL_SHOWN = 10
"""Other machines with this serial number listed on the machine page."""

PING_WINDOW = timedelta(hours=1)
"""The ping table shows each target's latest result within this long before the newest ping."""

LATEST_LOOKBACK = timedelta(days=2)
"""How far before a machine's last contact its latest log of each widget is looked for."""


RANGES = PRESETS
"""The chart presets by name (``machinequery.PRESETS``)."""

CHART_WIDGETS = ("wifi", "speedtest", "ping", "health")

log = logging.getLogger("atlas.dashboard")


# --- stored content, clear or encrypted at rest ------------------------------------------


def content_columns(*, data: bool = True) -> sql.Composed:
    """The widget_logs columns ``LogContent.open`` reads, in its order.

    With ``data=False`` a clear row's ``data`` is not read (a sealed row holds both anyway).
    """
    return sql.SQL(", ").join(
        [
            sql.Identifier("message"),
            sql.Identifier("data") if data else sql.SQL("NULL::jsonb"),
            sql.Identifier("sealed"),
            sql.SQL("{}::text").format(sql.Identifier("batch_id")),
            *map(sql.Identifier, ("machine_id", "timestamp", "level", "widget_type")),
        ]
    )


class ContentLocked(HTTPException):
    """Stored logs are encrypted at rest under a database key this dashboard lacks (or has wrong): a 503.

    The page names the setting to fix; the details (key ids, batch ids) go to the log, not the page.
    """

    DETAIL = (
        "The logs of this page are encrypted at rest, and this dashboard cannot open them: its database"
        f" encryption key is missing or wrong. Set {SETTING} (or FLEET_DB_ENCRYPTION_KEY) to the key the"
        " workers store logs with, keeping older keys in server.db_encryption_keys, then restart the dashboard."
    )

    def __init__(self) -> None:
        super().__init__(503, self.DETAIL)


class LogContent:
    """The message and data of stored logs, for one request.

    Clear rows pass through; sealed rows are opened with their batch's data key,
    unwrapped once per batch (a page's batches in one query) and cached for the request.
    """

    def __init__(self, conn: psycopg.Connection, keyring: Keyring) -> None:
        self.reader = ContentReader(conn, keyring)

    def open(self, stored: Sequence[Sequence[Any]], *, data: bool = True) -> list[tuple[str, dict[str, Any]]]:
        """(message, decoded data) of each row's ``content_columns()``, in order.

        ``data=False``: the data is not decoded (an empty dict). Raises ContentLocked if a row cannot be opened.
        """
        try:
            self.reader.prefetch({row[3] for row in stored if row[2] is not None})
            return [self._open(row, data) for row in stored]
        except AtRestError as exc:
            log.warning("Cannot open logs encrypted at rest: %s", exc)
            raise ContentLocked() from None

    def _open(self, row: Sequence[Any], data: bool) -> tuple[str, dict[str, Any]]:
        message, stored, sealed, batch_id, machine_id, moment, level, widget_type = row
        if sealed is not None:
            message, stored = self.reader.open(batch_id, machine_id, moment, level, widget_type, sealed)
        return message or "", extract.decode_data(stored) if data else {}


def levels_from(level: str) -> tuple[str, ...]:
    """``level`` and the more severe levels; all levels for an empty or unknown ``level``."""
    return LEVELS[LEVELS.index(level) :] if level in LEVELS else LEVELS


@dataclass
class LogRow:
    id: int
    timestamp: datetime
    level: str
    widget_type: str
    message: str


@dataclass
class LogPage:
    """One page of the log list, newest first, and where the pages next to it start."""

    rows: list[LogRow]
    older: Cursor | None = None
    """``before`` of the next older page; None when there is none."""
    newer: Cursor | None = None
    """``after`` of the next newer page; None when this page has the newest logs."""
    searched_from: datetime | None = None
    """A search that opened ``SEARCH_OPEN_LIMIT`` sealed logs and stopped: the farthest time it searched."""
    opened: int = 0
    """Logs encrypted at rest opened to search this page."""


@dataclass(frozen=True)
class SameSerial:
    """Other machine ids reporting this machine's serial number (a virtual machine, a reinstalled agent)."""

    count: int
    machines: list[dict[str, Any]]
    """machine_id, hostname and last_seen of the most recently seen ``SAME_SERIAL_SHOWN``."""


@dataclass
class Latest:
    """The newest log of one widget: when, and its fields as the page shows them."""

    timestamp: datetime
    level: str
    message: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Conflicts:
    """Batches that claimed this machine_id with another serial number (``identity_conflicts``)."""

    count: int = 0
    serials: int = 0
    logs: int = 0
    latest: datetime | None = None
    recent: list[dict[str, Any]] = field(default_factory=list)


RECENT_CONFLICTS = 10
"""Identity conflicts listed on the machine page, newest first."""


@dataclass
class MachineView:
    identity: dict[str, Any]
    conflicts: Conflicts = field(default_factory=Conflicts)
    wifi: Latest | None = None
    speedtest: Latest | None = None
    health: Latest | None = None
    processes: Latest | None = None
    pings: list[tuple[datetime, dict[str, Any]]] = field(default_factory=list)
    logs: list[LogRow] = field(default_factory=list)
    log_page: LogPage = field(default_factory=lambda: LogPage([]))
    charts: list[Markup] = field(default_factory=list)
    window: Window | None = None
    same_serial: SameSerial = field(default_factory=lambda: SameSerial(0, []))


_IDENTITY_COLUMNS = (*MACHINE_FIELDS, "first_seen", "last_seen")

_SUMMARIES: Mapping[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "wifi": extract.wifi_summary,
    "speedtest": extract.speed_summary,
    "health": extract.health_summary,
    "processes": extract.processes_summary,
}


def load_identity(conn: psycopg.Connection, machine_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        sql.SQL("SELECT {} FROM machines WHERE machine_id = %s").format(
            sql.SQL(", ").join(map(sql.Identifier, _IDENTITY_COLUMNS))
        ),
        (machine_id,),
    ).fetchone()
    return dict(zip(_IDENTITY_COLUMNS, row, strict=True)) if row else None


def load_conflicts(conn: psycopg.Connection, machine_id: str) -> Conflicts:
    count, serials, logs, latest = conn.execute(
        "SELECT count(*), count(DISTINCT serial_number), coalesce(sum(log_count), 0), max(received_at)"
        " FROM identity_conflicts WHERE machine_id = %s",
        (machine_id,),
    ).fetchone() or (0, 0, 0, None)
    if not count:
        return Conflicts()
    rows = conn.execute(
        "SELECT received_at, serial_number, hostname, log_count FROM identity_conflicts WHERE machine_id = %s"
        " ORDER BY received_at DESC LIMIT %s",
        (machine_id, RECENT_CONFLICTS),
    ).fetchall()
    recent = [
        {"received_at": r[0], "serial_number": extract.text(r[1], 64) or "?", "hostname": extract.text(r[2], 64)}
        | {"log_count": r[3]}
        for r in rows
    ]
    return Conflicts(count, serials, int(logs), latest, recent)


def load_latest(
    conn: psycopg.Connection, content: LogContent, machine_id: str, widget_type: str, since: datetime
) -> Latest | None:
    row = conn.execute(
        sql.SQL(
            "SELECT {} FROM widget_logs"
            ' WHERE machine_id = %s AND widget_type = %s AND "timestamp" >= %s ORDER BY "timestamp" DESC LIMIT 1'
        ).format(content_columns()),
        (machine_id, widget_type, since),
    ).fetchone()
    if row is None:
        return None
    [(message, data)] = content.open([row])
    return Latest(row[5], row[6], extract.text(message, 500) or "", _SUMMARIES[widget_type](data))


def load_pings(
    conn: psycopg.Connection, content: LogContent, machine_id: str, since: datetime
) -> list[tuple[datetime, dict[str, Any]]]:
    """Each target's latest ping within ``PING_WINDOW`` before the machine's newest ping."""
    rows = conn.execute(
        sql.SQL(
            'WITH newest AS (SELECT max("timestamp") AS at FROM widget_logs'
            "   WHERE machine_id = %(id)s AND widget_type = 'ping' AND \"timestamp\" >= %(since)s)"
            " SELECT {} FROM widget_logs, newest"
            " WHERE machine_id = %(id)s AND widget_type = 'ping'"
            ' AND "timestamp" > newest.at - %(window)s AND "timestamp" <= newest.at'
        ).format(content_columns()),
        {"id": machine_id, "since": since, "window": PING_WINDOW},
    ).fetchall()
    opened = content.open(rows)
    return extract.latest_per_target((row[5], data) for row, (_, data) in zip(rows, opened, strict=True))


def _log_row(row: Sequence[Any], message: str) -> LogRow:
    return LogRow(row[0], row[6], row[7], row[8], extract.text(message, 500) or "")


def load_log_page(
    conn: psycopg.Connection, content: LogContent, machine_id: str, window: Window, wanted: LogFilter
) -> LogPage:
    """A page of ``RECENT_LOGS`` logs of [window.start, window.end) matching ``wanted``, by keyset.

    Ordered by (timestamp, id), newest first; ``before``/``after`` start the page past a log, never by OFFSET.
    Clear logs are searched in SQL (ILIKE, the pattern escaped); sealed ones are opened and searched here, in
    chunks, until the page is full or ``SEARCH_OPEN_LIMIT`` have been opened: then the page says how far it
    searched, and its next link goes on from there.
    """
    newest_first = wanted.after is None
    cursor = wanted.before if newest_first else wanted.after
    where = [
        sql.SQL('machine_id = %(id)s AND "timestamp" >= %(start)s AND "timestamp" < %(end)s'),
        sql.SQL("level = ANY(%(levels)s)"),
    ]
    params: dict[str, Any] = {
        "id": machine_id,
        "start": window.start,
        "end": window.end,
        "levels": list(levels_from(wanted.level)),
    }
    if wanted.widget_type:
        where.append(sql.SQL("widget_type = %(type)s"))
        params["type"] = wanted.widget_type
    if wanted.q:
        where.append(
            sql.SQL(
                "(sealed IS NOT NULL OR message ILIKE %(pattern)s ESCAPE '\\'"
                " OR widget_type ILIKE %(pattern)s ESCAPE '\\')"
            )
        )
        params["pattern"] = like_pattern(wanted.q)
    past = sql.SQL(
        '("timestamp", id) < (%(at)s, %(after_id)s) AND "timestamp" <= %(at)s'
        if newest_first
        else '("timestamp", id) > (%(at)s, %(after_id)s) AND "timestamp" >= %(at)s'
    )
    order = sql.SQL('"timestamp" DESC, id DESC' if newest_first else '"timestamp", id')
    limit = SEARCH_CHUNK if wanted.q else RECENT_LOGS + 1
    needle = wanted.q.casefold()
    found: list[LogRow] = []
    opened, last, stopped = 0, cursor, False
    while len(found) <= RECENT_LOGS:
        conditions = [*where, past] if last is not None else where
        if last is not None:
            params |= {"at": last[0], "after_id": last[1]}
        rows = conn.execute(
            sql.SQL("SELECT id, {} FROM widget_logs WHERE {} ORDER BY {} LIMIT {}").format(
                content_columns(data=False), sql.SQL(" AND ").join(conditions), order, limit
            ),
            params,
        ).fetchall()
        for row, (message, _) in zip(rows, content.open([r[1:] for r in rows], data=False), strict=True):
            last = (row[6], row[0])
            sealed = row[3] is not None
            opened += sealed
            if not (wanted.q and sealed) or needle in message.casefold() or needle in row[8].casefold():
                found.append(_log_row(row, message))
                if len(found) > RECENT_LOGS:
                    break
        if len(rows) < limit or len(found) > RECENT_LOGS:
            break
        if opened >= SEARCH_OPEN_LIMIT:
            stopped = True
            break
    shown = found[:RECENT_LOGS]
    onward: Cursor | None = None
    if len(found) > RECENT_LOGS:
        onward = (shown[-1].timestamp, shown[-1].id)
    elif stopped:
        onward = last
    if not newest_first:
        shown.reverse()
    page = LogPage(shown, opened=opened if wanted.q else 0)
    if stopped and last is not None and len(found) <= RECENT_LOGS:
        page.searched_from = last[0]
    back = None if not shown else shown[-1] if not newest_first else shown[0]
    if newest_first:
        page.older = onward
        page.newer = (back.timestamp, back.id) if back is not None and cursor is not None else None
    else:
        page.newer = onward
        page.older = (back.timestamp, back.id) if back is not None else None
    return page


def load_same_serial(conn: psycopg.Connection, machine_id: str, serial_number: str) -> SameSerial:
    """The other machine ids whose machines row has this serial number, most recently seen first."""
    rows = conn.execute(
        "SELECT machine_id, hostname, last_seen, count(*) OVER () FROM machines"
        " WHERE serial_number = %s AND machine_id <> %s ORDER BY last_seen DESC LIMIT %s",
        (serial_number, machine_id, SAME_SERIAL_SHOWN),
    ).fetchall()
    machines = [{"machine_id": r[0], "hostname": extract.text(r[1], 64), "last_seen": r[2]} for r in rows]
    return SameSerial(rows[0][3] if rows else 0, machines)


def load_chart_rows(
    conn: psycopg.Connection, content: LogContent, machine_id: str, start: datetime, end: datetime
) -> list[tuple[str, datetime, dict[str, Any]]]:
    """(widget type, timestamp, decoded data) of the charted logs in [start, end)."""
    rows = conn.execute(
        sql.SQL(
            "SELECT {} FROM widget_logs WHERE machine_id = %(id)s"
            ' AND "timestamp" >= %(start)s AND "timestamp" < %(end)s AND widget_type = ANY(%(types)s)'
        ).format(content_columns()),
        {"id": machine_id, "start": start, "end": end, "types": list(CHART_WIDGETS)},
    ).fetchall()
    return _opened(content, rows)


def _opened(content: LogContent, rows: Sequence[Sequence[Any]]) -> list[tuple[str, datetime, dict[str, Any]]]:
    opened = content.open(rows)
    return [(row[7], row[5], data) for row, (_, data) in zip(rows, opened, strict=True)]


def load_buckets(
    conn: psycopg.Connection, content: LogContent, machine_id: str, start: datetime, end: datetime, buckets: int
) -> timeline.Buckets:
    """Every chart line's values in [start, end) summed into ``buckets`` buckets (``timeline``)."""
    lines = [(kind, number) for spec in CHARTS for _, kind, number, _ in spec.lines]
    found = timeline.Buckets(start, end, (end - start) / buckets, lines)
    timeline.add_clear(found, conn.execute(*timeline.clear_query(found, machine_id)).fetchall())
    sealed = conn.execute(*timeline.sealed_query(found, machine_id, content_columns())).fetchall()
    timeline.add_opened(found, _opened(content, sealed))
    return found


def load_machine(
    conn: psycopg.Connection,
    machine_id: str,
    *,
    now: datetime,
    chart_range: str = "day",
    level: str = "",
    keyring: Keyring | None = None,
    window: Window | None = None,
    logs: LogFilter | None = None,
) -> MachineView | None:
    """Everything the machine page shows, or None for an unknown machine.

    ``window``: the range of the charts and logs (default: the preset ``chart_range`` ending ``now``);
    ``logs``: which logs to list (default: those at ``level`` or above, the newest page).
    ``keyring``: the database keys (``Settings.db_keyring``) that open logs encrypted at rest; without the
    key of a stored log, ContentLocked.
    """
    identity = load_identity(conn, machine_id)
    if identity is None:
        return None
    window = window or preset_window(chart_range if chart_range in PRESETS else "day", now)
    content = LogContent(conn, Keyring() if keyring is None else keyring)
    view = MachineView(identity, load_conflicts(conn, machine_id), window=window)
    view.same_serial = load_same_serial(conn, machine_id, identity["serial_number"])
    since = identity["last_seen"] - LATEST_LOOKBACK
    for widget_type in _SUMMARIES:
        setattr(view, widget_type, load_latest(conn, content, machine_id, widget_type, since))
    view.pings = load_pings(conn, content, machine_id, since)
    view.log_page = load_log_page(conn, content, machine_id, window, logs or LogFilter(level=level))
    view.logs = view.log_page.rows
    start, end = window.chart_start, window.end
    if window.binned:
        view.charts = binned_charts(load_buckets(conn, content, machine_id, start, end, window.buckets))
    else:
        view.charts = build_charts(load_chart_rows(conn, content, machine_id, start, end), start, end, window.buckets)
    return view


# --- charts: pure ------------------------------------------------------------------------


@dataclass(frozen=True)
class ChartSpec:
    title: str
    unit: str
    lines: Sequence[tuple[str, str, extract.NumberAt, str]]
    """(legend label, widget type, number read from the data, colour) of each line."""
    y_min: float | None = None
    y_max: float | None = None


CHARTS: Sequence[ChartSpec] = (
    ChartSpec(
        "Speed test: download and upload",
        "Mbps",
        (
            ("Download", "speedtest", extract.speed_down, "#4e79a7"),
            ("Upload", "speedtest", extract.speed_up, "#f28e2b"),
        ),
        y_min=0,
    ),
    ChartSpec(
        "Wi-Fi: RSSI and noise",
        "dBm",
        (("RSSI", "wifi", extract.wifi_rssi, "#59a14f"), ("Noise", "wifi", extract.wifi_noise, "#e15759")),
    ),
    ChartSpec(
        "Ping: latency (ms, average over targets) and loss (%)",
        "ms · %",
        (
            ("Latency (ms)", "ping", extract.ping_latency, "#76b7b2"),
            ("Loss (%)", "ping", extract.ping_loss, "#e15759"),
        ),
        y_min=0,
    ),
    ChartSpec(
        "Health: CPU and memory",
        "%",
        (("CPU", "health", extract.health_cpu, "#b07aa1"), ("Memory", "health", extract.health_memory, "#edc948")),
        y_min=0,
        y_max=100,
    ),
)
"""The four charts of the machine page."""


def series_points(
    rows: Iterable[tuple[str, datetime, Mapping[str, Any]]], widget_type: str, extractor: extract.NumberAt
) -> list[tuple[datetime, float]]:
    """(timestamp, value) of each row of ``widget_type`` whose data holds a number for ``extractor``."""
    points = []
    for kind, when, data in rows:
        if kind == widget_type:
            value = extractor(data)
            if value is not None:
                points.append((when, value))
    return points


def build_charts(
    rows: Sequence[tuple[str, datetime, Mapping[str, Any]]], start: datetime, end: datetime, buckets: int
) -> list[Markup]:
    """The machine page's charts (SVG figures) from the window's rows."""
    points = [
        bucket_average(series_points(rows, kind, extractor), start, end, buckets)
        for spec in CHARTS
        for _, kind, extractor, _ in spec.lines
    ]
    return _charts(points, start, end)


def binned_charts(buckets: timeline.Buckets) -> list[Markup]:
    """The machine page's charts from ``load_buckets`` (its lines in the order of ``CHARTS``)."""
    return _charts([buckets.points(line) for line in range(len(buckets.lines))], buckets.start, buckets.end)


def _charts(points: Sequence[Sequence[tuple[datetime, float]]], start: datetime, end: datetime) -> list[Markup]:
    """The SVG figures of ``CHARTS`` from each line's points, in the order of the specs' lines."""
    charts, remaining = [], iter(points)
    for spec in CHARTS:
        series = [Series(label, next(remaining), color) for label, _, _, color in spec.lines]
        charts.append(
            line_chart(
                series, title=spec.title, unit=spec.unit, start=start, end=end, y_min=spec.y_min, y_max=spec.y_max
            )
        )
    return charts
