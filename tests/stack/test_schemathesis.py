"""schemathesis against the ingest and exporter OpenAPI schemas, in-process (ASGI), with real Redis and PostgreSQL.

Each generated request (schema-conforming and deliberately broken ones) is sent with valid credentials, so the
deep paths are reached, and without, and ``call_and_validate`` checks the answer: no 5xx, a status the schema
declares, a declared content type, a body matching the declared schema and required headers present.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itsdangerous import Signer
from schemathesis import GenerationMode, checks
from schemathesis.python import asgi

from atlas.core.accounts import create_session, create_token, create_user, signing_key
from atlas.core.config import Settings
from atlas.core.web import SESSION_COOKIE
from atlas.exporter.app import create_app as create_exporter
from atlas.ingest.app import create_app as create_ingest

from .. import batches
from ..fix_dashboard import every_widget_logs, insert_machine
from ..fix_services import API_KEY, own_database

EXAMPLES = settings(
    max_examples=int(os.environ.get("ATLAS_SCHEMATHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
"""Per operation; the whole file stays under 90 s on the 2-core CI machine."""

CALLS: dict[str, Counter[int]] = {"ingest": Counter(), "exporter": Counter()}
"""Answers per schema and status code: the proof the deep paths were reached, printed at the end."""


def fuzz(schema, name: str, header_sets: list[dict[str, str]], excluded: tuple = ()) -> None:
    """Every operation of ``schema``, with conforming and broken requests, each sent once per header set.

    (schemathesis' own ``pytest.from_fixture`` does not work under pytest 9, so the operations are walked here.)
    """
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, f"{name}: no operation in the schema"
    for operation in operations:
        can_break = any(True for _ in operation.iter_parameters()) or bool(
            operation.get_request_payload_content_types()
        )
        for mode in GenerationMode if can_break else [GenerationMode.POSITIVE]:  # nothing to break in GET /healthz

            @EXAMPLES
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case) -> None:
                for headers in header_sets:
                    response = case.call_and_validate(headers=headers, excluded_checks=list(excluded))
                    CALLS[name][response.status_code] += 1

            check()


@pytest.fixture(scope="module", autouse=True)
def _stop_lifespans() -> Iterator[None]:
    """schemathesis keeps each app's lifespan running; end them here so the pools close before the database goes."""
    yield
    asgi.shutdown_lifespans()
    print(f"\nschemathesis calls: {CALLS}")


# --------------------------------------------------------------------------- ingest


@pytest.fixture(scope="module")
def ingest_schema(make_settings: Callable[..., Settings]):
    """The ingest app with plaintext allowed too, so schema-valid PlaintextBody examples reach the queue."""
    app = create_ingest(make_settings(server={"allow_plaintext": True}))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_ingest_answers_as_its_schema_says(ingest_schema) -> None:
    # positive_data_acceptance expects a schema-valid body to be accepted; an envelope is schema-valid long
    # before its ciphertext authenticates (a random one never does), so its 400 is right and that check is off.
    fuzz(
        ingest_schema,
        "ingest",
        [{"Authorization": f"Bearer {API_KEY}"}, {"X-API-Key": API_KEY}, {}],
        excluded=(checks.positive_data_acceptance,),
    )


@EXAMPLES
@given(data=st.data())
def _deep_batches(data: st.DataObject, schema, key: str) -> None:
    """Schema-generated machine and logs with a fresh batch_id and created_at, sent plain or sealed."""
    operation = schema["/api/fleet/widget-logs"]["POST"]
    case = data.draw(operation.as_strategy().filter(lambda c: isinstance(c.body, dict) and "logs" in c.body))
    content = {"machine": case.body["machine"], "logs": case.body["logs"]}
    if data.draw(st.booleans(), label="logs dated near created_at"):  # else almost all outside its window: 422
        for log in content["logs"]:
            if isinstance(log, dict):
                log["timestamp"] = batches.now_stamp(-timedelta(seconds=30))
    if data.draw(st.booleans(), label="sealed"):
        case.body = batches.sealed(content, key, compression=data.draw(st.sampled_from(["gzip", "none"])))
    else:
        case.body = batches.plaintext_body(content)
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {API_KEY}"},
        # NUL characters, lone surrogates, UTC offsets beyond ±14:00 and the 64 KiB data bound are refused
        # (422, declared) but are not expressible in the JSON schema, so schema-valid need not mean accepted.
        excluded_checks=[checks.positive_data_acceptance],
    )
    CALLS["ingest"][response.status_code] += 1


