"""The dashboard app (``atlas-server dashboard``): pages, a stylesheet, and the export API beside them.

``create_app`` is the factory uvicorn calls. Pages are rendered on the
server from ``templates/``; the only other resource is ``static/dashboard.css``.
Nothing is loaded from another origin (the Content-Security-Policy says so
too), so the dashboard works on a network without internet access, and
without JavaScript.

Errors on pages are pages: 404 and 403 render ``error.html``, a database that
cannot be reached gives a 503 page. Paths under ``/api/`` keep their JSON
errors for API clients; a browser following an export link gets pages there
too, and a redirect to sign-in when its session is gone (``browser``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from atlas.core import metrics
from atlas.core.accounts import bootstrap_admin
from atlas.core.config import Settings, get_settings
from atlas.core.edge import add_health_routes, problem, retry_later
from atlas.core.errors import (
    DatabaseUnavailable,
    SchemaMissing,
    Unavailable,
    UnusableInput,
    store_error,
    store_failures,
)
from atlas.core.web import WebState
from atlas.exporter.app import add_export_routes

from . import admin, auth, browser, exports, views
from .machine import ContentLocked
from .pipeline import PipelineMonitor
from .render import render
from .security import SecurityHeadersMiddleware

log = logging.getLogger("atlas.dashboard")

STATIC = Path(__file__).parent / "static"


def _bootstrap(web: WebState) -> None:
    """Create the first admin from ATLAS_ADMIN_USERNAME/ATLAS_ADMIN_PASSWORD if there is no user yet.

    A bad password stops start-up (AccountError); a database that cannot be
    reached only logs, so the process still answers /healthz and /readyz says 503.
    """
    try:
        with web.pool.connection() as conn:
            user = bootstrap_admin(conn, os.environ)
    except store_failures() as exc:
        failed = store_error(exc)
        if isinstance(failed, Unavailable):
            log.warning("Could not reach PostgreSQL to create the first admin: %s", type(exc).__name__)
            return
        if isinstance(failed, SchemaMissing):
            raise SchemaMissing(failed.detail) from None
        raise
    if user is not None:
        log.info("Created the first admin %r from ATLAS_ADMIN_USERNAME", user.username)


def _is_api(request: Request) -> bool:
    """A request for a JSON error: under ``/api/``, and not from a browser."""
    return request.url.path.startswith("/api/") and not browser.wants_html(request)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the dashboard; settings default to config.yaml and the environment."""
    settings = settings or get_settings()
    web = WebState(settings, name="dashboard")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        web.open()
        await run_in_threadpool(_bootstrap, web)
        yield
        web.close()

    app = FastAPI(
        title="Atlas dashboard", version="1", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.web = web
    app.state.pipeline = PipelineMonitor(web)
    app.add_middleware(SecurityHeadersMiddleware)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(auth.router)
    app.include_router(views.router)
    app.include_router(admin.router)
    app.include_router(exports.router)
    add_export_routes(app, web, browser.export_refusal)
    metrics.add_metrics(app, "dashboard")  # outermost middleware: counts every answer, pages and exports

    add_health_routes(app, web.ready, needs="PostgreSQL", unready="database unavailable", include_in_schema=False)

    @app.exception_handler(auth.LoginRequired)
    async def login_required(request: Request, exc: auth.LoginRequired) -> Response:
        return RedirectResponse(auth.login_url(exc.next_path), status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _is_api(request) or exc.status_code not in (400, 403, 404, 405):
            return await http_exception_handler(request, exc)
        titles = {400: "Bad request", 403: "Forbidden", 404: "Not found", 405: "Method not allowed"}
        detail = exc.detail if exc.status_code in (403, 404) and isinstance(exc.detail, str) else ""
        return render("error.html", status=exc.status_code, title=titles[exc.status_code], detail=detail)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if _is_api(request):
            return await request_validation_exception_handler(request, exc)
        return render("error.html", status=400, title="Bad request", detail="The request could not be understood.")

    async def content_locked(request: Request, exc: ContentLocked) -> Response:
        return render("error.html", status=503, title="Encrypted logs cannot be read", detail=exc.detail)

    async def store_failed(request: Request, exc: Exception) -> Response:
        failed = store_error(exc)
        if isinstance(failed, DatabaseUnavailable):
            log.warning("Database unavailable for %s: %s", request.url.path, type(exc).__name__)
            if _is_api(request):
                return problem(failed.status, failed.detail, headers=retry_later())
            return render(
                "error.html",
                status=failed.status,
                headers=retry_later(),
                title="Database unavailable",
                detail="Atlas cannot reach its database right now. Try again in a moment.",
            )
        if isinstance(failed, UnusableInput):
            # PostgreSQL refuses some text (a NUL byte) that HTML forms and URLs can carry: the request is bad.
            log.info("Refused input for %s: %s", request.url.path, type(exc).__name__)
            if _is_api(request):
                return problem(failed.status, failed.detail)
            return render(
                "error.html", status=failed.status, title="Bad request", detail="The request holds unusable characters."
            )
        raise exc  # a bug: the server error middleware logs it and answers 500

    # Starlette types a handler as taking any Exception; it calls this one with ContentLocked only.
    app.add_exception_handler(ContentLocked, content_locked)  # type: ignore[arg-type]
    for failure in store_failures():
        app.add_exception_handler(failure, store_failed)
    return app
