"""The exporter against PostgreSQL and a real uvicorn: formats, columns, filters, names, HEAD, auth, audit, failures."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import time
import uuid
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import httpx
import psycopg
import pytest
from itsdangerous import Signer
from psycopg.types.json import Jsonb

from atlas.contract.export import (
    CSV_COLUMNS,
    EXTENDED_CSV_COLUMNS,
    SERVER_JSON_FIELDS,
    CsvWriter,
    csv_lines,
    format_export_timestamp,
    record,
)
from atlas.core.accounts import create_session, create_token, create_user, revoke_token, signing_key
from atlas.core.web import EXPORT_CONNECTIONS, SESSION_COOKIE
from atlas.exporter.preview import count_rows
from atlas.exporter.query import ExportFilters

from ..batches import logs, machine, sealed
from ..fix_processes import ServerProcess

HOSTILE = [
    '=HYPERLINK("http://evil.example","x")',
    "+1+1",
    "-2+3",
    "@SUM(A1:A2)",
    "\tTAB",
    "\rCR",
    "\uff1d1+1",
    "\uff0b1",
    "\uff0d1",
    "\uff20SUM(1)",
    'comma, "quote" and\nnewline',
    "café 📡 ünïcode",
    "",
]
"""Cell texts a compromised agent might send; each must come back readable and inert."""

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
NESTED = {"list": [1, 2.5, None, True], "deep": {"x": "y"}}


@pytest.fixture(scope="module")
def exporter(start_server: Callable[..., ServerProcess], server_config: dict[str, Any]) -> ServerProcess:
    config = {**server_config, "exporter": {"chunk_bytes": 4096}}
    return start_server("exporter", config)


@pytest.fixture(scope="module")
def accounts(database_url: str) -> dict[str, Any]:
    """An admin and a viewer with a token each, and a viewer session cookie."""
    tag = uuid.uuid4().hex[:8]
    with psycopg.connect(database_url, autocommit=True) as conn:
        admin = create_user(conn, f"admin-{tag}", "correct horse battery", "admin")
        viewer = create_user(conn, f"viewer-{tag}", "correct horse battery", "viewer")
        session_id, _ = create_session(conn, viewer, timedelta(hours=1))
        cookie = Signer(signing_key(conn, None), salt="atlas-session").sign(session_id).decode()
        return {
            "admin": admin,
            "viewer": viewer,
            "admin_token": create_token(conn, admin, "tests"),
            "viewer_token": create_token(conn, viewer, "tests"),
            "cookie": cookie,
        }


def insert_logs(db: psycopg.Connection, rows: list[dict[str, Any]]) -> None:
    """Rows straight into widget_logs, as the worker would have stored them."""
    with db.cursor() as cur:
        cur.executemany(
            'INSERT INTO widget_logs (machine_id, serial_number, "timestamp", level, widget_type, message, data,'
            " batch_id, received_at) VALUES (%(machine_id)s, %(serial_number)s, %(timestamp)s, %(level)s,"
            " %(widget_type)s, %(message)s, %(data)s, %(batch_id)s, now())",
            [{**r, "data": Jsonb(r["data"]), "batch_id": uuid.uuid4()} for r in rows],
        )


def device(db: psycopg.Connection, count: int = 12, **overrides: Any) -> dict[str, Any]:
    """A machine with ``count`` logs cycling through widget types and levels, one minute apart."""
    machine_id = f"exp-{uuid.uuid4().hex[:12]}"
    serial = overrides.pop("serial_number", f"C02{uuid.uuid4().hex[:8].upper()}")
    hostname = overrides.pop("hostname", "")
    start = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    types = ("wifi", "speedtest", "ping", "health", "processes", "agent")
    levels = ("INFO", "WARNING", "ERROR", "DEBUG")
    rows = [
        {
            "machine_id": machine_id,
            "serial_number": serial,
            "timestamp": start + timedelta(minutes=i),
            "level": levels[i % len(levels)],
            "widget_type": types[i % len(types)],
            "message": f"log {i}",
            "data": {"seq": i, "ssid": f"net-{i}"},
        }
        for i in range(count)
    ]
    for key, value in overrides.items():
        for row in rows:
            row[key] = value
    insert_logs(db, rows)
    db.execute(
        "INSERT INTO machines (machine_id, serial_number, hostname, first_seen, last_seen, identity_at)"
        " VALUES (%s, %s, %s, now(), now(), now())",
        (machine_id, serial, hostname),
    )
    return {"machine_id": machine_id, "serial": serial, "hostname": hostname, "rows": rows, "start": start}


def get(exporter: ServerProcess, token: str | None, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{exporter.url}/api/exports/logs", params=params, headers=headers, timeout=60)


def csv_rows(response: httpx.Response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(response.content.decode("utf-8"), newline="")))


def test_csv_has_the_exact_header_and_round_trips_every_value(exporter, accounts, db) -> None:
    dev = device(db, count=len(HOSTILE))
    for row, text in zip(dev["rows"], HOSTILE, strict=True):
        row["message"] = text
        db.execute(
            "UPDATE widget_logs SET message = %s, data = %s WHERE machine_id = %s AND message = %s",
            (
                text,
                Jsonb({"ssid": text, "nested": NESTED}),
                dev["machine_id"],
                f"log {HOSTILE.index(text)}",
            ),
        )
    response = get(exporter, accounts["viewer_token"], machine_id=dev["machine_id"], format="csv")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.content.startswith(b"ID,Serial Number,Timestamp,Level,Widget Type,Message,Data\n")
    rows = csv_rows(response)
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 1 + len(HOSTILE)
    for cells, text in zip(rows[1:], HOSTILE, strict=True):
        expected = (
            "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20") else text
        )
        assert cells[5] == expected
        assert cells[1] == dev["serial"]
        assert json.loads(cells[6]) == {"ssid": text, "nested": NESTED}
    ids = [int(cells[0]) for cells in rows[1:]]
    assert ids == sorted(ids)


def test_server_csv_is_byte_for_byte_what_the_shared_writer_produces(exporter, accounts, db) -> None:
    """PostgreSQL's COPY and atlas.contract.export (the agent's exporter) agree on every byte."""
    dev = device(db, count=6, message='=cmd|" /C calc"!A0, and more')
    db.execute(
        'UPDATE widget_logs SET "timestamp" = "timestamp" + interval \'0.25 seconds\' WHERE machine_id = %s AND'
        " data->>'seq' = '3'",
        (dev["machine_id"],),
    )
    response = get(exporter, accounts["viewer_token"], machine_id=dev["machine_id"])
    stored = db.execute(
        'SELECT id, serial_number, "timestamp", level, widget_type, message, data::text FROM widget_logs'
        " WHERE machine_id = %s ORDER BY id",
        (dev["machine_id"],),
    ).fetchall()
    expected = "".join(csv_lines(record(r[0], r[1], format_export_timestamp(r[2]), *r[3:]) for r in stored))
    assert response.content.decode() == expected
    assert ".250000Z" in expected
    assert "T12:00:00Z" in expected


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_json_and_ndjson_carry_the_same_fields_in_snake_case(exporter, accounts, db, fmt: str) -> None:
    """The CSV's seven fields, then the log's machine_id and its machine's hostname."""
    dev = device(
        db, count=5, message='quote " backslash \\ newline \n tab \t control \x01 emoji 📡', hostname='Zoë\'s "Mac"'
    )
    response = get(exporter, accounts["viewer_token"], machine_id=dev["machine_id"], format=fmt)
    assert response.status_code == 200
    if fmt == "json":
        assert response.headers["content-type"] == "application/json"
        objects = json.loads(response.content)
    else:
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = response.content.decode().splitlines()
        assert len(lines) == 5
        objects = [json.loads(line) for line in lines]
    assert [list(o) for o in objects] == [list(SERVER_JSON_FIELDS)] * 5
    for obj, row in zip(objects, dev["rows"], strict=True):
        assert obj["serial_number"] == dev["serial"]
        assert (obj["machine_id"], obj["hostname"]) == (dev["machine_id"], 'Zoë\'s "Mac"')
        assert obj["message"] == row["message"]  # JSON needs no formula guard: values come back exactly
        assert obj["data"] == row["data"]
        assert obj["timestamp"] == format_export_timestamp(row["timestamp"])
        assert (obj["level"], obj["widget_type"]) == (row["level"], row["widget_type"])


