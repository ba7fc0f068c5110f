"""Parser for the Wi-Fi known-networks preference files: the last joined network and when.

A root daemon can read these files even where macOS redacts the current SSID and BSSID from
``wdutil``, ``system_profiler`` and ``ipconfig``; they tell which network was joined last (and
through which access point), not that the Mac is on it now, so a reading from here is a hint
with its time, never the current state.

Two layouts are read, both with ``plistlib`` (binary or XML):

* ``com.apple.wifi.known-networks.plist`` (``/Library/Preferences``, where macOS 11 and later keep
  known networks; the same layout as on iOS): a dict keyed ``wifi.network.ssid.<SSID>``, each
  entry with ``SSID`` (bytes), ``SupportedSecurityTypes``, ``Hidden``, ``AddedAt``, ``UpdatedAt``,
  ``JoinedByUserAt``, ``JoinedBySystemAt`` and ``BSSList`` (``BSSID``, ``Channel``,
  ``LastAssociatedAt`` per access point).
* ``com.apple.airport.preferences.plist`` with a ``RememberedNetworks`` list (OS X 10.9 era):
  ``SSIDString``, ``SecurityType``, ``LastConnected``, ``Closed`` and a ``CachedScanRecord`` with
  ``BSSID`` and ``CHANNEL``.

The later ``KnownNetworks`` dict of ``com.apple.airport.preferences.plist`` (macOS 10.10-12) is not
read: no real capture of it was found to test against.

``parse_known_networks`` is pure and never raises. Times are UTC ISO 8601 with ``Z``.
"""

from __future__ import annotations

import datetime as dt
import plistlib
import re
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "AIRPORT_PREFERENCES_PATH",
    "KNOWN_NETWORKS_PATH",
    "MAX_PLIST_BYTES",
    "STATUSES",
    "KnownNetwork",
    "KnownNetworks",
    "parse_known_networks",
]

KNOWN_NETWORKS_PATH = "/Library/Preferences/com.apple.wifi.known-networks.plist"
AIRPORT_PREFERENCES_PATH = "/Library/Preferences/SystemConfiguration/com.apple.airport.preferences.plist"
MAX_PLIST_BYTES = 16 * 1024 * 1024
"""Larger input is refused unread: a real file with hundreds of networks is well under 1 MiB."""
MAX_TEXT = 256
STATUSES = ("ok", "empty", "error")
SSID_PREFIX = "wifi.network.ssid."

_MAC = re.compile(r"^[0-9A-Fa-f]{1,2}(?::[0-9A-Fa-f]{1,2}){5}$")


@dataclass(frozen=True)
class KnownNetwork:
    """One remembered network; ``last_joined_by`` is ``user`` or ``system`` when the file says."""

    ssid: str | None
    security: str | None = None
    hidden: bool | None = None
    last_joined_at: str | None = None
    last_joined_by: str | None = None
    added_at: str | None = None
    bssid: str | None = None
    channel: int | None = None
    bssid_last_associated_at: str | None = None


@dataclass(frozen=True)
class KnownNetworks:
    """What a known-networks file says: how many networks, and the one joined last."""

    status: str
    source: str | None = None
    networks: int = 0
    last_joined: KnownNetwork | None = None
    reason: str | None = None

    def as_data(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return asdict(self)


# --------------------------------------------------------------------------- helpers


def _time(value: Any) -> dt.datetime | None:
    """plistlib gives naive UTC datetimes; anything else is no time."""
    if not isinstance(value, dt.datetime):
        return None
    return value if value.tzinfo is None else value.astimezone(dt.UTC).replace(tzinfo=None)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str) or not value:
        return None
    return value.replace("\x00", "\ufffd")[:MAX_TEXT]


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 16:
        return None
    return value


def _mac(value: Any) -> str | None:
    """``0:1d:d2:b8:6e:40`` -> ``00:1d:d2:b8:6e:40``; None for anything that is not a MAC."""
    if not isinstance(value, str) or not _MAC.match(value):
        return None
    return ":".join(part.rjust(2, "0") for part in value.lower().split(":"))


def _latest(*times: dt.datetime | None) -> dt.datetime | None:
    present = [t for t in times if t is not None]
    return max(present) if present else None


# --------------------------------------------------------------------------- parser


