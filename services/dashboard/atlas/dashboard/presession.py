"""The login form's CSRF token, bound to a pre-session cookie.

``GET /login`` sets ``atlas_login``: a random pre-session id, signed with a
timestamp (HttpOnly, SameSite=Strict, Secure over HTTPS, path /login). The form
carries HMAC-SHA256 of that id under the server secret. ``POST /login`` needs
both: the cookie's signature must hold and be younger than ``PRESESSION_MAX_AGE``,
and the form's token must equal the HMAC of the cookie's id (compared in constant
time). A value an attacker chooses for both the cookie and the field, as a
double-submit check would accept, passes neither test.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from itsdangerous import BadSignature, TimestampSigner

PRESESSION_COOKIE = "atlas_login"
"""The signed pre-session id (path /login)."""

PRESESSION_MAX_AGE = 3600
"""Seconds a login form stays usable."""

NO_PRESESSION = (
    "This sign-in form has expired, or this browser did not send its cookie (cookies must be allowed for this site)."
    " Please try again."
)
FOREIGN_FORM = "This sign-in form does not belong to this browser's session. Please try again."

_SALT = "atlas-login-presession"
_TOKEN_CONTEXT = b"atlas-login-csrf\0"
_MAX_COOKIE = 256


def _signer(secret: str) -> TimestampSigner:
    return TimestampSigner(secret, salt=_SALT)


def new_presession_id() -> str:
    return secrets.token_urlsafe(32)


def sign_presession(secret: str, presession_id: str) -> str:
    """The cookie's value for ``presession_id``."""
    return _signer(secret).sign(presession_id).decode()


def presession_id(secret: str, cookie: str | None) -> str | None:
    """The id in a pre-session cookie, if its signature holds and it is not too old."""
    if not cookie or len(cookie) > _MAX_COOKIE:
        return None
    try:
        return _signer(secret).unsign(cookie, max_age=PRESESSION_MAX_AGE).decode()
    except (BadSignature, UnicodeDecodeError):
        return None


def login_csrf_token(secret: str, presession: str) -> str:
    """The form token of a pre-session: HMAC-SHA256 of its id under the server secret."""
    return hmac.new(secret.encode(), _TOKEN_CONTEXT + presession.encode(), hashlib.sha256).hexdigest()


def login_token_problem(secret: str, cookie: str | None, presented: str) -> str | None:
    """Why a login POST's cookie and token do not go together, or None when they do."""
    presession = presession_id(secret, cookie)
    if presession is None:
        return NO_PRESESSION
    expected = login_csrf_token(secret, presession)
    if not presented or not hmac.compare_digest(expected.encode(), presented.encode()):
        return FOREIGN_FORM
    return None
