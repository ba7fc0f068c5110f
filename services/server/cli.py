"""``atlas-server``: one command for every server process and operator task.

    atlas-server migrate            create or upgrade the database schema
    atlas-server ingest             serve the ingest API
    atlas-server worker             persist queued batches
    atlas-server failed             list (or --requeue) batches that failed to persist
    atlas-server keygen             print a new encryption key (or --api-key)

Each reads ``--config config.yaml`` (or $ATLAS_CONFIG) and the environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from collections.abc import Sequence

from atlas.contract import generate_encryption_key

from .config import ConfigError, Settings, load_settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _settings(args: argparse.Namespace) -> Settings:
    if args.config:
        os.environ["ATLAS_CONFIG"] = os.path.abspath(args.config)  # for uvicorn workers and job processes
    return load_settings(args.config)


def cmd_keygen(args: argparse.Namespace) -> int:
    print(secrets.token_urlsafe(32) if args.api_key else generate_encryption_key())
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from .db import connect, ensure_database, migrate

    settings = _settings(args)
    if ensure_database(settings.database_url):
        print("Created database")
    with connect(settings.database_url) as conn:
        applied = migrate(conn, progress=lambda m: print(f"Applying migration {m.version}: {m.name}"))
    print(f"Schema up to date ({len(applied)} migration(s) applied)")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings(args)
    settings.require_api_keys()
    uvicorn.run(
        "atlas.ingest.app:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        log_level="info",
        proxy_headers=True,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from atlas.worker.runner import run_worker

    settings = _settings(args)
    run_worker(settings, burst=args.burst, name=args.name)
    return 0


def cmd_failed(args: argparse.Namespace) -> int:
    from .failed import list_failed, requeue_failed
    from .queue import batch_queue, redis_client

    settings = _settings(args)
    queue = batch_queue(redis_client(settings.redis_url), settings)
    if args.requeue_all or args.requeue:
        count = requeue_failed(queue, None if args.requeue_all else args.requeue)
        print(f"Requeued {count} batch(es)")
        return 0
    failed = list_failed(queue)
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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", parents=[common], help="create or upgrade the database schema")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("ingest", parents=[common], help="serve the ingest API")
    p.add_argument("--host", help="address to bind (default: server.host, 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (default: server.port, 8768)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--ssl-certfile", help="serve HTTPS with this certificate")
    p.add_argument("--ssl-keyfile", help="private key for --ssl-certfile")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("worker", parents=[common], help="persist queued batches into PostgreSQL")
    p.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    p.add_argument("--name", help="worker name shown in rq")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("failed", parents=[common], help="list batches that failed to persist, or requeue them")
    p.add_argument("--requeue", nargs="+", metavar="BATCH_ID", help="requeue these batches")
    p.add_argument("--requeue-all", action="store_true", help="requeue every failed batch")
    p.set_defaults(func=cmd_failed)

    p = sub.add_parser("keygen", help="print a new AES-256 encryption key (base64)")
    p.add_argument("--api-key", action="store_true", help="print a random API key instead")
    p.set_defaults(func=cmd_keygen)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"atlas-server: configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # unreachable services: one line, not a traceback
        import psycopg
        from redis.exceptions import ConnectionError as RedisConnectionError

        if isinstance(exc, psycopg.OperationalError):
            print(f"atlas-server: cannot reach PostgreSQL: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
            return 1
        if isinstance(exc, RedisConnectionError):
            print(f"atlas-server: cannot reach Redis: {exc}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
