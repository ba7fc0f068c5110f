"""What the machine page is asked to show: a time range, log filters and a log page, all from GET parameters.

``range=day|week|30d`` picks a preset ending now; ``from``/``to`` (``datetime-local`` values, read as UTC)
pick any range instead, up to ``MAX_SPAN`` long. Log filters: ``level`` (that level and above), ``type`` (one
widget type) and ``q`` (a case-insensitive substring of the message or widget type). ``before``/``after`` are
keyset cursors, ``<epoch microseconds>:<log id>``: the page of logs just older (or newer) than that log.
Parsing is pure: a bad range raises ``RangeRefused`` with the sentence the page shows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from atlas.contract import LEVELS, WIDGET_TYPES

Cursor = tuple[datetime, int]
"""(timestamp, id) of a log: the keyset position of a log page."""

MAX_SPAN = timedelta(days=400)
"""The longest range the machine page shows."""

MAX_BUCKETS = 2016
"""The most points of a chart line: a week at one point per 5 minutes."""

BUCKET_WIDTHS = tuple(timedelta(minutes=m) for m in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440))
"""Bucket widths of a custom range's charts: the narrowest that keeps a line within ``MAX_BUCKETS``."""

MAX_SEARCH_CHARS = 200

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


@dataclass(frozen=True)
class Preset:
    label: str
    span: timedelta
    width: timedelta
    binned: bool
    """True: averaged by ``timeline`` (clear logs in SQL); False: every log of the span read and averaged here."""


PRESETS: Mapping[str, Preset] = {
    "day": Preset("Last day", timedelta(days=1), timedelta(minutes=15), binned=False),
    "week": Preset("Last week", timedelta(days=7), timedelta(minutes=5), binned=True),
    "30d": Preset("Last 30 days", timedelta(days=30), timedelta(minutes=30), binned=True),
}
"""Ranges ending now: a day in 15-minute buckets, a week in 5-minute ones, 30 days in half hours."""

DEFAULT_PRESET = "day"


class RangeRefused(ValueError):
    """A range the machine page cannot show; the message says why, for the page."""


def bucket_width(span: timedelta) -> timedelta:
    """The narrowest of ``BUCKET_WIDTHS`` that cuts ``span`` into at most ``MAX_BUCKETS`` buckets."""
    for width in BUCKET_WIDTHS:
        if span / width <= MAX_BUCKETS:
            return width
    return BUCKET_WIDTHS[-1]


@dataclass(frozen=True)
class Window:
    """The range shown, [start, end), and how its charts are bucketed."""

    start: datetime
    end: datetime
    preset: str = ""
    """The preset's name, or "" for a range given by ``from``/``to``."""

    @property
    def width(self) -> timedelta:
        return PRESETS[self.preset].width if self.preset else bucket_width(self.end - self.start)

    @property
    def binned(self) -> bool:
        return PRESETS[self.preset].binned if self.preset else True

    @property
    def buckets(self) -> int:
        return math.ceil((self.end - self.start) / self.width)

    @property
    def chart_start(self) -> datetime:
        """Where the charts start: ``start``, or up to one bucket before it so the buckets fill the range."""
        return self.end - self.width * self.buckets


def preset_window(name: str, now: datetime) -> Window:
    return Window(now - PRESETS[name].span, now, name)


def parse_moment(text: str, name: str) -> datetime:
    """A ``datetime-local`` value (or any ISO 8601 date and time) as an aware UTC datetime; naive means UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RangeRefused(f"“{name}” is not a date and time: use YYYY-MM-DDTHH:MM, in UTC.") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def local_value(moment: datetime) -> str:
    """``moment`` as a ``datetime-local`` input value, in UTC (seconds only when it has some)."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S" if moment.second or moment.microsecond else "%Y-%m-%dT%H:%M")


