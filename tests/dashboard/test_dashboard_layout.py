"""The dashboard at phone width, and its icons: headless Chromium (Debian's package) at 390 px wide, and
every page's HTML scanned for emoji (which render as empty boxes without a colour-emoji font)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from ..fix_dashboard import PASSWORD, Browserless, Machine, every_widget_logs, insert_machine, unique, wifi_data
from ..fix_processes import ServerProcess
from .test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, screenshot

PHONE = {"width": 390, "height": 844}

EMOJI = re.compile("[\U0001f000-\U0001faff\u2300-\u23ff\u2600-\u27bf\u2b00-\u2bff\ufe0f\u200d]")
"""Emoji and pictographs, their presentation selector and joiner (arrows and geometric shapes are left:
every text font has them)."""

LONG_WORD = "x" * 180
"""A log message with no place to break (a path, a base64 blob)."""


def machine_with_everything(db: psycopg.Connection) -> Machine:
    """A machine whose page has every section filled: widgets, charts, logs with a long message, a conflict."""
    now = datetime.now(UTC)
    logs = every_widget_logs(now)
    logs.append((now - timedelta(seconds=5), "ERROR", "agent", f"Upload failed: {LONG_WORD}", {"error": LONG_WORD}))
    logs.append(
        (now - timedelta(seconds=4), "INFO", "wifi", "WiFi status", wifi_data(ssid="A-rather-long-SSID-name-of-32ch"))
    )
    machine = insert_machine(db, logs=logs, model="Mac14,2", hostname=unique("a-long-hostname-for-a-phone") + ".local")
    db.execute(
        "INSERT INTO identity_conflicts (batch_id, machine_id, serial_number, hostname, received_at, log_count)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (uuid.uuid4(), machine.machine_id, unique("OTHER").upper(), "someone-else.local", now, 12),
    )
    return machine


@pytest.fixture
def phone(dashboard: ServerProcess) -> Iterator[Callable[[str], object]]:
    """``phone(username)``: a page of a fresh 390-px-wide browser context, signed in as ``username``."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        contexts = []

        def open_page(username: str):
            context = browser.new_context(
                base_url=dashboard.url, java_script_enabled=False, viewport=PHONE, is_mobile=True, has_touch=True
            )
            contexts.append(context)
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.goto("/login")
            page.get_by_label("Username").fill(username)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{dashboard.url}/")
            return page

        try:
            yield open_page
        finally:
            for context in contexts:
                context.close()
            browser.close()


def overflow(page) -> tuple[int, int, list[str]]:
    """(document width, viewport width, the elements reaching past the viewport's right edge)."""
    return page.evaluate(
        """() => {
        const width = document.documentElement.clientWidth;
        const wide = [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > width + 0.5)
            .slice(0, 8).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right));
        return [document.documentElement.scrollWidth, width, wide];
    }"""
    )


def test_pages_fit_a_390_px_phone(phone, db: psycopg.Connection, make_user: Callable[..., str], tmp_path: Path) -> None:
    machine = machine_with_everything(db)
    page = phone(make_user("admin"))
    for path in (
        "/",
        f"/?q={machine.serial_number}",
        f"/machines/{quote(machine.machine_id, safe='')}",
        f"/machines/{quote(machine.machine_id, safe='')}?range=week",
        "/admin/users",
        "/admin/tokens",
        "/admin/audit",
        "/account",
    ):
        page.goto(path)
        scroll_width, width, wide = overflow(page)
        assert width == PHONE["width"]
        assert scroll_width <= PHONE["width"], f"{path} is {scroll_width} px wide: {wide}"
    page.goto(f"/machines/{quote(machine.machine_id, safe='')}")
    screenshot(page, tmp_path, "machine-390.png")

    # The charts scale down to the screen, the long message wraps inside it.
    charts = page.locator("figure.chart svg[role=img]")
    assert charts.count() == 4
    for i in range(4):
        box = charts.nth(i).bounding_box()
        assert box is not None
        assert 250 < box["width"] <= PHONE["width"]
    message = page.locator("td.message", has_text=LONG_WORD[:20]).first
    box = message.bounding_box()
    assert box is not None
    assert box["x"] + box["width"] <= PHONE["width"]

    # The fleet list is one card per machine, each value labelled; nothing scrolls sideways.
    page.goto(f"/?q={machine.serial_number}")
    screenshot(page, tmp_path, "fleet-390.png")
    row = page.locator("table.fleet tbody tr").first
    box = row.bounding_box()
    assert box is not None
    assert box["width"] <= PHONE["width"]
    assert box["height"] > 150  # stacked, not one line
    label = row.locator('td[data-label="Model"]').evaluate("e => getComputedStyle(e, '::before').content")
    assert label == '"Model"'


def pages_to_scan(db: psycopg.Connection, admin: Browserless) -> dict[str, str]:
    machine = machine_with_everything(db)
    url = f"/machines/{quote(machine.machine_id, safe='')}"
    paths = ["/", url, url + "?range=week", "/admin/users", "/admin/tokens", "/admin/audit", "/account", "/nowhere"]
    return {path: admin.get(path).text for path in paths}


def test_no_page_has_an_emoji(db: psycopg.Connection, admin: Browserless, browserless: Callable[[], Browserless]):
    pages = pages_to_scan(db, admin)
    pages["/login"] = browserless().get("/login").text
    for path, text in pages.items():
        assert "<svg" in text or path in ("/login", "/nowhere"), path
        found = sorted(set(EMOJI.findall(text)))
        assert not found, f"{path} has emoji {[f'U+{ord(c):04X}' for c in found]}"


def test_icons_are_inline_svg_hidden_from_screen_readers_beside_their_label(db: psycopg.Connection, admin: Browserless):
    machine = machine_with_everything(db)
    text = admin.get(f"/machines/{quote(machine.machine_id, safe='')}").text
    icons = re.findall(r'<svg class="icon icon-([a-z]+)"([^>]*)>', text)
    assert {name for name, _ in icons} >= {
        "wifi",
        "speedtest",
        "ping",
        "health",
        "processes",
        "warning",
        "download",
        "archive",
    }
    for _, attributes in icons:
        assert 'aria-hidden="true"' in attributes
        assert 'focusable="false"' in attributes
    for heading in ("Wi-Fi", "Speed test", "Ping", "Health", "Processes"):
        assert re.search(rf"<h2><svg [^>]*>.*?</svg> {heading}</h2>", text), heading
    assert re.search(r"</svg> Export Device Logs</button>", text)
    assert "http" not in "".join(re.findall(r'<svg class="icon.*?</svg>', text))  # nothing loaded
