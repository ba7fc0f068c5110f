"""What one client may hold of the exporter: a few exports at a time, and none it stopped reading.

A stalled export holds one of the few export connections (``EXPORT_CONNECTIONS``)
and a COPY until its client reads again. ``ExportSlots`` caps the exports of
one user in this process, so a single token cannot take them all; and
``TimedStreamingResponse`` cuts a stream off when one write to the client has
waited ``send_timeout`` seconds (the socket's buffers are full and the client
reads nothing), which ends the export as ``aborted`` and gives its
connection and slot back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Message, Send

log = logging.getLogger("atlas.exporter")


class ExportSlots:
    """At most ``limit`` running exports per key (a user id); thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._running: dict[Any, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: Any) -> Callable[[], None] | None:
        """A slot for ``key``: its release function (safe to call more than once), or None if all are taken."""
        with self._lock:
            if self._running.get(key, 0) >= self.limit:
                return None
            self._running[key] = self._running.get(key, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                left = self._running[key] - 1
                if left:
                    self._running[key] = left
                else:
                    del self._running[key]

        return release

    def running(self, key: Any) -> int:
        with self._lock:
            return self._running.get(key, 0)


class TimedStreamingResponse(StreamingResponse):
    """A StreamingResponse whose every write to the client must finish within ``send_timeout`` seconds.

    A write that waits longer ends the stream: the body iterator is closed (the
    export finishes as aborted) and the connection is closed without the final
    chunk, so the client can tell the file is incomplete.
    """

    def __init__(self, *args: Any, send_timeout: float, what: str = "stream", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.send_timeout = send_timeout
        self.what = what

    async def stream_response(self, send: Send) -> None:
        async def timed_send(message: Message) -> None:
            with anyio.fail_after(self.send_timeout):
                await send(message)

        try:
            await super().stream_response(timed_send)
        except TimeoutError:
            log.warning(
                "%s cut off: the client read nothing for %g s (exporter.send_timeout_seconds)",
                self.what,
                self.send_timeout,
            )
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
