"""Signing in and out, and the dependencies that guard every page and form.

* Pages need a live session (a signed ``atlas_session`` cookie whose id is in
  ``sessions``); without one a page redirects to ``/login?next=<path>`` (a
  form posted without one: to the page it was posted from, by its same-site
  ``Referer``). A browser whose cookie still holds a session that has ended
  is told so on the login form ("Your session expired"); the cookie outlives
  its session by ``SESSION_COOKIE_GRACE`` for this, and is worthless by then.
  API tokens are for scripted exports, not for the dashboard's pages.
* Every state-changing request is a POST carrying the session's CSRF token in
  a hidden field, compared in constant time; a POST whose ``Origin`` is another
  site is refused before anything else.
* The login form has no session yet: its token is bound to a signed
  pre-session cookie set by ``GET /login`` (see ``presession``).
* A failed login says only "Invalid username or password", with status 401.
* Sign-ins are limited per client address (``dashboard.login_attempts_per_minute``,
  in this process; a success gives its attempt back, so only failures add up),
  and per address and name: after ``dashboard.lockout_failures`` consecutive
  failures at a name that address waits 1 s, then twice as long after each further
  failure, at most ``dashboard.lockout_seconds``, whether or not such a user exists
  (kept in PostgreSQL). The name is never locked for everyone: its real user at
  another address signs in at once. Both answer 429 with Retry-After.

The dependencies are sync functions: FastAPI runs them in its thread pool,
where ``WebState.principal`` may block on PostgreSQL.
"""

from __future__ import annotations

import logging
import math
import threading
from datetime import timedelta
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from atlas.core.accounts import (
    authenticate,
    claim_login_attempt,
    clear_login_failures,
    create_session,
    end_session,
    failure_delay,
)
from atlas.core.ratelimit import RateLimiter, client_key, retry_after
from atlas.core.web import SESSION_COOKIE, Principal, WebState

from .pipeline import page_user
from .presession import (
    PRESESSION_COOKIE,
    PRESESSION_MAX_AGE,
    login_csrf_token,
    login_token_problem,
    new_presession_id,
    presession_id,
    sign_presession,
)
from .render import render
from .security import referer_path, safe_next, same_origin, tokens_match

log = logging.getLogger("atlas.dashboard")

INVALID_LOGIN = "Invalid username or password"
TOO_MANY_ATTEMPTS = "Too many sign-in attempts from this address. Please wait {wait} and try again."
LOCKED_OUT = (
    "Too many failed sign-ins for this username from this address. Please wait {wait} and try again,"
    " or ask an administrator to unlock it."
)
EXPIRED_FORM = "This form has expired or came from another site. Please try again."
SESSION_EXPIRED = "Your session expired; sign in again."

SESSION_COOKIE_GRACE = timedelta(days=1)
"""How much longer the session cookie lives than its session, so the login form can say the session expired."""


class LoginRequired(Exception):
    """No live session: the page answers with a redirect to the login form."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def web_state(request: Request) -> WebState:
    web: WebState = request.app.state.web
    return web


def login_url(next_path: str) -> str:
    target = safe_next(next_path, "")
    return "/login?next=" + quote(target, safe="/") if target and target != "/" else "/login"


def current_path(request: Request) -> str:
    query = request.url.query
    return request.url.path + ("?" + query if query else "")


def require_session(request: Request) -> Principal:
    """The signed-in user of a page request; otherwise redirect to the login form, and back after it.

    A GET comes back to itself; a form posted comes back to the page it was on (the form is not replayed).
    """
    principal = web_state(request).principal(request)
    if principal is None or principal.session is None:
        if request.method == "GET":
            raise LoginRequired(current_path(request))
        raise LoginRequired(referer_path(request.headers.get("referer"), request.headers.get("host")))
    return page_user(request, principal)


SessionUser = Annotated[Principal, Depends(require_session)]


def check_origin(request: Request) -> None:
    """Refuse a request a browser says came from another site."""
    if not same_origin(request.headers.get("origin"), request.headers.get("host")):
        raise HTTPException(403, "Cross-site request refused.")


def require_form(request: Request, principal: SessionUser, csrf_token: Annotated[str, Form()] = "") -> Principal:
    """The user of a state-changing POST, once its origin and CSRF token check out."""
    check_origin(request)
    assert principal.session is not None
    if not tokens_match(principal.session.csrf_token, csrf_token):
        raise HTTPException(403, EXPIRED_FORM)
    return principal


FormUser = Annotated[Principal, Depends(require_form)]


def require_admin(principal: SessionUser) -> Principal:
    if not principal.user.is_admin:
        raise HTTPException(403, "This page is for administrators.")
    return principal


def require_admin_form(principal: FormUser) -> Principal:
    return require_admin(principal)


AdminUser = Annotated[Principal, Depends(require_admin)]
AdminForm = Annotated[Principal, Depends(require_admin_form)]


def set_session_cookie(response: Response, request: Request, session_id: str) -> None:
    """Set ``atlas_session``: signed id, HttpOnly, SameSite=Lax, Secure over HTTPS.

    It lives ``SESSION_COOKIE_GRACE`` longer than the session (which the database ends).
    """
    web = web_state(request)
    response.set_cookie(
        SESSION_COOKIE,
        web.sign_session(session_id),
        max_age=int((web.settings.session_max_age + SESSION_COOKIE_GRACE).total_seconds()),
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="lax",
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/", secure=request.url.scheme == "https", httponly=True, samesite="lax"
    )


router = APIRouter()
_limiter_lock = threading.Lock()


def login_limiter(request: Request) -> RateLimiter:
    """This app's per-address limit on sign-in attempts, made on first use."""
    state = request.app.state
    with _limiter_lock:
        limiter = getattr(state, "login_limiter", None)
        if limiter is None:
            per_minute = web_state(request).settings.login_attempts_per_minute
            limiter = state.login_limiter = RateLimiter(per_minute / 60, max(1, per_minute), max_keys=10_000)
    return limiter


