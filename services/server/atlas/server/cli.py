"""``atlas-server``: one command for every server process and operator task.

    atlas-server run                run the whole server stack here until Ctrl-C (--demo: and a local agent)
    atlas-server migrate            create or upgrade the database schema (--wait: until PostgreSQL answers)
    atlas-server check-config       check every setting of every service (or --service ...), one line per error
    atlas-server ingest             serve the ingest API
    atlas-server worker             persist queued batches
    atlas-server exporter           serve the export API (/api/exports/logs)
    atlas-server dashboard          serve the dashboard (and the export API beside it)
    atlas-server failed             list (or --requeue) batches that failed to persist
    atlas-server create-admin       create the first admin (or --reset-password)
    atlas-server create-user        add a dashboard user
    atlas-server create-token       make an API token for scripted exports
    atlas-server unlock-user        end every sign-in delay of a username (create-admin --reset-password does too)
    atlas-server rotate-db-key      put every stored batch under the current database key
    atlas-server partitions         create daily partitions ahead, drop those past database.retention_days
    atlas-server keys               which keys are configured, and which ones stored batches use
    atlas-server keygen             print a new encryption key (or --api-key; --hpke: add an HPKE key to a keyring)
    atlas-server enroll-secret      create, list or revoke the secrets Macs enroll with (contract v2)
    atlas-server devices            list enrolled Macs, or revoke one

Each reads ``--config config.yaml`` (or $ATLAS_CONFIG) and the environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from atlas.contract import (
    DEFAULT_SUITE,
    SUITES,
    HpkeKeyring,
    HpkePrivateKey,
    KeyFormatError,
    generate_encryption_key,
)
from atlas.core.config import Settings, load_settings
from atlas.core.errors import ConfigError, DatabaseUnavailable, QueueUnavailable, connect_refusal, store_error

from .logs import LOG_FORMATS, configure_logging, secret_values

if TYPE_CHECKING:
    from rq import Queue

DEFAULT_HPKE_KEYRING = "atlas-hpke-keyring.json"
"""Where ``keygen --hpke`` adds its key unless --keyring says otherwise."""

DEFAULT_ADMIN_FILE = "atlas-first-admin.txt"
"""Where ``run`` writes the first admin's generated password unless --admin-file says otherwise."""


def _settings(args: argparse.Namespace) -> Settings:
    if args.config:
        os.environ["ATLAS_CONFIG"] = os.path.abspath(args.config)  # for uvicorn workers and job processes
    return load_settings(args.config)


def cmd_keygen(args: argparse.Namespace) -> int:
    if args.hpke:
        return _keygen_hpke(args.keyring, args.suite)
    print(secrets.token_urlsafe(32) if args.api_key else generate_encryption_key())
    return 0