def parse_known_networks(data: bytes) -> KnownNetworks:
    """Parse a known-networks or airport-preferences plist (binary or XML). Never raises."""
    if not isinstance(data, bytes | bytearray):
        return KnownNetworks(status="error", reason="not plist bytes")
    if len(data) > MAX_PLIST_BYTES:
        return KnownNetworks(status="error", reason=f"plist larger than {MAX_PLIST_BYTES} bytes")
    try:
        root = plistlib.loads(bytes(data))
    except Exception as exc:  # InvalidFileException, ExpatError, ValueError, RecursionError ...
        return KnownNetworks(status="error", reason=f"unreadable plist: {type(exc).__name__}")
    try:
        return _parse(root)
    except Exception as exc:  # a parser bug must not kill the agent
        return KnownNetworks(status="error", reason=f"unexpected plist content: {exc!r}"[:MAX_TEXT])


def _parse(root: Any) -> KnownNetworks:
    if not isinstance(root, dict):
        return KnownNetworks(status="error", reason="plist root is not a dictionary")
    remembered = root.get("RememberedNetworks")
    if isinstance(remembered, list):
        entries = [_remembered(e) for e in remembered if isinstance(e, dict)]
        return _result("airport_preferences", entries)
    if "KnownNetworks" in root:
        return KnownNetworks(
            status="error", source="airport_preferences", reason="KnownNetworks layout is not supported"
        )
    found = [_known(key, e) for key, e in root.items() if isinstance(key, str) and key.startswith(SSID_PREFIX)]
    entries = [e for e in found if e is not None]
    if not entries and root:
        return KnownNetworks(status="error", reason="no known-networks entries in plist")
    return _result("known_networks", entries)


def _result(source: str, entries: list[tuple[dt.datetime | None, KnownNetwork]]) -> KnownNetworks:
    if not entries:
        return KnownNetworks(status="empty", source=source)
    joined = [(t, n) for t, n in entries if t is not None]
    last = max(joined, key=lambda pair: pair[0])[1] if joined else None
    return KnownNetworks(status="ok", source=source, networks=len(entries), last_joined=last)


def _known(key: str, entry: Any) -> tuple[dt.datetime | None, KnownNetwork] | None:
    if not isinstance(entry, dict):
        return None
    by_user, by_system = _time(entry.get("JoinedByUserAt")), _time(entry.get("JoinedBySystemAt"))
    joined = _latest(by_user, by_system)
    how = None if joined is None else ("system" if joined == by_system else "user")
    bss = _last_bss(entry.get("BSSList"))
    network = KnownNetwork(
        ssid=_text(entry.get("SSID")) or _text(key[len(SSID_PREFIX) :]),
        security=_text(entry.get("SupportedSecurityTypes")),
        hidden=_bool(entry.get("Hidden")),
        last_joined_at=_iso(joined),
        last_joined_by=how,
        added_at=_iso(_time(entry.get("AddedAt"))),
        bssid=bss[0],
        channel=bss[1],
        bssid_last_associated_at=_iso(bss[2]),
    )
    return joined, network


def _last_bss(bss_list: Any) -> tuple[str | None, int | None, dt.datetime | None]:
    """The access point associated with last: BSSID, channel and when."""
    best: tuple[str | None, int | None, dt.datetime | None] = (None, None, None)
    if not isinstance(bss_list, list):
        return best
    for bss in bss_list:
        if not isinstance(bss, dict):
            continue
        at = _time(bss.get("LastAssociatedAt"))
        bssid = _mac(bss.get("BSSID"))
        if at is not None and bssid is not None and (best[2] is None or at > best[2]):
            best = (bssid, _int(bss.get("Channel")), at)
    return best


def _remembered(entry: dict[str, Any]) -> tuple[dt.datetime | None, KnownNetwork]:
    joined = _time(entry.get("LastConnected"))
    scan = entry.get("CachedScanRecord")
    scan = scan if isinstance(scan, dict) else {}
    network = KnownNetwork(
        ssid=_text(entry.get("SSIDString")) or _text(entry.get("SSID")),
        security=_text(entry.get("SecurityType")),
        hidden=_bool(entry.get("Closed")),
        last_joined_at=_iso(joined),
        bssid=_mac(scan.get("BSSID")),
        channel=_int(scan.get("CHANNEL")),
    )
    return joined, network
