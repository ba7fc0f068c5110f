"""CSV exports of arbitrary text through the real exporter (PostgreSQL's COPY writes them), read back with csv.

For any text a compromised agent may send (no NUL: the contract refuses it), the cell read back is the text
itself, or, when it starts like a formula (=, +, -, @, tab, CR or their full-width forms), the text behind one
apostrophe. Commas, quotes and line breaks survive, and the cells are those the agent's own exporter
(``atlas.contract.export``) writes for the same rows.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from atlas.contract.export import FORMULA_PREFIXES, csv_lines, format_export_timestamp, record
from atlas.server.accounts import create_token, create_user

from .fix_dashboard import PASSWORD, unique
from .fix_ingest import ServerProcess

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


def expected_cell(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


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
    answer = httpx.get(
        f"{exporter.url}/api/exports/logs",
        params={"machine_id": machine_id, "format": "csv"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    text = answer.content.decode("utf-8")
    read = list(csv.reader(io.StringIO(text, newline="")))
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
