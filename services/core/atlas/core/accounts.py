"""Dashboard users, their sessions, API tokens for exports, and the cookie-signing key.

Passwords are kept as argon2id hashes (argon2-cffi). Session ids and API tokens
are random; the database keeps only their SHA-256, so a leaked dump cannot be
replayed as a login. The session cookie carries the id signed with the
server's secret key (itsdangerous), so a forged cookie is refused before any
database lookup.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .config import resolve_secret_files
from .errors import AccountError

ROLES = ("viewer", "admin")
"""A viewer sees the fleet and exports; an admin also manages users and tokens."""

MIN_PASSWORD_CHARS = 12
"""Shortest password accepted for a dashboard user."""

MAX_PASSWORD_CHARS = 1024
"""Longest password hashed; bounds the work an attacker can ask for."""

TOKEN_PREFIX = "atlas_"  # noqa: S105 - a prefix, not a secret
"""API tokens start with this, so a leaked one is easy to recognise in a scan."""

BOOTSTRAP_LOCK_ID = 0x41544C41  # "ATLA"
"""Advisory lock held while the first admin is created, so two replicas starting together make one."""

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("atlas-dummy-password-for-constant-time-login")


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def validate_username(username: str) -> str:
    name = username.strip()
    if not 1 <= len(name) <= 64 or not all(c.isalnum() or c in "._-@" for c in name):
        raise AccountError("username: 1 to 64 letters, digits, '.', '_', '-' or '@'")
    return name


def validate_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(f"password: must be at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise AccountError(f"password: must be at most {MAX_PASSWORD_CHARS} characters")
    return password


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"role: must be one of {', '.join(ROLES)}")
    return role


def generate_password() -> str:
    """A password for a new account, shown once: 20 URL-safe characters."""
    return secrets.token_urlsafe(15)


# --- users -----------------------------------------------------------------------------


def create_user(conn: psycopg.Connection, username: str, password: str, role: str = "viewer") -> User:
    """Add a user; AccountError if the name is taken or a value is unusable."""
    name = validate_username(username)
    password_hash = _hasher.hash(validate_password(password))
    try:
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO users (username, password_hash, role) VALUES (%s, %s, %s) RETURNING id",
                (name, password_hash, validate_role(role)),
            ).fetchone()
    except psycopg.errors.UniqueViolation:
        raise AccountError(f"username: {name!r} is taken") from None
    assert row is not None
    return User(row[0], name, role)


def count_users(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM users").fetchone()
    return int(row[0]) if row else 0


def list_users(conn: psycopg.Connection) -> list[tuple[User, object, object]]:
    """Every user with its creation and last login times, by name."""
    rows = conn.execute(
        "SELECT id, username, role, created_at, last_login_at FROM users ORDER BY lower(username)"
    ).fetchall()
    return [(User(r[0], r[1], r[2]), r[3], r[4]) for r in rows]


def get_user(conn: psycopg.Connection, user_id: int) -> User | None:
    row = conn.execute("SELECT id, username, role FROM users WHERE id = %s", (user_id,)).fetchone()
    return User(*row) if row else None


def find_user(conn: psycopg.Connection, username: str) -> User | None:
    """The user named ``username``, compared case-insensitively as sign-in does."""
    row = conn.execute("SELECT id, username, role FROM users WHERE lower(username) = lower(%s)", (username,)).fetchone()
    return User(*row) if row else None


def set_role(conn: psycopg.Connection, user_id: int, role: str) -> None:
    conn.execute("UPDATE users SET role = %s WHERE id = %s", (validate_role(role), user_id))


def set_password(conn: psycopg.Connection, user_id: int, password: str) -> None:
    """Change a password and end that user's sessions."""
    password_hash = _hasher.hash(validate_password(password))
    with conn.transaction():
        conn.execute("UPDATE users SET password_hash = %s WHERE id = %s", (password_hash, user_id))
        conn.execute("DELETE FROM sessions WHERE user_id = %s", (user_id,))
        conn.execute(
            "DELETE FROM login_failures WHERE username_key = (SELECT lower(username) FROM users WHERE id = %s)",
            (user_id,),
        )


def delete_user(conn: psycopg.Connection, user_id: int) -> None:
    """Remove a user with their sessions and tokens (the audit log keeps their name)."""
    conn.execute("DELETE FROM users WHERE id = %s", (user_id,))


