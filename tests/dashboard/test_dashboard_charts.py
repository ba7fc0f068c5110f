"""Inline SVG charts: bucket averages, escaping, gaps, empty and flat data, colours, axis labels, determinism."""

from __future__ import annotations

import math
import random
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone

import pytest
from markupsafe import Markup, escape

from atlas.dashboard.charts import PALETTE, Series, bucket_average, line_chart

T0 = datetime(2024, 11, 28, tzinfo=UTC)
DAY = timedelta(days=1)
HOSTILE = '<script>alert(1)</script>" onload="alert(2)\' &amp; <b>'
HHMM = re.compile(r"\d\d:\d\d")
SHORT_DATE = re.compile(r"[A-Z][a-z]{2} \d{1,2}")


def parse(markup: Markup) -> ET.Element:
    """The chart as an element tree (raises if the output is not well-formed XML)."""
    return ET.fromstring(str(markup))  # noqa: S314 - our own output, parsed to prove it is well-formed


def tag(element: ET.Element) -> str:
    """The tag without its XML namespace."""
    return element.tag.rsplit("}", 1)[-1]


def classes(element: ET.Element) -> set[str]:
    return set(element.get("class", "").split())


def marks(root: ET.Element, name: str) -> list[ET.Element]:
    """The polylines and circles drawn for the series called ``name`` (found through their tooltip)."""
    found = []
    for element in root.iter():
        if tag(element) in ("polyline", "circle", "path") and "chart-line" in classes(element):
            tip = next(child for child in element if tag(child) == "title")
            if tip.text.startswith(f"{name}:"):
                found.append(element)
    return found


def axis_texts(root: ET.Element) -> list[str]:
    return [e.text for e in root.iter() if tag(e) == "text" and "chart-axis" in classes(e)]


def every(start: datetime, step: timedelta, count: int, value: float = 1.0) -> list[tuple[datetime, float]]:
    return [(start + step * i, value + i % 3) for i in range(count)]


def chart(*series: Series, start: datetime = T0, end: datetime = T0 + DAY, **kwargs) -> Markup:
    kwargs.setdefault("title", "Bandwidth")
    kwargs.setdefault("unit", "Mbit/s")
    return line_chart(list(series), start=start, end=end, **kwargs)


# bucket_average


def test_bucket_average_exact_means_midpoints_and_empty_slots_omitted():
    m = timedelta(minutes=1)
    points = [
        (T0, 1.0),
        (T0 + 15 * m - timedelta(microseconds=1), 4.0),  # last instant of slot 0
        (T0 + 15 * m, 10.0),  # first instant of slot 1
        (T0 + 59 * m, 7.0),
        (T0 + 50 * m, 8.0),
        (T0 + 55 * m, math.nan),  # skipped
        (T0 + 56 * m, math.inf),  # skipped
    ]
    assert bucket_average(points, T0, T0 + 60 * m, 4) == [
        (T0 + timedelta(minutes=7, seconds=30), 2.5),
        (T0 + timedelta(minutes=22, seconds=30), 10.0),
        (T0 + timedelta(minutes=52, seconds=30), 7.5),
    ]


def test_bucket_average_bounds_are_half_open():
    hour = timedelta(hours=1)
    points = [(T0 - timedelta(microseconds=1), 100.0), (T0, 1.0), (T0 + hour, 100.0), (T0 + 2 * hour, 100.0)]
    assert bucket_average(points, T0, T0 + hour, 1) == [(T0 + hour / 2, 1.0)]
    assert bucket_average(points[:1] + points[2:], T0, T0 + hour, 3) == []


def test_bucket_average_slot_edges_are_exact():
    # 45 slots of 80 s: 1040 s is the first instant of slot 13 (float division would put it in slot 12)
    at = T0 + timedelta(seconds=1040)
    assert bucket_average([(at, 5.0)], T0, T0 + timedelta(hours=1), 45) == [(at + timedelta(seconds=40), 5.0)]