def test_an_empty_export_is_still_a_valid_file(exporter, accounts) -> None:
    nobody = f"nobody-{uuid.uuid4().hex}"
    assert get(exporter, accounts["viewer_token"], machine_id=nobody, format="json").content == b"[]\n"
    assert get(exporter, accounts["viewer_token"], machine_id=nobody, format="ndjson").content == b""
    assert csv_rows(get(exporter, accounts["viewer_token"], machine_id=nobody)) == [list(CSV_COLUMNS)]


def test_every_filter_selects_exactly_its_rows(exporter, accounts, db) -> None:
    dev = device(db, count=24)
    other = device(db, count=6)
    token = accounts["viewer_token"]

    def ids(**params: Any) -> list[int]:
        response = get(exporter, token, format="ndjson", **params)
        assert response.status_code == 200, response.text
        return [json.loads(line)["data"]["seq"] for line in response.content.decode().splitlines()]

    mine = {"machine_id": dev["machine_id"]}
    assert ids(**mine) == list(range(24))
    assert ids(serial_number=dev["serial"]) == list(range(24))
    assert ids(**mine, widget_type="wifi") == [i for i in range(24) if i % 6 == 0]
    assert ids(**mine, level="ERROR") == [i for i in range(24) if i % 4 == 2]
    assert ids(**mine, level="error") == [i for i in range(24) if i % 4 == 2]
    since = (dev["start"] + timedelta(minutes=5)).isoformat()
    until = (dev["start"] + timedelta(minutes=9)).isoformat()
    assert ids(**mine, since=since) == list(range(5, 24))
    assert ids(**mine, until=until) == list(range(9))
    assert ids(**mine, since=since, until=until) == [5, 6, 7, 8]
    assert ids(**mine, since="2026-11-01T12:05", until="2026-11-01T13:09+01:00") == [5, 6, 7, 8]
    assert ids(**mine, widget_type="ping", level="ERROR", since=since) == [i for i in range(5, 24) if i % 12 == 2]
    # An HTML form sends empty fields; they mean "no filter".
    assert ids(**mine, widget_type="", level="", since="", until="", serial_number="") == list(range(24))
    assert ids(machine_id=other["machine_id"], serial_number=dev["serial"]) == []


