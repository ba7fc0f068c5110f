"""The dashboard in a real browser: headless Chromium (Debian's package) driven by Playwright.

Signs in through the form, opens the fleet list and a machine page, and clicks
every export, checking each downloaded file. JavaScript is off, to show the
dashboard needs none, and every request to a host other than the server is
blocked and recorded, to show it loads nothing from the internet.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from ..fix_dashboard import (
    PASSWORD,
    Machine,
    every_widget_logs,
    insert_machine,
)
from ..fix_processes import ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOTS = Path("/tmp/atlas-screens")
CSV_HEADER = ["ID", "Serial Number", "Timestamp", "Level", "Widget Type", "Message", "Data"]
TYPE_EXPORTS = (
    ("WiFi Logs", "wifi"),
    ("Speedtest Logs", "speedtest"),
    ("Ping Logs", "ping"),
    ("Health Logs", "health"),
    ("Process Logs", "processes"),
)


@pytest.fixture
def browser_page(dashboard: ServerProcess, tmp_path: Path) -> Iterator[tuple]:
    """A page of a fresh browser context with JavaScript off and every non-loopback request blocked."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    from playwright.sync_api import Route, sync_playwright

    blocked: list[str] = []
    problems: list[str] = []
    server_host = urlsplit(dashboard.url).hostname

    def guard(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname == server_host:
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(
            base_url=dashboard.url,
            accept_downloads=True,
            java_script_enabled=False,
            viewport={"width": 1360, "height": 900},
        )
        context.route("**/*", guard)
        page = context.new_page()
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.set_default_timeout(20_000)
        try:
            yield page, blocked, problems
        finally:
            context.close()
            browser.close()


def screenshot(page, tmp_path: Path, name: str, *, full_page: bool = True) -> Path:
    """A screenshot in the test's folder, copied to /tmp/atlas-screens/ to look at."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=full_page)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENSHOTS / name)
    return path


def download(page, tmp_path: Path, click) -> tuple[str, str]:
    """Run ``click`` expecting a download; returns (suggested file name, text)."""
    with page.expect_download() as info:
        click()
    got = info.value
    assert got.failure() is None, got.failure()
    target = tmp_path / got.suggested_filename
    got.save_as(str(target))
    return got.suggested_filename, target.read_text(encoding="utf-8")


def csv_rows(text: str) -> list[dict[str, str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    assert header == CSV_HEADER
    rows = [dict(zip(CSV_HEADER, row, strict=True)) for row in reader]
    for row in rows:
        assert isinstance(json.loads(row["Data"]), dict)
    return rows


def user_menu(page, *, open: bool) -> None:
    """Open or close the user menu (a <details>: it stays open after a download, over the page)."""
    menu = page.locator("details.user-menu")
    if (menu.get_attribute("open") is not None) != open:
        menu.locator("summary").click()


def test_sign_in_browse_and_download_every_export(
    browser_page: tuple, dashboard: ServerProcess, db: psycopg.Connection, make_user, tmp_path: Path
):
    page, blocked, problems = browser_page
    now = datetime.now(UTC)
    machine: Machine = insert_machine(db, logs=every_widget_logs(now))
    other: Machine = insert_machine(db, logs=every_widget_logs(now, hours=1))
    username = make_user("viewer")

    # Sign in through the form, coming back to the page asked for.
    page.goto("/")
    assert urlsplit(page.url).path == "/login"
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{dashboard.url}/")
    assert page.locator("details.user-menu summary").inner_text().startswith(username)

    # The fleet list, then a search for our machine.
    assert page.locator("table.fleet tbody tr").count() >= 2
    screenshot(page, tmp_path, "fleet.png")
    page.get_by_role("searchbox", name="Search machines").fill(machine.serial_number)
    page.get_by_role("button", name="Search").click()
    rows = page.locator("table.fleet tbody tr")
    assert rows.count() == 1
    assert "online" in rows.first.inner_text().lower()
    rows.first.locator("a.machine-link").click()
    page.wait_for_url(f"**/machines/{machine.machine_id}")

    # The machine page: identity, latest values, four charts with lines.
    assert machine.hostname in page.locator("h1").inner_text()
    assert "Office-5G" in page.locator("section.widget-wifi").inner_text()
    charts = page.locator("figure.chart")
    assert charts.count() == 4
    for i in range(4):
        chart = charts.nth(i)
        chart.scroll_into_view_if_needed()
        assert chart.is_visible()
        box = chart.locator("svg[role=img]").bounding_box()
        assert box is not None
        assert box["width"] > 300
        assert box["height"] > 80
        assert chart.locator("polyline").count() >= 1
    screenshot(page, tmp_path, "machine.png")

    # Every export in the user menu, as CSV.
    user_menu(page, open=True)
    page.locator("header").scroll_into_view_if_needed()
    screenshot(page, tmp_path, "menu.png", full_page=False)
    name, text = download(page, tmp_path, lambda: page.get_by_role("button", name="Export All Logs").click())
    assert name.startswith("atlas-logs-")
    assert name.endswith(".csv")
    everything = csv_rows(text)
    ours = [row for row in everything if row["Serial Number"] == machine.serial_number]
    assert len(ours) == len(machine.logs)
    assert {row["Widget Type"] for row in ours} == {"wifi", "speedtest", "ping", "health", "processes", "agent"}
    assert any(row["Serial Number"] == other.serial_number for row in everything)

    for label, widget_type in TYPE_EXPORTS:
        user_menu(page, open=True)
        name, text = download(page, tmp_path, lambda label=label: page.get_by_role("button", name=label).click())
        assert name.endswith(".csv"), name
        rows = csv_rows(text)
        assert rows, label
        assert {row["Widget Type"] for row in rows} == {widget_type}, label
        expected = sum(1 for log in machine.logs if log[2] == widget_type)
        assert sum(1 for row in rows if row["Serial Number"] == machine.serial_number) == expected, label

    # The device export: this machine only, all of it; then from a time on.
    user_menu(page, open=False)
    device_form = page.locator("form.device-export")
    name, text = download(page, tmp_path, lambda: device_form.get_by_role("button", name="Export Device Logs").click())
    rows = csv_rows(text)
    assert {row["Serial Number"] for row in rows} == {machine.serial_number}
    assert len(rows) == len(machine.logs)
    assert machine.serial_number in name

    since = (now - timedelta(hours=2)).replace(second=0, microsecond=0)
    device_form.locator('input[name="since"]').fill(since.strftime("%Y-%m-%dT%H:%M"))
    _, text = download(page, tmp_path, lambda: device_form.get_by_role("button", name="Export Device Logs").click())
    rows = csv_rows(text)
    assert len(rows) == sum(1 for log in machine.logs if log[0] >= since)
    assert all(datetime.fromisoformat(row["Timestamp"]) >= since for row in rows)

    # One export as JSON.
    user_menu(page, open=True)
    page.locator("details.user-menu").get_by_label("JSON").check()
    name, text = download(page, tmp_path, lambda: page.get_by_role("button", name="Ping Logs").click())
    assert name.endswith(".json")
    records = json.loads(text)
    assert isinstance(records, list)
    assert records
    assert {record["widget_type"] for record in records} == {"ping"}
    assert sum(1 for r in records if r["serial_number"] == machine.serial_number) == sum(
        1 for log in machine.logs if log[2] == "ping"
    )

    # Nothing was fetched from anywhere else, and the page broke no rule of its CSP.
    assert blocked == []
    assert problems == []

    # Sign out: the next page asks to sign in again.
    user_menu(page, open=True)
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/login")
    page.goto("/")
    assert urlsplit(page.url).path == "/login"
