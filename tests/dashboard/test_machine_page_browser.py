"""The machine page in headless Chromium (JavaScript off): its cells stay on one line, its range form and log
pages work by GET alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg

from atlas.dashboard.machinequery import local_value

from ..fix_dashboard import PASSWORD, every_widget_logs, insert_machine
from ..fix_processes import ServerProcess
from .test_dashboard_browser import browser_page, screenshot, user_menu

__all__ = ["browser_page"]  # the fixture, used by name


def sign_in(page, username: str, path: str) -> None:
    page.goto(path)
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{path}")


def test_the_ping_at_column_stays_on_one_line_at_1360_px(
    browser_page: tuple, dashboard: ServerProcess, db: psycopg.Connection, make_user, tmp_path: Path
):
    page, blocked, problems = browser_page
    now = datetime.now(UTC)
    machine = insert_machine(db, last_seen=now, logs=every_widget_logs(now - timedelta(minutes=25)))
    sign_in(page, make_user("viewer"), f"/machines/{machine.machine_id}")
    assert page.viewport_size == {"width": 1360, "height": 900}

    at = page.locator("section.widget-ping tbody tr").first.locator("time")
    assert at.inner_text() == "25 min ago"
    one_line = page.locator("table.logs tbody time").first  # the same table style and font, on one line
    at_box, line_box = at.bounding_box(), one_line.bounding_box()
    assert at_box is not None
    assert line_box is not None
    assert at_box["height"] < 1.3 * line_box["height"], (at_box, line_box)
    card = page.locator("section.widget-ping").bounding_box()
    assert card is not None
    assert at_box["x"] + at_box["width"] <= card["x"] + card["width"] - 15, (at_box, card)  # inside its padding
    screenshot(page, tmp_path, "machine-ping.png", full_page=False)
    assert blocked == []
    assert problems == []


def test_the_export_buttons_of_the_user_menu_stay_on_one_line_at_1360_px(
    browser_page: tuple, dashboard: ServerProcess, db: psycopg.Connection, make_user, tmp_path: Path
):
    page, blocked, problems = browser_page
    machine = insert_machine(db)
    sign_in(page, make_user("viewer"), f"/machines/{machine.machine_id}")
    user_menu(page, open=True)
    menu = page.locator("details.user-menu .menu-body").bounding_box()
    ping = page.get_by_role("button", name="Ping Logs").bounding_box()
    assert menu is not None
    assert ping is not None
    for label in ("Speedtest Logs", "WiFi Logs", "Health Logs", "Process Logs"):
        box = page.get_by_role("button", name=label).bounding_box()
        assert box is not None
        assert box["height"] < 1.3 * ping["height"], (label, box, ping)
        assert box["x"] + box["width"] <= menu["x"] + menu["width"], label
    screenshot(page, tmp_path, "machine-menu.png", full_page=False)
    assert blocked == []
    assert problems == []


def test_a_range_chosen_in_the_form_and_the_log_pages_work_without_javascript(
    browser_page: tuple, dashboard: ServerProcess, db: psycopg.Connection, make_user, tmp_path: Path
):
    page, blocked, problems = browser_page
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    old = now - timedelta(days=45)
    logs = [(old + timedelta(minutes=k), "INFO", "agent", f"old log {k:03d}", {}) for k in range(300)]
    logs += every_widget_logs(now, hours=2)
    machine = insert_machine(db, logs=logs)
    sign_in(page, make_user("viewer"), f"/machines/{machine.machine_id}")
    assert "old log" not in page.locator("table.logs").inner_text()

    form = page.locator("form.range-form")
    form.get_by_label("From").fill(local_value(old - timedelta(hours=1)))
    form.get_by_label("To").fill(local_value(old + timedelta(days=1)))
    form.get_by_role("button", name="Show range").click()
    page.wait_for_url("**from=**")
    assert parse_qs(urlsplit(page.url).query)["from"] == [local_value(old - timedelta(hours=1))]
    rows = page.locator("table.logs tbody tr")
    assert rows.count() == 100
    assert rows.first.locator("td.message").inner_text() == "old log 299"

    page.get_by_role("link", name="Older").click()
    assert page.locator("table.logs tbody tr").first.locator("td.message").inner_text() == "old log 199"
    assert "old log 150" in page.locator("table.logs").inner_text()

    search = page.locator("form.log-filter")
    search.get_by_label("Search").fill("LOG 15")
    search.get_by_role("button", name="Filter").click()
    found = page.locator("table.logs tbody td.message").all_inner_texts()
    assert found == [f"old log {n:03d}" for n in range(159, 149, -1)]
    assert parse_qs(urlsplit(page.url).query)["to"] == [local_value(old + timedelta(days=1))]
    page.locator("#range").scroll_into_view_if_needed()
    screenshot(page, tmp_path, "machine-range.png", full_page=False)
    assert blocked == []
    assert problems == []
