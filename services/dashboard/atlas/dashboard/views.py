"""The fleet list, the machine page and the user's own account page.

Routes stay thin: parse the request, call ``fleet``/``machine``/``accounts``
with a pooled connection, render a template. They are sync functions, run in
FastAPI's thread pool, because psycopg's pool blocks.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from atlas.contract import WIDGET_TYPES
from atlas.core.accounts import authenticate, create_session, set_password
from atlas.core.errors import AccountError

from .auth import FormUser, SessionUser, set_session_cookie, web_state
from .browser import error_page
from .fleet import PROBLEMS, SCAN_LIMIT, FleetQuery, load_fleet, status_of
from .machine import SEARCH_OPEN_LIMIT, load_machine
from .machinequery import MAX_SPAN, PRESETS, MachineQuery, RangeRefused, local_value
from .render import render

router = APIRouter()


def machine_url(machine_id: str) -> str:
    """``/machines/<id>`` with every reserved character of the id percent-encoded."""
    return "/machines/" + quote(machine_id, safe="")


@router.get("/")
def fleet_list(request: Request, principal: SessionUser) -> Response:
    query = FleetQuery.from_params(request.query_params)
    settings = web_state(request).settings
    now = datetime.now(UTC)
    with web_state(request).pool.connection() as conn:
        page = load_fleet(
            conn,
            query,
            now=now,
            online_within=settings.online_within,
            stale_within=settings.stale_within,
            keyring=settings.db_keyring,
        )
    return render(
        "fleet.html",
        principal=principal,
        page=page,
        machine_url=machine_url,
        checked_at=now,
        PROBLEMS=PROBLEMS,
        SCAN_LIMIT=SCAN_LIMIT,
    )


@router.get("/machines/{machine_id:path}")
def machine_page(request: Request, principal: SessionUser, machine_id: str) -> Response:
    """One machine: ``range`` or ``from``/``to`` (UTC), and the log filters of ``MachineQuery``."""
    settings = web_state(request).settings
    now = datetime.now(UTC)
    try:
        query = MachineQuery.from_params(request.query_params, now)
    except RangeRefused as refused:
        return error_page(principal, 400, str(refused))
    with web_state(request).pool.connection() as conn:
        view = load_machine(
            conn, machine_id, now=now, window=query.window, logs=query.logs, keyring=settings.db_keyring
        )
    if view is None:
        raise HTTPException(404, "No machine with this id has reported to Atlas.")
    return render(
        "machine.html",
        principal=principal,
        view=view,
        machine_status=status_of(view.identity["last_seen"], now, settings.online_within, settings.stale_within),
        query=query,
        presets=PRESETS,
        widget_types=WIDGET_TYPES,
        chart_range=query.window.preset,
        level=query.logs.level,
        url=machine_url(machine_id),
        machine_url=machine_url,
        local_value=local_value,
        MAX_SPAN_DAYS=MAX_SPAN.days,
        SEARCH_OPEN_LIMIT=SEARCH_OPEN_LIMIT,
        ONE_DAY=timedelta(days=1),
        ONE_MINUTE=timedelta(minutes=1),
    )


@router.get("/pipeline")
def pipeline_page(principal: SessionUser) -> Response:
    """Queue, workers, ingest and the newest stored batch, as the workers last reported them."""
    return render("pipeline.html", principal=principal)


# --- the user's own account --------------------------------------------------------------


@router.get("/account")
def account_page(principal: SessionUser, done: str = "") -> Response:
    return render("account.html", principal=principal, error="", message="Password changed." if done else "")


@router.post("/account/password")
def change_password(
    request: Request,
    principal: FormUser,
    current_password: Annotated[str, Form(max_length=4096)] = "",
    new_password: Annotated[str, Form(max_length=4096)] = "",
    confirm_password: Annotated[str, Form(max_length=4096)] = "",
) -> Response:
    """Change one's own password; every session of the user ends, this one is replaced by a new one."""
    web = web_state(request)
    error = ""
    with web.pool.connection() as conn:
        if authenticate(conn, principal.user.username, current_password) is None:
            error = "The current password is wrong."
        elif new_password != confirm_password:
            error = "The new passwords do not match."
        else:
            try:
                set_password(conn, principal.user.id, new_password)
            except AccountError as exc:
                error = str(exc)
            else:
                session_id, _ = create_session(conn, principal.user, web.settings.session_max_age)
    if error:
        return render("account.html", principal=principal, status=400, error=error, message="")
    response = RedirectResponse("/account?done=1", status_code=303)
    set_session_cookie(response, request, session_id)
    return response
