"""Browser-facing protections: security headers, same-origin checks, CSRF tokens, safe redirects.

Pure helpers plus one ASGI middleware. The middleware is plain ASGI (not
Starlette's ``BaseHTTPMiddleware``) so streamed export downloads pass through
untouched apart from their headers.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
"""Nothing but this origin: no CDN, no inline script or style, never framed."""

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
"""Headers added to every response."""

STATIC_PREFIX = "/static/"


def tokens_match(expected: str | None, presented: str | None) -> bool:
    """Constant-time comparison of two CSRF tokens; a missing or empty one never matches."""
    if not expected or not presented:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def same_origin(origin: str | None, host: str | None) -> bool:
    """False when a browser sent an ``Origin`` that is not this host; True when it sent none.

    ``Origin: null`` (sandboxed frames, some redirects) is not this host either.
    """
    if origin is None:
        return True
    if not host:
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def safe_next(target: str | None, default: str = "/") -> str:
    """``target`` if it is a path on this site, else ``default``: never an open redirect.

    Refuses scheme-relative (``//host``), backslash (``/\\host``, which browsers read
    as ``//host``), absolute URLs, control characters, and the login page itself.
    """
    if not target or len(target) > 2000 or not target.startswith("/") or target.startswith("//"):
        return default
    if "\\" in target or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return default
    try:
        parts = urlsplit(target)
    except ValueError:
        return default
    if parts.scheme or parts.netloc or parts.path in ("/login", "/logout"):
        return default
    return target


def referer_path(referer: str | None, host: str | None) -> str:
    """The path (and query) of a ``Referer`` on this host, if ``safe_next`` keeps it; otherwise "".

    Where a form posted after its session ended came from, to come back to after signing in.
    """
    if not referer or not host or len(referer) > 2000:
        return ""
    try:
        parts = urlsplit(referer)
    except ValueError:
        return ""
    if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
        return ""
    return safe_next(parts.path + ("?" + parts.query if parts.query else ""), "")


class SecurityHeadersMiddleware:
    """Add ``SECURITY_HEADERS`` to every response, and ``Cache-Control: no-store`` outside ``/static/``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = scope.get("path", "").startswith(STATIC_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
                if not cacheable and "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)