def admin_count(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM users WHERE role = 'admin'").fetchone()
    return int(row[0]) if row else 0


def authenticate(conn: psycopg.Connection, username: str, password: str) -> User | None:
    """The user whose name and password these are, or None.

    An unknown name costs the same argon2 verification as a wrong password, so
    response times do not reveal which names exist.
    """
    row = conn.execute(
        "SELECT id, username, role, password_hash FROM users WHERE lower(username) = lower(%s)",
        (username.strip()[:64],),
    ).fetchone()
    candidate = password[:MAX_PASSWORD_CHARS]
    if row is None:
        with contextlib.suppress(VerificationError):
            _hasher.verify(_DUMMY_HASH, candidate)
        return None
    try:
        _hasher.verify(row[3], candidate)
    except (VerificationError, InvalidHashError):
        return None
    if _hasher.check_needs_rehash(row[3]):
        conn.execute("UPDATE users SET password_hash = %s WHERE id = %s", (_hasher.hash(candidate), row[0]))
    conn.execute("UPDATE users SET last_login_at = now() WHERE id = %s", (row[0],))
    return User(row[0], row[1], row[2])


# --- failed sign-ins and their delays ---------------------------------------------------
# Counted per (client address, lower(username)), whether or not such a user exists, so a delay tells
# nobody which names exist; in PostgreSQL, so it holds across dashboard processes and restarts. The
# address guessing waits, not the account: the real user elsewhere signs in at once.

FAILURE_MEMORY = timedelta(days=1)
"""An address's failures at a name are forgotten after this long without one (or twice the longest delay)."""


def _name_key(username: str) -> str:
    return username.strip()[:64]


def failure_delay(failures: int, threshold: int, longest: timedelta) -> float:
    """Seconds an address waits after its ``failures``-th failure at a name: 0 before ``threshold``,
    then 1 s doubling with each further failure, at most ``longest``."""
    if threshold < 1 or failures < threshold:
        return 0.0
    return min(longest.total_seconds(), 2.0 ** min(failures - threshold, 40))


_CLAIM = """
    INSERT INTO login_failures AS f (address, username_key, failures, last_failed_at, blocked_until)
    VALUES (%(address)s, lower(%(name)s), 1, now(),
            CASE WHEN %(threshold)s <= 1 THEN now() + make_interval(secs => least(%(longest)s, 1)) END)
    ON CONFLICT (username_key, address) DO UPDATE SET
        failures = CASE WHEN f.last_failed_at < now() - %(memory)s THEN 1 ELSE f.failures + 1 END,
        last_failed_at = now(),
        blocked_until = CASE WHEN (CASE WHEN f.last_failed_at < now() - %(memory)s THEN 1 ELSE f.failures + 1 END)
                                  >= %(threshold)s
            THEN now() + make_interval(secs => least(%(longest)s, power(2, least(
                (CASE WHEN f.last_failed_at < now() - %(memory)s THEN 1 ELSE f.failures + 1 END) - %(threshold)s, 40))))
            END
    WHERE f.blocked_until IS NULL OR f.blocked_until <= now()
    RETURNING failures
"""
"""Count one attempt and set the wait it earns; no row back while the address must still wait."""


def claim_login_attempt(
    conn: psycopg.Connection, address: str, username: str, *, threshold: int, longest: timedelta
) -> tuple[int, float]:
    """Count a sign-in attempt of ``username`` from ``address`` as failed, before its password is checked.

    Returns (failures, 0.0) when the password may be checked (a success then calls
    ``clear_login_failures`` with the address), or (failures, seconds to wait) when the address
    must wait: that attempt is neither counted nor tried. One statement counts and sets the
    delay, so parallel guesses serialise on the row and cannot all pass a check made before any
    was counted. ``threshold`` 0: never delayed, nothing stored. Rows idle past the memory
    (``FAILURE_MEMORY`` or twice ``longest``) are deleted here.
    """
    if threshold < 1:
        return 0, 0.0
    params = {
        "address": address,
        "name": _name_key(username),
        "memory": max(FAILURE_MEMORY, 2 * longest),
        "threshold": threshold,
        "longest": longest.total_seconds(),
    }
    row = conn.execute(_CLAIM, params).fetchone()
    if row is not None:
        conn.execute("DELETE FROM login_failures WHERE last_failed_at < now() - %(memory)s", params)
        return int(row[0]), 0.0
    waiting = conn.execute(
        "SELECT failures, extract(epoch FROM blocked_until - now()) FROM login_failures"
        " WHERE username_key = lower(%(name)s) AND address = %(address)s",
        params,
    ).fetchone()
    return (int(waiting[0]), max(float(waiting[1]), 0.001)) if waiting else (0, 0.001)


def clear_login_failures(conn: psycopg.Connection, username: str, address: str | None = None) -> bool:
    """Forget this name's failed sign-ins (from ``address`` only, if given) and their delays; True if any."""
    if address is None:
        cursor = conn.execute("DELETE FROM login_failures WHERE username_key = lower(%s)", (_name_key(username),))
    else:
        cursor = conn.execute(
            "DELETE FROM login_failures WHERE username_key = lower(%s) AND address = %s",
            (_name_key(username), address),
        )
    return cursor.rowcount > 0


# --- sessions --------------------------------------------------------------------------


def create_session(conn: psycopg.Connection, user: User, max_age: timedelta) -> tuple[str, Session]:
    """Start a session; returns the session id (for the cookie only) and the session."""
    session_id = secrets.token_urlsafe(32)
    csrf_token = secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO sessions (id_hash, user_id, csrf_token, expires_at) VALUES (%s, %s, %s, now() + %s)",
        (_digest(session_id), user.id, csrf_token, max_age),
    )
    conn.execute("DELETE FROM sessions WHERE expires_at < now()")
    return session_id, Session(user, csrf_token)