def test_bucket_average_compares_instants_not_wall_clocks():
    plus2 = timezone(timedelta(hours=2))
    points = [(datetime(2024, 11, 28, 2, 30, tzinfo=plus2), 6.0), (datetime(2024, 11, 28, 3, 0, tzinfo=plus2), 9.0)]
    # 00:30Z and 01:00Z: one in each half of [00:00Z, 02:00Z)
    assert bucket_average(points, T0, T0 + timedelta(hours=2), 2) == [
        (T0 + timedelta(minutes=30), 6.0),
        (T0 + timedelta(minutes=90), 9.0),
    ]


@pytest.mark.parametrize(("end", "buckets"), [(T0 + DAY, 0), (T0, 4), (T0 - DAY, 4)])
def test_bucket_average_rejects_bad_arguments(end, buckets):
    with pytest.raises(ValueError, match=r"buckets|after"):
        bucket_average([], T0, end, buckets)


# Structure and escaping


def test_figure_structure_accessibility_and_classes():
    out = chart(Series("Download", every(T0, timedelta(minutes=5), 288)), Series("Upload", every(T0, DAY / 8, 8)))
    assert isinstance(out, Markup)
    root = parse(out)
    assert tag(root) == "figure"
    assert "chart" in classes(root)
    assert [e.text for e in root if tag(e) == "figcaption"] == ["Bandwidth"]
    svg = next(e for e in root if tag(e) == "svg")
    assert svg.get("role") == "img"
    assert svg.get("aria-label") == "Bandwidth"
    assert svg.get("viewBox") == "0 0 640 220"
    assert svg.get("width") == "100%"
    assert svg.get("height") is None  # the viewBox keeps the aspect ratio while CSS sets the width
    all_classes = set().union(*(classes(e) for e in root.iter()))
    assert {"chart", "chart-axis", "chart-grid", "chart-line", "chart-legend"} <= all_classes
    legend = next(e for e in root.iter() if "chart-legend" in classes(e))
    items = [li for li in legend if tag(li) == "li"]
    assert ["".join(li.itertext()).strip() for li in items] == ["Download", "Upload"]
    swatches = [e.get("fill") for li in items for e in li.iter() if tag(e) == "rect"]
    assert swatches == list(PALETTE[:2])
    assert "Mbit/s" in axis_texts(root)


def test_hostile_text_is_escaped_everywhere():
    out = chart(Series(HOSTILE, every(T0, timedelta(hours=1), 24)), title=HOSTILE, unit=HOSTILE)
    root = parse(out)  # well-formed XML, so nothing broke out of a text node or an attribute
    assert not [e for e in root.iter() if tag(e) in ("script", "b")]
    assert not [e for e in root.iter() if "onload" in e.attrib]
    svg = next(e for e in root if tag(e) == "svg")
    assert svg.get("aria-label") == HOSTILE
    assert next(e for e in root if tag(e) == "figcaption").text == HOSTILE
    assert HOSTILE in axis_texts(root)  # the unit, verbatim as text
    (line,) = marks(root, HOSTILE)
    assert next(iter(line)).text.endswith(f" {HOSTILE}")
    legend = next(e for e in root.iter() if "chart-legend" in classes(e))
    assert "".join(legend.itertext()).strip() == HOSTILE
    assert escape(out) == out  # Markup: a template won't escape it a second time


# Gaps


def test_gap_longer_than_three_median_spacings_breaks_the_line():
    five = timedelta(minutes=5)
    steady = every(T0, five, 100)
    holed = every(T0, five, 40) + every(T0 + 40 * five + timedelta(hours=2), five, 40)
    just_under = every(T0, five, 20) + every(T0 + 19 * five + timedelta(minutes=15), five, 20)  # a 3x gap
    just_over = every(T0, five, 20) + every(T0 + 19 * five + timedelta(minutes=15, seconds=1), five, 20)
    root = parse(
        chart(
            Series("steady", steady),
            Series("holed", list(reversed(holed))),
            Series("under", just_under),
            Series("over", just_over),
        )
    )
    assert [tag(e) for e in marks(root, "steady")] == ["polyline"]
    assert [tag(e) for e in marks(root, "holed")] == ["polyline", "polyline"]
    assert [tag(e) for e in marks(root, "under")] == ["polyline"]
    assert [tag(e) for e in marks(root, "over")] == ["polyline", "polyline"]
    assert [len(e.get("points").split()) for e in marks(root, "holed")] == [40, 40]


