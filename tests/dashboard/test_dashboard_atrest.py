"""The dashboard shows logs encrypted at rest, decrypted, and refuses clearly without their key.

A machine's logs are stored the way the worker stores them with a database key
(``persist_batches(..., db_key=...)``: message and data sealed, both columns
NULL), next to a few older clear logs of the same machine. A dashboard with
that key (``server.db_encryption_key``) shows them like clear logs; the default
dashboard (no database key) and one with another key answer a 503 page naming
the setting, with neither ciphertext nor a traceback.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from atlas.contract import Key, Keyring, format_timestamp, generate_encryption_key, validate_content
from atlas.core.atrest import SETTING
from atlas.core.db import connect
from atlas.core.queue import QueuedBatch, queued_batch
from atlas.dashboard.fleet import FleetQuery, load_fleet
from atlas.dashboard.machine import ContentLocked, LogContent, content_columns, load_machine
from atlas.dashboard.timeline import SEALED_PER_BUCKET
from atlas.worker.store import persist_batches

from ..fix_dashboard import (
    Browserless,
    Machine,
    chart_points,
    every_widget_logs,
    insert_logs,
    insert_machine,
    off_the_mark_week,
    speed_data,
    unique,
    wifi_data,
)
from ..fix_processes import ServerProcess

BATCH_LOGS = 200
"""Logs per stored batch: the machine's logs span several batches, hence several data keys."""

SSID = "Sealed-SSID"
RSSI = -61
DOWNLOAD, UPLOAD = 987.5, 65.25
CLEAR_MESSAGE = "An older log, stored clear"


@pytest.fixture(scope="module")
def db_key() -> str:
    return generate_encryption_key()


def dashboard_with(
    start_server: Callable[..., ServerProcess], server_config: dict[str, Any], **server: Any
) -> ServerProcess:
    config = {name: dict(values) for name, values in server_config.items()}
    config["server"].update(server)
    return start_server("dashboard", config)


@pytest.fixture(scope="module")
def keyed_dashboard(
    start_server: Callable[..., ServerProcess], server_config: dict[str, Any], db_key: str
) -> ServerProcess:
    """A dashboard with the database key the machine's logs are sealed under."""
    assert Key.from_base64(db_key).kid != Key.from_base64(server_config["server"]["encryption_key"]).kid
    return dashboard_with(start_server, server_config, db_encryption_key=db_key)


@pytest.fixture(scope="module")
def wrong_key_dashboard(start_server: Callable[..., ServerProcess], server_config: dict[str, Any]) -> ServerProcess:
    """A dashboard with a database key, but not the one the machine's logs are sealed under."""
    return dashboard_with(start_server, server_config, db_encryption_key=generate_encryption_key())


def sealed_logs(now: datetime, marker: str) -> list[tuple]:
    """A day of every widget, and the newest Wi-Fi and speed test with values found nowhere else."""
    logs = every_widget_logs(now)
    logs.append((now - timedelta(seconds=5), "INFO", "wifi", f"Wi-Fi {marker}", wifi_data(RSSI, SSID)))
    logs.append((now - timedelta(seconds=5), "WARNING", "speedtest", f"Speed {marker}", speed_data(DOWNLOAD, UPLOAD)))
    return logs


def queued_batches(machine: Machine, logs: list[tuple], received_at: datetime) -> list[QueuedBatch]:
    """The logs as the worker receives them from the queue, ``BATCH_LOGS`` a batch."""
    identity = {
        "machine_id": machine.machine_id,
        "serial_number": machine.serial_number,
        "hostname": machine.hostname,
        "model": "MacBookPro18,3",
        "os_version": "macOS 15.5 (24F74)",
        "agent_version": "0.1.0",
    }
    found = []
    for start in range(0, len(logs), BATCH_LOGS):
        content = {
            "machine": identity,
            "logs": [
                {"timestamp": format_timestamp(at), "level": level, "widget_type": kind, "message": msg, "data": data}
                for at, level, kind, msg, data in logs[start : start + BATCH_LOGS]
            ],
        }
        found.append(
            queued_batch(
                validate_content(content),
                batch_id=str(uuid.uuid4()),
                created_at=received_at,
                received_at=received_at,
                kid="0123456789abcdef",
            )
        )
    return found


