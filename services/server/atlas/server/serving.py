"""How ``atlas-server`` serves HTTP: uvicorn with deadlines a slow client cannot stretch.

uvicorn on its own waits for a request's head and body as long as the client
keeps the socket open, so a few hundred clients trickling bytes (slowloris) or
stopping short of a large body hold sockets and buffered bodies indefinitely.
:class:`DeadlineProtocol` gives each request a head deadline
(``server.header_timeout_seconds``, counted from the connection or from the
request's first byte) and a body deadline (``server.body_timeout_seconds``,
from the end of the head). A request that misses one gets ``408`` if nothing
was sent yet, and its connection is closed; one that does not close within a
short grace (a TLS peer that never answers close_notify) is aborted.
"""

from __future__ import annotations

import asyncio
import functools
from asyncio import TimerHandle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from atlas.core.config import Settings

from .logs import uvicorn_log_config

CLOSE_GRACE_SECONDS = 1.0
"""How long a timed-out connection may take to close cleanly before it is aborted."""


@dataclass(frozen=True)
class Deadlines:
    """Seconds a client has for a request's head and for its body."""

    header: float
    body: float


class AtlasConfig(uvicorn.Config):
    """uvicorn's Config carrying the request deadlines (it is pickled into ``--workers`` processes).

    Over TLS its event loops also give the handshake the head deadline (asyncio's default is 60 s, so a
    client that connects and never says hello held its socket that long) and a closing connection
    ``CLOSE_GRACE_SECONDS`` for the peer's close_notify (default 30 s): uvicorn takes no such options,
    so the loop's ``create_server`` gets them as defaults.
    """

    def __init__(self, app: Any, *, deadlines: Deadlines, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.deadlines = deadlines

    def get_loop_factory(self) -> Callable[[], asyncio.AbstractEventLoop] | None:
        make_loop = super().get_loop_factory() or asyncio.new_event_loop
        if not self.is_ssl:
            return make_loop
        tls_timeouts = {"ssl_handshake_timeout": self.deadlines.header, "ssl_shutdown_timeout": CLOSE_GRACE_SECONDS}

        def make() -> asyncio.AbstractEventLoop:
            loop = make_loop()
            loop.create_server = functools.partial(loop.create_server, **tls_timeouts)  # type: ignore[method-assign]
            return loop

        return make


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head deadline and a body deadline per request."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.deadlines: Deadlines = getattr(config, "deadlines", Deadlines(header=10, body=30))
        self._deadline: TimerHandle | None = None
        self._abort: TimerHandle | None = None

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, what, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.deadlines.header, "request head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._abort is not None:
            self._abort.cancel()
            self._abort = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a later request on a kept-alive connection
            self._arm(self.deadlines.header, "request head")

    def on_headers_complete(self) -> None:
        self._arm(self.deadlines.body, "request body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def timeout_keep_alive_handler(self) -> None:
        self._close()

    def _expired(self, what: str, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        client = "{}:{} - ".format(*self.client) if self.client else ""
        self.logger.info("%sclosing connection: %s not received within %g s", client, what, seconds)
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            self._send_408(f"{what} not received within {seconds:g} s")
        if cycle is not None:  # the application, if reading, sees a disconnect and its reply goes nowhere
            cycle.disconnected = True
            cycle.keep_alive = False
            cycle.message_event.set()
        self._close()

    def _send_408(self, reason: str) -> None:
        body = reason.encode("ascii")
        head = [STATUS_LINE[408]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)

    def _close(self) -> None:
        """Close now, and abort if the close has not finished within the grace."""
        if self.transport.is_closing():
            return
        self.transport.close()
        self._abort = self.loop.call_later(CLOSE_GRACE_SECONDS, self.transport.abort)


def serve(
    app: str,
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
) -> int:
    """Serve the ASGI app factory ``app`` until stopped; the exit status (as ``uvicorn.run`` would end)."""
    config = AtlasConfig(
        app,
        deadlines=Deadlines(header=settings.header_timeout_seconds, body=settings.body_timeout_seconds),
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http=DeadlineProtocol,
        timeout_keep_alive=settings.keepalive_timeout_seconds,
        limit_concurrency=settings.max_connections,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        log_level="info",
        log_config=uvicorn_log_config(),  # uvicorn logs through ours (text or JSON), in each of its workers too
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=list(settings.forwarded_allow_ips),  # never uvicorn's own default (loopback)
    )
    server = uvicorn.Server(config)
    try:
        if config.workers > 1:
            from uvicorn.supervisors import Multiprocess

            Multiprocess(config, sockets=[config.bind_socket()]).run()
            return 0
        server.run()
    except KeyboardInterrupt:
        pass
    return 0 if server.started else STARTUP_FAILURE
