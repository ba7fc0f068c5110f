"""``/metrics`` of every service, scraped from real servers: exact counter deltas by label."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from psycopg.types.json import Jsonb

from atlas.contract import (
    ContractError,
    DecryptionError,
    EnvelopeError,
    Keyring,
    PayloadTooLargeError,
    SchemaError,
    UnknownKeyError,
    check_created_at_window,
    generate_encryption_key,
    open_envelope,
    parse_envelope,
)
from atlas.core import metrics
from atlas.core.accounts import create_token, create_user
from atlas.core.config import ConfigError, Settings
from atlas.core.queue import QUEUE_FORMAT, QueuedBatch, enqueue_batch

from .. import batches
from ..fix_processes import BIN, IngestServer, ServerProcess, free_port, service_env

Samples = dict[tuple[str, frozenset], float]


def scrape(url: str) -> Samples:
    """Every sample of ``url``/metrics by (name, labels)."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def deltas(before: Samples, after: Samples, name: str) -> dict[frozenset, float]:
    """Per label set, how much ``name`` grew (only those that changed)."""
    keys = {labels for n, labels in (*before, *after) if n == name}
    grown = {k: after.get((name, k), 0.0) - before.get((name, k), 0.0) for k in keys}
    return {k: v for k, v in grown.items() if v}


def labels(**kw: str) -> frozenset:
    return frozenset(kw.items())


@pytest.fixture(scope="module")
def prefix(redis_prefix: str) -> str:
    """A queue of this module's own, so queue depths are exact (cleaned up with the run's prefix)."""
    return f"{redis_prefix}metrics"


@pytest.fixture(scope="module")
def own_settings(make_settings: Callable[..., Settings], prefix: str) -> Settings:
    return make_settings(redis={"key_prefix": prefix})


@pytest.fixture(scope="module")
def own_ingest(start_ingest: Callable[..., IngestServer], server_config: dict[str, Any], prefix: str) -> IngestServer:
    return start_ingest({**server_config, "redis": {**server_config["redis"], "key_prefix": prefix}})


def test_ingest_counts_each_answer_by_reason_and_route(own_ingest, own_settings, keys, drain) -> None:
    drain(own_settings)
    before = scrape(own_ingest.url)
    assert value(before, "atlas_queue_depth") == 0
    assert value(before, "atlas_redis_up") == 1

    good = batches.sealed(batches.content(4), keys["current"])
    assert own_ingest.post(good).status_code == 202
    assert own_ingest.post(good).status_code == 200  # duplicate
    assert own_ingest.post(batches.sealed(batches.content(2), keys["current"])).status_code == 202
    assert own_ingest.post(good, api_key="wrong-api-key-0123456789").status_code == 401
    assert own_ingest.post(b"this is not json").status_code == 400
    assert own_ingest.post(json.dumps(good).encode(), headers={"Content-Type": "text/plain"}).status_code == 415
    assert own_ingest.post(batches.plaintext_body(batches.content(1))).status_code == 400
    assert own_ingest.post(batches.sealed(batches.content(1), generate_encryption_key())).status_code == 400
    tampered = batches.sealed(batches.content(1), keys["current"])
    tampered["ciphertext"] = batches.sealed(batches.content(1), keys["current"])["ciphertext"]
    assert own_ingest.post(tampered).status_code == 400
    old = batches.now_stamp(-timedelta(days=30))
    assert own_ingest.post(batches.sealed(batches.content(1), keys["current"], created_at=old)).status_code == 400
    bad_level = batches.content(1)
    bad_level["logs"][0]["level"] = "LOUD"
    assert own_ingest.post(batches.sealed(bad_level, keys["current"])).status_code == 422
    assert own_ingest.post(b"{" + b" " * (6 * 1024 * 1024) + b"}").status_code == 413
    assert httpx.get(f"{own_ingest.url}/no/such/page/{uuid.uuid4()}", timeout=10).status_code == 404

    after = scrape(own_ingest.url)
    assert value(after, "atlas_batches_accepted_total") - value(before, "atlas_batches_accepted_total") == 2
    assert value(after, "atlas_logs_accepted_total") - value(before, "atlas_logs_accepted_total") == 6
    assert value(after, "atlas_batches_duplicate_total") - value(before, "atlas_batches_duplicate_total") == 1
    assert deltas(before, after, "atlas_batches_rejected_total") == {
        labels(reason=reason): 1
        for reason in (
            "unauthorized",
            "bad_envelope",
            "unsupported_media_type",
            "plaintext_refused",
            "unknown_key",
            "decrypt_failed",
            "created_at_window",
            "schema",
            "too_large",
        )
    }
    route = "/api/fleet/widget-logs"
    requests = deltas(before, after, "atlas_http_requests_total")
    assert requests == {
        labels(service="ingest", route=route, method="POST", status="202"): 2,
        labels(service="ingest", route=route, method="POST", status="200"): 1,
        labels(service="ingest", route=route, method="POST", status="401"): 1,
        labels(service="ingest", route=route, method="POST", status="400"): 5,
        labels(service="ingest", route=route, method="POST", status="415"): 1,
        labels(service="ingest", route=route, method="POST", status="413"): 1,
        labels(service="ingest", route=route, method="POST", status="422"): 1,
        labels(service="ingest", route="other", method="GET", status="404"): 1,
        # the scrape before this one, counted once it was answered
        labels(service="ingest", route="/metrics", method="GET", status="200"): 1,
    }
    timed = deltas(before, after, "atlas_http_request_duration_seconds_count")
    assert timed[labels(service="ingest", route=route)] == 12
    assert all("/no/such" not in dict(k).get("route", "") for _, k in after)  # never a raw URL

    assert value(after, "atlas_queue_depth") == 2  # one job per batch posted one at a time
    drain(own_settings)
    assert value(scrape(own_ingest.url), "atlas_queue_depth") == 0


