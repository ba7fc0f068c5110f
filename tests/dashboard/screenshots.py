"""Screenshots of the dashboard at desktop (1360 px) and phone (390 px) widths, over demo data.

Run by ``scripts/screenshots [DIR]``. Creates a database of its own on the local PostgreSQL (dropped
at the end), fills it with a fleet of Macs and their logs the way the tests do (``fix_dashboard``),
starts ``atlas-server dashboard`` on loopback, signs in through the form in headless Chromium
(Debian's package, JavaScript off) and writes one full-page PNG per page and width:
``fleet-1360.png``, ``fleet-390.png``, ``machine-…``, ``fleet-filtered-…``, ``admin-users-…``,
``admin-tokens-…``, ``admin-audit-…``, and ``network-…`` when the dashboard has a ``/network`` page.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("ATLAS_TEST_RUN_ID", "shots" + uuid.uuid4().hex[:8])

from atlas.contract import generate_encryption_key
from atlas.core.accounts import create_user
from atlas.core.db import connect

from ..fix_dashboard import (
    PASSWORD,
    every_widget_logs,
    insert_machine,
    off_the_mark_week,
)
from ..fix_processes import ServerProcess
from ..fix_services import REDIS_URL, own_database
from .test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS

WIDTHS = (1360, 390)
MODELS = ("Mac14,2", "MacBookPro18,3", "Mac15,12", "Mac14,3", "Mac16,1", "MacBookAir10,1", "VirtualMac2,1")
OSES = ("macOS 15.5 (24F74)", "macOS 14.7.6 (23H626)", "macOS 15.6 (24G84)")
SSIDS = ("Office-5G", "Office-2G", "Guest", "Home-Fibre")
ADMIN = "screenshots-admin"


def fill(database_url: str, machines: int) -> str:
    """Demo data: ``machines`` Macs (online, stale, offline; with problems), one with a week of readings and
    an identity conflict. Returns that machine's id."""
    now = datetime.now(UTC)
    with connect(database_url, autocommit=True) as conn:
        create_user(conn, ADMIN, PASSWORD, "admin")
        featured = insert_machine(
            conn,
            logs=off_the_mark_week(now) + every_widget_logs(now, hours=1),
            hostname="design-studio-mbp.local",
            serial_number="C02FX1ABQ05D",
            model="MacBookPro18,3",
        )
        conn.execute(
            "INSERT INTO identity_conflicts (batch_id, machine_id, serial_number, hostname, received_at, log_count)"
            " VALUES (%s, %s, 'C02ZZ9XYQ05D', 'clone-vm.local', %s, 40)",
            (uuid.uuid4(), featured.machine_id, now - timedelta(hours=3)),
        )
        for i in range(machines - 1):
            seen = now - timedelta(minutes=3 * i) if i % 10 < 8 else now - timedelta(days=1 + i % 3, hours=2)
            logs = every_widget_logs(seen, hours=4)
            ssid = SSIDS[i % len(SSIDS)]
            logs = [(at, level, kind, message, _ssid(data, kind, ssid)) for at, level, kind, message, data in logs]
            if i % 7 == 0:
                logs.append((seen - timedelta(minutes=2), "ERROR", "agent", "Upload failed: connection reset", {}))
            insert_machine(
                conn,
                last_seen=seen,
                logs=logs,
                hostname=f"mac-{i:03d}.corp.example",
                serial_number=f"C02DEMO{i:05d}",
                model=MODELS[i % len(MODELS)],
                os_version=OSES[i % len(OSES)],
            )
    return featured.machine_id


def _ssid(data: dict[str, Any], kind: str, ssid: str) -> dict[str, Any]:
    return {**data, "ssid": ssid} if kind == "wifi" else data


def shoot(server: ServerProcess, machine_id: str, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    pages = {
        "fleet": "/",
        "fleet-filtered": "/?model=Mac14%2C2&problem=any",
        "machine": f"/machines/{machine_id}",
        "machine-week": f"/machines/{machine_id}?range=week",
        "network": "/network",
        "admin-users": "/admin/users",
        "admin-tokens": "/admin/tokens",
        "admin-audit": "/admin/audit",
    }
    written: list[Path] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            for width in WIDTHS:
                context = browser.new_context(
                    base_url=server.url,
                    java_script_enabled=False,
                    viewport={"width": width, "height": 900 if width > 600 else 844},
                    is_mobile=width <= 600,
                )
                page = context.new_page()
                page.goto("/login")
                page.get_by_label("Username").fill(ADMIN)
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_url(f"{server.url}/")
                for name, path in pages.items():
                    response = page.goto(path)
                    if response is None or (response.status == 404 and name == "network"):
                        continue  # no such page (yet)
                    target = out / f"{name}-{width}.png"
                    page.screenshot(path=str(target), full_page=True)
                    written.append(target)
                context.close()
        finally:
            browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/screenshots", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="screenshots", help="folder for the PNGs (default: screenshots)")
    parser.add_argument("--machines", type=int, default=60, help="Macs in the demo fleet (default 60)")
    args = parser.parse_args(argv)
    if not CHROMIUM.is_file():
        print(f"{CHROMIUM} is missing: install Debian's chromium package", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with own_database("_screens") as database_url, tempfile.TemporaryDirectory() as workdir:
        machine_id = fill(database_url, args.machines)
        config = {
            "server": {"api_key": "screenshots-" + uuid.uuid4().hex, "encryption_key": generate_encryption_key()},
            "database": {"url": database_url},
            "redis": {"url": REDIS_URL, "key_prefix": os.environ["ATLAS_TEST_RUN_ID"]},
        }
        server = ServerProcess("dashboard", config, Path(workdir))
        try:
            written = shoot(server, machine_id, out)
        finally:
            server.stop()
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
