"""The export API: ``GET /api/exports/logs`` streams CSV, JSON or NDJSON of any size.

``HEAD`` on the same URL answers with the headers a ``GET`` would get, and
the number of rows in ``X-Atlas-Row-Count`` (``preview``), without
exporting anything.

PostgreSQL writes a JSON or NDJSON export (one ``COPY ... TO STDOUT``, see
``query``); a CSV export, and any export of logs encrypted at rest, is written
by Python (``decrypted``) from a server-side cursor. This service
authenticates, records the export in the audit log, and passes the bytes on
in chunks, gzipped when the client asks. The first chunk is read
before the response starts, so a database that is down gives a 503, not an
empty file. A stream that fails later is cut off without HTTP's final chunk
(and, for JSON, without the closing bracket; for gzip, without the trailer),
so the client can tell the file is incomplete.

``add_export_routes`` also mounts these routes on the dashboard, so its
export links work on the dashboard's own origin; the dashboard passes a
``Refuse`` that answers a browser with a page instead of a JSON problem.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
import psycopg
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import Response, StreamingResponse
from psycopg.abc import Buffer
from psycopg_pool import PoolTimeout
from starlette.concurrency import run_in_threadpool

from atlas.contract import WIDGET_TYPES
from atlas.core import metrics
from atlas.core.atrest import SETTING
from atlas.core.config import Settings, get_settings
from atlas.core.content import require_keys
from atlas.core.edge import Problem, add_health_routes, one_value_per_query_parameter, retry_later, unavailable
from atlas.core.errors import AtRestError, DatabaseUnavailable, Unavailable, store_error, store_failures
from atlas.core.web import EXPORT_CONNECTIONS, Principal, WebState

from .audit import finish_export, recent_exports, start_export
from .decrypted import decrypted_lines
from .limits import ExportSlots, TimedStreamingResponse
from .preview import Scope, count_rows, scope_of
from .query import (
    MEDIA_TYPES,
    ColumnSet,
    ExportFilters,
    ExportFormat,
    FilterError,
    accepts_gzip,
    content_disposition,
    copy_statement,
    export_filename,
    parse_columns,
    parse_filters,
)
from .stream import RowCount, chunked, copy_out, frame, gzipped

log = logging.getLogger("atlas.exporter")

EXPORT_PATH = "/api/exports/logs"
AUDIT_PATH = "/api/exports/audit"
ROW_COUNT_HEADER = "X-Atlas-Row-Count"
"""On ``HEAD``: how many rows the export holds now (left out when counting took too long)."""

_END = object()


Refuse = Callable[[Request, Principal | None, Problem], Response]
"""How a refusal is answered, given the request and who made it (None: nobody signed in)."""


def json_refusal(request: Request, principal: Principal | None, refused: Problem) -> Response:
    """Every refusal as a JSON problem (the exporter on its own)."""
    return refused.response()


UNAUTHENTICATED = "authentication required: a dashboard session or 'Authorization: Bearer <API token>'"
UNAUTHENTICATED_PROBLEM = Problem(401, UNAUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})
LOCKED = (
    f"The stored logs are encrypted at rest, and this server cannot open them: set {SETTING}"
    " (or FLEET_DB_ENCRYPTION_KEY) to the key the workers store logs with, keeping older keys in"
    " server.db_encryption_keys."
)
DATABASE_DOWN = unavailable(DatabaseUnavailable())


class ExportsBusy(Exception):
    """Every export connection is streaming already."""


class Export:
    """One export from start to end: the audit row, the COPY, and how it finished."""

    def __init__(
        self,
        web: WebState,
        principal: Principal,
        client: str | None,
        fmt: ExportFormat,
        filters: ExportFilters,
        release: Callable[[], None] = lambda: None,
        columns: ColumnSet = "default",
    ) -> None:
        self.web = web
        self.release = release
        """Gives the principal's export slot back; called when the export ends, however it ends."""
        self.principal = principal
        self.client = client
        self.fmt = fmt
        self.filters = filters
        self.columns = columns
        self.count = RowCount()
        self.audit_id: int | None = None
        self.sealed = False
        self.started = time.monotonic()

    def begin(self) -> Scope:
        """Record the export; returns the device it is of and that device's machines (for the name)."""
        with self.web.pool.connection() as conn:
            self.audit_id = start_export(
                conn,
                username=self.principal.user.username,
                auth=self.principal.auth,
                client=self.client,
                fmt=self.fmt,
                filters=self.filters.as_dict(),
            )
            try:
                self.sealed = require_keys(conn, self.web.settings.db_keyring)
            except AtRestError as exc:  # refused, and recorded as such
                self.finish("failed", str(exc)[:200])
                raise
            return scope_of(conn, self.filters)

    def _lines(self, conn: psycopg.Connection) -> Generator[Buffer, None, None]:
        """PostgreSQL's COPY writes JSON and NDJSON unless some stored content is sealed; Python writes the rest.

        Every CSV goes through Python, clear or sealed, so that one writer quotes and neutralises it.
        """
        if self.sealed or self.fmt == "csv":
            return decrypted_lines(conn, self.fmt, self.filters, self.web.settings.db_keyring, self.count, self.columns)
        statement, params = copy_statement(self.fmt, self.filters)
        return copy_out(conn, statement, params, self.count)

    def chunks(self, gzip: bool) -> Generator[bytes, None, None]:
        """The export's bytes; the audit row is finished however the iteration ends."""
        status, error = "aborted", None
        try:
            try:
                conn = self.web.export_pool.getconn()
            except PoolTimeout:
                raise ExportsBusy from None
            try:
                source = self._lines(conn)
                try:
                    out = chunked(frame(source, self.fmt), self.web.settings.exporter_chunk_bytes)
                    yield from gzipped(out) if gzip else out
                finally:
                    source.close()  # cancels the COPY if it did not run to the end
            finally:
                self.web.export_pool.putconn(conn)
            status = "complete"
        except ExportsBusy:
            status, error = "failed", "too many exports running"
            raise
        except GeneratorExit:
            raise
        except Exception as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            status, error = "failed", f"{type(exc).__name__}: {first_line}"
            raise
        finally:
            self.finish(status, error)

    def finish(self, status: str, error: str | None) -> None:
        self.release()
        seconds = time.monotonic() - self.started
        metrics.EXPORTS.labels(self.fmt, status).inc()
        metrics.EXPORT_ROWS.labels(self.fmt).inc(self.count.rows)
        metrics.EXPORT_DURATION.labels(self.fmt, status).observe(seconds)
        log.info(
            "Export %s by %s (%s): %s %s, %d rows in %.1f s, %s",
            self.audit_id,
            self.principal.user.username,
            self.principal.auth,
            self.fmt,
            self.filters.as_dict() or "all logs",
            self.count.rows,
            seconds,
            status,
        )
        if self.audit_id is None:
            return
        for attempt in (1, 2):  # a connection PostgreSQL dropped mid-export fails once; the pool replaces it
            try:
                with self.web.pool.connection() as conn:
                    finish_export(conn, self.audit_id, status, self.count.rows, error)
                return
            except (psycopg.Error, PoolTimeout) as exc:
                if attempt == 2:
                    log.warning("Could not finish audit row %s: %s", self.audit_id, type(exc).__name__)