def test_isolated_points_are_circles():
    hour = timedelta(hours=1)
    points = [*every(T0, timedelta(minutes=10), 12), (T0 + 6 * hour, 5.0), *every(T0 + 12 * hour, hour / 6, 12)]
    root = parse(chart(Series("cpu", points), Series("lonely", [(T0 + 3 * hour, 2.0)])))
    assert [tag(e) for e in marks(root, "cpu")] == ["polyline", "circle", "polyline"]
    assert [tag(e) for e in marks(root, "lonely")] == ["circle"]


# Empty and flat data


@pytest.mark.parametrize(
    "series",
    [
        [],
        [Series("a", []), Series("b", [])],
        [Series("nan", [(T0 + DAY / 2, math.nan), (T0 + DAY / 3, -math.inf)])],
        [Series("outside", [(T0 - timedelta(seconds=1), 1.0), (T0 + DAY + timedelta(seconds=1), 2.0)])],
    ],
    ids=["no-series", "empty-series", "only-nan", "outside-window"],
)
def test_no_data_renders_the_frame_with_a_message(series):
    root = parse(chart(*series, title="Latency"))
    empty = [e for e in root.iter() if "chart-empty" in classes(e)]
    assert [e.text for e in empty] == ["No data in this period"]
    assert next(e for e in root if tag(e) == "figcaption").text == "Latency"
    assert not [e for e in root.iter() if "chart-line" in classes(e)]
    assert len([t for t in axis_texts(root) if HHMM.fullmatch(t)]) >= 4  # the time axis is still drawn


def test_data_present_means_no_empty_message():
    root = parse(chart(Series("a", [(T0 + DAY / 2, 1.0)])))
    assert not [e for e in root.iter() if "chart-empty" in classes(e)]


@pytest.mark.parametrize("value", [42.0, 0.0, -3.5, 1e9])
def test_flat_series_is_drawn_inside_a_padded_axis(value):
    root = parse(chart(Series("flat", [(T0 + timedelta(hours=h), value) for h in range(24)])))
    (line,) = marks(root, "flat")
    ys = {float(xy.split(",")[1]) for xy in line.get("points").split()}
    assert len(ys) == 1
    grid = sorted(float(e.get("y1")) for e in root.iter() if "chart-grid" in classes(e))
    assert 4 <= len(grid) <= 6
    assert grid[0] <= ys.pop() <= grid[-1]
    labels = [t for t in axis_texts(root) if not HHMM.fullmatch(t) and t != "Mbit/s"]
    assert len(set(labels)) == len(labels) == len(grid)  # distinct tick labels, one per grid line


def test_auto_scale_has_round_ticks_around_the_data():
    root = parse(chart(Series("a", [(T0, 3.0), (T0 + DAY / 2, 97.0)])))
    labels = [t for t in axis_texts(root) if not HHMM.fullmatch(t) and t != "Mbit/s"]
    assert labels == ["0", "20", "40", "60", "80", "100"]


def test_explicit_y_range_is_used_and_out_of_range_values_stay_in_the_plot():
    root = parse(chart(Series("pct", [(T0, 50.0), (T0 + DAY / 2, 250.0)]), y_min=0, y_max=100, unit="%"))
    labels = [t for t in axis_texts(root) if not HHMM.fullmatch(t) and t != "%"]
    assert labels[0] == "0"
    assert labels[-1] == "100"
    grid = sorted(float(e.get("y1")) for e in root.iter() if "chart-grid" in classes(e))
    (line,) = marks(root, "pct")
    ys = [float(xy.split(",")[1]) for xy in line.get("points").split()]
    assert min(ys) == grid[0]  # 250 drawn at the top edge, not above it


# Colours


@pytest.mark.parametrize(
    "color",
    ["red;stroke:url(javascript:x)", '#fff" onload="alert(1)', "#12345", "#ggg", "url(#x)", "RED", "", "red "],
)
def test_invalid_colours_fall_back_to_the_palette(color):
    out = chart(Series("first", every(T0, DAY / 24, 24)), Series("second", every(T0, DAY / 24, 24), color=color))
    root = parse(out)
    (line,) = marks(root, "second")
    assert line.get("stroke") == PALETTE[1]
    assert "javascript" not in out
    assert not [e for e in root.iter() if "onload" in e.attrib]


