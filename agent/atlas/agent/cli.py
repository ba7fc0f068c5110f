"""``atlas-agent``: run the daemon, check on it, collect once, export the local store.

atlas-agent run [--config agent.yaml]
atlas-agent status [--config agent.yaml]
atlas-agent collect --once [--config agent.yaml]
atlas-agent enroll --server URL --secret SECRET [--config agent.yaml]
atlas-agent export --format csv|json [--type wifi] [--since T] [--until T] [--encryption-key KEY] [-o FILE]

``export -o FILE`` writes a temporary file next to FILE and renames it over FILE only once every log is
written: an export that fails (a key missing, the store unreadable) leaves FILE as it was.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from atlas.contract import csv_lines, record

from .config import AgentConfig, AgentConfigError, load_agent_config
from .enroll import EnrollError, load_enrollment
from .sender import SenderConfigError
from .store import LocalStore, StoreError, StoreKeyError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WIDGET_TYPES = ("wifi", "speedtest", "ping", "health", "processes", "network", "roam", "agent")


def _config(args: argparse.Namespace) -> AgentConfig:
    return load_agent_config(args.config)


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import Agent
    from .live import serve

    config = _config(args)
    agent = Agent(config)
    if agent.sender is None:
        logging.getLogger("atlas.agent").warning(
            "No fleet_server set: logs are kept in the local store and nothing is sent "
            "(set fleet_server: https://HOST:8768 and api_key in %s)",
            args.config or "agent.yaml",
        )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    live = serve(agent, config.live_host, config.live_port) if config.live_port else None
    try:
        agent.run(stop)
    finally:
        if live:
            live.shutdown()
            live.server_close()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    config = _config(args)
    status = LocalStore(config.store_path, config.keyring()).status()
    enrolled = load_enrollment(config.data_dir)
    print(
        json.dumps(
            {
                "store": str(config.store_path),
                "fleet_server": config.fleet_server or (enrolled.server if enrolled else None),
                "encryption": bool(config.encryption_keys),
                "device_id": enrolled.device_id if enrolled else None,
                **status,
            },
            indent=2,
        )
    )
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from .daemon import Agent

    config = _config(args)
    agent = Agent(replace(config, fleet_server=None))  # collects only: nothing is stored or sent
    entries = agent.collect(store=False)
    print(json.dumps({"machine": agent.identity.as_machine(), "logs": entries}, indent=2, ensure_ascii=False))
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    from .collectors.identity import collect_hardware_uuid, collect_identity
    from .enroll import enroll

    config = _config(args)
    identity = collect_identity(machine_id=config.machine_id)
    hardware_uuid = collect_hardware_uuid()
    if not hardware_uuid:
        raise EnrollError("cannot read this Mac's hardware UUID (ioreg IOPlatformUUID)")
    enrollment, replaced = enroll(
        config.data_dir,
        server=args.server,
        secret=args.secret,
        hardware_uuid=hardware_uuid,
        serial_number=identity.serial_number,
        machine_id=identity.machine_id,
        hostname=identity.hostname,
        ca_bundle=config.ca_bundle,
    )
    print(
        f"Enrolled with {enrollment.server} as device {enrollment.device_id} "
        f"(machine_id {enrollment.machine_id}, serial {enrollment.serial_number})"
        + (f", replacing device {replaced}" if replaced else "")
        + f"; key and credentials in {config.data_dir} (mode 600); the agent now sends contract v2"
    )
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    config = _config(args)
    count = LocalStore(config.store_path, config.keyring()).requeue_quarantined()
    print(f"Requeued {count} quarantined batch(es); they are sent on the next cycle")
    return 0


def _records(store: LocalStore, serial: str, args: argparse.Namespace) -> Iterable[dict[str, Any]]:
    for log in store.iter_logs(widget_type=args.type, since=args.since, until=args.until):
        yield record(log.id, serial, log.timestamp, log.level, log.widget_type, log.message, log.data)


def _write(out: TextIO, records: Iterable[dict[str, Any]], fmt: str) -> int:
    count = 0
    if fmt == "csv":
        for line in csv_lines(records):
            out.write(line)
            count += 1
        return count - 1
    out.write("[")
    for rec in records:
        out.write(("," if count else "") + "\n" + json.dumps(rec, ensure_ascii=False))
        count += 1
    out.write("\n]\n")
    return count


KEY_HINT = (
    "export with the key the agent or live widget server was started with: "
    "atlas-agent export --encryption-key KEY (or encryption_key in --config)"
)


def _write_file(path: Path, records: Iterable[dict[str, Any]], fmt: str) -> int:
    """Write ``records`` to a temporary file beside ``path``, then rename it to ``path``; on error, remove it."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            count = _write(out, records, fmt)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return count


def cmd_export(args: argparse.Namespace) -> int:
    from .collectors.identity import collect_identity

    config = _config(args).with_overrides(encryption_key=args.encryption_key)
    store = LocalStore(config.store_path, config.keyring())
    serial = collect_identity(machine_id=config.machine_id).serial_number
    try:
        if args.output:
            count = _write_file(Path(args.output), _records(store, serial, args), args.format)
            print(f"Exported {count} logs to {args.output}", file=sys.stderr)
        else:
            count = _write(sys.stdout, _records(store, serial, args), args.format)
            print(f"Exported {count} logs", file=sys.stderr)
    except StoreKeyError as exc:
        raise StoreKeyError(f"{exc}; {KEY_HINT}") from None
    except OSError as exc:
        if not args.output:
            raise
        raise StoreError(f"cannot write {args.output}: {exc.strerror}") from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atlas-agent", description="Atlas agent for macOS")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="agent.yaml")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="run the agent daemon").set_defaults(func=cmd_run)
    sub.add_parser("status", parents=[common], help="show the local store and sending state").set_defaults(
        func=cmd_status
    )
    sub.add_parser(
        "requeue", parents=[common], help="send quarantined batches again (after fixing what the server refused)"
    ).set_defaults(func=cmd_requeue)
    p = sub.add_parser("collect", parents=[common], help="collect once and print what would be sent")
    p.add_argument("--once", action="store_true", required=True, help="collect one round (required)")
    p.set_defaults(func=cmd_collect)
    p = sub.add_parser("enroll", parents=[common], help="enroll this Mac with a fleet server (contract v2)")
    p.add_argument("--server", required=True, metavar="URL", help="the fleet server, https://HOST:8768")
    p.add_argument(
        "--secret", required=True, metavar="SECRET", help="an enroll secret (atlas-server enroll-secret create)"
    )
    p.set_defaults(func=cmd_enroll)
    p = sub.add_parser("export", parents=[common], help="export the local store, decrypted")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--type", choices=WIDGET_TYPES, help="only this widget type")
    p.add_argument("--since", help="RFC 3339 time, inclusive (e.g. 2026-11-28T00:00:00Z)")
    p.add_argument("--until", help="RFC 3339 time, exclusive")
    p.add_argument(
        "--encryption-key",
        metavar="KEY",
        help="the key the agent or live widget server was started with (base64), on top of --config's",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write here (only once complete) instead of standard output")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        status: int = args.func(args)
        return status
    except (AgentConfigError, SenderConfigError) as exc:
        print(f"atlas-agent: configuration error: {exc}", file=sys.stderr)
        return 2
    except (StoreError, EnrollError) as exc:
        print(f"atlas-agent: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
