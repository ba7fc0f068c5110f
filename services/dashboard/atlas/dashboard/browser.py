"""Browsers get pages, API clients get JSON: how the dashboard answers a refused ``/api/`` request.

A request is a browser's when it carries no bearer token and its ``Accept`` header prefers ``text/html`` to
``application/json`` (what a browser sends when a link or form is followed). A browser gets an error page
built on ``templates/base.html``, or, with no live session, a redirect to sign-in that comes back here after
it. Everyone else (an API token, ``Accept: application/json``, a script's ``*/*`` or no ``Accept``) gets the
JSON problem body of the API, unchanged.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from atlas.core.edge import Problem
from atlas.core.web import Principal

from .auth import current_path, login_url
from .render import render

HTML_TYPES = ("text/html", "application/xhtml+xml")

TITLES = {
    400: "Bad request",
    403: "Forbidden",
    404: "Not found",
    422: "This export cannot be made",
    429: "Too many exports at once",
    503: "Service unavailable",
}


def accepted(accept: str) -> dict[str, float]:
    """The quality of each media type an ``Accept`` header lists (1 when it gives none; bad ones are 0)."""
    found: dict[str, float] = {}
    for part in accept.split(",")[:50]:
        media, *params = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    quality = 0.0
        if media:
            found[media.lower()] = max(quality, found.get(media.lower(), 0.0))
    return found


def wants_html(request: Request) -> bool:
    """True for a browser: no bearer token, and ``text/html`` preferred to ``application/json``."""
    if request.headers.get("authorization", "")[:7].lower() == "bearer ":
        return False
    qualities = accepted(request.headers.get("accept", ""))
    html = max(qualities.get(media, 0.0) for media in HTML_TYPES)
    return html > 0 and html > qualities.get("application/json", 0.0)


def error_page(
    principal: Principal | None, status: int, detail: str, headers: dict[str, str] | None = None
) -> Response:
    """The dashboard's error page for ``status``, with the user's menu when someone is signed in."""
    return render(
        "error.html",
        principal=principal if principal and principal.session else None,
        status=status,
        headers=headers,
        title=TITLES.get(status, "Request refused"),
        detail=detail,
    )


def export_refusal(request: Request, principal: Principal | None, refused: Problem) -> Response:
    """The exporter's refusals on the dashboard: a page or a sign-in redirect for browsers, else its JSON."""
    if not wants_html(request):
        return refused.response()
    if refused.status == 401:
        return RedirectResponse(login_url(current_path(request)), status_code=303)
    headers = {k: v for k, v in (refused.headers or {}).items() if k.lower() != "www-authenticate"}
    return error_page(principal, refused.status, refused.page_detail or refused.detail, headers or None)