def test_failed_jobs_gauge_reads_the_failed_registry(own_ingest, own_settings, open_queue) -> None:
    queue = open_queue(own_settings)
    before = value(scrape(own_ingest.url), "atlas_failed_jobs")
    job = queue.create_job("atlas.worker.jobs.persist_batches", args=([],), failure_ttl=-1)
    job.save()
    queue.failed_job_registry.add(job, ttl=-1)
    try:
        assert value(scrape(own_ingest.url), "atlas_failed_jobs") == before + 1
    finally:
        queue.failed_job_registry.remove(job, delete_job=True)
    assert value(scrape(own_ingest.url), "atlas_failed_jobs") == before


def test_redis_down_still_answers_the_scrape(start_ingest, server_config, keys) -> None:
    server = start_ingest({**server_config, "redis": {"url": "redis://127.0.0.1:1/0"}})
    assert server.post(batches.sealed(batches.content(1), keys["current"])).status_code == 503
    samples = scrape(server.url)
    assert value(samples, "atlas_batches_rejected_total", reason="queue_unavailable") == 1
    assert value(samples, "atlas_redis_up") == 0
    assert not any(name in ("atlas_queue_depth", "atlas_failed_jobs") for name, _ in samples)
    assert ("atlas_batches_accepted_total", frozenset()) in samples  # the counters are still there


def queued(count: int) -> QueuedBatch:
    now = datetime.now(UTC)
    machine = batches.machine()
    return {
        "format": QUEUE_FORMAT,
        "batch_id": str(uuid.uuid4()),
        "created_at": now.isoformat(),
        "received_at": now.isoformat(),
        "kid": None,
        "machine": machine,  # type: ignore[typeddict-item]
        "logs": [
            ((now - timedelta(seconds=i)).isoformat(), "INFO", "ping", f"ping {i}", json.dumps({"seq": i}))
            for i in range(count)
        ],
    }