def _wait_text(seconds: float) -> str:
    minutes = math.ceil(seconds / 60)
    return f"{math.ceil(seconds)} seconds" if seconds <= 90 else f"{minutes} minutes"


def _login_page(
    request: Request,
    next_path: str,
    *,
    status: int = 200,
    error: str = "",
    username: str = "",
    wait: float = 0.0,
    notice: str = "",
) -> Response:
    """The login form, its token bound to this browser's pre-session (kept if valid, else a new one).

    ``wait``: a 429's Retry-After.
    """
    secret = web_state(request).secret
    presession = presession_id(secret, request.cookies.get(PRESESSION_COOKIE)) or new_presession_id()
    token = login_csrf_token(secret, presession)
    response = render(
        "login.html", status=status, next=next_path, error=error, notice=notice, username=username, login_csrf=token
    )
    if wait:
        response.headers["Retry-After"] = retry_after(wait)
    response.set_cookie(
        PRESESSION_COOKIE,
        sign_presession(secret, presession),
        max_age=PRESESSION_MAX_AGE,
        path="/login",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


@router.get("/login")
def login_form(request: Request, next: str = "") -> Response:
    """The login form; a user already signed in goes straight on.

    A signed session cookie without a live session (it expired, or was ended) gets the notice, once: the
    stale cookie is cleared.
    """
    target = safe_next(next, "")
    web = web_state(request)
    principal = web.principal(request)
    if principal is not None and principal.session is not None:
        return RedirectResponse(target or "/", status_code=303)
    if web.session_id(request) is None:
        return _login_page(request, target)
    response = _login_page(request, target, notice=SESSION_EXPIRED)
    clear_session_cookie(response, request)
    return response


@router.post("/login")
def login(
    request: Request,
    username: Annotated[str, Form(max_length=256)] = "",
    password: Annotated[str, Form(max_length=4096)] = "",
    csrf_token: Annotated[str, Form(max_length=256)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    target = safe_next(next, "")
    if not same_origin(request.headers.get("origin"), request.headers.get("host")):
        return _login_page(request, target, status=403, error=EXPIRED_FORM, username=username)
    web, limiter = web_state(request), login_limiter(request)
    if problem := login_token_problem(web.secret, request.cookies.get(PRESESSION_COOKIE), csrf_token):
        return _login_page(request, target, status=403, error=problem, username=username)
    address = client_key(request.client.host if request.client else None)
    if wait := limiter.hit(address):
        error = TOO_MANY_ATTEMPTS.format(wait=_wait_text(wait))
        return _login_page(request, target, status=429, error=error, username=username, wait=wait)
    settings = web.settings
    threshold, longest = settings.lockout_failures, settings.lockout_duration
    with web.pool.connection() as conn:
        failures = 0
        if username and password:
            # Counted before the password is checked (a success below takes it back); while this address
            # waits, the password is not even tried.
            failures, wait = claim_login_attempt(conn, address, username, threshold=threshold, longest=longest)
            if wait:
                error = LOCKED_OUT.format(wait=_wait_text(wait))
                return _login_page(request, target, status=429, error=error, username=username, wait=wait)
        user = authenticate(conn, username, password) if username and password else None
        if user is None:
            if failures >= 1 and failures == threshold:
                log.warning(
                    "Dashboard sign-ins for username %r from %s delayed (%d s, doubling with each further"
                    " failure up to %d s) after %d consecutive failures",
                    username.strip()[:64],
                    address,
                    failure_delay(failures, threshold, longest),
                    longest.total_seconds(),
                    failures,
                )
            return _login_page(request, target, status=401, error=INVALID_LOGIN, username=username)
        clear_login_failures(conn, username, address)
        limiter.refund(address)
        session_id, _ = create_session(conn, user, web.settings.session_max_age)
    response = RedirectResponse(target or "/", status_code=303)
    set_session_cookie(response, request, session_id)
    response.delete_cookie(
        PRESESSION_COOKIE, path="/login", secure=request.url.scheme == "https", httponly=True, samesite="strict"
    )
    return response


@router.post("/logout")
def logout(request: Request, principal: FormUser) -> Response:
    """End the session in the database (so the cookie is worthless) and clear it."""
    assert principal.session_id is not None
    with web_state(request).pool.connection() as conn:
        end_session(conn, principal.session_id)
    response = RedirectResponse("/login", status_code=303)
    clear_session_cookie(response, request)
    return response
