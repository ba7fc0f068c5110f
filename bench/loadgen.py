"""A lean HTTP/1.1 load generator: N keep-alive connections posting pre-built requests for a fixed time.

Two modes: ``run_load`` is a closed loop (each connection posts its next request as
soon as the previous one is answered: the highest rate the server can take), and
``paced_load`` is an open loop (requests sent at scheduled times over a pool of
connections, as independent clients would send them, whatever the server's pace).

Written on bare asyncio streams rather than an HTTP client library so that, on a
2-core machine, the client spends as little CPU as possible and the server stays the
bottleneck: each request is pre-serialised bytes, and a response is only read far
enough to get its status and skip its body.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
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


# --- Open-loop mode: requests sent at scheduled times, whatever the answers do ------------------------------------


@dataclass(frozen=True)
class Scheduled:
    """One request of a paced run: its send time (seconds after the run's start), bytes, and a caller's tag."""

    at: float
    data: bytes
    tag: object = None


AnswerHook = Callable[[object, int, float], None]
"""Called with (tag, status, perf_counter time of the answer) for every answer of a paced run."""


@dataclass
class PacedResult:
    """What an open-loop run saw.

    Latencies are taken from each request's *scheduled* time, not from when it was
    written, so a request that waited for a free connection counts its wait (no
    coordinated omission); ``slow`` holds the scheduled times (seconds from the start)
    of the 202s that took over ``slow_threshold``, to tell a stall (slow answers bunched
    in time) from a steady queue (spread out). Lag is counted apart: ``loop_late`` requests were handed
    over more than ``lag_threshold`` after their time because this process itself was
    behind (a client bottleneck); ``connection_waits`` waited that long for a free
    connection because every connection was awaiting an answer (a slow server).
    """

    offered: int = 0
    sent: int = 0
    unsent: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    loop_late: int = 0
    max_loop_lag: float = 0.0
    connection_waits: int = 0
    max_connection_wait: float = 0.0
    lag_threshold: float = 0.010
    start: float = 0.0
    slow: list[float] = field(default_factory=list)
    slow_threshold: float = 0.100

    @property
    def accepted(self) -> int:
        return self.statuses[202]

    @property
    def rate(self) -> float:
        """202 answers per second of the schedule."""
        return self.accepted / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        """Latency percentile ``q`` (0-100) of 202 answers, from the scheduled time, in milliseconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def failures(self) -> str:
        """Non-202 answers, errors and unsent requests, e.g. ``503 x4, timeout x1``; "" if none."""
        parts = [f"{s} x{n}" for s, n in sorted(self.statuses.items()) if s != 202]
        parts += [f"{e} x{n}" for e, n in sorted(self.errors.items())]
        if self.unsent:
            parts.append(f"never sent x{self.unsent}")
        return ", ".join(parts)


class _Slot:
    """One keep-alive connection of the pool and the request it is waiting on, if any."""

    def __init__(self) -> None:
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.busy_since: float | None = None
        self.timed_out = False

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def _paced_slot(
    slot: _Slot,
    host: str,
    port: int,
    work: asyncio.Queue[tuple[Scheduled, float, float]],
    result: PacedResult,
    on_answer: AnswerHook | None,
) -> None:
    """Take the next due request, send it on this slot's connection, record the answer; repeat."""
    while True:
        item, due, handed = await work.get()
        try:
            started = time.perf_counter()
            wait = started - handed
            if wait > result.lag_threshold:
                result.connection_waits += 1
                result.max_connection_wait = max(result.max_connection_wait, wait)
            if slot.streams is not None and slot.streams[0].at_eof():
                slot.close()  # the server closed it while idle (uvicorn's keep-alive timeout): open a new one
            if slot.streams is None:
                try:
                    slot.streams = await asyncio.open_connection(host, port)
                except OSError as exc:
                    result.errors[f"connect: {type(exc).__name__}"] += 1
                    continue
            slot.busy_since, slot.timed_out = time.perf_counter(), False
            result.sent += 1
            reader, writer = slot.streams
            try:
                writer.write(item.data)
                status, keep_alive = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                result.errors["timeout" if slot.timed_out else type(exc).__name__] += 1
                slot.close()
                continue
            now = time.perf_counter()
            result.statuses[status] += 1
            if status == 202:
                result.latencies.append(now - due)
                if now - due > result.slow_threshold:
                    result.slow.append(due - result.start)
            if on_answer is not None:
                on_answer(item.tag, status, now)
            if not keep_alive:
                slot.close()
        finally:
            slot.busy_since = None
            work.task_done()


async def _watchdog(slots: Sequence[_Slot], timeout: float) -> None:
    """Close the connection of any request unanswered for ``timeout`` seconds; its reader then fails."""
    while True:
        await asyncio.sleep(min(0.5, timeout / 4))
        now = time.perf_counter()
        for slot in slots:
            if slot.busy_since is not None and now - slot.busy_since > timeout and slot.streams is not None:
                slot.timed_out = True
                slot.streams[1].transport.abort()


async def paced_load(
    host: str,
    port: int,
    schedule: Sequence[Scheduled],
    *,
    connections: int,
    timeout: float = 10.0,
    finish_timeout: float = 15.0,
    lag_threshold: float = 0.010,
    on_answer: AnswerHook | None = None,
    seconds: float | None = None,
) -> PacedResult:
    """Send ``schedule`` open-loop: each request at its time, on whichever pooled connection is free.

    ``connections`` keep-alive connections are opened first. A request is handed to a
    free connection at its time; when none is free it waits for one (counted in
    ``connection_waits``). After the last request, answers are awaited up to
    ``finish_timeout``; what was not even sent by then counts as ``unsent``. A request
    unanswered after ``timeout`` seconds counts as a ``timeout`` error, and its
    connection is reopened. ``seconds`` is the schedule's window, for the rate
    (default: the last request's time).
    """
    result = PacedResult(offered=len(schedule), lag_threshold=lag_threshold)
    slots = [_Slot() for _ in range(connections)]
    opened = await asyncio.gather(*(asyncio.open_connection(host, port) for _ in slots), return_exceptions=True)
    for slot, streams in zip(slots, opened, strict=True):
        if isinstance(streams, BaseException):
            result.errors[f"connect: {type(streams).__name__}"] += 1
        else:
            slot.streams = streams
    work: asyncio.Queue[tuple[Scheduled, float, float]] = asyncio.Queue()
    tasks = [asyncio.create_task(_paced_slot(s, host, port, work, result, on_answer)) for s in slots]
    tasks.append(asyncio.create_task(_watchdog(slots, timeout)))
    start = result.start = time.perf_counter() + 0.05
    try:
        for item in schedule:
            due = start + item.at
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            handed = time.perf_counter()
            if handed - due > lag_threshold:
                result.loop_late += 1
                result.max_loop_lag = max(result.max_loop_lag, handed - due)
            work.put_nowait((item, due, handed))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(work.join(), finish_timeout)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for slot in slots:
            slot.close()
    result.seconds = seconds if seconds is not None else (schedule[-1].at if schedule else 0.0)
    result.unsent = result.offered - sum(result.statuses.values()) - sum(result.errors.values())
    return result