@pytest.fixture
def worker_process(
    tmp_path, server_config: dict[str, Any], redis_prefix: str
) -> Iterator[Callable[..., tuple[subprocess.Popen, str, Settings]]]:
    """``atlas-server worker --log-format json`` with its metrics server on a free port; stopped at the end."""
    started: list[subprocess.Popen] = []

    def start() -> tuple[subprocess.Popen, str, str]:
        port = free_port()
        prefix = f"{redis_prefix}worker{uuid.uuid4().hex[:6]}"
        config = {
            **server_config,
            "redis": {**server_config["redis"], "key_prefix": prefix},
            "worker": {**server_config["worker"], "metrics_port": port, "metrics_host": "127.0.0.1"},
        }
        path = tmp_path / f"worker-{port}.yaml"
        path.write_text(yaml.safe_dump(config))
        log = open(tmp_path / f"worker-{port}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [BIN / "atlas-server", "worker", "--config", path, "--log-format", "json"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=service_env(),
        )
        proc.log_file = log  # type: ignore[attr-defined]
        proc.log_path = tmp_path / f"worker-{port}.log"  # type: ignore[attr-defined]
        started.append(proc)
        return proc, f"http://127.0.0.1:{port}", prefix

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.log_file.close()  # type: ignore[attr-defined]


def wait_for(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_worker_serves_rows_persisted_and_queue_depth(worker_process, make_settings, open_queue) -> None:
    proc, url, prefix = worker_process()
    wait_for(lambda: proc.poll() is None and httpx.get(f"{url}/metrics", timeout=2).status_code == 200)
    before = scrape(url)
    assert value(before, "atlas_rows_persisted_total") == 0
    assert value(before, "atlas_redis_up") == 1

    settings = make_settings(redis={"key_prefix": prefix})
    queue = open_queue(settings)
    first, second = queued(5), queued(3)
    assert enqueue_batch(queue, first, settings)
    assert enqueue_batch(queue, second, settings)
    wait_for(lambda: value(scrape(url), "atlas_rows_persisted_total") == 8)
    after = scrape(url)
    assert value(after, "atlas_batches_persisted_total") == 2
    assert value(after, "atlas_batches_already_stored_total") == 0
    assert value(after, "atlas_queue_depth") == 0

    proc.terminate()
    proc.wait(15)
    lines = [line for line in proc.log_path.read_text().splitlines() if line.strip()]  # type: ignore[attr-defined]
    assert lines
    entries = [json.loads(line) for line in lines]  # --log-format json: every line is one JSON object
    assert any("Serving metrics on http://127.0.0.1:" in e["message"] for e in entries)
    assert any(
        e["logger"] == "atlas.worker" and "Stored 1 of 1 batch(es), 5 widget logs" in e["message"] for e in entries
    )


def test_worker_metrics_are_off_unless_a_port_is_set(settings: Settings, make_settings) -> None:
    from atlas.worker.runner import start_metrics

    assert settings.worker_metrics_port == 0
    assert start_metrics(settings) is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"worker.metrics_port: cannot listen on 127.0.0.1:{port}"):
            start_metrics(make_settings(worker={"metrics_port": port, "metrics_host": "127.0.0.1"}))


@pytest.fixture(scope="module")
def exporter(start_server: Callable[..., ServerProcess], server_config: dict[str, Any]) -> ServerProcess:
    return start_server("exporter", server_config)


