"""Log search and pages of the machine page over logs encrypted at rest: opened, then searched, in bounded steps."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from atlas.contract import Key, Keyring
from atlas.dashboard import machine as machine_page
from atlas.dashboard.machine import LogContent, load_log_page
from atlas.dashboard.machinequery import LogFilter, Window

from ..fix_dashboard import Machine
from ..fix_processes import ServerProcess
from .test_dashboard_atrest import CLEAR_MESSAGE, db_key, keyed_dashboard, page_url, sealed_machine, signed_in

__all__ = ["db_key", "keyed_dashboard", "sealed_machine"]  # fixtures, used by name


def messages(page: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'<td class="message">([^<]*)</td>', page)]


def older_link(page: str) -> str | None:
    found = re.search(r'<a rel="next" href="([^"]*)"', page)
    return html.unescape(found.group(1)) if found else None


def test_search_and_pages_open_sealed_logs(
    keyed_dashboard: ServerProcess, sealed_machine: Machine, make_user: Callable[..., str]
):
    client = signed_in(keyed_dashboard, make_user)
    url = page_url(sealed_machine)
    try:
        found = messages(client.get(url, params={"q": "SEALED-"}).text)
        assert len(found) == 2
        assert found[0].startswith(("Wi-Fi sealed-", "Speed sealed-"))
        assert messages(client.get(url, params={"q": "hiccup"}).text) == ["Agent hiccup (test)"]
        week = messages(client.get(url, params={"q": "an OLDER log", "range": "week"}).text)
        assert week == [CLEAR_MESSAGE] * 3  # clear logs, searched in SQL, next to sealed ones
        speed = messages(client.get(url, params={"q": "speedtest"}).text)
        assert len(speed) == sum(1 for log in sealed_machine.logs if log[2] == "speedtest" and "older" not in log[3])

        shown: list[str] = []
        link: str | None = url
        while link:
            page = client.get(link)
            assert page.status_code == 200, page.text
            shown += messages(page.text)
            link = older_link(page.text)
        day = datetime.now(UTC) - timedelta(days=1)
        assert len(shown) == sum(1 for log in sealed_machine.logs if log[0] >= day)
    finally:
        client.close()


def test_a_search_opens_a_bounded_number_of_sealed_logs_a_page_and_goes_on_from_there(
    sealed_machine: Machine, db: psycopg.Connection, db_key: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(machine_page, "SEARCH_OPEN_LIMIT", 50)
    monkeypatch.setattr(machine_page, "SEARCH_CHUNK", 20)
    now = datetime.now(UTC)
    window = Window(now - timedelta(days=1), now)
    content = LogContent(db, Keyring([Key.from_base64(db_key)]))
    wanted = LogFilter(q="health check #3")  # #3, #30 ... #39: early in the day
    pages, found, opened = 0, [], 0
    while True:
        page = load_log_page(db, content, sealed_machine.machine_id, window, wanted)
        pages += 1
        assert page.opened <= 60
        opened += page.opened
        found += [row.message for row in page.rows]
        if page.older is None:
            break
        assert page.searched_from is not None
        assert page.older[0] == page.searched_from
        wanted = LogFilter(q=wanted.q, before=page.older)
    assert pages > 5
    assert sorted(found) == sorted(f"Health check #{k}" for k in (3, *range(30, 40)))
    assert opened == sum(1 for log in sealed_machine.logs if window.start <= log[0] < now)
