"""The ingest API: ``POST /api/fleet/widget-logs``, ``/healthz``, ``/readyz``, ``/metrics``.

The route stays thin: authenticate from headers before reading the body,
read at most ``max_body_bytes``, hand the bytes to ``intake.read_batch`` and
the result to the grouping enqueuer. Every contract error becomes a 4xx
with a reason; Redis trouble becomes a 503 with Retry-After, never a 202.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gc
import json
import logging
import os
import socket
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import cached_property, partial
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from rq import Queue
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from atlas.contract import (
    ENROLL_PATH,
    WIDGET_LOGS_PATH,
    WIDGET_LOGS_V2_PATH,
    ContractError,
    DeviceAuthError,
    HpkeKeyring,
    KeyFormatError,
    PayloadTooLargeError,
    SchemaError,
    check_clock,
    parse_signed_headers,
    verify_request,
)
from atlas.core import metrics
from atlas.core.config import Settings, get_settings
from atlas.core.devices import Device, EnrollRefused
from atlas.core.edge import add_health_routes, problem, retry_later, unavailable
from atlas.core.errors import ConfigError, QueueUnavailable, Unavailable, store_error
from atlas.core.pipeline import Heartbeat, process_name, report_ingest
from atlas.core.queue import QueuedBatch, accepted_marker, batch_queue, queued_batch, redis_client
from atlas.core.ratelimit import IngestLimits

from .auth import is_valid_key, presented_key
from .devices import DeviceDirectory
from .grouping import GroupingEnqueuer, QueueBusy
from .intake import Accepted, AlreadyAccepted, read_batch, read_batch_v2
from .models import (
    Duplicate,
    DuplicateV2,
    EncryptedBody,
    Enrolled,
    EnrollRequest,
    HpkeKey,
    PlaintextBody,
    Problem,
    Queued,
    QueuedV2,
    SchemaProblem,
)

log = logging.getLogger("atlas.ingest")

INLINE_DECODE_BYTES = 64 * 1024
"""Bodies up to this size, whose plaintext is no larger either, are decoded in the event loop (an agent's
batch: about half a millisecond, less than a thread hand-off costs). Anything more, a gzip bomb
included, is decoded in the bounded decode pool, so the loop never inflates or parses more than this."""

MAX_ENROLL_BODY_BYTES = 16 * 1024
"""An enrollment request is a few hundred bytes."""


_heap_frozen = False


def _freeze_startup_heap() -> None:
    """Once per process (tests build many apps in one): move what start-up loaded out of the collector's reach."""
    global _heap_frozen
    if not _heap_frozen:
        gc.collect()
        gc.freeze()
        _heap_frozen = True


class BodyTooLarge(Exception):
    pass


