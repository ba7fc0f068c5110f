"""Roams: the access point (BSSID), channel or band changing between two consecutive connected Wi-Fi readings.

A ``RoamTracker`` belongs to one agent and sees its readings in order. A reading that is not connected
ends the chain: connecting again afterwards is a reconnection, not a roam. A value a source did not give
(a BSSID macOS redacted) is never a change.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from atlas.contract import RoamData, format_timestamp

from .wifi import WifiReading

__all__ = ["RoamEvent", "RoamTracker"]

_COMPARED = ("bssid", "channel", "band")


@dataclass(frozen=True)
class RoamEvent:
    """One roam: the reading before and after, what changed, and the count so far."""

    before: WifiReading
    after: WifiReading
    before_at: datetime
    after_at: datetime
    changed: tuple[str, ...]
    roam_count: int

    def as_data(self) -> RoamData:
        b, a = self.before, self.after
        return cast(
            "RoamData",
            {
                "changed": list(self.changed),
                "interface": a.interface,
                "ssid": a.ssid,
                "ssid_changed": b.ssid is not None and a.ssid is not None and b.ssid != a.ssid,
                "from_bssid": b.bssid,
                "to_bssid": a.bssid,
                "from_channel": b.channel,
                "to_channel": a.channel,
                "from_band": b.band,
                "to_band": a.band,
                "rssi_before_dbm": b.rssi_dbm,
                "rssi_after_dbm": a.rssi_dbm,
                "previous_at": format_timestamp(self.before_at),
                "interval_s": round(max(0.0, (self.after_at - self.before_at).total_seconds()), 3),
                "roam_count": self.roam_count,
            },
        )


class RoamTracker:
    """Compares each Wi-Fi reading with the one before; counts roams in all and since ``take_period_count``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: tuple[WifiReading, datetime] | None = None
        self.count = 0
        self._period = 0

    def observe(self, reading: WifiReading, at: datetime) -> RoamEvent | None:
        """The roam since the previous reading, if there was one."""
        with self._lock:
            previous, self._last = self._last, (reading, at) if reading.state == "connected" else None
            if previous is None or self._last is None:
                return None
            before, before_at = previous
            changed = tuple(
                name
                for name in _COMPARED
                if getattr(before, name) is not None
                and getattr(reading, name) is not None
                and getattr(before, name) != getattr(reading, name)
            )
            if not changed:
                return None
            self.count += 1
            self._period += 1
            return RoamEvent(before, reading, before_at, at, changed, self.count)

    def take_period_count(self) -> int:
        """Roams since the previous call (the period of a round of network checks), and start a new period."""
        with self._lock:
            count, self._period = self._period, 0
            return count