def test_the_newer_widget_types_export_and_filter(exporter, accounts, db) -> None:
    """``network`` and ``roam`` logs (layered checks, access-point changes) export like the first six."""
    dev = device(db, count=4)
    for i, row in enumerate(dev["rows"]):
        row["widget_type"] = ("network", "roam")[i % 2]
        row["data"] = {"seq": 100 + i, "layer": "dns"} if i % 2 == 0 else {"seq": 100 + i, "to_channel": 36}
    insert_logs(db, dev["rows"])
    token = accounts["viewer_token"]
    for kind, expected in (("network", [100, 102]), ("roam", [101, 103])):
        response = get(exporter, token, format="ndjson", machine_id=dev["machine_id"], widget_type=kind)
        assert response.status_code == 200, response.text
        lines = [json.loads(line) for line in response.content.decode().splitlines()]
        assert [line["data"]["seq"] for line in lines] == expected
        assert {line["widget_type"] for line in lines} == {kind}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"format": "xml"}, "format"),
        ({"widget_type": "bluetooth"}, "widget_type"),
        ({"level": "LOUD"}, "level"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"since": "2026-11-02", "until": "2026-11-01"}, "until"),
        ({"machine_id": "x" * 129}, "machine_id"),
        ({"serial_number": "bad\nserial"}, "serial_number"),
    ],
)
def test_unusable_filters_get_422_naming_the_field(exporter, accounts, params: dict, field: str) -> None:
    response = get(exporter, accounts["viewer_token"], **params)
    assert response.status_code == 422
    assert response.json()["field"] == field


def test_file_names_say_what_is_inside(exporter, accounts, db) -> None:
    serial = f"C02{uuid.uuid4().hex[:8].upper()}"  # other tests store machines as C02AB12CD3F: one serial, many
    dev = device(db, count=2, serial_number=serial)
    today = datetime.now(UTC).date().isoformat()
    token = accounts["viewer_token"]

    def name(**params: Any) -> str:
        disposition = get(exporter, token, **params).headers["content-disposition"]
        assert disposition.startswith("attachment; filename=")
        return disposition.split('filename="', 1)[1].rstrip('"')

    assert name(until="2000-01-01") == "atlas-logs-all-until-2000-01-01.csv"
    assert name(widget_type="wifi", until="2000-01-01") == "atlas-logs-wifi-until-2000-01-01.csv"
    assert name(machine_id=dev["machine_id"]) == f"atlas-logs-{serial}-{today}.csv"
    assert name(serial_number=serial, format="json") == f"atlas-logs-{serial}-{today}.json"
    assert name(serial_number=serial, widget_type="ping", format="ndjson") == (
        f"atlas-logs-{serial}-ping-{today}.ndjson"
    )
    assert name(serial_number='../"evil"\\name') == f"atlas-logs-evil_name-{today}.csv"


def test_gzip_when_the_client_asks(exporter, accounts, db) -> None:
    dev = device(db, count=300)
    plain = get(exporter, accounts["viewer_token"], machine_id=dev["machine_id"])
    with httpx.stream(
        "GET",
        f"{exporter.url}/api/exports/logs",
        params={"machine_id": dev["machine_id"]},
        headers={"Authorization": f"Bearer {accounts['viewer_token']}", "Accept-Encoding": "gzip"},
    ) as response:
        assert response.headers["content-encoding"] == "gzip"
        raw = b"".join(response.iter_raw())
    assert len(raw) < len(plain.content) / 3
    assert gzip.decompress(raw) == plain.content
    identity = httpx.get(
        f"{exporter.url}/api/exports/logs",
        params={"machine_id": dev["machine_id"]},
        headers={"Authorization": f"Bearer {accounts['viewer_token']}", "Accept-Encoding": "identity, gzip;q=0"},
    )
    assert "content-encoding" not in identity.headers
    assert identity.content == plain.content


