"""Administration pages (admins only): users, API tokens, enrolled devices, and the export audit log.

Passwords and tokens the server generates are shown once, in the response to
the POST that made them, and never again (only their hashes are kept). The
last admin can be neither deleted nor demoted, and nobody can delete or demote
themselves: changes to admins are serialised by locking the admins' rows.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from atlas.core.accounts import (
    ROLES,
    User,
    admin_count,
    create_token,
    create_user,
    delete_user,
    generate_password,
    get_user,
    list_tokens,
    list_users,
    revoke_token,
    set_password,
    set_role,
)
from atlas.core.devices import list_devices, revoke_device
from atlas.core.errors import AccountError
from atlas.core.web import Principal

from .auth import AdminForm, AdminUser, web_state
from .render import render

AUDIT_ROWS = 200
"""Export audit rows shown, newest first."""

DONE_MESSAGES = {
    "role": "Role changed.",
    "password": "Password changed; that user's sessions have ended.",
    "deleted": "User deleted.",
    "revoked": "Token revoked.",
    "not-revoked": "No such live token: it was revoked already, or never existed.",
    "device-revoked": "Device revoked: its next request is refused.",
    "device-not-revoked": "No such live device: it was revoked already, or never existed.",
}
"""What a redirect's ``done`` code says; only these texts are ever shown."""

router = APIRouter(prefix="/admin")


def _users_page(request: Request, principal: Principal, *, status: int = 200, **context: Any) -> Response:
    with web_state(request).pool.connection() as conn:
        users = list_users(conn)
    context.setdefault("error", "")
    context.setdefault("message", DONE_MESSAGES.get(request.query_params.get("done", ""), ""))
    context.setdefault("shown_once", None)
    return render("admin_users.html", principal=principal, status=status, users=users, roles=ROLES, **context)


