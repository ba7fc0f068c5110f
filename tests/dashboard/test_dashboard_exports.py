"""The dashboard's export page: the logs counted before the download, the machines of a shared serial.

A real ``atlas-server dashboard`` over HTTP (no script runs on the page, so
httpx sees what a browser shows).
"""

from __future__ import annotations

import csv
import html
import io
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import psycopg

from ..fix_dashboard import Browserless, every_widget_logs, insert_machine, unique


def downloads(page: str) -> dict[str, tuple[str, str]]:
    """The page's download links: label -> (href, file name shown)."""
    found = re.findall(r'<a class="button[^"]*" href="([^"]*)" download>([^<]*)</a>\s*<code>([^<]*)</code>', page)
    return {html.unescape(label): (html.unescape(href), html.unescape(name)) for href, label, name in found}


def shown_rows(page: str) -> int:
    found = re.search(r'data-rows="(\d+)"', page)
    assert found, "the page shows no row count"
    return int(found.group(1))


def test_the_export_page_counts_the_logs_before_the_download(viewer: Browserless, db: psycopg.Connection):
    now = datetime.now(UTC).replace(microsecond=0)
    mac = insert_machine(db, logs=every_widget_logs(now, hours=6))
    since, until = (now - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M"), now.strftime("%Y-%m-%dT%H:%M")
    params = {"machine_id": mac.machine_id, "format": "csv", "since": since, "until": until, "widget_type": ""}
    page = viewer.get("/exports", params=params)
    assert page.status_code == 200, page.text
    lower, upper = datetime.fromisoformat(since).replace(tzinfo=UTC), datetime.fromisoformat(until).replace(tzinfo=UTC)
    expected = sum(1 for at, *_ in mac.logs if lower <= at < upper)
    assert expected > 0
    assert shown_rows(page.text) == expected
    links = downloads(page.text)
    assert set(links) == {"CSV", "CSV with machine id and hostname", "JSON", "NDJSON"}
    href, name = links["CSV"]
    assert name.startswith(f"atlas-logs-{mac.serial_number}-")
    assert "_" in name
    query = parse_qs(urlsplit(href).query)
    assert urlsplit(href).path == "/api/exports/logs"
    assert query["machine_id"] == [mac.machine_id]
    assert query["since"] == [since]
    assert "widget_type" not in query
    download = viewer.get(href)
    assert download.status_code == 200
    assert len(list(csv.reader(io.StringIO(download.text, newline="")))) == 1 + expected
    assert f'filename="{name}"' in download.headers["content-disposition"]
    extended = viewer.get(links["CSV with machine id and hostname"][0])
    assert extended.text.splitlines()[0].endswith(",Machine ID,Hostname")
    assert re.search(r"<small>about [\d.,]+ (B|KB|MB)</small>", page.text)  # to read the download's progress by
    wifi = viewer.get("/exports", params={**params, "widget_type": "wifi"})
    assert shown_rows(wifi.text) == sum(1 for at, _, kind, *_ in mac.logs if kind == "wifi" and lower <= at < upper)


def test_the_export_forms_offer_to_count_first(viewer: Browserless, db: psycopg.Connection):
    mac = insert_machine(db, logs=every_widget_logs(datetime.now(UTC), hours=1))
    machine_page = viewer.get(f"/machines/{mac.machine_id}")
    assert machine_page.status_code == 200
    for page in (viewer.get("/").text, machine_page.text):
        assert 'formaction="/exports"' in page
    everything = viewer.get("/exports", params={"format": "json"})
    assert everything.status_code == 200
    assert shown_rows(everything.text) >= len(mac.logs)
    assert 'class="button primary" href="/api/exports/logs?format=json"' in everything.text


def test_a_serial_held_by_two_machines_is_shown_with_both(viewer: Browserless, db: psycopg.Connection):
    serial = unique("VMSER").upper()
    now = datetime.now(UTC)
    first = insert_machine(db, serial_number=serial, hostname="vm-one.local", logs=every_widget_logs(now, hours=1))
    second = insert_machine(db, serial_number=serial, hostname="vm-two.local", logs=every_widget_logs(now, hours=2))
    page = viewer.get("/exports", params={"serial_number": serial})
    assert page.status_code == 200
    assert shown_rows(page.text) == len(first.logs) + len(second.logs)
    notice = page.text.split('class="alert alert-notice identity-shared"', 1)[1].split("</div>", 1)[0]
    for mac in (first, second):
        assert mac.machine_id in notice
        assert mac.hostname in notice
    assert "holds the logs of all of them" in notice
    assert downloads(page.text)["CSV"][1].startswith(f"atlas-logs-{serial}-2-machines-")
    one = viewer.get("/exports", params={"machine_id": first.machine_id})
    assert shown_rows(one.text) == len(first.logs)
    assert downloads(one.text)["JSON"][1].startswith(f"atlas-logs-{serial}-{first.machine_id}-")
    assert "(this export)" in one.text
    alone = insert_machine(db, logs=every_widget_logs(now, hours=1))
    assert "identity-shared" not in viewer.get("/exports", params={"machine_id": alone.machine_id}).text


def test_an_export_that_cannot_be_made_is_said_on_the_page(viewer: Browserless, browserless):
    page = viewer.get("/exports", params={"since": "2026-12-03T00:00", "until": "2026-12-01T00:00"})
    assert page.status_code == 422
    assert page.headers["content-type"].startswith("text/html")
    assert "until: must be later than since" in page.text
    assert "data-rows" not in page.text
    signed_out = browserless().get("/exports", params={"machine_id": "x"})
    assert signed_out.status_code == 303
    assert signed_out.headers["location"].startswith("/login")