def test_exports_need_a_session_or_a_token(exporter, accounts, database_url) -> None:
    assert get(exporter, None).status_code == 401
    assert get(exporter, None).headers["www-authenticate"] == "Bearer"
    assert get(exporter, "atlas_" + "x" * 43).status_code == 401
    assert get(exporter, "not-a-token").status_code == 401
    forged = httpx.get(f"{exporter.url}/api/exports/logs", cookies={SESSION_COOKIE: "abc.def"}, timeout=10)
    assert forged.status_code == 401
    by_cookie = httpx.get(
        f"{exporter.url}/api/exports/logs",
        params={"machine_id": "none"},
        cookies={SESSION_COOKIE: accounts["cookie"]},
        timeout=10,
    )
    assert by_cookie.status_code == 200
    with psycopg.connect(database_url, autocommit=True) as conn:
        token = create_token(conn, accounts["viewer"], "short-lived")
        assert get(exporter, token, machine_id="none").status_code == 200
        token_id = conn.execute("SELECT max(id) FROM api_tokens WHERE name = 'short-lived'").fetchone()[0]
        revoke_token(conn, token_id)
    assert get(exporter, token, machine_id="none").status_code == 401


def test_each_export_is_recorded_in_the_audit_log(exporter, accounts, db) -> None:
    dev = device(db, count=7)
    response = get(exporter, accounts["viewer_token"], machine_id=dev["machine_id"], level="INFO", format="json")
    audit_id = int(response.headers["x-atlas-export-id"])
    row = db.execute(
        "SELECT username, auth, format, filters, row_count, status, client, finished_at IS NOT NULL"
        " FROM export_audit WHERE id = %s",
        (audit_id,),
    ).fetchone()
    assert row == (
        accounts["viewer"].username,
        "token:tests",
        "json",
        {"machine_id": dev["machine_id"], "level": "INFO"},
        2,
        "complete",
        "127.0.0.1",
        True,
    )
    listed = httpx.get(
        f"{exporter.url}/api/exports/audit",
        headers={"Authorization": f"Bearer {accounts['admin_token']}"},
        timeout=10,
    )
    assert listed.status_code == 200
    assert any(e["id"] == audit_id and e["row_count"] == 2 for e in listed.json()["exports"])
    viewer = httpx.get(
        f"{exporter.url}/api/exports/audit",
        headers={"Authorization": f"Bearer {accounts['viewer_token']}"},
        timeout=10,
    )
    assert viewer.status_code == 403
    assert httpx.get(f"{exporter.url}/api/exports/audit", timeout=10).status_code == 401


EXPORTING_BACKENDS = (
    "SELECT pid FROM pg_stat_activity"
    " WHERE application_name = 'atlas-exporter' AND (query LIKE 'COPY%%' OR query LIKE '%%atlas_export%%')"
    " AND state <> 'idle' AND pid <> pg_backend_pid() AND datname = current_database()"
)
"""The exporter's backends streaming an export now: a COPY (JSON), or the server-side cursor (CSV). An idle pooled
connection keeps its last query in pg_stat_activity, hence ``state <> 'idle'`` (a CSV cursor waits between
fetches idle in transaction)."""


def _exporting_backends(db: psycopg.Connection) -> set[int]:
    return {row[0] for row in db.execute(EXPORTING_BACKENDS)}