def test_ingest_validates_generated_batches_after_decryption(ingest_schema, keys: dict[str, str]) -> None:
    """The same generated content past the envelope checks: the record schema answers (202 or 422), never a 5xx."""
    _deep_batches(schema=ingest_schema, key=keys["current"])


EXTREME_NUMBERS = st.one_of(
    st.sampled_from([10**400, -(10**400), 2**64, -(2**63) - 1, 1e308, -1e308, 5e-324, 0, -0.0]),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "2099-01-01T00:00:00Z"]),
)
"""Numbers no Mac reports, as a compromised one can send them (and numbers as strings)."""

NUMERIC_FIELDS = (
    ("rssi_dbm",),
    ("noise_dbm",),
    ("snr_db",),
    ("channel",),
    ("channel_width_mhz",),
    ("tx_rate_mbps",),
    ("download_mbps",),
    ("upload_mbps",),
    ("latency_ms",),
    ("jitter_ms",),
    ("packet_loss_pct",),
    ("sent",),
    ("received",),
    ("loss_pct",),
    ("rtt_avg_ms",),
    ("rtt_ms", "avg"),
    ("rtt_min_ms",),
    ("rtt_max_ms",),
    ("cpu_percent",),
    ("memory_percent",),
    ("psutil", "cpu_percent"),
    ("psutil", "memory", "percent"),
    ("psutil", "memory", "used"),
    ("psutil", "memory", "total"),
    ("psutil", "uptime_seconds"),
    ("smc", "cpu_die_temp_c"),
    ("battery", "cycle_count"),
    ("battery", "max_capacity_pct"),
    ("process_count",),
)
"""Every number a dashboard widget reads from ``data`` (``atlas.dashboard.extract``)."""