def parse_window(params: Mapping[str, str], now: datetime) -> Window:
    """The range of ``range`` or ``from``/``to``; an unknown preset is the default one.

    ``from`` alone ends now, ``to`` alone starts a day before it. Raises RangeRefused for a value that is no
    date, a range that ends before it starts (or where it starts), or one longer than ``MAX_SPAN``.
    """
    start_text, end_text = params.get("from", "").strip(), params.get("to", "").strip()
    if not start_text and not end_text:
        name = params.get("range", "")
        return preset_window(name if name in PRESETS else DEFAULT_PRESET, now)
    end = parse_moment(end_text, "to") if end_text else now
    start = parse_moment(start_text, "from") if start_text else end - timedelta(days=1)
    if end <= start:
        raise RangeRefused(
            f"This range ends ({end:%Y-%m-%d %H:%M} UTC) before it starts ({start:%Y-%m-%d %H:%M} UTC):"
            " choose a “to” after the “from”."
        )
    if end - start > MAX_SPAN:
        raise RangeRefused(
            f"This range is {(end - start).days} days long; the machine page shows at most {MAX_SPAN.days} days."
            " Export the device logs for longer ones."
        )
    return Window(start, end)


def cursor_text(cursor: Cursor) -> str:
    return f"{(cursor[0] - _EPOCH) // _US}:{cursor[1]}"


def parse_cursor(text: str | None) -> Cursor | None:
    """A ``before``/``after`` value; None for anything else (the newest page is shown instead)."""
    micros, sep, log_id = (text or "").partition(":")
    try:
        if sep and len(micros) <= 20 and 0 <= int(log_id) < 2**63:
            return _EPOCH + timedelta(microseconds=int(micros)), int(log_id)
    except (ValueError, OverflowError):
        pass
    return None


@dataclass(frozen=True)
class LogFilter:
    """Which logs the page lists, and from where."""

    level: str = ""
    widget_type: str = ""
    q: str = ""
    before: Cursor | None = None
    after: Cursor | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> LogFilter:
        level = params.get("level", "").upper()
        widget_type = params.get("type", "").lower()
        after = parse_cursor(params.get("after"))
        return cls(
            level=level if level in LEVELS else "",
            widget_type=widget_type if widget_type in WIDGET_TYPES else "",
            q=" ".join(params.get("q", "").split())[:MAX_SEARCH_CHARS],
            before=None if after else parse_cursor(params.get("before")),
            after=after,
        )

    @property
    def filtered(self) -> bool:
        return bool(self.level or self.widget_type or self.q)


@dataclass(frozen=True)
class MachineQuery:
    """The machine page's parameters, parsed."""

    window: Window
    logs: LogFilter

    @classmethod
    def from_params(cls, params: Mapping[str, str], now: datetime) -> MachineQuery:
        return cls(parse_window(params, now), LogFilter.from_params(params))

    def params(self, *, paged: bool = True, **changes: Any) -> dict[str, str]:
        """The query parameters of this page, with some ``LogFilter`` fields changed; no cursor unless paged."""
        logs = replace(self.logs, **changes)
        if self.window.preset:
            found = {"range": self.window.preset if self.window.preset != DEFAULT_PRESET else ""}
        else:
            found = {"from": local_value(self.window.start), "to": local_value(self.window.end)}
        found |= {"level": logs.level, "type": logs.widget_type, "q": logs.q}
        if paged:
            found |= {
                "before": cursor_text(logs.before) if logs.before else "",
                "after": cursor_text(logs.after) if logs.after else "",
            }
        return {k: v for k, v in found.items() if v}

    def link(self, base: str, **changes: Any) -> str:
        """``base`` with this page's parameters, changed by ``changes`` (``LogFilter`` fields)."""
        encoded = urlencode(self.params(**changes))
        return f"{base}?{encoded}" if encoded else base

    def preset_link(self, base: str, name: str) -> str:
        """``base`` showing the preset ``name``, keeping the log filters (not the log page)."""
        chosen = MachineQuery(Window(self.window.start, self.window.end, name), self.logs)
        params = chosen.params(paged=False)
        encoded = urlencode(params)
        return f"{base}?{encoded}#charts" if encoded else f"{base}#charts"

    def hidden_range(self) -> dict[str, str]:
        """The range's parameters, for the hidden fields of the log filter form."""
        return {k: v for k, v in self.params(paged=False).items() if k in ("range", "from", "to")}

    def hidden_filters(self) -> dict[str, str]:
        """The log filters' parameters, for the hidden fields of the range form."""
        return {k: v for k, v in self.params(paged=False).items() if k in ("level", "type", "q")}


def like_pattern(text: str) -> str:
    """``%text%`` for ILIKE with ``ESCAPE '\\'``: the ``%``, ``_`` and ``\\`` of ``text`` match literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
