"""One machine's page: identity, the latest log of each widget, recent logs and charts.

Queries select rows; every number and string is read out of ``data`` in Python
(``extract``), never with SQL's ``->>``, so that encrypting ``data`` at rest
only changes ``extract.decode_data``. Charts are built by pure functions from
(widget type, timestamp, data) rows and averaged into buckets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from markupsafe import Markup

from atlas.contract import LEVELS

from . import extract
from .charts import Series, bucket_average, line_chart

RECENT_LOGS = 100
"""Logs listed on the machine page."""

PING_WINDOW = timedelta(hours=1)
"""The ping table shows each target's latest result within this long before the newest ping."""

LATEST_LOOKBACK = timedelta(days=2)
"""How far before a machine's last contact its latest log of each widget is looked for."""

RANGES: Mapping[str, tuple[timedelta, int, int]] = {
    "day": (timedelta(days=1), 96, 1),
    "week": (timedelta(days=7), 168, 5),
}
"""Chart ranges: the span, how many buckets it is averaged into (15 minutes for a day, an hour for a week), and
the sampling stride in minutes: a week's charts read the logs of every 5th minute only (speed tests, hourly, all
of them), which keeps an hourly average of about 12 samples while reading a fifth of the rows."""

CHART_WIDGETS = ("wifi", "speedtest", "ping", "health")


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
class Latest:
    """The newest log of one widget: when, and its fields as the page shows them."""

    timestamp: datetime
    level: str
    message: str
    fields: dict[str, Any]


@dataclass
class MachineView:
    identity: dict[str, Any]
    wifi: Latest | None = None
    speedtest: Latest | None = None
    health: Latest | None = None
    processes: Latest | None = None
    pings: list[tuple[datetime, dict[str, Any]]] = field(default_factory=list)
    logs: list[LogRow] = field(default_factory=list)
    charts: list[Markup] = field(default_factory=list)


_IDENTITY_COLUMNS = (
    "machine_id",
    "serial_number",
    "hostname",
    "model",
    "os_version",
    "agent_version",
    "first_seen",
    "last_seen",
)

_SUMMARIES: Mapping[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "wifi": extract.wifi_summary,
    "speedtest": extract.speed_summary,
    "health": extract.health_summary,
    "processes": extract.processes_summary,
}


def load_identity(conn: psycopg.Connection, machine_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        f"SELECT {', '.join(_IDENTITY_COLUMNS)} FROM machines WHERE machine_id = %s",  # noqa: S608 - constant columns
        (machine_id,),
    ).fetchone()
    return dict(zip(_IDENTITY_COLUMNS, row, strict=True)) if row else None


def load_latest(conn: psycopg.Connection, machine_id: str, widget_type: str, since: datetime) -> Latest | None:
    row = conn.execute(
        'SELECT "timestamp", level, message, data FROM widget_logs'
        ' WHERE machine_id = %s AND widget_type = %s AND "timestamp" >= %s ORDER BY "timestamp" DESC LIMIT 1',
        (machine_id, widget_type, since),
    ).fetchone()
    if row is None:
        return None
    return Latest(row[0], row[1], extract.text(row[2], 500) or "", _SUMMARIES[widget_type](extract.decode_data(row[3])))


def load_pings(conn: psycopg.Connection, machine_id: str, since: datetime) -> list[tuple[datetime, dict[str, Any]]]:
    """Each target's latest ping within ``PING_WINDOW`` before the machine's newest ping."""
    rows = conn.execute(
        'WITH newest AS (SELECT max("timestamp") AS at FROM widget_logs'
        "   WHERE machine_id = %(id)s AND widget_type = 'ping' AND \"timestamp\" >= %(since)s)"
        ' SELECT l."timestamp", l.data FROM widget_logs l, newest'
        " WHERE l.machine_id = %(id)s AND l.widget_type = 'ping'"
        ' AND l."timestamp" > newest.at - %(window)s AND l."timestamp" <= newest.at',
        {"id": machine_id, "since": since, "window": PING_WINDOW},
    ).fetchall()
    return extract.latest_per_target((when, extract.decode_data(data)) for when, data in rows)


def load_logs(conn: psycopg.Connection, machine_id: str, level: str) -> list[LogRow]:
    """The newest ``RECENT_LOGS`` logs at ``level`` or above."""
    rows = conn.execute(
        'SELECT id, "timestamp", level, widget_type, message FROM widget_logs'
        ' WHERE machine_id = %s AND level = ANY(%s) ORDER BY "timestamp" DESC, id DESC LIMIT %s',
        (machine_id, list(levels_from(level)), RECENT_LOGS),
    ).fetchall()
    return [LogRow(r[0], r[1], r[2], r[3], extract.text(r[4], 500) or "") for r in rows]


def load_chart_rows(
    conn: psycopg.Connection, machine_id: str, start: datetime, end: datetime, stride: int = 1
) -> list[tuple[str, datetime, dict[str, Any]]]:
    """(widget type, timestamp, decoded data) of the charted logs in [start, end), of every ``stride``-th minute."""
    rows = conn.execute(
        'SELECT widget_type, "timestamp", data FROM widget_logs WHERE machine_id = %(id)s'
        ' AND "timestamp" >= %(start)s AND "timestamp" < %(end)s AND widget_type = ANY(%(types)s)'
        " AND (%(stride)s = 1 OR widget_type = 'speedtest'"
        '      OR floor(extract(epoch FROM "timestamp") / 60)::bigint %% %(stride)s = 0)',
        {"id": machine_id, "start": start, "end": end, "types": list(CHART_WIDGETS), "stride": stride},
    ).fetchall()
    return [(widget_type, when, extract.decode_data(data)) for widget_type, when, data in rows]


def load_machine(
    conn: psycopg.Connection, machine_id: str, *, now: datetime, chart_range: str, level: str
) -> MachineView | None:
    """Everything the machine page shows, or None for an unknown machine."""
    identity = load_identity(conn, machine_id)
    if identity is None:
        return None
    view = MachineView(identity)
    since = identity["last_seen"] - LATEST_LOOKBACK
    for widget_type in _SUMMARIES:
        setattr(view, widget_type, load_latest(conn, machine_id, widget_type, since))
    view.pings = load_pings(conn, machine_id, since)
    view.logs = load_logs(conn, machine_id, level)
    span, buckets, stride = RANGES[chart_range]
    start = now - span
    view.charts = build_charts(load_chart_rows(conn, machine_id, start, now, stride), start, now, buckets)
    return view


# --- charts: pure ------------------------------------------------------------------------

Extractor = Callable[[Mapping[str, Any]], float | None]


@dataclass(frozen=True)
class ChartSpec:
    title: str
    unit: str
    lines: Sequence[tuple[str, str, Extractor, str]]
    """(legend label, widget type, extractor, colour) of each line."""
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
    rows: Iterable[tuple[str, datetime, Mapping[str, Any]]], widget_type: str, extractor: Extractor
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
    charts = []
    for spec in CHARTS:
        series = [
            Series(label, bucket_average(series_points(rows, kind, extractor), start, end, buckets), color)
            for label, kind, extractor, color in spec.lines
        ]
        charts.append(
            line_chart(
                series, title=spec.title, unit=spec.unit, start=start, end=end, y_min=spec.y_min, y_max=spec.y_max
            )
        )
    return charts