@pytest.mark.parametrize("color", ["#abc", "#A1b2C3", "rebeccapurple"])
def test_valid_colours_are_used(color):
    root = parse(chart(Series("s", every(T0, DAY / 24, 24), color=color)))
    (line,) = marks(root, "s")
    assert line.get("stroke") == color
    legend = next(e for e in root.iter() if "chart-legend" in classes(e))
    assert [e.get("fill") for e in legend.iter() if tag(e) == "rect"] == [color]


# Axis labels


def test_day_span_has_utc_clock_labels():
    plus2 = timezone(timedelta(hours=2))
    start = datetime(2024, 11, 28, 2, 0, tzinfo=plus2)  # 00:00Z
    root = parse(chart(Series("a", every(T0, DAY / 24, 24)), start=start, end=start + DAY))
    labels = [t for t in axis_texts(root) if HHMM.fullmatch(t)]
    assert 4 <= len(labels) <= 7
    assert labels[0] == "00:00"
    assert "12:00" in labels
    assert not [t for t in axis_texts(root) if SHORT_DATE.fullmatch(t)]


def test_week_span_has_short_date_labels():
    start = datetime(2024, 11, 25, tzinfo=UTC)
    root = parse(chart(Series("a", every(start, DAY / 4, 28)), start=start, end=start + 7 * DAY))
    labels = [t for t in axis_texts(root) if SHORT_DATE.fullmatch(t)]
    assert 4 <= len(labels) <= 7
    assert labels[0] == "Nov 25"
    assert "Nov 29" in labels or "Nov 28" in labels
    assert any(label.startswith("Dec ") for label in labels)
    assert not [t for t in axis_texts(root) if HHMM.fullmatch(t)]


def test_very_short_span_has_evenly_spaced_utc_labels_with_seconds():
    plus2 = timezone(timedelta(hours=2))
    start = datetime(2024, 11, 28, 2, 0, tzinfo=plus2)  # 00:00Z
    root = parse(chart(Series("a", [(T0, 1.0)]), start=start, end=start + timedelta(minutes=2)))
    labels = [t for t in axis_texts(root) if re.fullmatch(r"\d\d:\d\d:\d\d", t)]
    assert labels == ["00:00:00", "00:00:30", "00:01:00", "00:01:30", "00:02:00"]


def test_x_positions_follow_time():
    start = datetime(2024, 11, 25, tzinfo=UTC)
    root = parse(chart(Series("a", [(start, 1.0), (start + DAY, 2.0)]), start=start, end=start + 2 * DAY))
    (line,) = marks(root, "a")
    xs = [float(xy.split(",")[0]) for xy in line.get("points").split()]
    assert xs == [56.0, 338.0]  # left edge of the plot, then exactly half way across [56, 620]


# Tooltips, rounding and determinism


def test_tooltip_names_the_latest_value_by_time():
    points = [(T0 + DAY / 2, 7.25), (T0, 1.0), (T0 + DAY / 4, 3.0)]
    root = parse(chart(Series("Download", points)))
    (line,) = marks(root, "Download")
    assert next(iter(line)).text == "Download: latest 7.25 Mbit/s"


def test_output_is_deterministic_and_compact():
    points = [*every(T0, timedelta(minutes=7), 200, value=math.pi), (T0 + timedelta(hours=20), 1 / 3)]
    shuffled = points[:]
    random.Random(4).shuffle(shuffled)
    first = chart(Series("Download", points), Series("Upload", [(t, v / 7) for t, v in points]))
    again = chart(Series("Download", shuffled), Series("Upload", [(t, v / 7) for t, v in points]))
    assert first == again
    numbers = re.findall(r'="([-\d., ]+)"', first)
    assert numbers
    assert not [n for n in numbers if re.search(r"\.\d\d", n)]  # one decimal place at most


def test_rejects_naive_or_reversed_window():
    with pytest.raises(ValueError, match="aware"):
        line_chart([], title="t", unit="", start=T0.replace(tzinfo=None), end=T0.replace(tzinfo=None) + DAY)
    with pytest.raises(ValueError, match="after"):
        line_chart([], title="t", unit="", start=T0, end=T0)
