"""PostgreSQL connections and the migration runner."""

from __future__ import annotations

import logging
from collections.abc import Callable

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .schema import MIGRATIONS, Migration

log = logging.getLogger(__name__)

MIGRATION_LOCK_ID = 0x41544C53  # "ATLS"
"""Advisory lock key held while migrating, so concurrent runs take turns."""


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection:
    """Open a connection with a short connect timeout and an application name."""
    params = conninfo_to_dict(url)
    params.setdefault("connect_timeout", 5)
    params.setdefault("application_name", "atlas")
    return psycopg.connect(make_conninfo("", **params), autocommit=autocommit)


def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if it does not exist; True if created.

    A refused connection carries no SQLSTATE (libpq reports it as text), so
    whether the database is missing is asked of the server's catalog, through
    the ``postgres`` database; any other reason re-raises the first error.
    """
    params = conninfo_to_dict(url)
    name = params.get("dbname")
    if not name:
        return False
    try:
        with connect(url):
            return False
    except psycopg.errors.ConnectionTimeout:
        raise  # nothing answered: asking again, for another database, would only wait as long
    except psycopg.OperationalError as exc:
        refused = exc
    admin = make_conninfo(url, dbname="postgres")
    try:
        conn = connect(admin, autocommit=True)
    except psycopg.OperationalError:
        raise refused from None
    with conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            raise refused  # it exists: the server is unreachable, or refused us for another reason
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))
        except psycopg.errors.DuplicateDatabase:
            return False
    return True


def applied_versions(conn: psycopg.Connection) -> set[int]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}


def migrate(conn: psycopg.Connection, *, progress: Callable[[Migration], None] | None = None) -> list[Migration]:
    """Apply every migration not yet applied; return the ones applied now."""
    conn.autocommit = True
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
    try:
        done = applied_versions(conn)
        applied = []
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            if progress:
                progress(migration)
            with conn.transaction():
                conn.execute(migration.sql)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
            applied.append(migration)
        return applied
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
