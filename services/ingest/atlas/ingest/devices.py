"""Enrolled devices as ingest sees them: a small PostgreSQL pool and an in-process cache kept true by NOTIFY.

A device row is cached for ``CACHE_SECONDS``. Revoking or replacing a device notifies ``atlas_devices`` with
its id (``atlas.core.devices``), and a listener thread drops that id from the cache at once, so the device's
next request is refused in every ingest process. While the listener is not connected (PostgreSQL restarting)
nothing is served from the cache, and on reconnecting it is emptied: a notification missed meanwhile cannot
leave a revoked device authenticated.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from atlas.core.config import Settings
from atlas.core.db import connect
from atlas.core.devices import DEVICES_CHANNEL, Device, EnrollRefused, enroll_device, find_device

log = logging.getLogger("atlas.ingest")

CACHE_SECONDS = 60.0
"""How long a device row is served from memory without asking PostgreSQL (revocation notifies at once)."""

TOUCH_SECONDS = 60.0
"""A device's last_seen_at is written at most this often."""

LISTEN_RETRY_SECONDS = 2.0


class DeviceDirectory:
    """Looks devices up (cached), enrolls them, and records when they were last seen."""

    def __init__(self, settings: Settings, *, max_connections: int = 4) -> None:
        self.pool = ConnectionPool(
            settings.database_url,
            min_size=1,
            max_size=max_connections,
            open=False,
            name="ingest-devices",
            timeout=5,
            kwargs={"autocommit": True, "connect_timeout": 5, "application_name": "atlas-ingest"},
            check=ConnectionPool.check_connection,
        )
        self._url = settings.database_url
        self._cache: dict[str, tuple[Device, float]] = {}
        self._touched: dict[str, float] = {}
        self._generation = 0
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        self.pool.open(wait=False)
        self._thread = threading.Thread(target=self._listen, name="atlas-device-listener", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self.pool.close()

    def cached(self, device_id: str) -> Device | None:
        """The device from memory if fresh and the listener is up; None means: ask ``lookup``."""
        if not self._listening.is_set():
            return None
        with self._lock:
            entry = self._cache.get(device_id)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def lookup(self, device_id: str) -> Device | None:
        """The device (blocking: from a thread), cached; None if no device has that id (not cached)."""
        with self._lock:
            generation = self._generation  # a notification during the query: its answer is not cached
        with self.pool.connection() as conn:
            device = find_device(conn, device_id)
        with self._lock:
            if device is not None and self._listening.is_set() and generation == self._generation:
                self._cache[device_id] = (device, time.monotonic() + CACHE_SECONDS)
        return device

    def forget(self, device_id: str) -> None:
        with self._lock:
            self._generation += 1
            self._cache.pop(device_id, None)

    def needs_touch(self, device_id: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(device_id, -TOUCH_SECONDS) < TOUCH_SECONDS:
                return False
            if len(self._touched) > 100_000:
                self._touched.clear()
            self._touched[device_id] = now
            return True

    def touch(self, device_id: str) -> None:
        """Record that the device just sent an authenticated request (blocking)."""
        with self.pool.connection() as conn:
            conn.execute("UPDATE devices SET last_seen_at = now() WHERE device_id = %s", (device_id,))

    def enroll(self, secret: str, **identity: object) -> tuple[Device, Device | None]:
        """Enroll a device (blocking); EnrollRefused with the status to answer."""
        with self.pool.connection() as conn:
            device, replaced = enroll_device(conn, secret, **identity)  # type: ignore[arg-type]
        if replaced is not None:
            self.forget(replaced.device_id)
        return device, replaced

    def _listen(self) -> None:
        """Drop each notified device id from the cache; reconnect (emptying the cache) after any failure."""
        while not self._stop.is_set():
            try:
                with connect(self._url, autocommit=True) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(DEVICES_CHANNEL)))
                    with self._lock:
                        self._generation += 1
                        self._cache.clear()
                        self._listening.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self.forget(note.payload)
            except psycopg.Error as exc:
                if self._listening.is_set():
                    log.warning("Device listener lost PostgreSQL (%s); not caching devices until it is back", exc)
            finally:
                with self._lock:
                    self._listening.clear()
            self._stop.wait(LISTEN_RETRY_SECONDS)


__all__ = ["DeviceDirectory", "EnrollRefused"]
