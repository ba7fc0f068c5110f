"""Errors the server raises on purpose, and what Redis and PostgreSQL errors mean to it.

Every error carries the HTTP status an app answers with when a request meets
it, and a ``detail`` a client may be told; ``str(error)`` is for the log::

    ServerError                      anything the server refuses or cannot do, for a known reason
     ├── Unavailable                 503 with Retry-After: a store cannot be used right now; retry
     │    ├── QueueUnavailable       Redis refused the command, timed out, or cannot be reached
     │    └── DatabaseUnavailable    PostgreSQL unreachable, shutting down, out of resources, or
     │                               every connection of the pool is taken
     ├── SchemaMissing               500: the database has no Atlas schema yet (``atlas-server migrate``)
     ├── UnusableInput               400: PostgreSQL cannot store a value a request carries (a NUL byte)
     ├── AtRestError                 503: stored content does not open under the configured database keys
     ├── RefusedJobError             a job on the queue that is not Atlas's; failed without being run
     ├── ConfigError (ValueError)    a setting is missing or invalid; the command exits 2
     └── AccountError (ValueError)   a username, password or role that cannot be used

``store_error`` is the one place that maps a Redis or PostgreSQL exception
to this tree, by exception class (psycopg's classes stand for SQLSTATEs),
never by message text. Redis and psycopg are imported only when an error is
mapped, so reading the configuration does not load them.
"""

from __future__ import annotations


class ServerError(Exception):
    """Something the server refuses or cannot do, for a reason it knows."""

    status: int = 500
    detail: str = "internal server error"
    """What a client may be told; the message (``str``) may hold more, for the log."""


class Unavailable(ServerError):
    """A store the request needs cannot be used right now; the same request may succeed later."""

    status = 503


class QueueUnavailable(Unavailable):
    """Redis refused the command, timed out, or cannot be reached: nothing was queued."""

    detail = "queue unavailable, retry later"


class DatabaseUnavailable(Unavailable):
    """PostgreSQL cannot be reached or cannot serve now, or every pooled connection is taken."""

    detail = "database unavailable, retry later"


class SchemaMissing(ServerError):
    """The database has no Atlas schema yet: ``atlas-server migrate`` creates it."""

    detail = "the database has no Atlas schema yet: run `atlas-server migrate` first"


class UnusableInput(ServerError):
    """PostgreSQL cannot store a value a request carries (a NUL byte in text, a number out of range)."""

    status = 400
    detail = "the request holds characters that cannot be stored"


class AtRestError(ServerError):
    """Stored content cannot be read: a database key is missing, or a ciphertext does not open."""

    status = 503


class RefusedJobError(ServerError):
    """A job that is not an Atlas job was found on the queue; it is failed without being run."""


class ConfigError(ServerError, ValueError):
    """A setting is missing or invalid; the message names the setting."""


class AccountError(ServerError, ValueError):
    """A username, password or role that cannot be used; the message says why."""

    status = 400


def store_error(exc: BaseException) -> ServerError | None:
    """What a Redis or PostgreSQL exception means, or None when it means none of these (a bug: let it raise).

    Any Redis error means the command was not carried out, so the queue is
    unavailable. A PostgreSQL ``OperationalError`` is any SQLSTATE of classes
    08 (connection), 53 (insufficient resources), 57 (operator intervention:
    shutdown, cancel), 40 (rollback) and the like, or a connection that could
    not be made at all; a pool that hands out no connection in time means the same.
    """
    import psycopg
    from psycopg_pool import PoolTimeout
    from redis.exceptions import RedisError

    message = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
    if isinstance(exc, RedisError):
        return QueueUnavailable(message)
    if isinstance(exc, psycopg.OperationalError | PoolTimeout):
        return DatabaseUnavailable(message)
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return SchemaMissing(message)
    if isinstance(exc, psycopg.DataError):
        return UnusableInput(message)
    return None


_REFUSED_FOR_GOOD = ("password authentication failed", "no password supplied", "pg_hba.conf", "role ")
"""libpq's words for a connection refused in a way waiting does not change: a wrong password or user."""


def connect_refusal(reason: str) -> str:
    """Why PostgreSQL refused a connection, from the first line of libpq's message: ``missing database`` (it
    can be created), ``final`` (a wrong password or user), or ``transient`` (not up yet, unreachable).

    libpq gives no SQLSTATE for a connection that failed, so this one place reads its text.
    """
    if "does not exist" in reason and "database" in reason:
        return "missing database"
    if any(text in reason for text in _REFUSED_FOR_GOOD):
        return "final"
    return "transient"


def store_failures() -> tuple[type[Exception], ...]:
    """The exception classes ``store_error`` may map, for an ``except`` clause or an exception handler."""
    import psycopg
    from psycopg_pool import PoolTimeout
    from redis.exceptions import RedisError

    return (RedisError, psycopg.Error, PoolTimeout)