def _kill_new_exporter_backends(db: psycopg.Connection, before: set[int]) -> int:
    """End the backends that started streaming since ``before`` (an earlier test's export may still be ending)."""
    new = sorted(_exporting_backends(db) - before)
    return sum(bool(db.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]) for pid in new)


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_a_stream_that_fails_midway_is_visibly_incomplete(exporter, accounts, db, fmt: str) -> None:
    dev = device(db, count=1)
    db.execute(
        'INSERT INTO widget_logs (machine_id, serial_number, "timestamp", level, widget_type, message, data,'
        " batch_id, received_at) SELECT %s, %s, now(), 'INFO', 'wifi', repeat('x', 200), '{}', gen_random_uuid(),"
        " now() FROM generate_series(1, 150000)",
        (dev["machine_id"], dev["serial"]),
    )
    received = bytearray()
    before = _exporting_backends(db)
    with httpx.stream(
        "GET",
        f"{exporter.url}/api/exports/logs",
        params={"machine_id": dev["machine_id"], "format": fmt},
        headers={"Authorization": f"Bearer {accounts['viewer_token']}"},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        audit_id = int(response.headers["x-atlas-export-id"])
        chunks = response.iter_bytes()
        received += next(chunks)
        assert _kill_new_exporter_backends(db, before) == 1

        def read_the_rest() -> None:
            for chunk in chunks:
                received.extend(chunk)

        with pytest.raises(httpx.RemoteProtocolError):
            read_the_rest()
    assert received  # part of the file arrived, then the connection was cut without the final chunk
    if fmt == "json":
        with pytest.raises(json.JSONDecodeError):
            json.loads(received)
    status = db.execute("SELECT status, error FROM export_audit WHERE id = %s", (audit_id,)).fetchone()
    assert (status[0] == "failed" and status[1].startswith("AdminShutdown")) or status[1].startswith("OperationalError")


def test_a_client_that_hangs_up_is_recorded_as_aborted(exporter, accounts, db) -> None:
    dev = device(db, count=1)
    db.execute(
        'INSERT INTO widget_logs (machine_id, serial_number, "timestamp", level, widget_type, message, data,'
        " batch_id, received_at) SELECT %s, %s, now(), 'INFO', 'wifi', repeat('y', 200), '{}', gen_random_uuid(),"
        " now() FROM generate_series(1, 100000)",
        (dev["machine_id"], dev["serial"]),
    )
    with httpx.stream(
        "GET",
        f"{exporter.url}/api/exports/logs",
        params={"machine_id": dev["machine_id"]},
        headers={"Authorization": f"Bearer {accounts['viewer_token']}"},
        timeout=60,
    ) as response:
        audit_id = int(response.headers["x-atlas-export-id"])
        next(response.iter_bytes())
    deadline = datetime.now(UTC) + timedelta(seconds=20)
    while datetime.now(UTC) < deadline:
        row = db.execute("SELECT status, row_count FROM export_audit WHERE id = %s", (audit_id,)).fetchone()
        if row[0] != "running":
            break
    assert row[0] == "aborted"
    assert 0 < row[1] < 100001
    idle = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'atlas-exporter' AND state = 'active'"
        " AND query LIKE 'COPY%%' AND pid <> pg_backend_pid() AND datname = current_database()"
    ).fetchone()[0]
    assert idle == 0  # the COPY did not go on for nobody


def test_database_down_gives_503_not_an_empty_file(start_server, server_config, accounts) -> None:
    config = {**server_config, "database": {"url": "postgresql://postgres@127.0.0.1:1/atlas?connect_timeout=1"}}
    server = start_server("exporter", config)
    response = get(server, accounts["viewer_token"])
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"detail": "database unavailable, retry later", "field": None}
    assert "Traceback" not in server.logs()
    ready = httpx.get(f"{server.url}/readyz", timeout=10)
    assert (ready.status_code, ready.headers["retry-after"]) == (503, "5")
    assert ready.json() == {"detail": "database unavailable, retry later", "field": None}


def test_encrypted_batch_comes_out_as_readable_plain_text(ingest, drain, exporter, accounts, keys) -> None:
    """The whole path: sealed on the 'agent', decrypted by ingest, stored by the worker, exported readable."""
    info = machine(serial_number="C02PLAINTXT")
    sent = {"machine": info, "logs": logs(9)}
    assert ingest.post(sealed(sent, keys["current"])).status_code == 202
    drain()
    response = get(exporter, accounts["viewer_token"], machine_id=info["machine_id"], format="json")
    exported = json.loads(response.content)
    assert [(e["message"], e["data"]) for e in exported] == [(log["message"], log["data"]) for log in sent["logs"]]
    assert all(e["serial_number"] == "C02PLAINTXT" for e in exported)
    assert zlib.crc32(response.content)  # plain UTF-8 JSON, not ciphertext


@pytest.fixture(scope="module")
def big_device(database_url: str) -> dict[str, str]:
    """A machine with 160 MB of logs: more than loopback's socket buffers hold, so a client that stops
    reading after the headers stalls its export."""
    machine_id, serial = f"exp-{uuid.uuid4().hex[:12]}", f"C02{uuid.uuid4().hex[:8].upper()}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            'INSERT INTO widget_logs (machine_id, serial_number, "timestamp", level, widget_type, message, data,'
            " batch_id, received_at) SELECT %s, %s, now(), 'INFO', 'wifi', repeat('z', 4000), '{}',"
            " gen_random_uuid(), now() FROM generate_series(1, 40000)",
            (machine_id, serial),
        )
    return {"machine_id": machine_id, "serial": serial}


def stalled(stack: contextlib.ExitStack, server: ServerProcess, token: str, machine_id: str) -> httpx.Response:
    """An export whose client reads the headers and then nothing (held open until ``stack`` closes)."""
    # identity: gzipped, 160 MB of 'z' would be a few hundred KB that socket buffers swallow, ending the export
    headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "identity"}
    client = stack.enter_context(httpx.Client(timeout=60))
    return stack.enter_context(
        client.stream("GET", f"{server.url}/api/exports/logs", params={"machine_id": machine_id}, headers=headers)
    )