def _done(path: str, code: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?done={code}", status_code=303)


def _lock_admins(conn: psycopg.Connection) -> None:
    """Within a transaction: take the admins' rows, so two admins cannot remove the last admin together."""
    conn.execute("SELECT id FROM users WHERE role = 'admin' FOR UPDATE")


def _check_change(conn: psycopg.Connection, actor: User, user_id: int, *, removes_admin: bool) -> User:
    """The user to change; AccountError if it is missing, the actor, or the last admin."""
    target = get_user(conn, user_id)
    if target is None:
        raise AccountError("That user no longer exists.")
    if target.id == actor.id:
        raise AccountError("You cannot delete or demote yourself; ask another admin.")
    if removes_admin and target.is_admin and admin_count(conn) <= 1:
        raise AccountError("The last admin cannot be deleted or demoted.")
    return target


@router.get("")
def admin_home() -> Response:
    return RedirectResponse("/admin/users", status_code=303)


@router.get("/users")
def users_page(request: Request, principal: AdminUser) -> Response:
    return _users_page(request, principal)


@router.post("/users")
def add_user(
    request: Request,
    principal: AdminForm,
    username: Annotated[str, Form(max_length=256)] = "",
    role: Annotated[str, Form(max_length=32)] = "viewer",
    password: Annotated[str, Form(max_length=4096)] = "",
) -> Response:
    """Create a user; with no password given, generate one and show it once."""
    generated = not password
    password = password or generate_password()
    try:
        with web_state(request).pool.connection() as conn:
            user = create_user(conn, username, password, role)
    except AccountError as exc:
        return _users_page(request, principal, status=400, error=str(exc), message="")
    shown = {"what": f"Password of {user.username}", "secret": password} if generated else None
    return _users_page(request, principal, message=f"Created {user.role} {user.username}.", shown_once=shown)


@router.post("/users/{user_id}/role")
def change_role(
    request: Request, principal: AdminForm, user_id: int, role: Annotated[str, Form(max_length=32)] = ""
) -> Response:
    try:
        with web_state(request).pool.connection() as conn, conn.transaction():
            _lock_admins(conn)
            _check_change(conn, principal.user, user_id, removes_admin=role != "admin")
            set_role(conn, user_id, role)
    except AccountError as exc:
        return _users_page(request, principal, status=400, error=str(exc), message="")
    return _done("/admin/users", "role")


@router.post("/users/{user_id}/password")
def reset_password(
    request: Request, principal: AdminForm, user_id: int, password: Annotated[str, Form(max_length=4096)] = ""
) -> Response:
    """Set another user's password (generated and shown once if left blank); their sessions end."""
    generated = not password
    password = password or generate_password()
    try:
        with web_state(request).pool.connection() as conn:
            target = get_user(conn, user_id)
            if target is None:
                raise AccountError("That user no longer exists.")
            if target.id == principal.user.id:
                raise AccountError("Change your own password on the Account page.")
            set_password(conn, user_id, password)
    except AccountError as exc:
        return _users_page(request, principal, status=400, error=str(exc), message="")
    if generated:
        shown = {"what": f"New password of {target.username}", "secret": password}
        return _users_page(request, principal, message=DONE_MESSAGES["password"], shown_once=shown)
    return _done("/admin/users", "password")


@router.post("/users/{user_id}/delete")
def remove_user(request: Request, principal: AdminForm, user_id: int) -> Response:
    try:
        with web_state(request).pool.connection() as conn, conn.transaction():
            _lock_admins(conn)
            _check_change(conn, principal.user, user_id, removes_admin=True)
            delete_user(conn, user_id)
    except AccountError as exc:
        return _users_page(request, principal, status=400, error=str(exc), message="")
    return _done("/admin/users", "deleted")


# --- API tokens --------------------------------------------------------------------------


def _tokens_page(request: Request, principal: Principal, *, status: int = 200, **context: Any) -> Response:
    with web_state(request).pool.connection() as conn:
        tokens = list_tokens(conn)
        users = [user for user, _, _ in list_users(conn)]
    context.setdefault("error", "")
    context.setdefault("message", DONE_MESSAGES.get(request.query_params.get("done", ""), ""))
    context.setdefault("shown_once", None)
    return render("admin_tokens.html", principal=principal, status=status, tokens=tokens, users=users, **context)


@router.get("/tokens")
def tokens_page(request: Request, principal: AdminUser) -> Response:
    return _tokens_page(request, principal)


@router.post("/tokens")
def add_token(
    request: Request,
    principal: AdminForm,
    name: Annotated[str, Form(max_length=256)] = "",
    user_id: Annotated[str, Form(max_length=32)] = "",
) -> Response:
    """Make an API token acting as the chosen user (default: yourself); shown once."""
    try:
        with web_state(request).pool.connection() as conn:
            user = get_user(conn, int(user_id)) if user_id.isdigit() else principal.user
            if user is None:
                raise AccountError("That user no longer exists.")
            token = create_token(conn, user, name)
    except AccountError as exc:
        return _tokens_page(request, principal, status=400, error=str(exc), message="")
    shown = {"what": f"API token {name.strip()!r} acting as {user.username}", "secret": token}
    return _tokens_page(request, principal, message="Token created.", shown_once=shown)


@router.post("/tokens/{token_id}/revoke")
def revoke(request: Request, principal: AdminForm, token_id: int) -> Response:
    with web_state(request).pool.connection() as conn:
        revoked = revoke_token(conn, token_id)
    return _done("/admin/tokens", "revoked" if revoked else "not-revoked")


# --- enrolled devices (contract v2) ------------------------------------------------------


@router.get("/devices")
def devices_page(request: Request, principal: AdminUser) -> Response:
    """Every enrolled device, newest first: live, replaced by a re-enrollment of its Mac, or revoked."""
    with web_state(request).pool.connection() as conn:
        devices = list(reversed(list_devices(conn)))
    message = DONE_MESSAGES.get(request.query_params.get("done", ""), "")
    return render(
        "admin_devices.html", principal=principal, devices=devices, error="", message=message, shown_once=None
    )


@router.post("/devices/{device_id}/revoke")
def revoke_one_device(request: Request, principal: AdminForm, device_id: str) -> Response:
    with web_state(request).pool.connection() as conn:
        revoked = revoke_device(conn, device_id[:64])
    return _done("/admin/devices", "device-revoked" if revoked else "device-not-revoked")


# --- export audit ------------------------------------------------------------------------


def load_audit(conn: psycopg.Connection, limit: int = AUDIT_ROWS) -> list[dict[str, Any]]:
    """The newest exports: who, when, how, with which filters, how many rows, how it ended."""
    rows = conn.execute(
        "SELECT id, started_at, finished_at, username, auth, client, format, filters, row_count, status, error"
        " FROM export_audit ORDER BY started_at DESC, id DESC LIMIT %s",
        (limit,),
    ).fetchall()
    keys = ("id", "started_at", "finished_at", "username", "auth", "client", "format", "filters", "row_count")
    out = []
    for row in rows:
        entry = dict(zip((*keys, "status", "error"), row, strict=True))
        filters = entry["filters"] if isinstance(entry["filters"], dict) else {}
        entry["filters"] = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in filters.items())
        out.append(entry)
    return out


@router.get("/audit")
def audit_page(request: Request, principal: AdminUser) -> Response:
    with web_state(request).pool.connection() as conn:
        entries = load_audit(conn)
    return render("admin_audit.html", principal=principal, entries=entries, limit=AUDIT_ROWS)