def test_exporter_counts_exports_rows_and_duration(exporter, database_url: str) -> None:
    machine_id = f"metrics-{uuid.uuid4().hex[:12]}"
    start = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    with psycopg.connect(database_url, autocommit=True) as conn:
        user = create_user(conn, f"metrics-{uuid.uuid4().hex[:8]}", "correct horse battery", "viewer")
        token = create_token(conn, user, "metrics test")
        with conn.cursor() as cur:
            cur.executemany(
                'INSERT INTO widget_logs (machine_id, serial_number, "timestamp", level, widget_type, message, data,'
                " batch_id, received_at) VALUES (%s, 'C02METRICS', %s, 'INFO', 'ping', %s, %s, %s, now())",
                [
                    (machine_id, start + timedelta(minutes=i), f"log {i}", Jsonb({"i": i}), uuid.uuid4())
                    for i in range(7)
                ],
            )
    before = scrape(exporter.url)
    response = httpx.get(
        f"{exporter.url}/api/exports/logs",
        params={"format": "ndjson", "machine_id": machine_id},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 200
    assert len(response.text.splitlines()) == 7
    assert httpx.get(f"{exporter.url}/api/exports/logs", timeout=10).status_code == 401

    def counted() -> bool:
        return (
            value(scrape(exporter.url), "atlas_exports_total", format="ndjson", status="complete")
            == value(before, "atlas_exports_total", format="ndjson", status="complete") + 1
        )

    wait_for(counted, timeout=10)
    after = scrape(exporter.url)
    assert deltas(before, after, "atlas_exports_total") == {labels(format="ndjson", status="complete"): 1}
    assert deltas(before, after, "atlas_export_rows_total") == {labels(format="ndjson"): 7}
    assert deltas(before, after, "atlas_export_duration_seconds_count") == {
        labels(format="ndjson", status="complete"): 1
    }
    requests = deltas(before, after, "atlas_http_requests_total")
    route = "/api/exports/logs"
    assert requests[labels(service="exporter", route=route, method="GET", status="200")] == 1
    assert requests[labels(service="exporter", route=route, method="GET", status="401")] == 1
    assert not any(name.startswith("atlas_queue") for name, _ in after)  # the exporter does not use Redis


def test_dashboard_counts_pages_by_route_template(dashboard) -> None:
    before = scrape(dashboard.url)
    machine = f"mac-{uuid.uuid4().hex[:8]}"
    assert httpx.get(f"{dashboard.url}/machines/{machine}", timeout=10).status_code == 303  # to the login page
    assert httpx.get(f"{dashboard.url}/login", timeout=10).status_code == 200
    after = scrape(dashboard.url)
    requests = deltas(before, after, "atlas_http_requests_total")
    assert requests[labels(service="dashboard", route="/machines/{machine_id:path}", method="GET", status="303")] == 1
    assert requests[labels(service="dashboard", route="/login", method="GET", status="200")] == 1
    assert not any(machine in dict(k).get("route", "") for _, k in after)
    assert ("atlas_exports_total", labels(format="csv", status="complete")) in after  # the export API is mounted here


def test_rejection_reasons_follow_the_contract_errors(keys) -> None:
    """The reasons told apart by wording are pinned against the contract's real errors."""
    now = datetime.now(UTC)

    def reason_of(action: Callable[[], Any]) -> str:
        with pytest.raises(ContractError) as caught:
            action()
        return metrics.rejection_reason(caught.value)

    window = {"now": now, "max_age": timedelta(days=7), "max_future": timedelta(minutes=5)}
    assert reason_of(lambda: check_created_at_window(now - timedelta(days=8), **window)) == "created_at_window"
    assert reason_of(lambda: check_created_at_window(now + timedelta(hours=1), **window)) == "created_at_window"
    envelope = parse_envelope(batches.sealed(batches.content(1), keys["current"]))
    assert reason_of(
        lambda: open_envelope(envelope, Keyring.from_base64([generate_encryption_key()]), max_plaintext_bytes=1 << 20)
    ) == ("unknown_key")
    other = parse_envelope(batches.sealed(batches.content(1), keys["current"]))
    swapped = dataclasses.replace(envelope, ciphertext=other.ciphertext)
    assert (
        reason_of(lambda: open_envelope(swapped, Keyring.from_base64([keys["current"]]), max_plaintext_bytes=1 << 20))
        == "decrypt_failed"
    )
    assert metrics.rejection_reason(EnvelopeError("body", "encryption required: send a v1 envelope")) == (
        "plaintext_refused"
    )
    assert metrics.rejection_reason(EnvelopeError("created_at", "must be an RFC 3339 date-time")) == "bad_envelope"
    assert metrics.rejection_reason(PayloadTooLargeError("ciphertext", "too big")) == "too_large"
    assert metrics.rejection_reason(SchemaError([])) == "schema"
    assert metrics.rejection_reason(UnknownKeyError("kid", "x")) == "unknown_key"
    assert metrics.rejection_reason(DecryptionError("ciphertext", "x")) == "decrypt_failed"
    assert set(metrics.REJECTION_REASONS) >= {"unauthorized", "queue_unavailable"}
