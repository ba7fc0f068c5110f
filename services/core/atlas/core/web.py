"""What the exporter and the dashboard share: a PostgreSQL pool, and who is asking.

A request is made by a dashboard user with a session cookie, or by a script
with ``Authorization: Bearer atlas_...`` (an API token from
``atlas-server create-token``). Both apps call ``WebState.principal``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from itsdangerous import BadSignature, Signer
from psycopg_pool import ConnectionPool
from starlette.requests import HTTPConnection

from .accounts import Session, User, load_session, signing_key, token_user
from .config import Settings

log = logging.getLogger(__name__)

EXPORT_CONNECTIONS = 4
"""Exports streaming at once per process; one more gets 429 with Retry-After."""

SESSION_COOKIE = "atlas_session"
"""The signed session cookie set at login, read by the dashboard and the exporter."""


@dataclass(frozen=True)
class Principal:
    """Who made a request: the user, and how they proved it (``session`` or ``token:<name>``)."""

    user: User
    auth: str
    session: Session | None = None
    session_id: str | None = None


class WebState:
    """A connection pool and the cookie signer, opened once per app."""

    def __init__(self, settings: Settings, *, name: str, max_size: int = 10) -> None:
        self.settings = settings
        kwargs = {"autocommit": True, "connect_timeout": 5, "application_name": f"atlas-{name}"}
        self.pool = ConnectionPool(
            settings.database_url,
            min_size=1,
            max_size=max_size,
            open=False,
            name=name,
            timeout=5,  # waiting for a connection longer than this: answer 503
            kwargs=kwargs,
            check=ConnectionPool.check_connection,  # a connection PostgreSQL dropped is replaced, not handed out
        )
        self.export_pool = ConnectionPool(
            settings.database_url,
            min_size=0,
            max_size=EXPORT_CONNECTIONS,
            open=False,
            name=f"{name}-exports",
            timeout=1,  # every export connection busy: answer 429 rather than queue
            kwargs=kwargs,
            check=ConnectionPool.check_connection,
        )
        """Exports hold a connection for as long as the client reads; they get their own few, so slow
        downloads can never take the connections that pages and sign-ins need."""
        self._secret: str | None = None
        self._signer: Signer | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        self.pool.open(wait=False)
        self.export_pool.open(wait=False)

    def close(self) -> None:
        self.export_pool.close()
        self.pool.close()

    @property
    def secret(self) -> str:
        """The server secret: ``dashboard.secret_key`` or the key kept in the database, read on first use."""
        with self._lock:
            if self._secret is None:
                with self.pool.connection() as conn:
                    self._secret = signing_key(conn, self.settings.secret_key)
            return self._secret

    @property
    def signer(self) -> Signer:
        """Signs session ids."""
        secret = self.secret
        with self._lock:
            if self._signer is None:
                self._signer = Signer(secret, salt="atlas-session")
            return self._signer

    def sign_session(self, session_id: str) -> str:
        return self.signer.sign(session_id).decode()

    def session_id(self, request: HTTPConnection) -> str | None:
        """The session id in the request's cookie, if the signature holds."""
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie or len(cookie) > 256:
            return None
        try:
            return self.signer.unsign(cookie).decode()
        except BadSignature:
            return None

    def principal(self, request: HTTPConnection) -> Principal | None:
        """The user behind a bearer token or a session cookie, or None (blocking: call from a thread)."""
        authorization = request.headers.get("authorization", "")
        if authorization[:7].lower() == "bearer ":
            with self.pool.connection() as conn:
                found = token_user(conn, authorization[7:].strip())
            return Principal(found[0], f"token:{found[1]}") if found else None
        session_id = self.session_id(request)
        if session_id is None:
            return None
        with self.pool.connection() as conn:
            session = load_session(conn, session_id)
        return Principal(session.user, "session", session, session_id) if session else None

    def ready(self) -> bool:
        try:
            with self.pool.connection(timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except Exception:  # any failure to reach PostgreSQL means not ready
            return False