@pytest.fixture(scope="module")
def sealed_machine(database_url: str, db_key: str) -> Iterator[Machine]:
    """A machine whose day of logs is sealed under ``db_key``, and three older clear logs.

    Removed at the end (with its database key id), so the rest of the run's fleet lists and exports,
    served without that key, never meet it.
    """
    now = datetime.now(UTC)
    marker = unique("sealed")
    machine = Machine(unique("mac-atrest"), unique("SER").upper(), f"zzzz-{marker}.local")
    machine.logs = sealed_logs(now, marker)
    batches = queued_batches(machine, machine.logs, now)
    key = Key.from_base64(db_key)
    with connect(database_url, autocommit=True) as conn:
        assert all(persist_batches(conn, batches, db_key=key))
        clear = [
            (now - timedelta(days=1, hours=1), "INFO", "wifi", CLEAR_MESSAGE, wifi_data(-70, "Clear-SSID")),
            (now - timedelta(days=1, hours=1), "INFO", "agent", CLEAR_MESSAGE, {}),
            (now - timedelta(days=1, hours=2), "INFO", "speedtest", CLEAR_MESSAGE, speed_data(5.0, 1.0)),
        ]
        insert_logs(conn, machine, clear)
        machine.logs += clear
    try:
        yield machine
    finally:
        with connect(database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM widget_logs WHERE machine_id = %s", (machine.machine_id,))
            conn.execute("DELETE FROM batches WHERE machine_id = %s", (machine.machine_id,))
            conn.execute("DELETE FROM machines WHERE machine_id = %s", (machine.machine_id,))
            conn.execute("DELETE FROM db_key_ids WHERE kid = %s", (key.kid,))


def signed_in(server: ServerProcess, make_user: Callable[..., str]) -> Browserless:
    client = Browserless(server)
    assert client.login(make_user()).status_code == 303
    return client


def page_url(machine: Machine) -> str:
    return f"/machines/{quote(machine.machine_id, safe='')}"


def fleet_row(page: str, machine: Machine) -> str:
    return page.split(f'data-machine-id="{html.escape(machine.machine_id)}"')[1].split("</tr>")[0]


# --- what is stored ----------------------------------------------------------------------


def test_the_machine_logs_are_stored_sealed(sealed_machine: Machine, db: psycopg.Connection):
    rows = db.execute(
        "SELECT message, data, sealed FROM widget_logs WHERE machine_id = %s AND (message IS NULL OR message <> %s)",
        (sealed_machine.machine_id, CLEAR_MESSAGE),
    ).fetchall()
    assert len(rows) == len(sealed_machine.logs) - 3
    assert all(message is None and data is None and sealed is not None for message, data, sealed in rows)
    assert not any(SSID.encode() in bytes(sealed) for _, _, sealed in rows)
    keyed = db.execute(
        "SELECT count(*) FROM batches WHERE machine_id = %s AND dek_wrapped IS NOT NULL", (sealed_machine.machine_id,)
    ).fetchone()
    assert keyed is not None
    assert keyed[0] > 1


# --- the loaders, in this process -------------------------------------------------------


def test_the_loaders_open_sealed_rows_with_the_keyring(sealed_machine: Machine, db: psycopg.Connection, db_key: str):
    keyring = Keyring([Key.from_base64(db_key)])
    now = datetime.now(UTC)
    view = load_machine(db, sealed_machine.machine_id, now=now, chart_range="day", level="", keyring=keyring)
    assert view is not None
    assert view.wifi is not None
    assert view.wifi.fields["ssid"] == SSID
    assert view.wifi.fields["rssi_dbm"] == RSSI
    assert view.wifi.message.startswith("Wi-Fi sealed-")
    assert view.speedtest is not None
    assert view.speedtest.fields["download_mbps"] == DOWNLOAD
    assert view.speedtest.level == "WARNING"
    assert [summary["target"] for _, summary in view.pings] == ["1.1.1.1", "8.8.8.8"]
    assert view.health is not None
    assert view.health.fields["cpu_percent"] is not None
    assert view.processes is not None
    assert view.processes.fields["process_count"] == 431
    assert any(row.message == "Agent hiccup (test)" for row in view.logs)
    assert all(row.message for row in view.logs)

    page = load_fleet(
        db,
        FleetQuery(q=sealed_machine.serial_number),
        now=now,
        online_within=timedelta(minutes=10),
        stale_within=timedelta(days=1),
        keyring=keyring,
    )
    [row] = page.rows
    assert (row.ssid, row.rssi_dbm, row.download_mbps, row.upload_mbps) == (SSID, RSSI, DOWNLOAD, UPLOAD)


def test_clear_and_sealed_rows_open_alike(sealed_machine: Machine, db: psycopg.Connection, db_key: str):
    rows = db.execute(
        sql.SQL(
            "SELECT {} FROM widget_logs WHERE machine_id = %s AND widget_type = 'wifi' ORDER BY \"timestamp\""
        ).format(content_columns()),
        (sealed_machine.machine_id,),
    ).fetchall()
    assert rows[0][2] is None
    assert rows[-1][2] is not None
    opened = LogContent(db, Keyring([Key.from_base64(db_key)])).open(rows)
    assert opened[0] == (CLEAR_MESSAGE, wifi_data(-70, "Clear-SSID"))
    assert opened[-1][0].startswith("Wi-Fi sealed-")
    assert opened[-1][1] == wifi_data(RSSI, SSID)
    assert [m for m, d in LogContent(db, Keyring()).open(rows[:1], data=False)] == [CLEAR_MESSAGE]
    for keyring in (Keyring(), Keyring([Key.from_base64(generate_encryption_key())])):
        with pytest.raises(ContentLocked) as refused:
            LogContent(db, keyring).open(rows)
        assert refused.value.status_code == 503
        assert SETTING in refused.value.detail


# --- over HTTP ---------------------------------------------------------------------------


def test_a_dashboard_with_the_key_shows_the_decrypted_fleet_row(
    keyed_dashboard: ServerProcess, sealed_machine: Machine, make_user: Callable[..., str]
):
    client = signed_in(keyed_dashboard, make_user)
    try:
        page = client.get("/", params={"q": sealed_machine.serial_number})
        assert page.status_code == 200, page.text
        row = fleet_row(page.text, sealed_machine)
        for shown in (f"{RSSI} dBm", SSID, "987.5 Mbps", "65.2 Mbps"):
            assert shown in row, shown
        assert "Clear-SSID" not in row
    finally:
        client.close()


def test_the_fleet_filters_by_the_ssid_of_a_sealed_wifi_log(
    keyed_dashboard: ServerProcess, sealed_machine: Machine, make_user: Callable[..., str]
):
    client = signed_in(keyed_dashboard, make_user)
    try:

        def listed(**params: str) -> list[str]:
            page = client.get("/", params=params)
            assert page.status_code == 200, page.text
            return re.findall(r'<tr data-machine-id="([^"]+)">', page.text)

        assert sealed_machine.machine_id in listed(ssid=SSID)
        assert listed(q=sealed_machine.serial_number, ssid="Clear-SSID") == []  # an older, clear log
        assert listed(q=sealed_machine.serial_number, problem="warning") == [sealed_machine.machine_id]
        row = fleet_row(client.get("/", params={"ssid": SSID}).text, sealed_machine)
        assert '<span class="level level-warning">WARNING</span>' in row
    finally:
        client.close()


def test_a_dashboard_with_the_key_shows_the_decrypted_machine_page(
    keyed_dashboard: ServerProcess, sealed_machine: Machine, make_user: Callable[..., str]
):
    client = signed_in(keyed_dashboard, make_user)
    try:
        page = client.get(page_url(sealed_machine))
        assert page.status_code == 200, page.text
        text = page.text
        for shown in (
            sealed_machine.serial_number,
            SSID,
            f"{RSSI} dBm",
            "WPA3 Personal",
            "987.5",
            "Example Fibre",
            "1.1.1.1",
            "8.8.8.8",
            "48.5 °C",
            "WindowServer",
            "431 processes",
            "Agent hiccup (test)",  # recent logs
            "Wi-Fi sealed-",
            "Speed sealed-",
        ):
            assert shown in text, shown
        assert text.count('<figure class="chart">') == 4
        assert text.count("<polyline") >= 8
        assert "No data in this period" not in text

        week = client.get(page_url(sealed_machine), params={"range": "week"})
        assert week.status_code == 200
        assert week.text.count('<figure class="chart">') == 4
        assert week.text.count("<polyline") >= 8
        assert "No data in this period" not in week.text

        warnings = client.get(page_url(sealed_machine), params={"level": "WARNING"})
        assert warnings.status_code == 200
        assert "Speed sealed-" in warnings.text
        assert "Wi-Fi sealed-" not in warnings.text
        everything = client.get(page_url(sealed_machine), params={"level": "DEBUG"})
        assert "Top processes" in everything.text
    finally:
        client.close()


def test_week_charts_of_sealed_logs_average_every_bucket_like_clear_ones(
    keyed_dashboard: ServerProcess,
    sealed_machine: Machine,
    make_user: Callable[..., str],
    db: psycopg.Connection,
    database_url: str,
    db_key: str,
):
    """A week of sealed readings at :03, :08, :13 ... charts every 5-minute bucket, exactly as the same logs clear.

    ``sealed_machine`` removes the database key id when the module ends.
    """
    now = datetime.now(UTC)
    logs = off_the_mark_week(now)
    assert SEALED_PER_BUCKET >= 2  # a bucket of these logs: one Wi-Fi, two pings, one health reading
    machine = Machine(unique("mac-atrest-week"), unique("SER").upper(), unique("host") + ".local", logs)
    key = Key.from_base64(db_key)
    clear = insert_machine(db, logs=logs)
    client = signed_in(keyed_dashboard, make_user)
    try:
        with connect(database_url, autocommit=True) as conn:
            assert all(persist_batches(conn, queued_batches(machine, logs, now), db_key=key))
        keyring = Keyring([key])
        sealed_view = load_machine(db, machine.machine_id, now=now, chart_range="week", level="", keyring=keyring)
        clear_view = load_machine(db, clear.machine_id, now=now, chart_range="week", level="")
        assert sealed_view is not None
        assert clear_view is not None
        speed_tests = sum(1 for at, _, kind, _, _ in logs if kind == "speedtest" and at >= now - timedelta(days=7))
        drawn = chart_points("".join(sealed_view.charts))
        assert list(drawn.values()) == [2 * speed_tests] + [2 * 7 * 288] * 3, drawn
        assert sealed_view.charts == clear_view.charts

        page = client.get(page_url(machine), params={"range": "week"})
        assert page.status_code == 200, page.text
        assert "No data in this period" not in page.text
        over_http = chart_points(page.text)
        assert all(count >= 2 * (7 * 288 - 1) for count in list(over_http.values())[1:]), over_http
    finally:
        client.close()
        for machine_id in (machine.machine_id, clear.machine_id):
            db.execute("DELETE FROM widget_logs WHERE machine_id = %s", (machine_id,))
            db.execute("DELETE FROM batches WHERE machine_id = %s", (machine_id,))
            db.execute("DELETE FROM machines WHERE machine_id = %s", (machine_id,))


def assert_refused_clearly(answer: Any, db: psycopg.Connection, machine: Machine) -> None:
    """A 503 page naming the setting: no content, no ciphertext, no traceback."""
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    text = answer.text
    assert SETTING in text
    assert "<h1>" in text  # the dashboard's error page, not a bare message
    for hidden in ("Traceback", "AtRestError", SSID, "Example Fibre", "Wi-Fi sealed-", "\\x"):
        assert hidden not in text, hidden
    sealed = db.execute(
        "SELECT sealed FROM widget_logs WHERE machine_id = %s AND sealed IS NOT NULL LIMIT 20", (machine.machine_id,)
    ).fetchall()
    for (blob,) in sealed:
        assert bytes(blob)[:12].hex() not in text
    assert not re.search(r"[A-Za-z0-9+/]{64,}", text)  # nothing like base64 ciphertext


def test_the_default_dashboard_without_a_database_key_answers_a_clear_503(
    viewer: Browserless, sealed_machine: Machine, db: psycopg.Connection, db_key: str
):
    assert_refused_clearly(viewer.get(page_url(sealed_machine)), db, sealed_machine)
    assert_refused_clearly(viewer.get("/", params={"q": sealed_machine.serial_number}), db, sealed_machine)
    assert viewer.get("/", params={"q": unique("nothing-here")}).status_code == 200  # other pages still work
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    export = viewer.get("/api/exports/logs", params={"machine_id": sealed_machine.machine_id}, headers=browser)
    assert_refused_clearly(export, db, sealed_machine)
    assert Key.from_base64(db_key).kid not in export.text  # key ids go to the log, not the page
    api = viewer.get("/api/exports/logs", params={"machine_id": sealed_machine.machine_id})
    assert api.status_code == 503
    assert api.json()["detail"].startswith("cannot decrypt stored logs: ")


def test_a_dashboard_with_a_wrong_database_key_answers_a_clear_503(
    wrong_key_dashboard: ServerProcess,
    sealed_machine: Machine,
    make_user: Callable[..., str],
    db: psycopg.Connection,
):
    client = signed_in(wrong_key_dashboard, make_user)
    try:
        assert_refused_clearly(client.get(page_url(sealed_machine)), db, sealed_machine)
        assert_refused_clearly(client.get(page_url(sealed_machine), params={"range": "week"}), db, sealed_machine)
        assert_refused_clearly(client.get("/", params={"q": sealed_machine.serial_number}), db, sealed_machine)
    finally:
        client.close()
