"""The machine page over HTTP: any time range, log search, filters and keyset pages, the same serial elsewhere.

A real ``atlas-server dashboard`` process, httpx and PostgreSQL; the range parsing and links are also
checked as pure functions.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, quote, urlsplit

import psycopg
import pytest

from atlas.dashboard.machinequery import (
    MAX_BUCKETS,
    LogFilter,
    MachineQuery,
    RangeRefused,
    bucket_width,
    cursor_text,
    local_value,
    parse_cursor,
    parse_window,
)

from ..fix_dashboard import (
    Browserless,
    chart_points,
    health_data,
    insert_machine,
    ping_data,
    speed_data,
    wifi_data,
)

WIFI_CHART = "Wi-Fi: RSSI and noise"


def page_url(machine_id: str) -> str:
    return f"/machines/{quote(machine_id, safe='')}"


def messages(page: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'<td class="message">([^<]*)</td>', page)]


def pager_link(page: str, rel: str) -> str | None:
    found = re.search(rf'<a rel="{rel}" href="([^"]*)"', page)
    return html.unescape(found.group(1)) if found else None


def readings(at: datetime, k: int) -> list[tuple]:
    return [
        (at, "INFO", "wifi", f"old wifi {k}", wifi_data(-60 - k % 10)),
        (at, "INFO", "ping", f"old ping {k}", ping_data("1.1.1.1", 10 + k % 5)),
        (at, "INFO", "health", f"old health {k}", health_data(20 + k % 30)),
        (at, "INFO", "speedtest", f"old speed {k}", speed_data(200 + k)),
    ]


def test_a_30_day_range_shows_charts_and_logs_older_than_a_week(viewer: Browserless, db: psycopg.Connection):
    now = datetime.now(UTC)
    logs = [row for k in range(48) for row in readings(now - timedelta(days=20, minutes=30 * k), k)]
    machine = insert_machine(db, logs=logs)
    url = page_url(machine.machine_id)

    week = viewer.get(url, params={"range": "week"})
    assert week.status_code == 200
    assert chart_points(week.text)[WIFI_CHART] == 0

    month = viewer.get(url, params={"range": "30d"})
    assert month.status_code == 200, month.text
    drawn = chart_points(month.text)
    assert len(drawn) == 4
    assert all(count > 0 for count in drawn.values()), drawn
    assert 'aria-current="page" class="current">Last 30 days<' in month.text
    shown = messages(month.text)
    assert len(shown) == 100
    assert set(shown[:4]) == {f"old {kind} 0" for kind in ("wifi", "ping", "health", "speed")}
    assert shown[-1].endswith(" 24")  # 25 of the 48 readings, four logs each: older than a week
    # 30-minute buckets: one point per bucket of the 24 hours of readings, on each line
    assert drawn[WIFI_CHART] == 2 * 48


def test_a_custom_from_to_range_shows_only_its_logs_and_charts(viewer: Browserless, db: psycopg.Connection):
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    base = now - timedelta(days=60)
    logs = [row for k in range(12) for row in readings(base + timedelta(hours=k), k)]
    machine = insert_machine(db, logs=logs)
    start, end = base + timedelta(hours=3), base + timedelta(hours=6)
    page = viewer.get(page_url(machine.machine_id), params={"from": local_value(start), "to": local_value(end)})
    assert page.status_code == 200, page.text
    shown = messages(page.text)
    assert {m.rsplit(" ", 1)[1] for m in shown} == {"3", "4", "5"}
    assert len(shown) == 12
    assert f'name="from" value="{local_value(start)}"' in page.text
    assert f'name="to" value="{local_value(end)}"' in page.text
    drawn = chart_points(page.text)
    assert drawn[WIFI_CHART] == 2 * 3, drawn
    assert "each chart point averages 1 min" in page.text  # 180 buckets

    # The log filter form keeps the range; its links too.
    assert f'<input type="hidden" name="from" value="{local_value(start)}">' in page.text
    filtered = viewer.get(
        page_url(machine.machine_id), params={"from": local_value(start), "to": local_value(end), "type": "ping"}
    )
    assert messages(filtered.text) == ["old ping 5", "old ping 4", "old ping 3"]


@pytest.mark.parametrize(
    ("params", "said"),
    [
        ({"from": "2026-11-20T10:00", "to": "2026-11-19T10:00"}, "ends (2026-11-19 10:00 UTC) before it starts"),
        ({"from": "2026-11-20T10:00", "to": "2026-11-20T10:00"}, "before it starts"),
        ({"from": "2024-01-01T00:00", "to": "2026-01-01T00:00"}, "at most 400 days"),
        ({"from": "yesterday"}, "“from” is not a date and time"),
        ({"to": "2026-13-01T00:00"}, "“to” is not a date and time"),
    ],
)
def test_a_range_that_cannot_be_shown_is_refused_with_a_clear_page(
    viewer: Browserless, db: psycopg.Connection, params: dict[str, str], said: str
):
    machine = insert_machine(db)
    answer = viewer.get(page_url(machine.machine_id), params=params)
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("text/html")
    assert "<h1>Bad request</h1>" in answer.text
    assert said in html.unescape(answer.text)


def test_keyset_pages_reach_every_log_of_300_and_come_back(viewer: Browserless, db: psycopg.Connection):
    now = datetime.now(UTC)
    # 300 logs, three to a second, so the pages split ties on the id
    logs = [(now - timedelta(seconds=k // 3, minutes=1), "INFO", "agent", f"log {300 - k:03d}", {}) for k in range(300)]
    machine = insert_machine(db, logs=logs)
    url = page_url(machine.machine_id)

    first = viewer.get(url)
    assert first.status_code == 200
    pages = [messages(first.text)]
    assert pager_link(first.text, "prev") is None
    link = pager_link(first.text, "next")
    while link:
        assert "offset" not in link
        answer = viewer.get(link)
        assert answer.status_code == 200
        pages.append(messages(answer.text))
        link = pager_link(answer.text, "next")
        assert len(pages) <= 4
    assert [len(p) for p in pages] == [100, 100, 100]
    everything = [m for p in pages for m in p]
    assert sorted(everything) == sorted(f"log {n:03d}" for n in range(1, 301))
    assert len(set(everything)) == 300
    assert "log 150" in pages[1]

    # From the second page, "newer" is exactly the first page again.
    second = viewer.get(pager_link(first.text, "next") or "")
    back = pager_link(second.text, "prev")
    assert back is not None
    assert messages(viewer.get(back).text) == pages[0]


def test_search_finds_a_message_case_insensitively_with_wildcards_literal(viewer: Browserless, db: psycopg.Connection):
    now = datetime.now(UTC)
    logs = [(now - timedelta(minutes=k + 1), "INFO", "agent", f"routine line {k}", {}) for k in range(400)]
    logs += [
        (now - timedelta(hours=10), "ERROR", "agent", "Disk FULL at 100%_ on /Volumes/Data", {}),
        (now - timedelta(hours=11), "WARNING", "agent", "disk full at 100xx", {}),
        (now - timedelta(hours=12), "INFO", "speedtest", "Speed test done", speed_data()),
    ]
    machine = insert_machine(db, logs=logs)
    url = page_url(machine.machine_id)

    def found(**params: str) -> list[str]:
        answer = viewer.get(url, params=params)
        assert answer.status_code == 200, answer.text
        return messages(answer.text)

    assert found(q="disk full") == ["Disk FULL at 100%_ on /Volumes/Data", "disk full at 100xx"]
    assert found(q="100%_") == ["Disk FULL at 100%_ on /Volumes/Data"]
    assert found(q="SPEEDTEST") == ["Speed test done"]  # the widget type
    assert found(q="disk", level="warning") == ["Disk FULL at 100%_ on /Volumes/Data", "disk full at 100xx"]
    assert found(q="disk", level="error") == ["Disk FULL at 100%_ on /Volumes/Data"]
    assert found(q="no such thing") == []
    assert found(type="speedtest") == ["Speed test done"]
    page = viewer.get(url, params={"q": "routine"})
    assert len(messages(page.text)) == 100
    older = pager_link(page.text, "next")
    assert older is not None
    assert parse_qs(urlsplit(older).query)["q"] == ["routine"]
    assert messages(viewer.get(older).text)[0] == "routine line 100"


def test_another_machine_id_with_the_same_serial_is_shown_with_a_link(viewer: Browserless, db: psycopg.Connection):
    now = datetime.now(UTC)
    machine = insert_machine(db)
    twin = insert_machine(db, serial_number=machine.serial_number, last_seen=now - timedelta(hours=3))
    alone = insert_machine(db)
    page = viewer.get(page_url(machine.machine_id)).text
    assert "Same serial number, another machine id" in page
    assert f'href="{html.escape(page_url(twin.machine_id))}"' in page
    assert twin.hostname in page
    back = viewer.get(page_url(twin.machine_id)).text
    assert f'href="{html.escape(page_url(machine.machine_id))}"' in back
    assert "Same serial number" not in viewer.get(page_url(alone.machine_id)).text


# --- pure --------------------------------------------------------------------------------


def test_bucket_widths_keep_every_range_within_the_bound():
    for span in (timedelta(minutes=30), timedelta(days=1), timedelta(days=7), timedelta(days=90), timedelta(days=400)):
        width = bucket_width(span)
        assert span / width <= MAX_BUCKETS
    assert bucket_width(timedelta(days=7)) == timedelta(minutes=5)
    assert bucket_width(timedelta(days=400)) == timedelta(hours=6)


def test_range_parsing_and_links():
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert parse_window({}, now).preset == "day"
    assert parse_window({"range": "bogus"}, now).preset == "day"
    month = parse_window({"range": "30d"}, now)
    assert (month.start, month.end, month.width) == (now - timedelta(days=30), now, timedelta(minutes=30))
    custom = parse_window({"from": "2026-11-01T10:00"}, now)
    assert (custom.start, custom.end, custom.preset) == (datetime(2026, 11, 1, 10, tzinfo=UTC), now, "")
    assert parse_window({"from": "2026-11-01T10:00+01:00", "to": "2026-11-02T10:00:30"}, now).start.hour == 9
    with pytest.raises(RangeRefused):
        parse_window({"from": "2026-11-02T10:00", "to": "2026-11-01T10:00"}, now)
    assert custom.chart_start <= custom.start < custom.chart_start + custom.width

    cursor = (datetime(2026, 11, 30, 11, 59, 58, 123456, tzinfo=UTC), 42)
    assert parse_cursor(cursor_text(cursor)) == cursor
    for bad in ("", "x", "1:", ":1", "1:-1", "9" * 30 + ":1", "9" * 19 + ":1", "-" + "9" * 19 + ":1"):
        assert parse_cursor(bad) is None
    query = MachineQuery.from_params({"range": "week", "level": "warning", "q": " a  b ", "before": "5:6"}, now)
    assert query.logs == LogFilter(level="WARNING", q="a b", before=parse_cursor("5:6"))
    assert query.link("/m") == "/m?range=week&level=WARNING&q=a+b&before=5%3A6"
    assert query.link("/m", before=None) == "/m?range=week&level=WARNING&q=a+b"
    assert query.preset_link("/m", "day") == "/m?level=WARNING&q=a+b#charts"
    assert query.hidden_range() == {"range": "week"}


def test_a_silent_machine_offers_the_day_before_it_was_last_seen(viewer: Browserless, db: psycopg.Connection):
    seen = datetime.now(UTC) - timedelta(days=10)
    logs = [(seen - timedelta(hours=k), "INFO", "agent", f"before silence {k}", {}) for k in range(5)]
    machine = insert_machine(db, last_seen=seen, logs=logs)
    page = viewer.get(page_url(machine.machine_id)).text
    assert messages(page) == []
    assert "No logs in this range." in page
    found = re.search(r'<a href="([^"]*)#logs">show the day before</a>', page)
    assert found is not None
    assert messages(viewer.get(html.unescape(found.group(1))).text) == [f"before silence {k}" for k in range(5)]
