"""Server-side inline SVG line charts for the dashboard: no JavaScript, no CDN, no I/O.

``line_chart`` returns a ``<figure>`` (well-formed XML, so it also works in XHTML) holding an inline ``<svg>``
and an HTML legend. Every piece of caller text is escaped and colours are validated, so hostile series names or
titles cannot inject markup. Output is deterministic and numbers are rounded to one decimal place.
Class names (``chart``, ``chart-axis``, ``chart-grid``, ``chart-line``, ``chart-legend``, ``chart-empty``) let a
stylesheet theme it; presentation attributes give a sensible look without one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise

from markupsafe import Markup, escape

__all__ = ["PALETTE", "Series", "bucket_average", "line_chart"]

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
"""Default series colours (Tableau 10 without its grey), used in order when a series has no valid colour."""

_COLOR = re.compile(r"#[0-9a-fA-F]{3}|#[0-9a-fA-F]{6}|[a-z]{1,32}")
_US = timedelta(microseconds=1)
_ANCHOR = datetime(2000, 1, 3, tzinfo=UTC)  # a Monday at midnight UTC
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAY = 1440
_SHORT_STEPS = (1, 2, 3, 5, 10, 15, 30, 60, 120, 180, 240, 360, 480, 720, _DAY)  # minutes, spans <= 2 days
_LONG_STEPS: tuple[int, ...] = (720, _DAY, 2 * _DAY, 3 * _DAY, 4 * _DAY, 7 * _DAY, 14 * _DAY, 28 * _DAY)
_LONG_STEPS += (56 * _DAY, 91 * _DAY, 182 * _DAY, 364 * _DAY, 728 * _DAY)
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 56, 20, 20, 24
EMPTY_TEXT = "No data in this period"


@dataclass(frozen=True)
class Series:
    """One line: a legend label, its (aware datetime, value) points in any order, and an optional CSS colour."""

    name: str
    points: Sequence[tuple[datetime, float]]
    color: str = ""


def bucket_average(
    points: Iterable[tuple[datetime, float]], start: datetime, end: datetime, buckets: int
) -> list[tuple[datetime, float]]:
    """Downsample: average of the points in each of `buckets` equal slots of [start, end); empty slots omitted.

    The time of a slot is its midpoint. Points outside [start, end) and NaN/inf values are ignored.
    """
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    span_us = (end - start) // _US
    if span_us <= 0:
        raise ValueError("end must be after start")
    sums = [0.0] * buckets
    counts = [0] * buckets
    for when, value in points:
        offset_us = (when - start) // _US
        if 0 <= offset_us < span_us and math.isfinite(value):
            slot = offset_us * buckets // span_us  # integer arithmetic: no float error at slot edges
            sums[slot] += value
            counts[slot] += 1
    span = end - start
    return [
        (start + span * (2 * slot + 1) / (2 * buckets), sums[slot] / counts[slot])
        for slot in range(buckets)
        if counts[slot]
    ]


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    unit: str,
    start: datetime,
    end: datetime,
    width: int = 640,
    height: int = 220,
    y_min: float | None = None,
    y_max: float | None = None,
) -> Markup:
    """An accessible <figure> holding an inline <svg> line chart, with a <figcaption> title and a legend.

    The x axis spans [start, end] (points outside it are skipped); the y axis is auto-scaled to the data unless
    `y_min`/`y_max` are given (values beyond them are drawn at the edge). A gap longer than 3x the median spacing
    of a series breaks its line; an isolated point is drawn as a small circle.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    span_us = (end - start) // _US
    if span_us <= 0:
        raise ValueError("end must be after start")
    for bound in (y_min, y_max):
        if bound is not None and not math.isfinite(bound):
            raise ValueError("y_min and y_max must be finite")
    if y_min is not None and y_max is not None and y_max <= y_min:
        raise ValueError("y_max must be greater than y_min")
    x0, x1 = _MARGIN_LEFT, width - _MARGIN_RIGHT
    y0, y1 = _MARGIN_TOP, height - _MARGIN_BOTTOM
    if x1 - x0 < 40 or y1 - y0 < 20:
        raise ValueError("chart too small")

    cleaned = [_clean(s.points, start, end) for s in series]
    values = [v for points in cleaned for _, v in points]
    if values:
        lo, hi, y_ticks, step = _y_scale(min(values), max(values), y_min, y_max)
    elif y_min is not None and y_max is not None:
        lo, hi, y_ticks, step = _y_scale(y_min, y_max, y_min, y_max)
    else:
        lo, hi, y_ticks, step = 0.0, 1.0, [], 1.0

    def x_of(when: datetime) -> float:
        return x0 + (x1 - x0) * ((when - start) // _US) / span_us

    def y_of(value: float) -> float:
        return y1 - (y1 - y0) * (min(max(value, lo), hi) - lo) / (hi - lo)

    label = escape(title)
    parts = [
        '<figure class="chart">',
        f"<figcaption>{label}</figcaption>",
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" role="img"'
        f' aria-label="{label}" font-family="system-ui, sans-serif" font-size="11">',
    ]
    # Grid and y labels
    labels = _y_labels(y_ticks, step)
    for value, text in zip(y_ticks, labels, strict=True):
        y = _n(y_of(value))
        parts.append(
            f'<line class="chart-grid" x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="currentColor"'
            ' stroke-opacity="0.2"/>'
        )
        parts.append(
            f'<text class="chart-axis" x="{x0 - 6}" y="{_n(y_of(value) + 4)}" text-anchor="end"'
            f' fill="currentColor">{escape(text)}</text>'
        )
    if unit:
        parts.append(f'<text class="chart-axis chart-unit" x="4" y="12" fill="currentColor">{escape(unit)}</text>')
    # Axes and x labels
    parts.append(
        f'<path class="chart-axis" d="M{x0} {y0}V{y1}H{x1}" fill="none" stroke="currentColor" stroke-opacity="0.5"/>'
    )
    for when, text in _x_ticks(start, end):
        x = x_of(when)
        anchor = "end" if x > x1 - 16 else "middle"
        parts.append(
            f'<line class="chart-axis" x1="{_n(x)}" y1="{y1}" x2="{_n(x)}" y2="{y1 + 4}" stroke="currentColor"'
            ' stroke-opacity="0.5"/>'
        )
        parts.append(
            f'<text class="chart-axis" x="{_n(x)}" y="{y1 + 16}" text-anchor="{anchor}"'
            f' fill="currentColor">{escape(text)}</text>'
        )
    # Lines
    colors = [_color(s.color, i) for i, s in enumerate(series)]
    for s, points, color in zip(series, cleaned, colors, strict=True):
        if not points:
            continue
        latest = _format_value(points[-1][1])
        tip = f"<title>{escape(s.name)}: latest {escape(latest)}{' ' if unit else ''}{escape(unit)}</title>"
        for segment in _segments(points):
            if len(segment) == 1:
                when, value = segment[0]
                parts.append(
                    f'<circle class="chart-line chart-point" cx="{_n(x_of(when))}" cy="{_n(y_of(value))}" r="2.5"'
                    f' fill="{color}">{tip}</circle>'
                )
            else:
                coords = " ".join(f"{_n(x_of(when))},{_n(y_of(value))}" for when, value in segment)
                parts.append(
                    f'<polyline class="chart-line" points="{coords}" fill="none" stroke="{color}" stroke-width="1.5"'
                    f' stroke-linejoin="round">{tip}</polyline>'
                )
    if not values:
        parts.append(
            f'<text class="chart-empty" x="{_n((x0 + x1) / 2)}" y="{_n((y0 + y1) / 2)}" text-anchor="middle"'
            f' fill="currentColor">{EMPTY_TEXT}</text>'
        )
    parts.append("</svg>")
    if series:
        parts.append('<ul class="chart-legend">')
        for s, color in zip(series, colors, strict=True):
            parts.append(
                '<li><svg xmlns="http://www.w3.org/2000/svg" class="chart-swatch" width="10" height="10"'
                f' viewBox="0 0 10 10" aria-hidden="true"><rect width="10" height="10" fill="{color}"/></svg>'
                f" {escape(s.name)}</li>"
            )
        parts.append("</ul>")
    parts.append("</figure>")
    return Markup("".join(parts))  # noqa: S704 - every caller string above went through escape()


def _clean(points: Iterable[tuple[datetime, float]], start: datetime, end: datetime) -> list[tuple[datetime, float]]:
    """Finite points within [start, end], sorted by time (stable, so equal times keep their input order)."""
    return sorted(
        ((when, float(value)) for when, value in points if start <= when <= end and math.isfinite(value)),
        key=lambda point: point[0],
    )


def _segments(points: list[tuple[datetime, float]]) -> list[list[tuple[datetime, float]]]:
    """Split sorted points wherever consecutive points are more than 3x the median spacing apart."""
    gaps = [(b[0] - a[0]) // _US for a, b in pairwise(points)]
    positive = sorted(g for g in gaps if g > 0)
    if not positive:  # one point, or all at the same time: dots
        return [[point] for point in points]
    middle = len(positive) // 2
    median = positive[middle] if len(positive) % 2 else (positive[middle - 1] + positive[middle]) / 2
    segments = [[points[0]]]
    for gap, point in zip(gaps, points[1:], strict=True):
        if gap > 3 * median:
            segments.append([point])
        else:
            segments[-1].append(point)
    return segments


def _color(color: str, index: int) -> str:
    """The colour if it is ``#rgb``, ``#rrggbb`` or a lower-case name; otherwise the palette's colour for index."""
    return color if _COLOR.fullmatch(color) else PALETTE[index % len(PALETTE)]


def _n(number: float) -> str:
    """A coordinate rounded to one decimal place, without a trailing ``.0`` or a negative zero."""
    text = f"{number:.1f}"
    if text.endswith(".0"):
        text = text[:-2]
    return "0" if text == "-0" else text


def _format_value(value: float) -> str:
    """A value for the tooltip: two decimals below 100 (trailing zeros dropped), whole numbers above."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _y_scale(
    data_lo: float, data_hi: float, y_min: float | None, y_max: float | None
) -> tuple[float, float, list[float], float]:
    """Axis bounds, tick values (4-6 when auto-scaled) and tick step for the data range and the fixed bounds."""
    lo, hi = data_lo, data_hi
    if lo == hi:  # flat series: centre it in a band around the value
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    else:
        pad = (hi - lo) * 0.03
        lo, hi = lo - pad, hi + pad
    if data_lo >= 0 > lo:  # never invent negatives for non-negative data
        lo = 0.0
    if y_min is not None:
        lo = y_min
    if y_max is not None:
        hi = y_max
    if hi <= lo:  # a single fixed bound on the wrong side of all the data
        pad = abs(lo if y_min is not None else hi) * 0.1 or 1.0
        lo, hi = (lo, lo + pad) if y_min is not None else (hi - pad, hi)
    exponent = math.floor(math.log10((hi - lo) / 6)) - 1
    while True:
        for mantissa in (1.0, 2.0, 2.5, 5.0):
            step = mantissa * 10.0**exponent
            first = math.floor(lo / step + 1e-9) if y_min is None else math.ceil(lo / step - 1e-9)
            last = math.ceil(hi / step - 1e-9) if y_max is None else math.floor(hi / step + 1e-9)
            if last - first + 1 <= 6:
                ticks = [k * step for k in range(first, last + 1)]
                return (
                    lo if y_min is not None else first * step,
                    hi if y_max is not None else last * step,
                    ticks,
                    step,
                )
        exponent += 1


def _y_labels(ticks: list[float], step: float) -> list[str]:
    """Tick labels with just enough decimals for the step, large values shortened with k/M/G/T."""
    if not ticks:
        return []
    biggest = max(abs(t) for t in ticks)
    power, suffix = 0, ""
    for candidate_power, candidate_suffix in ((12, "T"), (9, "G"), (6, "M"), (3, "k")):
        if biggest >= 10.0**candidate_power * (10 if candidate_power == 3 else 1):
            power, suffix = candidate_power, candidate_suffix
            break
    scaled = step / 10.0**power
    decimals = 0
    while decimals < 6 and abs(scaled * 10**decimals - round(scaled * 10**decimals)) > 1e-6:
        decimals += 1
    labels = []
    for tick in ticks:
        text = f"{tick / 10.0**power:.{decimals}f}"
        if text.lstrip("-").strip("0.") == "":
            text = "0"
        labels.append(text if text == "0" else text + suffix)
    return labels


def _x_ticks(start: datetime, end: datetime) -> list[tuple[datetime, str]]:
    """4-7 ticks on round UTC times: HH:MM labels for spans up to 2 days, otherwise short dates like "Nov 28"."""
    span = end - start
    short = span <= timedelta(days=2)
    midnight = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for minutes in _SHORT_STEPS if short else _LONG_STEPS:
        anchor = _ANCHOR if minutes >= 7 * _DAY else midnight  # whole weeks start on Mondays
        start_us, end_us = (start - anchor) // _US, (end - anchor) // _US
        step_us = minutes * 60_000_000
        first = -(-start_us // step_us)
        count = end_us // step_us - first + 1
        if count <= 7:
            if count >= 4:
                times = [anchor + timedelta(microseconds=(first + k) * step_us) for k in range(count)]
                return [(t, _x_label(t, short)) for t in times]
            break
    # Spans too short (or too long) for round steps: five evenly spaced ticks.
    times = [start + span * k / 4 for k in range(5)]
    return [(t, _x_label(t, short, seconds=span < timedelta(minutes=4))) for t in times]


def _x_label(when: datetime, short: bool, *, seconds: bool = False) -> str:
    """HH:MM (UTC) for short spans; "Nov 28" at midnight UTC otherwise (HH:MM for sub-day ticks of long spans)."""
    utc = when.astimezone(UTC)
    if seconds:
        return utc.strftime("%H:%M:%S")
    if short or utc.time() != datetime.min.time():
        return utc.strftime("%H:%M")
    return f"{_MONTHS[utc.month - 1]} {utc.day}"
