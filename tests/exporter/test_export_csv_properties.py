"""CSV exports of arbitrary text through the real exporter, clear and encrypted at rest, read back.

For any text a compromised agent may send (no NUL: the contract refuses it), the cell read back is the text
itself, or, when it starts like a formula (=, +, -, @, tab, CR or their full-width forms), the text behind one
apostrophe. Commas, quotes and line breaks survive, every row has the header's seven cells, no cell starts a
formula, and the cells are those the agent's own exporter (``atlas.contract.export``) writes for the same rows.
Known attack strings are also opened by LibreOffice Calc, a real spreadsheet: no cell it reads is a formula.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from atlas.contract import Key, generate_encryption_key, validate_content
from atlas.contract.export import CSV_COLUMNS, FORMULA_PREFIXES, csv_lines, format_export_timestamp, record
from atlas.core.accounts import create_token, create_user
from atlas.core.db import connect
from atlas.core.queue import queued_batch
from atlas.worker.store import persist_batches

from ..fix_dashboard import PASSWORD, unique
from ..fix_processes import ServerProcess
from ..fix_services import own_database

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")
"""A failing example of many kilobytes would otherwise be reported as this warning instead of the failure."""
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
AWKWARD = (*FORMULA_PREFIXES, ",", '"', "\n", "\r\n", "'", " ", "\\.", "\\", "\ufeff", "\u2028")
CELL = st.one_of(TEXT, st.tuples(st.sampled_from(AWKWARD), TEXT, st.sampled_from(AWKWARD)).map("".join))
"""Any text, and text that starts or ends with a formula character, a separator, a quote or a line break."""


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory, server_config: dict[str, Any]) -> Iterator[ServerProcess]:
    """Stopped with the module, so its pooled connections (last query: COPY) are gone before other modules."""
    server = ServerProcess(
        "exporter", {**server_config, "exporter": {"chunk_bytes": 4096}}, tmp_path_factory.mktemp("x")
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return create_token(conn, create_user(conn, unique("csv-viewer"), PASSWORD, "viewer"), "csv")


class SealedExporter(NamedTuple):
    server: ServerProcess
    token: str
    key: Key
    database_url: str


@pytest.fixture(scope="module")
def sealed_exporter(
    tmp_path_factory: pytest.TempPathFactory, server_config: dict[str, Any]
) -> Iterator[SealedExporter]:
    """An exporter with a database key, on a database of its own whose logs the worker stored sealed.

    (Once sealed rows exist, an exporter without the key refuses that database: the shared one stays clear.)
    """
    key = generate_encryption_key()
    with own_database("_csvsealed") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            token = create_token(conn, create_user(conn, unique("csv-sealed"), PASSWORD, "viewer"), "csv")
        config = {**server_config, "server": {**server_config["server"], "db_encryption_key": key}}
        server = ServerProcess("exporter", {**config, "database": {"url": url}}, tmp_path_factory.mktemp("xs"))
        yield SealedExporter(server, token, Key.from_base64(key), url)
        server.stop()


def expected_cell(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def read_export(text: str) -> list[list[str]]:
    """The cells of a CSV export, read strictly; every row has the header's cells and none starts a formula."""
    rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    assert rows[0] == list(CSV_COLUMNS)
    for row in rows:
        assert len(row) == len(CSV_COLUMNS), row
        assert not any(cell.startswith(FORMULA_PREFIXES) for cell in row), row
    return rows


