"""The live page answers only to loopback Host names: a DNS-rebound page cannot read this Mac's readings."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from atlas.agent.config import load_agent_config
from atlas.agent.daemon import Agent
from atlas.agent.live import MISDIRECTED, serve


@pytest.fixture
def live_url(tmp_path: Path) -> Iterator[str]:
    """The real live server of a real agent, on an ephemeral loopback port."""
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "ping_targets": [], "live_port": 0}))
    agent = Agent(load_agent_config(path))
    server = serve(agent, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def raw_get(url: str, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` as it is (no Host added); the status code and body of the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:8767", "localhost.evil.example", "127.0.0.1.nip.io", "192.168.1.20:8767", "::1"],
)
def test_a_foreign_host_header_is_misdirected(live_url: str, host: str) -> None:
    for path in ("/", "/api/widgets", "/api/status", "/api/widgets/wifi"):
        answer = httpx.get(live_url + path, headers={"Host": host}, timeout=5)
        assert answer.status_code == 421, (host, path)
        assert answer.json() == {"detail": MISDIRECTED}
        assert "widgets" not in answer.text.replace(MISDIRECTED, "")


def test_a_request_without_a_host_header_is_misdirected(live_url: str) -> None:
    status, body = raw_get(live_url, b"GET /api/widgets HTTP/1.0\r\n\r\n")
    assert status == 421
    assert json.loads(body) == {"detail": MISDIRECTED}


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:8767", "127.0.0.1", "127.0.0.1:1234", "[::1]", "[::1]:8767"])
def test_loopback_host_names_are_answered_on_any_port(live_url: str, host: str) -> None:
    answer = httpx.get(live_url + "/api/widgets", headers={"Host": host}, timeout=5)
    assert answer.status_code == 200, host
    assert "widgets" in answer.json()
    assert httpx.get(live_url + "/", headers={"Host": host}, timeout=5).status_code == 200