def _keygen_hpke(path: str, suite: str) -> int:
    """Add a new HPKE key pair to the keyring file as its current key; older keys stay, to open spooled batches."""
    try:
        keyring = HpkeKeyring.load(path) if os.path.exists(path) else HpkeKeyring()
    except KeyFormatError as exc:
        print(f"atlas-server: {exc}", file=sys.stderr)
        return 2
    key = HpkePrivateKey.generate(suite)
    try:
        keyring.with_new_key(key).save(path)
    except OSError as exc:
        print(f"atlas-server: {path}: cannot write the keyring: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"Added HPKE key {key.kid} ({key.suite}) to {path} as the current key; {len(keyring)} older key(s) kept")
    return 0


SERVICES = ("migrate", "ingest", "worker", "exporter", "dashboard")
"""What check-config checks the settings of, by default all of them."""


def check_config(settings: Settings, services: Sequence[str], env: dict[str, str] | None = None) -> None:
    """ConfigError naming the first setting one of ``services`` would refuse at start."""
    from atlas.core.accounts import check_admin_credentials
    from atlas.core.errors import AccountError

    if "ingest" in services:
        settings.require_api_keys()
    if "dashboard" in services:
        try:
            check_admin_credentials(os.environ if env is None else env)
        except AccountError as exc:
            raise ConfigError(str(exc).replace(": password: ", ": ").replace(": username: ", ": ")) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    services = args.service or list(SERVICES)
    check_config(_settings(args), services)
    print(f"Configuration OK for {', '.join(services)}")
    return 0


def wait_for_postgres(url: str, seconds: float) -> None:
    """Return once PostgreSQL accepts a connection to ``url`` (or answers that the database is missing),
    printing one line per try meanwhile; after ``seconds``, raise the last OperationalError."""
    import psycopg

    from atlas.core.db import connect

    deadline = time.monotonic() + seconds
    while True:
        try:
            with connect(url):
                return
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            left = deadline - time.monotonic()
            refusal = connect_refusal(reason)
            if refusal == "missing database":
                return  # migrate creates it
            if left <= 0 or refusal == "final":
                raise
            print(f"Waiting for PostgreSQL: {reason} (retrying for {left:.0f} s more)", flush=True)
            time.sleep(min(2.0, max(left, 0.1)))


def cmd_migrate(args: argparse.Namespace) -> int:
    from atlas.core.db import connect, ensure_database, migrate
    from atlas.core.partitions import ensure_partitions

    settings = _settings(args)
    if args.wait:
        wait_for_postgres(settings.database_url, args.wait)
    if ensure_database(settings.database_url):
        print("Created database")
    with connect(settings.database_url) as conn:
        applied = migrate(conn, progress=lambda m: print(f"Applying migration {m.version}: {m.name}"))
        created = ensure_partitions(conn, days_ahead=settings.partitions_ahead_days)
    print(f"Schema up to date ({len(applied)} migration(s) applied)")
    if created:
        print(f"Created {len(created)} daily partition(s) of widget_logs, up to {created[-1]}")
    return 0


def cmd_partitions(args: argparse.Namespace) -> int:
    from atlas.core.db import connect
    from atlas.core.partitions import drop_expired, ensure_partitions, list_partitions

    settings = _settings(args)
    with connect(settings.database_url, autocommit=True) as conn:
        created = ensure_partitions(conn, days_ahead=settings.partitions_ahead_days)
        dropped = drop_expired(conn, settings.retention_days)
        partitions = list_partitions(conn)
    for name in created:
        print(f"Created {name}")
    for name in dropped:
        print(f"Dropped {name} (older than database.retention_days = {settings.retention_days})")
    print(f"{'PARTITION':26}  {'FROM':25}  {'TO':25}  ROWS (estimate)")
    for p in partitions:
        lower = p.lower.isoformat() if p.lower else ("-" if p.is_default else "(everything before)")
        upper = p.upper.isoformat() if p.upper else "-"
        print(f"{p.name:26}  {lower:25}  {upper:25}  {p.rows}")
    retention = f"{settings.retention_days} days" if settings.retention_days else "off (database.retention_days: 0)"
    print(f"{len(partitions)} partition(s); retention {retention}")
    return 0


def _serve(app: str, args: argparse.Namespace, settings: Settings, port: int) -> int:
    """Serve ``app``, believing X-Forwarded-* only from ``server.forwarded_allow_ips`` (none by default)."""
    from .serving import serve

    return serve(
        app,
        settings,
        host=args.host or settings.host,
        port=args.port or port,
        workers=args.workers,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )


def cmd_ingest(args: argparse.Namespace) -> int:
    settings = _settings(args)
    settings.require_api_keys()
    return _serve("atlas.ingest.app:create_app", args, settings, settings.port)


def cmd_exporter(args: argparse.Namespace) -> int:
    settings = _settings(args)
    return _serve("atlas.exporter.app:create_app", args, settings, settings.exporter_port)


def cmd_dashboard(args: argparse.Namespace) -> int:
    settings = _settings(args)
    return _serve("atlas.dashboard.app:create_app", args, settings, settings.dashboard_port)


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    """The password from stdin if --password-stdin, else a generated one (True: it goes to --password-file)."""
    from atlas.core.accounts import generate_password

    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n"), False
    return generate_password(), True


def password_file_path(args: argparse.Namespace) -> str:
    """Where a generated password is written: --password-file, else atlas-password-NAME.txt here."""
    return args.password_file or f"atlas-password-{args.username.strip()}.txt"


def cmd_create_user(args: argparse.Namespace, role: str | None = None) -> int:
    """Create a user (or reset a password); a generated password goes to a new mode-600 file, never to stdout."""
    from atlas.core.accounts import count_users, create_user, find_user, set_password
    from atlas.core.db import connect
    from atlas.core.errors import AccountError

    from .privatefile import PrivateFileError, create_private_file

    settings = _settings(args)
    role = role or args.role
    password, generated = _password(args)
    path = password_file_path(args) if generated else None
    with connect(settings.database_url, autocommit=True) as conn:
        if getattr(args, "if_no_users", False) and count_users(conn):
            print("Dashboard users exist already; no admin created")
            return 0
        try:
            with conn.transaction():  # undone if the password file cannot be written
                if getattr(args, "reset_password", False):
                    found = find_user(conn, args.username)
                    if found is None:
                        print(f"atlas-server: no user named {args.username!r}", file=sys.stderr)
                        return 1
                    set_password(conn, found.id, password)
                    username, done = found.username, f"Password of {args.username!r} reset; their sessions are ended"
                else:
                    user = create_user(conn, args.username, password, role)
                    username, done = user.username, f"Created {user.role} {user.username!r}"
                if path is not None:
                    create_private_file(path, f"Username: {username}\nPassword: {password}\n")
        except AccountError as exc:
            print(f"atlas-server: {exc}", file=sys.stderr)
            return 1
        except PrivateFileError as exc:
            print(f"atlas-server: --password-file {exc}; nothing changed", file=sys.stderr)
            return 1
    print(done)
    if path is not None:
        print(f"Its generated password is in {os.path.abspath(path)} (mode 600), shown nowhere else.")
        print("Atlas keeps only its hash: read it, then delete the file; it can be changed under Account.")
    return 0


def cmd_create_admin(args: argparse.Namespace) -> int:
    return cmd_create_user(args, role="admin")


def cmd_unlock_user(args: argparse.Namespace) -> int:
    from atlas.core.accounts import clear_login_failures
    from atlas.core.db import connect

    settings = _settings(args)
    with connect(settings.database_url, autocommit=True) as conn:
        forgotten = clear_login_failures(conn, args.username)
    print(f"Unlocked {args.username!r}" if forgotten else f"{args.username!r} had no failed sign-ins to forget")
    return 0


def cmd_rotate_db_key(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from atlas.core.db import connect

    from .rotation import remaining, rotate

    settings = _settings(args)
    current = settings.db_keyring.current
    if current is None:
        raise ConfigError("server.db_encryption_key: not set; it is the key stored logs are moved under")
    with connect(settings.database_url, autocommit=True) as conn:
        work = remaining(conn, current)
        print(
            f"Database key {current.kid}: {work.rewrap} batch(es) to re-wrap from older keys,"
            f" {work.encrypt} batch(es) stored in the clear to encrypt"
        )
        with tqdm(total=work.total, unit="batch", disable=None if args.progress == "auto" else False) as bar:
            retired = rotate(conn, settings.db_keyring, chunk=args.chunk, progress=bar.update)
        left = remaining(conn, current)
    if left.total:
        print(
            f"Not done: {left.rewrap} batch(es) under older keys and {left.encrypt} in the clear were stored"
            " meanwhile (is every worker on the new key?); run rotate-db-key again"
        )
        return 1
    print(f"Done: every stored batch is under database key {current.kid}")
    for kid in retired:
        print(f"Database key {kid} is no longer used: remove it from server.db_encryption_keys")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from atlas.core.db import connect

    settings = _settings(args)
    with connect(settings.database_url, autocommit=True) as conn:
        payload = {
            kid: (day, latest)
            for kid, day, latest in conn.execute(
                "SELECT coalesce(b.kid, '(plaintext)'),"
                " count(*) FILTER (WHERE b.received_at > now() - interval '1 day'),"
                " count(*) FILTER (WHERE b.latest) FROM (SELECT kid, received_at, created_at = max(created_at)"
                " OVER (PARTITION BY machine_id) AS latest FROM batches) b GROUP BY 1 ORDER BY 1"
            )
        }
        stored: dict[str, int] = dict(
            conn.execute("SELECT coalesce(dek_kid, '(clear)'), count(*) FROM batches GROUP BY 1 ORDER BY 1").fetchall()
        )
    print("Payload keys (server.encryption_key, then server.encryption_keys):")
    for index, key in enumerate(settings.keyring):
        day, latest = payload.pop(key.kid, (0, 0))
        role = "current" if index == 0 else "accepted"
        print(f"  {key.kid}  {role:8}  {day} batch(es) in the last day; latest batch of {latest} machine(s)")
    for kid, (day, latest) in payload.items():
        print(f"  {kid}  {'retired':8}  {day} batch(es) in the last day; latest batch of {latest} machine(s)")
    print("Database keys (server.db_encryption_key, then server.db_encryption_keys):")
    for index, key in enumerate(settings.db_keyring):
        role = "current" if index == 0 else "readable"
        print(f"  {key.kid}  {role:8}  wraps the data keys of {stored.pop(key.kid, 0)} batch(es)")
    for kid, count in stored.items():
        note = "stored in the clear" if kid == "(clear)" else "MISSING from this configuration"
        print(f"  {kid:16}  {count} batch(es), {note}")
    return 0


def cmd_create_token(args: argparse.Namespace) -> int:
    from atlas.core.accounts import create_token, find_user
    from atlas.core.db import connect
    from atlas.core.errors import AccountError

    settings = _settings(args)
    with connect(settings.database_url, autocommit=True) as conn:
        user = find_user(conn, args.username)
        if user is None:
            print(f"atlas-server: no user named {args.username!r}", file=sys.stderr)
            return 1
        try:
            token = create_token(conn, user, args.name)
        except AccountError as exc:
            print(f"atlas-server: {exc}", file=sys.stderr)
            return 1
    print(
        f"API token {args.name!r} for {user.username!r} (shown only now; send it as 'Authorization: Bearer <token>'):"
    )
    print(token)
    return 0


def _when(value: object) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"  # type: ignore[attr-defined]


def cmd_enroll_secret(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from atlas.core.db import connect
    from atlas.core.devices import create_enroll_secret, list_enroll_secrets, revoke_enroll_secret

    settings = _settings(args)
    with connect(settings.database_url, autocommit=True) as conn:
        if args.action == "create":
            expires = timedelta(days=args.expires_in) if args.expires_in is not None else None
            try:
                secret, row = create_enroll_secret(conn, args.name, expires_in=expires, max_uses=args.uses)
            except ValueError as exc:
                print(f"atlas-server: {exc}", file=sys.stderr)
                return 1
            limits = f"expires {_when(row.expires_at)}, uses {'unlimited' if row.max_uses is None else row.max_uses}"
            print(f"Enroll secret {row.name!r} ({limits}); shown only now, Atlas keeps only its hash:")
            print(secret)
            return 0
        if args.action == "revoke":
            if not revoke_enroll_secret(conn, args.name):
                print(f"atlas-server: no live enroll secret named {args.name!r}", file=sys.stderr)
                return 1
            print(f"Revoked enroll secret {args.name!r}: no Mac can enroll with it; enrolled Macs are unaffected")
            return 0
        rows = list_enroll_secrets(conn)
    print(f"{'NAME':24}  {'CREATED':25}  {'EXPIRES':25}  {'USES':>11}  REVOKED")
    for row in rows:
        uses = f"{row.uses}/{'-' if row.max_uses is None else row.max_uses}"
        created, ends, revoked = _when(row.created_at), _when(row.expires_at), _when(row.revoked_at)
        print(f"{row.name:24}  {created:25}  {ends:25}  {uses:>11}  {revoked}")
    print(f"{len(rows)} enroll secret(s)")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from atlas.core.db import connect
    from atlas.core.devices import find_device, list_devices, revoke_device

    settings = _settings(args)
    with connect(settings.database_url, autocommit=True) as conn:
        if args.action == "revoke":
            device = revoke_device(conn, args.device_id)
            if device is None:
                known = find_device(conn, args.device_id)
                why = "is revoked already" if known is not None else "is not a known device id"
                print(f"atlas-server: {args.device_id} {why}", file=sys.stderr)
                return 1
            print(f"Revoked device {device.device_id} (machine {device.machine_id}): its next request gets 401")
            return 0
        devices = list_devices(conn)
    print(f"{'DEVICE':36}  {'MACHINE':36}  {'SERIAL':14}  {'ENROLLED':25}  {'LAST SEEN':25}  STATE")
    for d in devices:
        print(
            f"{d.device_id:36}  {d.machine_id[:36]:36}  {d.serial_number[:14]:14}  {_when(d.enrolled_at):25}"
            f"  {_when(d.last_seen_at):25}  {d.state}"
        )
    print(f"{len(devices)} device(s), {sum(d.live for d in devices)} live")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from atlas.worker.runner import run_worker

    settings = _settings(args)
    run_worker(settings, burst=args.burst, name=args.name)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .supervisor import run

    settings = _settings(args)
    return run(settings, config=args.config, host=args.host, demo=args.demo, admin_file=args.admin_file)


def cmd_failed(args: argparse.Namespace) -> int:
    from atlas.core.queue import batch_queue, redis_client

    settings = _settings(args)
    queue = batch_queue(redis_client(settings.redis_url), settings)
    try:
        return _failed(queue, args, settings)
    finally:
        queue.connection.close()


def _failed(queue: Queue, args: argparse.Namespace, settings: Settings) -> int:
    """List the failed batches, or requeue them."""
    from atlas.core.failed import list_failed, requeue_failed

    if args.requeue_all or args.requeue:
        count = requeue_failed(queue, None if args.requeue_all else args.requeue)
        print(f"Requeued {count} batch(es)")
        return 0
    failed = list_failed(queue, settings.db_keyring)
    if not failed:
        print("No failed batches")
        return 0
    print(f"{'BATCH ID':36}  {'MACHINE':20}  {'LOGS':>5}  {'FAILED AT':25}  {'JOB':36}  ERROR")
    for f in failed:
        ended = f.ended_at.isoformat(timespec="seconds") if f.ended_at else "-"
        print(f"{f.batch_id:36}  {f.machine_id[:20]:20}  {f.logs:5d}  {ended:25}  {f.job_id:36}  {f.error}")
    print(f"{len(failed)} failed batch(es); requeue with: atlas-server failed --requeue-all")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atlas-server", description="Atlas fleet telemetry server")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="config.yaml (default: $ATLAS_CONFIG, ./config.yaml)")
    common.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text lines, or one JSON object a line (default: $ATLAS_LOG_FORMAT, text)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", parents=[common], help="create or upgrade the database schema")
    p.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="retry connecting to PostgreSQL this long before giving up (default 0: try once)",
    )
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser(
        "check-config", parents=[common], help="check every setting the services read; one line naming a bad one"
    )
    p.add_argument(
        "--service",
        action="append",
        choices=SERVICES,
        help="check only the settings of this service (repeatable; default: all)",
    )
    p.set_defaults(func=cmd_check_config)

    served = argparse.ArgumentParser(add_help=False)
    served.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    served.add_argument("--ssl-certfile", help="serve HTTPS with this certificate")
    served.add_argument("--ssl-keyfile", help="private key for --ssl-certfile")

    p = sub.add_parser("ingest", parents=[common, served], help="serve the ingest API")
    p.add_argument("--host", help="address to bind (default: server.host, 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (default: server.port, 8768)")
    p.set_defaults(func=cmd_ingest)
    for command, func, port, what in (
        ("exporter", cmd_exporter, "exporter.port, 8769", "serve the export API"),
        ("dashboard", cmd_dashboard, "dashboard.port, 8770", "serve the dashboard and the export API"),
    ):
        p = sub.add_parser(command, parents=[common, served], help=what)
        p.add_argument("--host", help="address to bind (default: server.host, 0.0.0.0)")
        p.add_argument("--port", type=int, help=f"port (default: {port})")
        p.set_defaults(func=func)

    p = sub.add_parser("worker", parents=[common], help="persist queued batches into PostgreSQL")
    p.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    p.add_argument("--name", help="worker name shown in rq")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "run", parents=[common], help="run ingest, a worker, the exporter and the dashboard here until Ctrl-C"
    )
    p.add_argument("--host", default="127.0.0.1", help="address the services bind (default: 127.0.0.1)")
    p.add_argument("--demo", action="store_true", help="also run a local agent reporting this machine")
    p.add_argument(
        "--admin-file",
        metavar="PATH",
        default=DEFAULT_ADMIN_FILE,
        help=f"a new file (mode 600) for the first admin's generated password (default: ./{DEFAULT_ADMIN_FILE})",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("failed", parents=[common], help="list batches that failed to persist, or requeue them")
    p.add_argument("--requeue", nargs="+", metavar="BATCH_ID", help="requeue these batches")
    p.add_argument("--requeue-all", action="store_true", help="requeue every failed batch")
    p.set_defaults(func=cmd_failed)

    account = argparse.ArgumentParser(add_help=False)
    account.add_argument("--username", required=True, help="login name")
    given = account.add_mutually_exclusive_group()
    given.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from stdin (default: generate one and write it to --password-file)",
    )
    given.add_argument(
        "--password-file",
        metavar="PATH",
        help="a new file (mode 600) for the generated password (default: ./atlas-password-NAME.txt)",
    )
    p = sub.add_parser("create-admin", parents=[common, account], help="create a dashboard admin")
    p.add_argument("--reset-password", action="store_true", help="set a new password for an existing user instead")
    p.add_argument("--if-no-users", action="store_true", help="do nothing if any dashboard user exists (for scripts)")
    p.set_defaults(func=cmd_create_admin)
    p = sub.add_parser("create-user", parents=[common, account], help="add a dashboard user")
    p.add_argument("--role", choices=("viewer", "admin"), default="viewer")
    p.set_defaults(func=cmd_create_user)
    p = sub.add_parser("create-token", parents=[common], help="make an API token for scripted exports")
    p.add_argument("--username", required=True, help="the user the token acts as")
    p.add_argument("--name", required=True, help="what the token is for, e.g. 'nightly export'")
    p.set_defaults(func=cmd_create_token)
    p = sub.add_parser("unlock-user", parents=[common], help="end every sign-in delay of a username")
    p.add_argument("username", metavar="NAME", help="the login name (known or not: unknown names are counted too)")
    p.set_defaults(func=cmd_unlock_user)

    p = sub.add_parser(
        "rotate-db-key",
        parents=[common],
        help="re-wrap stored data keys under the current database key, and encrypt rows stored in the clear",
    )
    p.add_argument("--chunk", type=int, default=500, help="batches per transaction (default 500)")
    p.add_argument(
        "--progress", choices=("auto", "always"), default="auto", help="progress bar: on a terminal, or always"
    )
    p.set_defaults(func=cmd_rotate_db_key)

    p = sub.add_parser(
        "partitions", parents=[common], help="create widget_logs' daily partitions ahead, drop expired ones, list them"
    )
    p.set_defaults(func=cmd_partitions)

    p = sub.add_parser("keys", parents=[common], help="which keys are configured, and which ones stored batches use")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("keygen", help="print a new AES-256 encryption key (base64)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--api-key", action="store_true", help="print a random API key instead")
    kind.add_argument(
        "--hpke", action="store_true", help="add a new HPKE key pair (contract v2) to --keyring as its current key"
    )
    p.add_argument(
        "--keyring",
        default=DEFAULT_HPKE_KEYRING,
        help=f"with --hpke: the keyring file, created with mode 600 if missing (default {DEFAULT_HPKE_KEYRING})",
    )
    p.add_argument(
        "--suite",
        choices=tuple(SUITES),
        default=DEFAULT_SUITE,
        help=f"with --hpke: the key's HPKE suite (default {DEFAULT_SUITE}, hybrid post-quantum)",
    )
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("enroll-secret", help="create, list or revoke the secrets Macs enroll with (contract v2)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("create", parents=[common], help="make a new enroll secret, shown once")
    a.add_argument("--name", help="what it is for, e.g. 'mdm-2026' (default: a generated name)")
    a.add_argument("--expires-in", type=_positive, metavar="DAYS", help="refused after this many days (default: never)")
    a.add_argument("--uses", type=_positive, metavar="N", help="refused after N enrollments (default: unlimited)")
    actions.add_parser("list", parents=[common], help="every enroll secret (never the secret itself)")
    a = actions.add_parser("revoke", parents=[common], help="no further enrollment with this secret")
    a.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_enroll_secret)

    p = sub.add_parser("devices", help="list enrolled Macs (contract v2), or revoke one")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", parents=[common], help="every device, live, replaced or revoked")
    a = actions.add_parser("revoke", parents=[common], help="its next request gets 401; nothing else is affected")
    a.add_argument("device_id", metavar="DEVICE_ID")
    p.set_defaults(func=cmd_devices)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("must be a whole number of at least 1")
    return value


def _log_format(args: argparse.Namespace) -> str:
    fmt = getattr(args, "log_format", None) or os.environ.get("ATLAS_LOG_FORMAT") or "text"
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"ATLAS_LOG_FORMAT: must be one of {', '.join(LOG_FORMATS)}")
    os.environ["ATLAS_LOG_FORMAT"] = fmt  # for processes this one starts
    return fmt


def _log_secrets(args: argparse.Namespace) -> list[str]:
    """The configured secrets, for the log filter that blanks them; a bad config is left to the command."""
    if not hasattr(args, "config"):
        return []
    try:
        return secret_values(load_settings(args.config))
    except Exception:
        return []


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_logging(_log_format(args), logging.INFO, _log_secrets(args))
    except ConfigError as exc:
        print(f"atlas-server: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        status: int = args.func(args)
        return status
    except ConfigError as exc:
        print(f"atlas-server: configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # unreachable services: one line, not a traceback
        down = store_error(exc)
        if isinstance(down, DatabaseUnavailable):
            print(f"atlas-server: cannot reach PostgreSQL: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
            return 1
        if isinstance(down, QueueUnavailable):
            print(f"atlas-server: cannot reach Redis: {exc}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