async def _drain(chunks: Generator[bytes, None, None], first: bytes) -> AsyncIterator[bytes]:
    """Iterate a blocking iterator from worker threads, closing it promptly if the client goes away."""
    try:
        if first:
            yield first
        while True:
            chunk = await run_in_threadpool(next, chunks, _END)
            if chunk is _END:
                return
            yield chunk  # type: ignore[misc]
    finally:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(chunks.close)


def export_headers(fmt: ExportFormat, filters: ExportFilters, scope: Scope, gzip: bool) -> dict[str, str]:
    """The headers of an export's answer, the same for ``GET`` and ``HEAD``."""
    today = datetime.now(UTC).date()
    name = export_filename(fmt, filters, today, scope.serial_number, len(scope.machines))
    headers = {
        "Content-Type": MEDIA_TYPES[fmt],
        "Content-Disposition": content_disposition(name),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Vary": "Accept-Encoding",
    }
    if gzip:
        headers["Content-Encoding"] = "gzip"
    return headers


def _preview(web: WebState, filters: ExportFilters) -> tuple[Scope, int | None]:
    """What ``HEAD`` tells: the device and the row count; refused like the export if stored logs are locked."""
    with web.pool.connection() as conn:
        require_keys(conn, web.settings.db_keyring)
        return scope_of(conn, filters), count_rows(conn, filters)


