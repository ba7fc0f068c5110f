"""docker-compose.yml, checked without a Docker engine: it parses, every secret is required, and every
server service runs an `atlas-server` subcommand that this suite starts natively."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from atlas.server.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_server_services_run_real_subcommands():
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)
    services = compose()["services"]
    for name in ("migrate", "ingest", "worker", "exporter", "dashboard"):
        command = services[name]["command"]
        assert command[0] in subcommands, (name, command)
        build_parser().parse_args(command)  # flags are real too


def test_every_secret_is_required_and_documented():
    text = (ROOT / "docker-compose.yml").read_text()
    example = (ROOT / ".env.example").read_text()
    for var in set(re.findall(r"\$\{(\w+):\?", text)):
        assert f"{var}=" in example, var
    assert not re.search(r"\$\{\w+\}", text), "every variable must be ${VAR:?message}"


def test_dependencies_wait_for_health():
    services = compose()["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["ingest"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "--appendonly" in services["redis"]["command"]
