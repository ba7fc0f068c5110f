"""Prometheus metrics of every Atlas process, and ``GET /metrics`` for the web services.

Built on ``prometheus_client``, the Prometheus project's own Python client:
it is maintained with the exposition format itself, thread-safe, and ships
the text encoder, the parser the tests use and a small HTTP server for the
worker, which has no web app of its own. Writing the format by hand would
mean owning its escaping rules and histogram conventions for nothing.

One registry per process. Under ``uvicorn --workers N`` each worker process
counts on its own and answers ``/metrics`` with its own numbers (whichever
process the scrape lands on); run one process per container or port when the
totals matter, or sum what Prometheus scrapes from each. Gauges read from
Redis (queue depth, failed jobs) are the same in every process.

Labels come from small fixed sets only (route templates, methods, status
codes, rejection reasons, export formats and outcomes), never from request
text, so the number of series stays bounded whatever clients send.

``/metrics`` needs no authentication, as Prometheus scrapes usually do not;
it shows counts only, never a key, a log's content or a client's input. It is
meant for the internal network: the TLS proxy in front of the services does
not route it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from fastapi import FastAPI
    from rq import Queue

    from atlas.core.config import Settings

log = logging.getLogger("atlas.metrics")

METRICS_PATH = "/metrics"

# No *_created series: they double the output and Atlas graphs rates, not ages.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

REGISTRY = CollectorRegistry(auto_describe=True)
"""This process's metrics (the counters below); each service's exposition adds its own collectors."""

OTHER = "other"
"""Label value for anything outside a label's fixed set (an unmatched path, an odd method)."""

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REJECTION_REASONS = (
    "unauthorized",  # 401: no or wrong API key
    "unsupported_media_type",  # 415: not application/json
    "too_large",  # 413: body or decompressed plaintext over its bound
    "bad_envelope",  # 400: malformed body or envelope field, bad gzip
    "unknown_key",  # 400: kid names no configured payload key
    "decrypt_failed",  # 400: the GCM tag did not verify
    "plaintext_refused",  # 400: plaintext sent while encryption is required
    "created_at_window",  # 400: created_at too old or in the future
    "schema",  # 422: the plaintext breaks the record schema
    "queue_unavailable",  # 503: Redis down, nothing queued
    "decode_busy",  # 503: every decode thread and backlog slot taken by large bodies
    "rate_limited",  # 429: over the per-address, per-API-key or per-device rate limit
    "device_mismatch",  # 403: a v2 batch names another device, machine_id or serial than its credential
    "v1_refused",  # 403: a v1 batch while server.accept_v1 is false
)
"""Every value of ``atlas_batches_rejected_total{reason}``."""

EXPORT_FORMATS = ("csv", "json", "ndjson")
EXPORT_STATUSES = ("complete", "failed", "aborted")

