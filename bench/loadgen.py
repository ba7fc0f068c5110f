"""A lean HTTP/1.1 load generator: N keep-alive connections posting pre-built requests for a fixed time.

Written on bare asyncio streams rather than an HTTP client library so that, on a
2-core machine, the client spends as little CPU as possible and the server stays the
bottleneck: each request is pre-serialised bytes, and a response is only read far
enough to get its status and skip its body.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    """What one timed run saw within its window, and apart from it, the answers that came late.

    Requests still in flight at the deadline are answered after it: those answers go to
    ``late`` and not into the rate, which covers the window only.
    """

    seconds: float = 0.0
    deadline: float = float("inf")
    last_answer: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    late: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    exhausted: bool = False

    @property
    def accepted(self) -> int:
        """202 answers within the window."""
        return self.statuses[202]

    @property
    def all_accepted(self) -> int:
        """Every 202 answer, late ones included: what the server actually accepted."""
        return self.statuses[202] + self.late[202]

    @property
    def rate(self) -> float:
        """Accepted requests per second within the window."""
        return self.accepted / self.seconds if self.seconds else 0.0

    def record(self, status: int, latency: float, now: float) -> None:
        if now > self.deadline:
            self.late[status] += 1
            return
        self.last_answer = now
        self.statuses[status] += 1
        if status == 202:
            self.latencies.append(latency)

    def percentile_ms(self, q: float) -> float:
        """Latency percentile ``q`` (0-100) of accepted requests, in milliseconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def others(self) -> str:
        """Non-202 statuses and connection errors, e.g. ``503 x4, ConnectionResetError x1``; "" if none."""
        parts = [f"{s} x{n}" for s, n in sorted((self.statuses + self.late).items()) if s != 202]
        parts += [f"{e} x{n}" for e, n in sorted(self.errors.items())]
        return ", ".join(parts)


def build_request(host: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """One complete HTTP/1.1 POST, headers and body, ready to write to any port of ``host``."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; return its status and whether the server keeps the connection open."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    length, keep_alive = 0, True
    for line in header_lines:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            raise ValueError(f"unsupported transfer-encoding {value}")
        elif name == "connection" and value == "close":
            keep_alive = False
    await reader.readexactly(length)
    return status, keep_alive


async def _connection(host: str, port: int, requests: Iterator[bytes], deadline: float, result: LoadResult) -> None:
    """One client connection: post the next request, wait for its answer, repeat until the deadline.

    A broken connection is counted and reopened; one that cannot be opened ends this client.
    """
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    try:
        while time.perf_counter() < deadline:
            request = next(requests, None)
            if request is None:
                result.exhausted = True
                return
            if streams is None:
                try:
                    streams = await asyncio.open_connection(host, port)
                except OSError as exc:
                    result.errors[f"connect: {type(exc).__name__}"] += 1
                    return
            if not await _exchange(*streams, request, result):
                streams[1].close()
                streams = None
    finally:
        if streams is not None:
            streams[1].close()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, result: LoadResult
) -> bool:
    """Send one request and record its answer; return whether the connection can be reused."""
    started = time.perf_counter()
    try:
        writer.write(request)
        status, keep_alive = await read_response(reader)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        result.errors[type(exc).__name__] += 1
        return False
    now = time.perf_counter()
    result.record(status, now - started, now)
    return keep_alive


async def _run(host: str, port: int, requests: Iterator[bytes], concurrency: int, seconds: float) -> LoadResult:
    started = time.perf_counter()
    result = LoadResult(deadline=started + seconds)
    await asyncio.gather(*(_connection(host, port, requests, result.deadline, result) for _ in range(concurrency)))
    result.seconds = min(result.deadline, result.last_answer) - started if result.last_answer else 0.0
    return result


def run_load(
    host: str, port: int, requests: Sequence[bytes] | Iterator[bytes], concurrency: int, seconds: float
) -> LoadResult:
    """Post ``requests`` (in order, each once) over ``concurrency`` connections for ``seconds``.

    Stops early, with ``exhausted`` set, if the requests run out; the window then ends at the last answer.
    """
    return asyncio.run(_run(host, port, iter(requests), concurrency, seconds))
