"""The HTTP edge every Atlas app shares: problem answers, Retry-After, ``/healthz`` and ``/readyz``.

A refusal is a JSON problem, ``{"detail": "<reason>", "field": "<field at fault>" | null}``;
a 503 always says when to come back (``Retry-After: RETRY_AFTER_SECONDS``).
``/healthz`` says the process is alive; ``/readyz`` says whether the stores
the app needs answer, so a supervisor, a load balancer or Kubernetes
sends requests only to a replica that can serve them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .errors import Unavailable

RETRY_AFTER_SECONDS = 5
"""What a 503 tells the client (an agent, a script, a probe) to wait before asking again."""


def retry_later() -> dict[str, str]:
    """The headers of an answer that asks the client to come back in RETRY_AFTER_SECONDS."""
    return {"Retry-After": str(RETRY_AFTER_SECONDS)}


def problem(status: int, detail: str, field: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON problem: the reason, and the field or parameter at fault (null when none)."""
    return JSONResponse({"detail": detail, "field": field}, status_code=status, headers=headers)


@dataclass(frozen=True)
class Problem:
    """Why a request is refused: the status, the reason, the parameter at fault, extra headers."""

    status: int
    detail: str
    field: str | None = None
    headers: dict[str, str] | None = None
    page_detail: str | None = None
    """What a page shows instead of ``detail``, when that holds what only the log should (key ids)."""

    def response(self) -> JSONResponse:
        """The JSON problem body API clients get."""
        return problem(self.status, self.detail, self.field, self.headers)


def one_value_per_query_parameter(request: Request) -> None:
    """A route dependency: a parameter given twice is refused (400), not silently reduced to its last value."""
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name in seen:
            raise HTTPException(400, f"query parameter {name!r} given more than once")
        seen.add(name)


def unavailable(down: Unavailable) -> Problem:
    """The 503 for a store that cannot be used now, with Retry-After."""
    return Problem(down.status, down.detail, headers=retry_later())


def add_health_routes(
    app: FastAPI,
    ready: Callable[[], bool],
    *,
    needs: str,
    unready: str,
    include_in_schema: bool = True,
    unready_model: Any = None,
) -> None:
    """Add ``GET /healthz`` (alive) and ``GET /readyz`` (``ready()``, a blocking check run in a thread).

    ``needs`` names what ``ready`` checks, for the API docs; ``unready`` is the
    detail of the 503 (with Retry-After) when it fails.
    """

    @app.get("/healthz", summary="The process is alive", include_in_schema=include_in_schema, response_model=None)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    responses: dict[int | str, dict[str, Any]] | None = (
        {503: {"model": unready_model}} if unready_model is not None else None
    )

    @app.get(
        "/readyz",
        summary=f"{needs} is reachable",
        include_in_schema=include_in_schema,
        response_model=None,
        responses=responses,
    )
    async def readyz() -> Any:
        if await run_in_threadpool(ready):
            return {"status": "ready"}
        return problem(503, unready, headers=retry_later())