def other_tokens(db: psycopg.Connection, count: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [
        create_token(db, create_user(db, f"exporter-{tag}-{i}", "correct horse battery", "viewer"), "tests")
        for i in range(count)
    ]


def test_slow_downloads_cannot_take_every_connection(exporter, accounts, db, big_device) -> None:
    """Exports have a few connections of their own: one too many gets 429, and other requests still work."""
    tokens = other_tokens(db, EXPORT_CONNECTIONS)  # one each: a user alone may hold only two
    held_ids: list[int] = []
    with contextlib.ExitStack() as stack:
        for token in tokens:
            held = stalled(stack, exporter, token, big_device["machine_id"])
            assert held.status_code == 200
            held_ids.append(int(held.headers["x-atlas-export-id"]))
        states = db.execute("SELECT id, status, row_count FROM export_audit WHERE id = ANY(%s)", (held_ids,)).fetchall()
        assert all(state == "running" for _, state, _ in states), states
        one_more = get(exporter, accounts["viewer_token"], machine_id=big_device["machine_id"])
        assert one_more.status_code == 429, (one_more.headers, states, exporter.logs()[-3000:])
        assert one_more.headers["retry-after"] == "5"
        assert one_more.json()["detail"] == f"{EXPORT_CONNECTIONS} exports are running already; retry later"
        assert httpx.get(f"{exporter.url}/readyz", timeout=10).status_code == 200
        assert get(exporter, None).status_code == 401  # authentication still reaches the database at once
    assert get(exporter, accounts["viewer_token"], machine_id="none").status_code == 200


def test_one_user_holds_at_most_two_exports(exporter, accounts, db, big_device) -> None:
    """Stalled exports of one viewer token leave the other export connections to everyone else."""
    with contextlib.ExitStack() as stack:
        held = [stalled(stack, exporter, accounts["viewer_token"], big_device["machine_id"]) for _ in range(2)]
        assert [h.status_code for h in held] == [200, 200]
        third = get(exporter, accounts["viewer_token"], machine_id="none")
        assert third.status_code == 429
        assert third.headers["retry-after"] == "5"
        assert third.json() == {
            "detail": "2 exports by this user are running already (exporter.max_exports_per_principal);"
            " retry when one has finished",
            "field": None,
        }
        session = httpx.get(
            f"{exporter.url}/api/exports/logs",
            params={"machine_id": "none"},
            cookies={SESSION_COOKIE: accounts["cookie"]},
            timeout=60,
        )
        assert session.status_code == 429  # the same viewer through the dashboard's session
        assert get(exporter, accounts["admin_token"], machine_id="none").status_code == 200  # others at once
    assert get(exporter, accounts["viewer_token"], machine_id="none").status_code == 200  # slots back on close


def test_a_client_that_stops_reading_is_cut_off(start_server, server_config, accounts, db, big_device) -> None:
    """After exporter.send_timeout_seconds without reading, the export ends aborted and frees its slot."""
    config = {**server_config, "exporter": {"send_timeout_seconds": 1, "max_exports_per_principal": 1}}
    server = start_server("exporter", config)
    with contextlib.ExitStack() as stack:
        held = stalled(stack, server, accounts["viewer_token"], big_device["machine_id"])
        assert held.status_code == 200
        export_id = int(held.headers["x-atlas-export-id"])
        deadline = time.monotonic() + 20
        status = "running"
        while status == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
            (status,) = db.execute("SELECT status FROM export_audit WHERE id = %s", (export_id,)).fetchone()
        assert status == "aborted", server.logs()[-3000:]
        assert get(server, accounts["viewer_token"], machine_id="none").status_code == 200  # its slot is back
        with pytest.raises(httpx.HTTPError):  # cut off without the final chunk: the client sees it incomplete
            for _ in held.iter_bytes():
                pass
    assert f"Export {export_id} cut off: the client read nothing for 1 s" in server.logs()


def test_export_limit_settings() -> None:
    from atlas.core.config import ConfigError, settings_from_mapping

    base = {"server": {"api_key": "x" * 24}}
    settings = settings_from_mapping(base, {})
    assert (settings.max_exports_per_principal, settings.exporter_send_timeout) == (2, 60)
    for key in ("max_exports_per_principal", "send_timeout_seconds"):
        with pytest.raises(ConfigError, match=f"exporter.{key}: must be an integer >= 1"):
            settings_from_mapping({**base, "exporter": {key: 0}}, {})


@pytest.mark.parametrize(
    ("path", "query"),
    [("/api/exports/audit", "limit=5&limit=6"), ("/api/exports/logs", "format=csv&format=json")],
)
def test_a_parameter_given_twice_is_refused(exporter, accounts, path: str, query: str) -> None:
    answer = httpx.get(
        f"{exporter.url}{path}?{query}", headers={"Authorization": f"Bearer {accounts['admin_token']}"}, timeout=30
    )
    assert answer.status_code == 400, answer.text
    assert "given more than once" in answer.json()["detail"]


# --- before and beside the download: names, HEAD and its row count, columns ------------------

SAME_HEADERS = ("content-type", "content-disposition", "cache-control", "x-content-type-options", "vary")


def head(exporter: ServerProcess, token: str | None, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.head(f"{exporter.url}/api/exports/logs", params=params, headers=headers, timeout=60)


def disposition(response: httpx.Response) -> dict[str, str]:
    """The parameters of Content-Disposition: ``filename`` and, when present, ``filename*`` decoded."""
    value = response.headers["content-disposition"]
    kind, *params = (part.strip() for part in value.split(";"))
    assert kind == "attachment"
    found: dict[str, str] = {}
    for param in params:
        name, _, raw = param.partition("=")
        if name == "filename*":
            charset, _, encoded = raw.partition("''")
            assert charset == "UTF-8"
            found[name] = unquote(encoded, encoding="utf-8", errors="strict")
        else:
            found[name] = raw.strip('"')
    return found


def test_file_names_carry_the_exported_range(exporter, accounts, db) -> None:
    dev = device(db, count=2)
    token, serial = accounts["viewer_token"], dev["serial"]

    def name(**params: Any) -> str:
        return disposition(get(exporter, token, machine_id=dev["machine_id"], **params))["filename"]

    assert name(since="2026-12-01", until="2026-12-03") == f"atlas-logs-{serial}-2026-12-01_2026-12-03.csv"
    assert name(since="2026-12-01T10:30", until="2026-12-01T12:00:15+01:00", format="json") == (
        f"atlas-logs-{serial}-2026-12-01T1030Z_2026-12-01T110015Z.json"
    )
    assert name(since="2026-12-01") == f"atlas-logs-{serial}-since-2026-12-01.csv"
    assert name(until="2026-12-03T00:00Z", widget_type="wifi") == f"atlas-logs-{serial}-wifi-until-2026-12-03.csv"


def test_a_serial_in_another_script_gets_an_rfc_6266_filename_star(exporter, accounts, db) -> None:
    serial = f"СЕРИЯ-Zoë-{uuid.uuid4().hex[:6]}"
    dev = device(db, count=3, serial_number=serial)
    response = get(exporter, accounts["viewer_token"], machine_id=dev["machine_id"], since="2026-11-01")
    assert response.status_code == 200
    names = disposition(response)
    assert names["filename*"] == f"atlas-logs-{serial}-since-2026-11-01.csv"
    assert names["filename"].isascii()
    assert names["filename"] == f"atlas-logs-_-Zoe-{serial[-6:]}-since-2026-11-01.csv"
    plain = disposition(get(exporter, accounts["viewer_token"], machine_id=dev["machine_id"], format="json"))
    assert "filename*" in plain
    ascii_only = device(db, count=1)
    assert list(disposition(get(exporter, accounts["viewer_token"], machine_id=ascii_only["machine_id"]))) == [
        "filename"
    ]


def test_head_answers_200_with_the_export_headers_and_its_row_count(exporter, accounts, db) -> None:
    dev = device(db, count=24)
    token = accounts["viewer_token"]
    audits = db.execute("SELECT count(*) FROM export_audit").fetchone()[0]
    for params, rows in (
        ({}, 24),
        ({"widget_type": "wifi"}, 4),
        ({"level": "ERROR", "format": "json"}, 6),
        ({"since": (dev["start"] + timedelta(minutes=5)).isoformat(), "format": "ndjson"}, 19),
        ({"until": "2000-01-01"}, 0),
    ):
        answer = head(exporter, token, machine_id=dev["machine_id"], **params)
        assert answer.status_code == 200, (params, answer.text)
        assert answer.content == b""
        assert answer.headers["x-atlas-row-count"] == str(rows)
        assert "content-length" not in answer.headers or answer.headers["content-length"] != "0"
        full = get(exporter, token, machine_id=dev["machine_id"], **params)
        assert {h: answer.headers[h] for h in SAME_HEADERS} == {h: full.headers[h] for h in SAME_HEADERS}
    assert db.execute("SELECT count(*) FROM export_audit").fetchone()[0] == audits + 5  # the GETs only
    gzip = httpx.head(
        f"{exporter.url}/api/exports/logs",
        params={"machine_id": dev["machine_id"]},
        headers={"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"},
        timeout=30,
    )
    assert gzip.headers["content-encoding"] == "gzip"
    assert head(exporter, None).status_code == 401
    refused = head(exporter, token, since="2026-11-02", until="2026-11-01")
    assert refused.status_code == 422
    assert head(exporter, token, columns="everything").status_code == 422


def test_the_row_count_is_the_exports_and_gives_up_rather_than_run_long(exporter, db) -> None:
    dev = device(db, count=1)
    db.execute(
        'INSERT INTO widget_logs (machine_id, serial_number, "timestamp", level, widget_type, message, data,'
        " batch_id, received_at) SELECT %s, %s, now(), 'INFO', 'wifi', 'x', '{}', gen_random_uuid(),"
        " now() FROM generate_series(1, 200000)",
        (dev["machine_id"], dev["serial"]),
    )
    filters = ExportFilters(machine_id=dev["machine_id"])
    assert count_rows(db, filters) == 200001
    assert count_rows(db, ExportFilters(), timeout_ms=1) is None  # every row of the run's database, in 1 ms
    assert db.execute("SHOW statement_timeout").fetchone()[0] == "0"  # the bound was local to the count


def test_csv_columns_default_to_the_seven_and_extended_adds_machine_and_hostname(exporter, accounts, db) -> None:
    dev = device(db, count=4, hostname="=cmd|' /C calc'!A0", message="+1+1")
    token = accounts["viewer_token"]
    default = get(exporter, token, machine_id=dev["machine_id"])
    assert default.text.splitlines()[0] == ",".join(CSV_COLUMNS)
    assert get(exporter, token, machine_id=dev["machine_id"], columns="default").content == default.content
    extended = get(exporter, token, machine_id=dev["machine_id"], columns="extended")
    assert extended.status_code == 200
    table = list(csv.reader(io.StringIO(extended.text, newline="")))
    assert tuple(table[0]) == EXTENDED_CSV_COLUMNS
    assert [row[:7] for row in table] == list(csv.reader(io.StringIO(default.text, newline="")))
    assert {tuple(row[7:]) for row in table[1:]} == {(dev["machine_id"], "'=cmd|' /C calc'!A0")}  # neutralised
    stored = db.execute(
        'SELECT id, serial_number, "timestamp", level, widget_type, message, data::text FROM widget_logs'
        " WHERE machine_id = %s ORDER BY id",
        (dev["machine_id"],),
    ).fetchall()
    writer = CsvWriter()
    expected = writer.header(EXTENDED_CSV_COLUMNS) + writer.lines(
        [(i, s, format_export_timestamp(t), *rest, dev["machine_id"], dev["hostname"]) for i, s, t, *rest in stored]
    )
    assert extended.text == expected
    refused = get(exporter, token, columns="all")
    assert (refused.status_code, refused.json()["field"]) == (422, "columns")


def test_a_serial_on_two_machines_is_never_merged_out_of_sight(exporter, accounts, db) -> None:
    serial = f"C02VM{uuid.uuid4().hex[:6].upper()}"
    first = device(db, count=3, serial_number=serial, hostname="mac-a.local")
    second = device(db, count=2, serial_number=serial, hostname="mac-b.local")
    token = accounts["viewer_token"]
    names = {disposition(get(exporter, token, machine_id=dev["machine_id"]))["filename"] for dev in (first, second)}
    today = datetime.now(UTC).date().isoformat()
    assert names == {f"atlas-logs-{serial}-{dev['machine_id']}-{today}.csv" for dev in (first, second)}
    both = get(exporter, token, serial_number=serial, format="json")
    assert disposition(both)["filename"] == f"atlas-logs-{serial}-2-machines-{today}.json"
    rows = json.loads(both.content)
    assert sorted((r["machine_id"], r["hostname"]) for r in rows) == sorted(
        [(first["machine_id"], "mac-a.local")] * 3 + [(second["machine_id"], "mac-b.local")] * 2
    )
    assert head(exporter, token, serial_number=serial).headers["x-atlas-row-count"] == "5"
    table = list(csv.reader(io.StringIO(get(exporter, token, serial_number=serial, columns="extended").text)))
    assert {row[7] for row in table[1:]} == {first["machine_id"], second["machine_id"]}


def test_json_of_a_log_whose_machine_was_never_seen_says_hostname_null(exporter, accounts, db) -> None:
    machine_id = f"orphan-{uuid.uuid4().hex[:8]}"
    with db.cursor() as cur:
        cur.execute(
            'INSERT INTO widget_logs (machine_id, serial_number, "timestamp", level, widget_type, message, data,'
            " batch_id, received_at) VALUES (%s, 'C02ORPHAN', now(), 'INFO', 'agent', 'm', '{}', gen_random_uuid(),"
            " now())",
            (machine_id,),
        )
    for fmt in ("json", "ndjson"):
        body = get(exporter, accounts["viewer_token"], machine_id=machine_id, format=fmt).content
        rows = json.loads(body) if fmt == "json" else [json.loads(line) for line in body.splitlines()]
        assert [(r["machine_id"], r["hostname"]) for r in rows] == [(machine_id, None)]