def export_csv(server: ServerProcess, token: str, machine_id: str) -> str:
    answer = httpx.get(
        f"{server.url}/api/exports/logs",
        params={"machine_id": machine_id, "format": "csv"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.content.decode("utf-8")


def store_sealed(sealed: SealedExporter, serial: str, messages: list[str]) -> str:
    """One batch of ``messages`` stored by the worker's own code, sealed under the database key; its machine_id."""
    machine_id = f"csv-{uuid.uuid4().hex[:12]}"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    content = {
        "machine": {
            "machine_id": machine_id,
            "serial_number": serial,
            "hostname": "h",
            "model": "m",
            "os_version": "o",
            "agent_version": "a",
        },
        "logs": [
            {
                "timestamp": format_export_timestamp(start + timedelta(seconds=i)),
                "level": "INFO",
                "widget_type": "wifi",
                "message": message,
                "data": {"ssid": message},
            }
            for i, message in enumerate(messages)
        ],
    }
    now = datetime.now(UTC)
    batch = queued_batch(
        validate_content(content), batch_id=str(uuid.uuid4()), created_at=now, received_at=now, kid=None
    )
    with connect(sealed.database_url) as conn:
        persist_batches(conn, [batch], sealed.key)
    return machine_id


def test_the_awkward_starts_include_every_formula_prefix() -> None:
    assert {"=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20"} <= set(FORMULA_PREFIXES)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(cells=st.lists(st.tuples(CELL, CELL), min_size=1, max_size=8))
def test_any_text_round_trips_through_a_csv_export(
    exporter: ServerProcess, token: str, db: psycopg.Connection, cells: list[tuple[str, str]]
) -> None:
    machine_id = f"csv-{uuid.uuid4().hex[:12]}"
    start = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    rows = [
        {
            "machine_id": machine_id,
            "serial_number": serial,
            "timestamp": start + timedelta(seconds=i),
            "message": message,
            "data": {"ssid": message, "serial": serial},
        }
        for i, (message, serial) in enumerate(cells)
    ]
    with db.cursor() as cur:
        cur.executemany(
            'INSERT INTO widget_logs (machine_id, serial_number, "timestamp", level, widget_type, message, data,'
            " batch_id, received_at) VALUES (%(machine_id)s, %(serial_number)s, %(timestamp)s, 'INFO', 'wifi',"
            " %(message)s, %(data)s, %(batch_id)s, now())",
            [{**r, "data": Jsonb(r["data"]), "batch_id": uuid.uuid4()} for r in rows],
        )
    read = read_export(export_csv(exporter, token, machine_id))
    assert len(read) == 1 + len(rows), read
    for cells_read, row in zip(read[1:], rows, strict=True):
        assert cells_read[1] == expected_cell(row["serial_number"])
        assert cells_read[5] == expected_cell(row["message"])
        assert json.loads(cells_read[6]) == row["data"]  # Data is a JSON object: it starts with "{", never a formula
    stored = db.execute(
        'SELECT id, serial_number, "timestamp", level, widget_type, message, data::text FROM widget_logs'
        " WHERE machine_id = %s ORDER BY id",
        (machine_id,),
    ).fetchall()
    agent_writes = "".join(csv_lines(record(r[0], r[1], format_export_timestamp(r[2]), *r[3:]) for r in stored))
    # Every reader sees the same cells in the server's file and the agent's. (Not always the same bytes:
    # PostgreSQL quotes an empty string and a lone backslash-dot, which Python's csv writer leaves bare.)
    assert read == list(csv.reader(io.StringIO(agent_writes, newline="")))


@settings(max_examples=500, deadline=None)
@given(cells=st.lists(st.tuples(CELL, CELL), max_size=6))
def test_the_agents_csv_writer_round_trips_any_text(cells: list[tuple[str, str]]) -> None:
    """``atlas-agent export`` writes the same file without PostgreSQL: one row per record, cells read back."""
    records = [
        record(i, serial, "2026-11-02T12:00:00Z", "INFO", "wifi", message, {"m": message})
        for i, (message, serial) in enumerate(cells)
    ]
    read = list(csv.reader(io.StringIO("".join(csv_lines(records)), newline="")))
    assert len(read) == 1 + len(records)
    for cells_read, (message, serial) in zip(read[1:], cells, strict=True):
        assert cells_read[1] == expected_cell(serial)
        assert cells_read[5] == expected_cell(message)
        assert json.loads(cells_read[6]) == {"m": message}


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(serial=CELL.filter(lambda s: 0 < len(s) <= 64), messages=st.lists(CELL, min_size=1, max_size=8))
def test_any_text_round_trips_through_a_csv_export_encrypted_at_rest(
    sealed_exporter: SealedExporter, serial: str, messages: list[str]
) -> None:
    """The default deployment (a database key): logs stored sealed, opened and written by the exporter."""
    machine_id = store_sealed(sealed_exporter, serial, messages)
    read = read_export(export_csv(sealed_exporter.server, sealed_exporter.token, machine_id))
    assert len(read) == 1 + len(messages), read
    for cells_read, message in zip(read[1:], messages, strict=True):
        assert cells_read[1] == expected_cell(serial)
        assert cells_read[5] == expected_cell(message)
        assert json.loads(cells_read[6]) == {"ssid": message}
    agent_writes = "".join(
        csv_lines(
            record(int(cells[0]), serial, cells[2], "INFO", "wifi", message, cells[6])
            for cells, message in zip(read[1:], messages, strict=True)
        )
    )
    assert read == list(csv.reader(io.StringIO(agent_writes, newline="")))


# --- a real spreadsheet ----------------------------------------------------------------------------------

ATTACKS = (
    "=1+1",
    "\r=1+1",
    "x\r=1+1",
    "x\r\n=1+1",
    "x\n=1+1",
    "\t=1+1",
    "+1+1",
    "-1+1",
    "@SUM(1,1)",
    "\uff1d1+1",
    '=HYPERLINK("http://127.0.0.1/?"&A1,"click")',
    'x",=1+1',
    '"=1+1',
    "x,=1+1\r=2+2\n=3+3",
)
"""Cells that start a formula, or try to start a row or a cell that does (Calc evaluated ``\\r=1+1``)."""

SOFFICE = shutil.which("soffice") or shutil.which("libreoffice")
needs_calc = pytest.mark.skipif(
    SOFFICE is None,
    reason="LibreOffice Calc is not installed (apt-get install libreoffice-calc-nogui): the exports cannot be"
    " opened by a real spreadsheet here",
)
CALC_CSV_IMPORT = "CSV:44,34,76,1,,1033,false,true,true,false,false,-1,true"
"""Comma, double quote, UTF-8, from line 1, standard cells, en-US, quoted fields not forced to text, special
numbers detected, ..., evaluate formulas: true (the worst case, and Calc's default)."""


def calc_cells(csv_text: str, workdir: Path) -> tuple[list[str], list[str]]:
    """Open ``csv_text`` in LibreOffice Calc (headless) and save it as flat ODS: (formulas, text of every cell)."""
    source = workdir / f"export-{uuid.uuid4().hex[:8]}.csv"
    source.write_bytes(csv_text.encode("utf-8"))
    subprocess.run(
        [
            SOFFICE,
            "--headless",
            f"-env:UserInstallation=file://{workdir / 'profile'}",
            f"--infilter={CALC_CSV_IMPORT}",
            "--convert-to",
            "fods",
            "--outdir",
            str(workdir),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    sheet = source.with_suffix(".fods").read_text(encoding="utf-8")
    texts = [html.unescape(t) for t in re.findall(r"<text:p>([^<]*)</text:p>", sheet)]
    return re.findall(r'table:formula="([^"]*)"', sheet), texts


@needs_calc
def test_libreoffice_finds_the_formula_a_bare_cr_smuggles_past_an_lf_writer(tmp_path: Path) -> None:
    """The check below can fail: Calc does evaluate ``=1+1`` behind a bare CR that a writer left unquoted."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([["ID", "Message"], ["1", "'\r=1+1"]])
    formulas, _ = calc_cells(buffer.getvalue(), tmp_path)
    assert formulas == ["of:=1+1"]


@needs_calc
def test_libreoffice_evaluates_no_cell_of_either_export(
    exporter: ServerProcess,
    token: str,
    db: psycopg.Connection,
    sealed_exporter: SealedExporter,
    tmp_path: Path,
) -> None:
    machine_id = f"csv-{uuid.uuid4().hex[:12]}"
    start = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    with db.cursor() as cur:
        cur.executemany(
            'INSERT INTO widget_logs (machine_id, serial_number, "timestamp", level, widget_type, message, data,'
            " batch_id, received_at) VALUES (%s, %s, %s, 'INFO', 'wifi', %s, %s, %s, now())",
            [
                (machine_id, attack, start + timedelta(seconds=i), attack, Jsonb({"ssid": attack}), uuid.uuid4())
                for i, attack in enumerate(ATTACKS)
            ],
        )
    sealed_machine = store_sealed(sealed_exporter, "=cmd|'/c calc'!A1", list(ATTACKS))
    exports = {
        "clear": export_csv(exporter, token, machine_id),
        "at rest": export_csv(sealed_exporter.server, sealed_exporter.token, sealed_machine),
    }
    for path, text in exports.items():
        assert len(read_export(text)) == 1 + len(ATTACKS)
        formulas, texts = calc_cells(text, tmp_path)
        assert formulas == [], (path, formulas)
        for attack in ATTACKS:
            if attack.isprintable():  # (Calc writes a tab or a line break as an element of its own)
                assert expected_cell(attack) in texts, (path, attack, texts)