def load_session(conn: psycopg.Connection, session_id: str) -> Session | None:
    """The live session with this id, or None if unknown or expired."""
    row = conn.execute(
        "SELECT u.id, u.username, u.role, s.csrf_token FROM sessions s JOIN users u ON u.id = s.user_id"
        " WHERE s.id_hash = %s AND s.expires_at > now()",
        (_digest(session_id),),
    ).fetchone()
    return Session(User(row[0], row[1], row[2]), row[3]) if row else None


def end_session(conn: psycopg.Connection, session_id: str) -> None:
    conn.execute("DELETE FROM sessions WHERE id_hash = %s", (_digest(session_id),))


# --- API tokens ------------------------------------------------------------------------


def create_token(conn: psycopg.Connection, user: User, name: str) -> str:
    """A new API token acting as ``user``; only its hash is kept, so it is shown once."""
    label = name.strip()
    if not 1 <= len(label) <= 64:
        raise AccountError("token name: 1 to 64 characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO api_tokens (name, token_hash, user_id) VALUES (%s, %s, %s)", (label, _digest(token), user.id)
    )
    return token


def token_user(conn: psycopg.Connection, token: str) -> tuple[User, str] | None:
    """The user and token name behind a live token, or None.

    The lookup is by SHA-256 of a 256-bit random token, so its timing tells an
    attacker nothing about any stored token.
    """
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        return None
    row = conn.execute(
        "UPDATE api_tokens t SET last_used_at = now() FROM users u"
        " WHERE t.token_hash = %s AND t.revoked_at IS NULL AND u.id = t.user_id"
        " RETURNING u.id, u.username, u.role, t.name",
        (_digest(token),),
    ).fetchone()
    return (User(row[0], row[1], row[2]), row[3]) if row else None


def list_tokens(conn: psycopg.Connection) -> list[dict[str, object]]:
    rows = conn.execute(
        "SELECT t.id, t.name, u.username, t.created_at, t.last_used_at, t.revoked_at"
        " FROM api_tokens t JOIN users u ON u.id = t.user_id ORDER BY t.created_at DESC"
    ).fetchall()
    keys = ("id", "name", "username", "created_at", "last_used_at", "revoked_at")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def revoke_token(conn: psycopg.Connection, token_id: int) -> bool:
    """Revoke a live token; False if there is no such token or it was revoked already."""
    cursor = conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL", (token_id,))
    return cursor.rowcount == 1


# --- the cookie-signing key ------------------------------------------------------------


def signing_key(conn: psycopg.Connection, configured: str | None) -> str:
    """``dashboard.secret_key`` if set; otherwise a random key kept in the database.

    Keeping it in the database means every dashboard and exporter replica signs
    and checks cookies with the same key without any configuration.
    """
    if configured:
        return configured
    conn.execute(
        "INSERT INTO server_secrets (name, value) VALUES ('session_signing_key', %s) ON CONFLICT (name) DO NOTHING",
        (secrets.token_urlsafe(48),),
    )
    row = conn.execute("SELECT value FROM server_secrets WHERE name = 'session_signing_key'").fetchone()
    assert row is not None
    return str(row[0])


def admin_credentials(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """ATLAS_ADMIN_USERNAME and ATLAS_ADMIN_PASSWORD (or the file named by ATLAS_ADMIN_PASSWORD_FILE)."""
    resolved = resolve_secret_files(env)
    return resolved.get("ATLAS_ADMIN_USERNAME"), resolved.get("ATLAS_ADMIN_PASSWORD")


def check_admin_credentials(env: Mapping[str, str]) -> None:
    """AccountError naming the variable if the first admin's name or password would be refused."""
    username, password = admin_credentials(env)
    if not username and not password:
        return
    if not username or not password:
        missing = "ATLAS_ADMIN_USERNAME" if not username else "ATLAS_ADMIN_PASSWORD"
        raise AccountError(f"{missing}: not set, while the other of the pair is; set both or neither")
    try:
        validate_username(username)
    except AccountError as exc:
        raise AccountError(f"ATLAS_ADMIN_USERNAME: {exc}") from None
    try:
        validate_password(password)
    except AccountError as exc:
        raise AccountError(f"ATLAS_ADMIN_PASSWORD: {exc}") from None


def bootstrap_admin(conn: psycopg.Connection, env: Mapping[str, str]) -> User | None:
    """At first start, create the admin named by ATLAS_ADMIN_USERNAME / ATLAS_ADMIN_PASSWORD.

    Does nothing once any user exists, so the variables can stay set. A
    password that is too short raises AccountError naming the variable.
    """
    username, password = admin_credentials(env)
    if not username or not password:
        return None
    conn.execute("SELECT pg_advisory_lock(%s)", (BOOTSTRAP_LOCK_ID,))
    try:
        if count_users(conn):
            return None
        try:
            return create_user(conn, username, password, "admin")
        except AccountError as exc:
            raise AccountError(f"ATLAS_ADMIN_USERNAME/ATLAS_ADMIN_PASSWORD: {exc}") from None
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (BOOTSTRAP_LOCK_ID,))