@st.composite
def extreme_data(draw: st.DrawFn) -> dict[str, Any]:
    """A widget's ``data`` with extreme numbers (and timestamps) in the fields the dashboard reads."""
    data: dict[str, Any] = {}
    for keys in draw(st.lists(st.sampled_from(NUMERIC_FIELDS), min_size=1, max_size=12, unique=True)):
        *parents, leaf = keys
        node = data
        for key in parents:
            node = node.setdefault(key, {}) if isinstance(node.get(key, {}), dict) else node
        node[leaf] = draw(EXTREME_NUMBERS)
    data["load_average"] = draw(st.lists(EXTREME_NUMBERS, max_size=3))
    data["fans_rpm"] = draw(st.lists(EXTREME_NUMBERS, max_size=3))
    data["top_cpu"] = [{"name": "p", "pid": draw(EXTREME_NUMBERS), "cpu_percent": draw(EXTREME_NUMBERS)}]
    data["disks"] = {"/": {"percent": draw(EXTREME_NUMBERS), "total": draw(EXTREME_NUMBERS)}}
    data["measured_at"] = draw(
        st.sampled_from(["2099-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])
    )
    return data


LOG_OFFSETS = st.sampled_from(
    [timedelta(0), -timedelta(days=1), timedelta(minutes=5), -timedelta(days=3), timedelta(days=365 * 70)]
)
"""Log timestamps relative to created_at: inside the window, at its edges, and outside it (refused, 422)."""

ACCEPTED: list[str] = []
"""machine_ids of the extreme batches ingest queued (202), looked at on the dashboard afterwards."""


@EXAMPLES
@given(data=st.data())
def _extreme_batches(data: st.DataObject, schema, key: str) -> None:
    operation = schema["/api/fleet/widget-logs"]["POST"]
    created_at = datetime.now(UTC).replace(microsecond=0)
    machine = {**batches.machine(), "machine_id": f"st-extreme-{uuid.uuid4().hex[:12]}"}
    logs = [
        {
            "timestamp": batches.format_timestamp(created_at + data.draw(LOG_OFFSETS, label="offset")),
            "level": "INFO",
            "widget_type": widget_type,
            "message": "extreme",
            "data": data.draw(extreme_data(), label="data"),
        }
        for widget_type in data.draw(
            st.lists(st.sampled_from(["wifi", "speedtest", "ping", "health", "processes"]), min_size=1, max_size=5)
        )
    ]
    content = {"machine": machine, "logs": logs}
    if data.draw(st.booleans(), label="sealed"):
        body = batches.sealed(content, key, created_at=batches.format_timestamp(created_at))
    else:
        body = batches.plaintext_body(content, created_at=batches.format_timestamp(created_at))
    case = operation.Case(body=body, media_type="application/json")
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {API_KEY}"}, excluded_checks=[checks.positive_data_acceptance]
    )
    CALLS["ingest"][response.status_code] += 1
    assert response.status_code in (202, 422), response.text
    if response.status_code == 202:
        ACCEPTED.append(machine["machine_id"])


def test_extreme_numbers_and_timestamps_inside_data_never_give_a_5xx(
    ingest_schema, keys: dict[str, str], drain, viewer
) -> None:
    """Through ingest (202, or 422 for a log outside its batch's window), the real worker, then every page of
    the dashboard that reads those numbers, and a CSV export of them: never a 5xx."""
    ACCEPTED.clear()
    _extreme_batches(schema=ingest_schema, key=keys["current"])
    assert ACCEPTED, "no extreme batch was accepted"
    drain()
    assert viewer.get("/", params={"q": "st-extreme-"}).status_code == 200
    for machine_id in ACCEPTED:
        for chart_range in ("day", "week", "30d"):
            page = viewer.get(f"/machines/{machine_id}", params={"range": chart_range})
            assert page.status_code == 200, (machine_id, page.text[-500:])
    export = viewer.get("/api/exports/logs", params={"machine_id": ACCEPTED[0], "format": "csv"})
    assert export.status_code == 200, export.text[-800:]


# --------------------------------------------------------------------------- exporter


@pytest.fixture(scope="module")
def exporter_database() -> Iterator[str]:
    """A database of this module's own, with a few logs: an unfiltered export is every log the database holds,
    so on the suite's shared database (10,000 machines by then) each call would take seconds."""
    with own_database("_schemathesis") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            insert_machine(conn, logs=every_widget_logs(datetime.now(UTC), hours=1))
        yield url


@pytest.fixture(scope="module")
def credentials(exporter_database: str) -> dict[str, Any]:
    """Bearer tokens of an admin and a viewer, and a viewer's session cookie."""
    tag = uuid.uuid4().hex[:8]
    with psycopg.connect(exporter_database, autocommit=True) as conn:
        admin = create_user(conn, f"st-admin-{tag}", "correct horse battery", "admin")
        viewer = create_user(conn, f"st-viewer-{tag}", "correct horse battery", "viewer")
        session_id, _ = create_session(conn, viewer, timedelta(hours=1))
        cookie = Signer(signing_key(conn, None), salt="atlas-session").sign(session_id).decode()
        return {
            "admin": {"Authorization": f"Bearer {create_token(conn, admin, 'schemathesis')}"},
            "viewer": {"Authorization": f"Bearer {create_token(conn, viewer, 'schemathesis')}"},
            "session": {"Cookie": f"{SESSION_COOKIE}={cookie}"},
        }


@pytest.fixture(scope="module")
def exporter_schema(make_settings: Callable[..., Settings], exporter_database: str) -> Iterator[Any]:
    app = create_exporter(make_settings(database={"url": exporter_database}))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    asgi.shutdown_lifespans()  # its pools close before its database is dropped


def test_exporter_answers_as_its_schema_says(exporter_schema, credentials: dict[str, Any]) -> None:
    # The export filters are declared as plain strings (format=CSV, level=info and "" are accepted too, which
    # an enum would call invalid); the handler checks their domain and answers the declared 422 naming the field.
    fuzz(
        exporter_schema,
        "exporter",
        [credentials["admin"], credentials["viewer"], credentials["session"], {}],
        excluded=(checks.positive_data_acceptance,),
    )


def test_the_deep_paths_were_reached() -> None:
    """Runs after the two above: batches were queued, exports streamed, and every kind of refusal seen."""
    ingest, exporter = CALLS["ingest"], CALLS["exporter"]
    for status in (202, 400, 401, 422):
        assert ingest[status] > 0, ingest
    for status in (200, 401, 403, 422):
        assert exporter[status] > 0, exporter
