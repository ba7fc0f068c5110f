"""Slow clients (slowloris) against ``atlas-server ingest`` over TLS: sockets that never start the handshake,
idle ones, heads trickled a byte at a time and bodies stopped short are all closed at their deadlines,
while real agents keep getting 202 fast; and past ``server.max_connections`` requests get 503."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from ..batches import content, sealed
from ..fix_processes import IngestServer
from ..fix_services import API_KEY
from ..tls import make_ca_and_server_cert

HEADER_TIMEOUT, BODY_TIMEOUT = 2, 3
MARGIN = 1.5
"""Seconds past a deadline a slow socket may stay open (the server's close grace is 1 s)."""

BODY_BYTES = 1024 * 1024
PATH = "/api/fleet/widget-logs"


@dataclass
class Slow:
    """One slow client: what it does, when its deadline started, and how the server ended it."""

    kind: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    started: float
    earliest: float
    """When the server's deadline could have started at the earliest: just before the client acted."""
    answer: bytes = b""
    closed_at: float | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def timeout(self) -> float:
        return BODY_TIMEOUT if self.kind == "body" else HEADER_TIMEOUT

    @property
    def deadline(self) -> float:
        return self.started + self.timeout


async def _open(server: IngestServer, kind: str) -> Slow:
    tls = None if kind == "no-hello" else server.verify
    connecting = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=tls)
    slow = Slow(kind, reader, writer, time.monotonic(), connecting)
    if kind == "trickle":
        writer.write(f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode())
    elif kind == "body":
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {BODY_BYTES}\r\n\r\n"
        )
        slow.earliest = time.monotonic()
        writer.write(head.encode())
        slow.started = time.monotonic()  # the body deadline runs from the end of the head
        writer.write(b" " * (BODY_BYTES - 1))  # all but the last byte
    await writer.drain()
    return slow


async def _until_closed(slow: Slow) -> None:
    """Read to EOF (trickling one header byte every 0.2 s meanwhile); note when the server closed."""
    try:
        eof = asyncio.ensure_future(slow.reader.read())
        slow.tasks.append(eof)
        while not eof.done():
            if slow.kind == "trickle":
                try:
                    slow.writer.write(b"a")
                    await slow.writer.drain()
                except (ConnectionError, OSError):
                    pass
            await asyncio.wait({eof}, timeout=0.2)
        slow.answer = eof.result()
    except (ConnectionError, OSError):
        pass
    slow.closed_at = time.monotonic()


async def _scenario(server: IngestServer, keys: dict[str, str]) -> tuple[list[Slow], list[float], list[bool]]:
    kinds = ["no-hello"] * 10 + ["idle"] * 10 + ["trickle"] * 20 + ["body"] * 20
    slows = list(await asyncio.gather(*(_open(server, kind) for kind in kinds)))
    watchers = [asyncio.ensure_future(_until_closed(s)) for s in slows]
    try:
        latencies = []
        for _ in range(7):
            body = sealed(content(3), keys["current"])
            began = time.monotonic()
            response = await asyncio.to_thread(server.post, body, verify=server.verify)
            latencies.append(time.monotonic() - began)
            assert response.status_code == 202, response.text
        open_meanwhile = [s.closed_at is None for s in slows]
        await asyncio.wait(watchers, timeout=BODY_TIMEOUT + 3 * MARGIN)
    finally:
        for task in [*watchers, *(t for s in slows for t in s.tasks)]:
            task.cancel()
        for s in slows:
            s.writer.close()
        await asyncio.gather(*watchers, *(t for s in slows for t in s.tasks), return_exceptions=True)
        await asyncio.gather(*(s.writer.wait_closed() for s in slows), return_exceptions=True)
    return slows, latencies, open_meanwhile


@pytest.fixture(scope="module")
def tls_ingest(
    start_ingest: Callable[..., IngestServer], server_config: dict[str, Any], tmp_path_factory
) -> IngestServer:
    server = {
        **server_config["server"],
        "header_timeout_seconds": HEADER_TIMEOUT,
        "body_timeout_seconds": BODY_TIMEOUT,
        "max_body_bytes": 2 * BODY_BYTES,
    }
    return start_ingest(
        {**server_config, "server": server}, tls=make_ca_and_server_cert(tmp_path_factory.mktemp("tls"))
    )


def test_slow_clients_are_closed_at_their_deadlines_while_agents_get_202_fast(
    tls_ingest: IngestServer, keys: dict[str, str]
):
    slows, latencies, open_meanwhile = asyncio.run(_scenario(tls_ingest, keys))
    assert statistics.median(latencies) < 0.1, latencies
    assert all(open_meanwhile), "the slow clients were not all open while the agents posted"
    still_open = [s.kind for s in slows if s.closed_at is None]
    assert not still_open, f"{len(still_open)} slow sockets never closed: {still_open}"
    for s in slows:
        assert s.earliest + s.timeout - 0.2 <= s.closed_at <= s.deadline + MARGIN, (s.kind, s.closed_at - s.started)
        if s.kind != "no-hello":  # TCP only: the handshake timed out, no HTTP was spoken
            assert s.answer.startswith(b"HTTP/1.1 408 "), (s.kind, s.answer[:80])
    assert "Traceback" not in tls_ingest.logs()


def test_requests_past_max_connections_get_503(
    start_ingest: Callable[..., IngestServer], server_config: dict[str, Any], keys: dict[str, str]
):
    server = start_ingest({**server_config, "server": {**server_config["server"], "max_connections": 3}})
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        time.sleep(0.3)  # accepted by the server
        assert server.post(sealed(content(1), keys["current"])).status_code == 503
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    assert server.post(sealed(content(1), keys["current"])).status_code == 202
