"""The agent installs without the server's dependencies, the server without the agent's."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER_ONLY = {"fastapi", "uvicorn", "psycopg", "redis", "rq"}
AGENT_ONLY = {"psutil", "speedtest-cli", "httpx"}


def dependencies(folder: str) -> set[str]:
    project = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]
    return {re.split(r"[\[<>=!~ ;]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}


def test_agent_and_server_share_only_the_contract():
    agent, server, contract = dependencies("agent"), dependencies("services"), dependencies("contract")
    assert "atlas-contract" in agent
    assert "atlas-contract" in server
    assert not agent & SERVER_ONLY
    assert not server & AGENT_ONLY
    assert not contract & (SERVER_ONLY | AGENT_ONLY)


def test_server_distribution_lists_every_package():
    """A non-editable install (the server image) ships exactly the packages in services/."""
    tool = tomllib.loads((ROOT / "services" / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = {name: ROOT / "services" / folder for name, folder in tool["package-dir"].items()}
    assert set(tool["packages"]) == set(listed)
    on_disk = {
        p.parent
        for p in (ROOT / "services").rglob("__init__.py")
        if not {"build", "dist"} & set(p.relative_to(ROOT / "services").parts)
    }
    assert on_disk == set(listed.values())