def add_export_routes(app: FastAPI, web: WebState, refuse: Refuse = json_refusal) -> None:
    """Add ``GET``/``HEAD /api/exports/logs`` and ``GET /api/exports/audit`` to ``app``; ``refuse`` answers refusals."""
    slots = ExportSlots(web.settings.max_exports_per_principal)

    @app.get(
        EXPORT_PATH,
        dependencies=[Depends(one_value_per_query_parameter)],
        summary="Export widget logs as CSV, JSON or NDJSON",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "The export, streamed; gzip when Accept-Encoding allows it",
                "content": {media.split(";")[0]: {} for media in MEDIA_TYPES.values()},
            },
            400: {"description": "A query parameter given more than once"},
            401: {"description": "No session and no valid API token"},
            422: {"description": "A filter cannot be used; `field` names it"},
            429: {"description": "Too many exports running (this user's, or all); retry after Retry-After seconds"},
            503: {"description": "Database unavailable; retry after Retry-After seconds"},
        },
    )
    async def export_logs(
        request: Request,
        format: Annotated[str | None, Query(description="csv (default), json or ndjson")] = None,
        widget_type: Annotated[
            str | None, Query(description=f"{', '.join(WIDGET_TYPES[:-1])} or {WIDGET_TYPES[-1]}")
        ] = None,
        machine_id: Annotated[str | None, Query(description="one machine")] = None,
        serial_number: Annotated[str | None, Query(description="one device by serial number")] = None,
        level: Annotated[str | None, Query(description="DEBUG, INFO, WARNING or ERROR")] = None,
        since: Annotated[str | None, Query(description="ISO 8601, inclusive; no offset means UTC")] = None,
        until: Annotated[str | None, Query(description="ISO 8601, exclusive; no offset means UTC")] = None,
        columns: Annotated[
            str | None,
            Query(description="CSV columns: default (the seven) or extended (adds Machine ID and Hostname)"),
        ] = None,
    ) -> Response:
        try:
            principal = await run_in_threadpool(web.principal, request)
        except store_failures() as exc:
            if not isinstance(down := store_error(exc), Unavailable):
                raise
            return refuse(request, None, unavailable(down))
        if principal is None:
            return refuse(request, None, UNAUTHENTICATED_PROBLEM)
        try:
            fmt, filters = parse_filters(
                format=format,
                widget_type=widget_type,
                machine_id=machine_id,
                serial_number=serial_number,
                level=level,
                since=since,
                until=until,
            )
            column_set = parse_columns(columns)
        except FilterError as exc:
            return refuse(request, principal, Problem(422, str(exc), exc.field))
        gzip = accepts_gzip(request.headers.get("accept-encoding"))
        if request.method == "HEAD":
            return await _head(request, principal, fmt, filters, gzip)
        release = slots.acquire(principal.user.id)
        if release is None:
            capped = (
                f"{slots.limit} exports by this user are running already (exporter.max_exports_per_principal);"
                " retry when one has finished"
            )
            return refuse(request, principal, Problem(429, capped, headers=retry_later()))
        client = request.client.host if request.client else None
        export = Export(web, principal, client, fmt, filters, release, column_set)
        streaming = False
        try:
            scope = await run_in_threadpool(export.begin)
            chunks = export.chunks(gzip)
            first = await run_in_threadpool(next, chunks, b"")
            streaming = True  # from here the export gives its slot back when it ends
        except ExportsBusy:
            busy = f"{EXPORT_CONNECTIONS} exports are running already; retry later"
            return refuse(request, principal, Problem(429, busy, headers=retry_later()))
        except AtRestError as exc:
            log.error("Export refused: %s", exc)
            return refuse(request, principal, Problem(503, f"cannot decrypt stored logs: {exc}", page_detail=LOCKED))
        except store_failures() as exc:
            if not isinstance(down := store_error(exc), Unavailable):
                raise
            log.warning("Export refused, database unavailable: %s", type(exc).__name__)
            return refuse(request, principal, unavailable(down))
        finally:
            if not streaming:
                release()  # at most once, however often it is called
        headers = export_headers(fmt, filters, scope, gzip)
        headers["X-Atlas-Export-Id"] = str(export.audit_id)
        return TimedStreamingResponse(
            _drain(chunks, first),
            media_type=MEDIA_TYPES[fmt],
            headers=headers,
            send_timeout=web.settings.exporter_send_timeout,
            what=f"Export {export.audit_id}",
        )

    app.head(
        EXPORT_PATH,
        summary="The headers of an export and its row count (X-Atlas-Row-Count), without the export",
        response_class=Response,
        responses={
            200: {
                "description": "The headers a GET gets, and X-Atlas-Row-Count (left out if counting took too long)",
                "content": {media.split(";")[0]: {} for media in MEDIA_TYPES.values()},
                "headers": {ROW_COUNT_HEADER: {"schema": {"type": "integer"}}},
            },
            400: {"description": "A query parameter given more than once"},
            401: {"description": "No session and no valid API token"},
            422: {"description": "A filter cannot be used; `field` names it"},
            503: {"description": "Database unavailable; retry after Retry-After seconds"},
        },
    )(export_logs)

    async def _head(
        request: Request, principal: Principal, fmt: ExportFormat, filters: ExportFilters, gzip: bool
    ) -> Response:
        """``HEAD``: the export's headers and its row count, no body, nothing exported or audited."""
        try:
            scope, rows = await run_in_threadpool(_preview, web, filters)
        except AtRestError as exc:
            return refuse(request, principal, Problem(503, f"cannot decrypt stored logs: {exc}", page_detail=LOCKED))
        except store_failures() as exc:
            if not isinstance(down := store_error(exc), Unavailable):
                raise
            return refuse(request, principal, unavailable(down))
        headers = export_headers(fmt, filters, scope, gzip)
        if rows is not None:
            headers[ROW_COUNT_HEADER] = str(rows)
        response = Response(status_code=200, headers=headers)
        del response.headers["content-length"]  # the export's length is not known; 0 would be wrong
        return response

    @app.get(
        AUDIT_PATH,
        dependencies=[Depends(one_value_per_query_parameter)],
        summary="The latest exports (admins only)",
        responses={
            400: {"description": "A query parameter given more than once"},
            401: {"description": "Not signed in"},
            403: {"description": "Not an admin"},
        },
        response_model=None,
    )
    async def export_audit(
        request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 200
    ) -> dict[str, Any] | Response:
        principal = await run_in_threadpool(web.principal, request)
        if principal is None:
            return refuse(request, None, UNAUTHENTICATED_PROBLEM)
        if not principal.user.is_admin:
            return refuse(request, principal, Problem(403, "admins only"))

        def read() -> list[dict[str, Any]]:
            with web.pool.connection() as conn:
                return recent_exports(conn, limit)

        rows = await run_in_threadpool(read)
        for row in rows:
            for key in ("started_at", "finished_at"):
                row[key] = row[key].isoformat() if row[key] else None
        return {"exports": rows}


def create_app(settings: Settings | None = None) -> FastAPI:
    """The exporter on its own (``atlas-server exporter``)."""
    settings = settings or get_settings()
    web = WebState(settings, name="exporter")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        web.open()
        yield
        web.close()

    app = FastAPI(title="Atlas exporter", version="1", lifespan=lifespan)
    app.state.web = web
    add_export_routes(app, web)
    metrics.add_metrics(app, "exporter")

    add_health_routes(app, web.ready, needs="PostgreSQL", unready=DATABASE_DOWN.detail)

    return app