HTTP_REQUESTS = Counter(
    "atlas_http_requests_total",
    "HTTP requests answered, by route template, method and status code",
    ("service", "route", "method", "status"),
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "atlas_http_request_duration_seconds",
    "Time from request to the last byte of the response (streamed exports included)",
    ("service", "route"),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
BATCHES_ACCEPTED = Counter("atlas_batches_accepted_total", "Batches queued (answered 202)", registry=REGISTRY)
LOGS_ACCEPTED = Counter("atlas_logs_accepted_total", "Widget logs in the batches queued", registry=REGISTRY)
BATCHES_LEGACY_KEY = Counter(
    "atlas_batches_legacy_key_total",
    "Encrypted batches without a salt that decrypted: sealed under the shared payload key itself (2^32 seals per key)",
    registry=REGISTRY,
)
BATCHES_DUPLICATE = Counter(
    "atlas_batches_duplicate_total",
    "Batches answered 200 duplicate: accepted within the duplicate window",
    registry=REGISTRY,
)
BATCHES_REJECTED = Counter(
    "atlas_batches_rejected_total",
    "Batches refused, by reason (see atlas.core.metrics.REJECTION_REASONS)",
    ("reason",),
    registry=REGISTRY,
)
BATCHES_PERSISTED = Counter(
    "atlas_batches_persisted_total", "Batches the worker stored in PostgreSQL", registry=REGISTRY
)
BATCHES_ALREADY_STORED = Counter(
    "atlas_batches_already_stored_total",
    "Batches the worker found stored already (a replay) and skipped",
    registry=REGISTRY,
)
ROWS_PERSISTED = Counter(
    "atlas_rows_persisted_total", "Widget-log rows the worker stored in PostgreSQL", registry=REGISTRY
)
EXPORTS = Counter(
    "atlas_exports_total",
    "Exports by format and outcome (complete, failed, aborted by the client)",
    ("format", "status"),
    registry=REGISTRY,
)
EXPORT_ROWS = Counter("atlas_export_rows_total", "Rows written by exports", ("format",), registry=REGISTRY)
EXPORT_DURATION = Histogram(
    "atlas_export_duration_seconds",
    "Time from the start of an export to its end, by format and outcome",
    ("format", "status"),
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
    registry=REGISTRY,
)

for _reason in REJECTION_REASONS:  # every series exists from the start, so rate() sees the first one
    BATCHES_REJECTED.labels(_reason)
for _fmt in EXPORT_FORMATS:
    EXPORT_ROWS.labels(_fmt)
    for _status in EXPORT_STATUSES:
        EXPORTS.labels(_fmt, _status)


def reject(reason: str) -> None:
    """Count one refused batch; ``reason`` must be one of REJECTION_REASONS."""
    BATCHES_REJECTED.labels(reason if reason in REJECTION_REASONS else OTHER).inc()


def rejection_reason(exc: Exception) -> str:
    """The rejection reason of a contract error (``atlas.contract.errors``) raised while reading a batch.

    The subclasses say most of it; two kinds of EnvelopeError are told apart by
    their field and the fixed wording of the contract's own checks (pinned by
    tests/core/test_metrics.py against the real errors).
    """
    from atlas.contract import (
        DecryptionError,
        DeviceAuthError,
        DeviceMismatchError,
        PayloadTooLargeError,
        SchemaError,
        UnknownKeyError,
    )

    if isinstance(exc, SchemaError):
        return "schema"
    if isinstance(exc, PayloadTooLargeError):
        return "too_large"
    if isinstance(exc, DeviceMismatchError):
        return "device_mismatch"
    if isinstance(exc, DeviceAuthError):
        return "unauthorized"
    if isinstance(exc, DecryptionError):
        return "decrypt_failed"
    if isinstance(exc, UnknownKeyError):
        return "unknown_key"
    reason = getattr(exc, "reason", "")
    field = getattr(exc, "field", "")
    if field == "body" and reason.startswith("encryption required"):
        return "plaintext_refused"
    if field == "created_at" and (reason.startswith("is older than") or reason.endswith("in the future")):
        return "created_at_window"
    return "bad_envelope"


class QueueCollector(Collector):
    """Queue depth and failed jobs, read from Redis at scrape time.

    A scrape never fails because Redis is down: it reports ``atlas_redis_up 0``
    and leaves the Redis gauges out rather than showing a stale or zero depth.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._queue: Queue | None = None

    def _open(self) -> Queue:
        if self._queue is None:
            from atlas.core.queue import batch_queue, redis_client

            self._queue = batch_queue(redis_client(self.settings.redis_url), self.settings)
        return self._queue

    def close(self) -> None:
        """Close the Redis connection, if a scrape opened one."""
        if self._queue is not None:
            self._queue.connection.close()
            self._queue = None

    def describe(self) -> Iterable[Metric]:
        return ()  # read at scrape time only: describing must not touch Redis

    def collect(self) -> Iterator[Metric]:
        from redis.exceptions import RedisError

        up = GaugeMetricFamily("atlas_redis_up", "1 if Redis answered this scrape, else 0")
        try:
            queue = self._open()
            with queue.connection.pipeline(transaction=False) as pipe:
                pipe.llen(queue.key)
                pipe.zcard(queue.failed_job_registry.key)
                pipe.zcard(queue.scheduled_job_registry.key)
                depth, failed, retrying = pipe.execute()
        except RedisError as exc:
            log.debug("Redis unreachable for metrics: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily(
            "atlas_queue_depth", "Jobs waiting in the batch queue (a job carries one or more batches)", value=depth
        )
        yield GaugeMetricFamily(
            "atlas_failed_jobs",
            "Jobs out of retries, waiting in the failed registry (atlas-server failed)",
            value=failed,
        )
        yield GaugeMetricFamily("atlas_retrying_jobs", "Jobs waiting for their next retry", value=retrying)


def service_registry(settings: Settings | None = None, *, queue: bool = False) -> CollectorRegistry:
    """What one service exposes: this process's counters, process statistics, and the queue gauges if asked."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in (REGISTRY, PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    if queue:
        if settings is None:
            raise ValueError("the queue gauges need the settings")
        registry.register(QueueCollector(settings))
    return registry


def close_registry(registry: CollectorRegistry) -> None:
    """Close what a service's registry holds open (the queue gauges' Redis connection)."""
    for collector in list(registry._collector_to_names):  # prometheus_client has no public listing
        if isinstance(collector, QueueCollector):
            collector.close()


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else OTHER


class MetricsMiddleware:
    """Counts and times every HTTP request by route template and status.

    Plain ASGI (not Starlette's BaseHTTPMiddleware) so streamed exports pass
    through untouched; the route is the template the router matched (e.g.
    ``/machines/{machine_id:path}``), read after routing, never the raw URL.
    """

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route_template(scope)
            method = scope.get("method", "")
            HTTP_REQUESTS.labels(self.service, route, method if method in METHODS else OTHER, str(status)).inc()
            HTTP_DURATION.labels(self.service, route).observe(time.perf_counter() - started)


def add_metrics(app: FastAPI, service: str, settings: Settings | None = None, *, queue: bool = False) -> None:
    """Count ``app``'s requests and serve ``GET /metrics`` (Prometheus text format, no authentication)."""
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool

    registry = service_registry(settings, queue=queue)
    app.state.metrics_registry = registry  # closed with the app (close_registry)

    @app.get(METRICS_PATH, include_in_schema=False)
    async def metrics() -> Response:
        body = await run_in_threadpool(exposition, registry)  # the Redis gauges block for a moment
        return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})

    app.add_middleware(MetricsMiddleware, service=service)


def start_metrics_server(port: int, addr: str, registry: CollectorRegistry) -> WSGIServer:
    """Serve ``/metrics`` from a background thread (the worker's); returns the server, for ``shutdown()``."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr, registry=registry)
    return server