async def read_limited(request: Request, limit: int) -> bytes:
    """Read the body, stopping as soon as it grows past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class Ingest:
    """Per-app state: settings, the Redis queue and the grouping enqueuer, opened on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hpke: HpkeKeyring | None = None
        self.devices: DeviceDirectory | None = None
        if settings.hpke_keyring_path:
            try:
                self.hpke = HpkeKeyring.load(settings.hpke_keyring_path)
            except KeyFormatError as exc:
                raise ConfigError(f"server.hpke_keyring: {exc}") from None
            if not self.hpke:
                raise ConfigError("server.hpke_keyring: holds no key (add one: atlas-server keygen --hpke)")
            self.devices = DeviceDirectory(settings)
        self.hpke_keys = [key.to_json() for key in self.hpke.public_keys()] if self.hpke else []
        """What every v2 answer hands the device: the server's public keys, the current one first."""
        self.enqueuer = GroupingEnqueuer(lambda: self.queue, settings)
        self._decoding = 0  # bodies in the decode pool or waiting for it; touched only by the event loop
        self.name = process_name("ingest")
        self.started_at = datetime.now(UTC)
        self.batches_accepted = 0  # the pipeline report's; touched only by the event loop
        self.last_accepted_at: datetime | None = None
        self._report_failing = False

    @cached_property
    def queue(self) -> Queue:
        return batch_queue(redis_client(self.settings.redis_url), self.settings)

    @cached_property
    def decoder(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.settings.decode_threads, thread_name_prefix="atlas-decode")

    def decode(
        self, body: bytes, received_at: datetime, *, inline: bool = False, device: Device | None = None
    ) -> QueuedBatch | AlreadyAccepted | JSONResponse:
        """Decrypt and validate one body: the batch to queue, a known duplicate, or the error answer.

        Inline, the plaintext is capped at INLINE_DECODE_BYTES and a larger one raises
        PayloadTooLargeError for the caller to move to the pool; in the pool, a batch_id
        already accepted is answered before the body is decrypted. With ``device`` (authenticated),
        the body is a v2 envelope of that device.
        """

        def read(**kw: Any) -> Accepted | AlreadyAccepted:
            if device is None:
                return read_batch(body, self.settings, now=received_at, **kw)
            assert self.hpke is not None
            return read_batch_v2(body, self.settings, self.hpke, device, now=received_at, **kw)

        try:
            if inline:
                accepted = read(max_plaintext_bytes=min(INLINE_DECODE_BYTES, self.settings.max_plaintext_bytes))
            else:
                accepted = read(accepted_before=self.accepted_before)
        except SchemaError as exc:
            metrics.reject("schema")
            return JSONResponse({"detail": [v.as_dict() for v in exc.violations]}, status_code=422)
        except PayloadTooLargeError as exc:
            if inline and self.settings.max_plaintext_bytes > INLINE_DECODE_BYTES:
                raise
            metrics.reject("too_large")
            return problem(exc.status, exc.detail, exc.field)
        except ContractError as exc:
            metrics.reject(metrics.rejection_reason(exc))
            return problem(exc.status, exc.detail, exc.field)
        if isinstance(accepted, AlreadyAccepted):
            return accepted
        if accepted.legacy_key:
            metrics.BATCHES_LEGACY_KEY.inc()
        if accepted.encrypted:
            log.info(
                "Successfully decrypted widget logs payload (batch_id=%s, logs=%d, kid=%s)",
                accepted.batch_id,
                len(accepted.content.logs),
                accepted.kid,
            )
        return queued_batch(
            accepted.content,
            batch_id=accepted.batch_id,
            created_at=accepted.created_at,
            received_at=received_at,
            kid=accepted.kid,
            protocol=accepted.protocol,
        )

    def accepted_before(self, batch_id: str) -> bool:
        """Whether the duplicate marker of ``batch_id`` is set; unknown (False) when Redis is down."""
        try:
            return bool(self.queue.connection.exists(accepted_marker(self.settings, batch_id)))
        except Exception as exc:
            if isinstance(store_error(exc), QueueUnavailable):
                return False
            raise

    async def decode_off_loop(
        self, body: bytes, received_at: datetime, device: Device | None = None
    ) -> QueuedBatch | AlreadyAccepted | JSONResponse:
        """Decode in the pool, or answer 503 when every thread and backlog slot is taken."""
        if self._decoding >= self.settings.decode_threads + self.settings.decode_backlog:
            metrics.reject("decode_busy")
            return problem(503, "decoder busy, retry later", headers=retry_later())
        self._decoding += 1
        try:
            decode = partial(self.decode, body, received_at, device=device)
            return await asyncio.get_running_loop().run_in_executor(self.decoder, decode)
        finally:
            self._decoding -= 1

    async def accept(self, body: bytes, device: Device | None = None) -> JSONResponse:
        received_at = datetime.now(UTC)
        decoded: QueuedBatch | AlreadyAccepted | JSONResponse
        if len(body) <= INLINE_DECODE_BYTES:
            try:
                decoded = self.decode(body, received_at, inline=True, device=device)
            except PayloadTooLargeError:  # small body, large plaintext: finish in the pool
                decoded = await self.decode_off_loop(body, received_at, device)
        else:
            decoded = await self.decode_off_loop(body, received_at, device)
        if isinstance(decoded, JSONResponse):
            return decoded
        if isinstance(decoded, AlreadyAccepted):
            log.info("Duplicate batch %s: already accepted, not decrypted", decoded.batch_id)
            metrics.BATCHES_DUPLICATE.inc()
            return JSONResponse(Duplicate(batch_id=decoded.batch_id).model_dump(), status_code=200)
        batch_id = decoded["batch_id"]
        try:
            queued = await self.enqueuer.submit(decoded)
        except QueueBusy:
            log.warning("Enqueue backlog full, answering 503 for batch %s", batch_id)
            metrics.reject("queue_unavailable")
            return problem(503, "queue busy, retry later", headers=retry_later())
        except Exception as exc:  # not queued: the agent keeps the batch and retries
            if isinstance(store_error(exc), Unavailable):
                log.warning("Queue unavailable, answering 503 for batch %s: %s", batch_id, type(exc).__name__)
            else:  # a reason of ours
                log.exception("Enqueueing batch %s failed; answering 503", batch_id)
            metrics.reject("queue_unavailable")
            return unavailable(QueueUnavailable()).response()
        if not queued:
            log.info("Duplicate batch %s: already accepted", batch_id)
            metrics.BATCHES_DUPLICATE.inc()
            return JSONResponse(Duplicate(batch_id=batch_id).model_dump(), status_code=200)
        metrics.BATCHES_ACCEPTED.inc()
        metrics.LOGS_ACCEPTED.inc(len(decoded["logs"]))
        self.batches_accepted += 1
        self.last_accepted_at = received_at
        return JSONResponse(Queued(batch_id=batch_id, accepted=len(decoded["logs"])).model_dump(), status_code=202)

    def report(self) -> None:
        """Leave this process's pipeline report in Redis, for a worker to copy to PostgreSQL (blocking)."""
        beat = Heartbeat(
            role="ingest",
            name=self.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self.started_at,
            last_seen=datetime.now(UTC),
            batches_accepted=self.batches_accepted,
            last_accepted_at=self.last_accepted_at,
        )
        try:
            report_ingest(self.queue.connection, self.settings, beat)
        except Exception as exc:
            if not isinstance(store_error(exc), QueueUnavailable):
                raise
            if not self._report_failing:
                log.warning("Could not leave the pipeline report in Redis: %s", type(exc).__name__)
            self._report_failing = True
        else:
            self._report_failing = False

    async def report_forever(self) -> None:
        """Report every ``server.pipeline_report_seconds`` until cancelled (the app's lifespan)."""
        while True:
            try:
                await asyncio.to_thread(self.report)
            except Exception:
                log.exception("The pipeline report failed")
            await asyncio.sleep(self.settings.pipeline_report_seconds)

    def close(self) -> None:
        """Close the Redis connection, if one was opened (the app's shutdown)."""
        if "decoder" in self.__dict__:
            self.decoder.shutdown(wait=False, cancel_futures=True)
        if "queue" in self.__dict__:
            self.queue.connection.close()
        if self.devices is not None:
            self.devices.close()

    def ready(self) -> bool:
        try:
            return bool(self.queue.connection.ping())
        except Exception as exc:
            if isinstance(store_error(exc), QueueUnavailable):
                return False
            raise


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": Problem,
        "description": "Malformed body or envelope field, unknown kid, failed tag, "
        "created_at outside the window, or plaintext sent where encryption is required",
    },
    401: {"model": Problem, "description": "Missing or wrong API key"},
    413: {"model": Problem, "description": "Body or decompressed plaintext too large"},
    415: {"model": Problem, "description": "Content-Type is not application/json"},
    422: {"model": SchemaProblem, "description": "Plaintext breaks the record schema"},
    429: {"model": Problem, "description": "Over the client address's or API key's rate; retry after Retry-After"},
    503: {"model": Problem, "description": "Queue unavailable or decoder busy; retry after Retry-After seconds"},
}


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ingest app; settings default to config.yaml and the environment."""
    settings = settings or get_settings()
    settings.require_api_keys()
    ingest = Ingest(settings)
    limits = IngestLimits(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.keyring:
            log.warning("No encryption key configured: accepting PLAINTEXT widget-log batches")
        elif settings.allow_plaintext:
            log.warning("allow_plaintext is on: unencrypted batches are accepted beside encrypted ones")
        else:
            log.info("Widget log decryption enabled (AES-256-GCM, %d key(s))", len(settings.keyring))
        if ingest.devices is None:
            log.info("Contract v2 (enrolled devices) is off: server.hpke_keyring is not set")
        else:
            ingest.devices.open()
            current = ingest.hpke_keys[0]
            log.info(
                "Contract v2 enabled: enrollment and signed batches, HPKE key %s (%s) current, %d key(s)",
                current["kid"],
                current["suite"],
                len(ingest.hpke_keys),
            )
        if not settings.accept_v1:
            log.info("server.accept_v1 is false: v1 batches are refused, only enrolled devices may send")
        # Everything loaded so far (modules, schemas, the app) lives as long as the process: moved out of
        # the collector's reach, a full collection scans only what requests leave behind. Without it, a
        # full collection paused the event loop for tens of milliseconds under load.
        _freeze_startup_heap()
        reporting = asyncio.create_task(ingest.report_forever())
        yield
        reporting.cancel()
        ingest.close()
        metrics.close_registry(app.state.metrics_registry)

    app = FastAPI(title="Atlas ingest", version="1", lifespan=lifespan)
    app.state.ingest = ingest
    metrics.add_metrics(app, "ingest", settings, queue=True)

    async def json_body(request: Request) -> bytes | JSONResponse:
        """The request's JSON body, read within ``server.max_body_bytes``; or the 415, 413 or 408 answer."""
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            metrics.reject("unsupported_media_type")
            return problem(415, "Content-Type must be application/json")
        try:
            return await read_limited(request, settings.max_body_bytes)
        except BodyTooLarge:
            metrics.reject("too_large")
            return problem(413, f"body: exceeds {settings.max_body_bytes} bytes", "body")
        except ClientDisconnect:  # gone, or closed for missing the body deadline: nobody reads this answer
            return problem(408, "body: the client went away before sending all of it", "body")

    @app.post(
        WIDGET_LOGS_PATH,
        status_code=202,
        response_model=Queued,
        responses={200: {"model": Duplicate, "description": "Batch already accepted"}, **_ERRORS},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"$ref": "#/components/schemas/EncryptedBody"},
                                {"$ref": "#/components/schemas/PlaintextBody"},
                            ]
                        }
                    }
                },
            },
            "security": [{"bearer": []}, {"apiKey": []}],
        },
        summary="Submit one batch of widget logs",
    )
    async def widget_logs(request: Request) -> Response:
        if refused := limits.check_address(request):  # before the key and the body: floods are cheap to refuse
            return refused
        if not settings.accept_v1:
            metrics.reject("v1_off")
            return problem(
                403, "contract v1 is switched off on this server (server.accept_v1: false): enroll and send v2"
            )
        api_key = presented_key(request.headers)
        if not is_valid_key(api_key, settings.api_keys):
            metrics.reject("unauthorized")
            return problem(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})
        if refused := limits.check_key(api_key):
            return refused
        body = await json_body(request)
        if isinstance(body, JSONResponse):
            return body
        return await ingest.accept(body)

    def v2_off() -> JSONResponse:
        return problem(404, "contract v2 is off on this server (server.hpke_keyring is not set)")

    @app.post(
        ENROLL_PATH,
        status_code=201,
        response_model=Enrolled,
        responses={
            400: {"model": Problem, "description": "Malformed request"},
            401: {"model": Problem, "description": "Enroll secret unknown, expired, used up or revoked"},
            404: {"model": Problem, "description": "Contract v2 is off on this server"},
            409: {"model": Problem, "description": "machine_id enrolled by another Mac"},
            429: {"model": Problem, "description": "Over the client address's rate"},
            503: {"model": Problem, "description": "Database unavailable; retry after Retry-After"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EnrollRequest"}}},
            }
        },
        summary="Enroll a Mac as a device (contract v2)",
    )
    async def enroll(request: Request) -> Response:
        if refused := limits.check_address(request):
            return refused
        if ingest.devices is None:
            return v2_off()
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return problem(415, "Content-Type must be application/json")
        try:
            body = await read_limited(request, MAX_ENROLL_BODY_BYTES)
        except BodyTooLarge:
            return problem(413, f"body: exceeds {MAX_ENROLL_BODY_BYTES} bytes", "body")
        except ClientDisconnect:
            return problem(408, "body: the client went away before sending all of it", "body")
        try:
            asked = EnrollRequest.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return problem(400, f"{where}: {first['msg']}"[:300], where[:64])
        try:
            public_key = base64.b64decode(asked.public_key, validate=True)
            Ed25519PublicKey.from_public_bytes(public_key)
        except (binascii.Error, ValueError):
            return problem(400, "public_key: must be base64 of a raw 32-byte Ed25519 public key", "public_key")
        identity = asked.model_dump(exclude={"enroll_secret", "public_key"})
        try:
            device, replaced = await run_in_threadpool(
                ingest.devices.enroll, asked.enroll_secret, public_key=public_key, **identity
            )
        except EnrollRefused as exc:
            return problem(exc.status, exc.reason, exc.reason.split(":")[0])
        except Exception as exc:
            if isinstance(down := store_error(exc), Unavailable):
                return unavailable(down).response()
            raise
        if replaced is not None:
            log.info(
                "Device %s enrolled for machine %s, replacing device %s (re-enrolled Mac)",
                device.device_id,
                device.machine_id,
                replaced.device_id,
            )
        else:
            log.info("Device %s enrolled for machine %s", device.device_id, device.machine_id)
        answer = Enrolled(
            device_id=device.device_id,
            machine_id=device.machine_id,
            replaced_device_id=replaced.device_id if replaced else None,
            hpke_keys=[HpkeKey.model_validate(key) for key in ingest.hpke_keys],
        )
        return JSONResponse(answer.model_dump(), status_code=201)

    def with_keys(response: JSONResponse) -> JSONResponse:
        """The answer to an authenticated device, with the server's current HPKE public keys added."""
        content = json.loads(bytes(response.body))
        content["hpke_keys"] = ingest.hpke_keys
        headers = {k: v for k, v in response.headers.items() if k.lower() in ("retry-after",)}
        return JSONResponse(content, status_code=response.status_code, headers=headers)

    def unauthorized(exc: ContractError) -> JSONResponse:
        metrics.reject("unauthorized")
        return problem(401, exc.detail, exc.field, headers={"WWW-Authenticate": "Atlas-Signature"})

    @app.post(
        WIDGET_LOGS_V2_PATH,
        status_code=202,
        response_model=QueuedV2,
        responses={
            200: {"model": DuplicateV2, "description": "Batch already accepted"},
            **_ERRORS,
            401: {"model": Problem, "description": "Device credential missing, wrong, stale, revoked or replaced"},
            403: {"model": Problem, "description": "The batch names another device, machine_id or serial number"},
            404: {"model": Problem, "description": "Contract v2 is off on this server"},
        },
        summary="Submit one batch of widget logs as an enrolled device (contract v2)",
    )
    async def widget_logs_v2(request: Request) -> Response:
        if refused := limits.check_address(request):
            return refused
        if ingest.devices is None:
            return v2_off()
        try:
            signed = parse_signed_headers(request.headers)
            check_clock(signed)
        except DeviceAuthError as exc:
            return unauthorized(exc)
        device = ingest.devices.cached(signed.device_id)
        if device is None:
            try:
                device = await run_in_threadpool(ingest.devices.lookup, signed.device_id)
            except Exception as exc:
                if isinstance(down := store_error(exc), Unavailable):
                    return unavailable(down).response()
                raise
        if device is None or not device.live:
            why = (
                "unknown device"
                if device is None
                else ("device revoked" if device.revoked_at else "device replaced by a later enrollment of this Mac")
            )
            return unauthorized(DeviceAuthError("Atlas-Device", f"{why}; enroll again"))
        body = await json_body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            verify_request(device.public_key, signed, request.method, request.url.path, body)
        except DeviceAuthError as exc:
            return unauthorized(exc)
        if refused := limits.check_device(device.device_id):
            return with_keys(refused)
        if ingest.devices.needs_touch(device.device_id):
            try:
                await run_in_threadpool(ingest.devices.touch, device.device_id)
            except Exception as exc:  # last_seen_at is a courtesy; the batch does not wait for PostgreSQL
                if store_error(exc) is None:
                    raise
        return with_keys(await ingest.accept(body, device))

    add_health_routes(app, ingest.ready, needs="Redis", unready="redis unreachable", unready_model=Problem)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for model in (EncryptedBody, PlaintextBody, EnrollRequest):
            schemas[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schemas[model.__name__].pop("$defs", {}))
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
