"""Wi-Fi widget: pure parsers of each OS tool's output plus a thin runner.

macOS: ``wdutil info`` (root) first, ``system_profiler SPAirPortDataType -json`` to fill
gaps; ``airport -I`` (gone since macOS 14.4) and ``ipconfig getsummary`` are parsed too.
Linux (development): ``iw dev`` / ``iw dev IFACE link``, else ``nmcli -t ... dev wifi list``.

Every parser returns a :class:`WifiReading` and never raises: garbled or empty text is a
reading with ``state == "no_interface"``. Redacted values (macOS 15 without Location
permission) become None with ``ssid_redacted`` / ``mac_redacted`` set, and 0 dBm RSSI/noise
sentinels become None.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, cast

from atlas.contract import WifiData

from .command import Runner, run_command

__all__ = [
    "BANDS",
    "NMCLI_COMMAND",
    "NMCLI_DEFAULT_FIELDS",
    "NMCLI_FIELDS",
    "STATES",
    "Runner",
    "WifiReading",
    "band_for_channel",
    "band_for_frequency",
    "channel_for_frequency",
    "collect_wifi",
    "iw_interfaces",
    "merge",
    "nmcli_rows",
    "nmcli_wifi_devices",
    "parse_airport_info",
    "parse_channel",
    "parse_ipconfig_summary",
    "parse_iw_info",
    "parse_iw_link",
    "parse_nmcli_wifi_list",
    "parse_system_profiler_airport",
    "parse_wdutil_info",
    "run_command",
    "width_mhz",
    "wifi_interface_from_hardware_ports",
]

STATES = ("connected", "disconnected", "off", "no_interface")
BANDS = ("2.4GHz", "5GHz", "6GHz")
_WIDTHS = (20, 40, 80, 160, 320)

# Fields that describe the current association; meaningless (often stale) when not connected.
_LINK_FIELDS = (
    "ssid",
    "bssid",
    "rssi_dbm",
    "noise_dbm",
    "signal_percent",
    "channel",
    "band",
    "channel_width_mhz",
    "phy_mode",
    "tx_rate_mbps",
    "max_rate_mbps",
    "security",
)
# Fields that describe the adapter; valid in any state.
_ADAPTER_FIELDS = ("interface", "mac_address", "country_code")


@dataclass(frozen=True)
class WifiReading:
    """One Wi-Fi observation; every value is None when the source did not give it.

    ``source`` names the tool(s) the values came from (``"wdutil+system_profiler"`` after a
    merge that filled something). ``snr_db`` is derived as ``rssi_dbm - noise_dbm``.
    ``signal_percent`` is nmcli's 0-100 SIGNAL; ``max_rate_mbps`` is the advertised maximum
    (``airport`` maxRate, nmcli RATE), ``tx_rate_mbps`` the current transmit rate.
    ``security`` is e.g. "WPA2 Personal", or "open" for an unencrypted network.
    """

    state: str = "no_interface"
    source: str | None = None
    interface: str | None = None
    ssid: str | None = None
    ssid_redacted: bool = False
    bssid: str | None = None
    rssi_dbm: int | None = None
    noise_dbm: int | None = None
    snr_db: int | None = None
    signal_percent: int | None = None
    channel: int | None = None
    band: str | None = None
    channel_width_mhz: int | None = None
    phy_mode: str | None = None
    tx_rate_mbps: float | None = None
    max_rate_mbps: float | None = None
    security: str | None = None
    mac_address: str | None = None
    mac_redacted: bool = False
    country_code: str | None = None

    def __post_init__(self) -> None:
        if self.snr_db is None and self.rssi_dbm is not None and self.noise_dbm is not None:
            object.__setattr__(self, "snr_db", self.rssi_dbm - self.noise_dbm)

    def as_data(self) -> WifiData:
        """JSON-safe dict for a widget log's ``data``."""
        return cast("WifiData", asdict(self))


# --- small value helpers ----------------------------------------------------

_MAC = re.compile(r"^[0-9A-Fa-f]{1,2}(?::[0-9A-Fa-f]{1,2}){5}$")
_INT = re.compile(r"-?\d+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_COUNTRY = re.compile(r"^[A-Z]{2}$")


def _is_redacted(value: str | None) -> bool:
    return value is not None and "redacted" in value.lower() and value.lstrip().startswith("<")


def _mac(value: str | None) -> str | None:
    """``3c:37:86:15:ad:f9`` or ``0:11:2:...`` -> zero-padded lower-case; anything else -> None."""
    if not value:
        return None
    value = value.strip()
    if not _MAC.match(value):
        return None
    return ":".join(part.zfill(2) for part in value.lower().split(":"))


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None  # JSON may say 1e999 or NaN
    if not isinstance(value, str):
        return None
    m = _INT.search(value)
    return int(m.group()) if m else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value) if abs(value) < 1e300 else math.inf
    elif isinstance(value, str) and (m := _NUMBER.search(value)):
        number = float(m.group())
    else:
        return None
    return number if math.isfinite(number) else None  # 400 digits, 1e999 or NaN: no reading


def _dbm(value: Any) -> int | None:
    """A dBm reading; 0 dBm is the "no reading" sentinel of a disassociated interface."""
    number = _int(value)
    return None if number is None or number == 0 or number > 0 else number


def _positive(value: float | None) -> float | None:
    return value if value is not None and value > 0 else None


def _country(value: Any) -> str | None:
    """ISO-style two-letter code; placeholders such as ``X0`` or ``--`` -> None."""
    if not isinstance(value, str):
        return None
    value = value.strip().upper()
    return value if _COUNTRY.match(value) else None


def _text(value: Any) -> str | None:
    """A plain value; empty, ``None`` and redaction placeholders -> None."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or text == "None" or _is_redacted(text):
        return None
    return text


def _phy_mode(value: Any) -> str | None:
    """``11ax`` (wdutil) or ``802.11n`` (system_profiler) -> ``802.11ax`` / ``802.11n``."""
    text = _text(value)
    if text is None:
        return None
    if re.fullmatch(r"11[a-z]{1,2}", text):
        return f"802.{text}"
    return text


_SECURITY_WORDS = {"psk": "Personal", "sae": "Personal", "personal": "Personal", "enterprise": "Enterprise"}


def _security(value: Any) -> str | None:
    """Normalise the tools' spellings: ``spairport_security_mode_wpa2_personal``, ``wpa2-psk``,
    ``WPA2_PSK`` -> ``WPA2 Personal``; ``None``/``none``/``open`` -> ``open``; else verbatim."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    raw = text.lower().removeprefix("spairport_security_mode_")
    if raw in ("none", "open"):
        return "open"
    if re.fullmatch(r"[a-z0-9]+(?:[_-][a-z0-9]+)*", raw) and raw.startswith(("wpa", "wep")):
        words = re.split(r"[_-]", raw)
        return " ".join(_SECURITY_WORDS.get(w, w.upper() if w.startswith(("wpa", "wep")) else w.title()) for w in words)
    return text


# --- channels, bands, widths ------------------------------------------------


def band_for_frequency(mhz: float | None) -> str | None:
    """Band of a centre frequency in MHz (``2412`` -> ``"2.4GHz"``)."""
    if mhz is None:
        return None
    if 2400 <= mhz < 2500:
        return "2.4GHz"
    if 4900 <= mhz < 5935:
        return "5GHz"
    if 5935 <= mhz <= 7125:
        return "6GHz"
    return None


def channel_for_frequency(mhz: float | None) -> int | None:
    """IEEE channel number of a 2.4/5/6 GHz centre frequency in MHz."""
    band = band_for_frequency(mhz)
    if mhz is None or band is None:
        return None
    mhz = round(mhz)
    if band == "2.4GHz":
        return 14 if mhz == 2484 else (mhz - 2407) // 5
    if band == "5GHz":
        return (mhz - 5000) // 5
    return 2 if mhz == 5935 else (mhz - 5950) // 5


def band_for_channel(channel: int | None, hint: str | None = None) -> str | None:
    """Band of a channel. ``hint`` is what the tool said about the band (``2g``, ``5g``, ``6g``,
    ``2GHz``, ``2.4 GHz``, ``5GHz``, ``6GHz``) and wins; without it channels 1-14 are 2.4 GHz,
    32-177 are 5 GHz and 181-233 (numbers only 6 GHz uses) 6 GHz. Other 6 GHz channels
    overlap 2.4/5 GHz numbers and need the hint."""
    if hint:
        h = hint.strip().lower()
        if h.startswith("2"):
            return "2.4GHz"
        if h.startswith("5"):
            return "5GHz"
        if h.startswith("6"):
            return "6GHz"
    if channel is None:
        return None
    if 1 <= channel <= 14:
        return "2.4GHz"
    if 32 <= channel <= 177:
        return "5GHz"
    if 181 <= channel <= 233:
        return "6GHz"
    return None


def width_mhz(value: Any) -> int | None:
    """Channel width in MHz from ``80``, ``"80MHz"``, ``"40 MHz"`` or airport's ``+1``/``-1``
    (a 40 MHz secondary channel above/below). Values that are not a Wi-Fi width -> None."""
    if isinstance(value, str):
        text = value.strip()
        if text in ("+1", "-1", "1"):
            return 40
        value = _int(text.replace("+", ""))
    if isinstance(value, int) and not isinstance(value, bool) and value in _WIDTHS:
        return value
    return None


_WDUTIL_CHANNEL = re.compile(r"^(?P<band>[256])g(?P<channel>\d+)(?:/(?P<width>\d+))?$", re.IGNORECASE)
_PAREN_CHANNEL = re.compile(r"^(?P<channel>\d+)\s*\((?P<info>[^)]*)\)")
_AIRPORT_CHANNEL = re.compile(r"^(?P<channel>\d+)\s*(?:,\s*(?P<width>[+-]?\d+))?$")
_GHZ = re.compile(r"(\d+(?:\.\d+)?)\s*GHz", re.IGNORECASE)
_MHZ = re.compile(r"(\d+(?:\.\d+)?)\s*MHz", re.IGNORECASE)


def parse_channel(value: Any) -> tuple[int | None, str | None, int | None]:
    """``(channel, band, width_mhz)`` from any tool's channel notation.

    ``2g11/20`` and ``5g149/80`` (wdutil, macOS 13+), ``144 (40 MHz, DFS)`` (wdutil 12.x),
    ``149 (5GHz, 80MHz)`` / ``1 (6GHz)`` (system_profiler 14+), ``6`` (system_profiler 12.x
    integer), ``48,80`` / ``3,+1`` (airport). Unknown notation -> ``(None, None, None)``.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, band_for_channel(value), None) if value > 0 else (None, None, None)
    if not isinstance(value, str):
        return None, None, None
    text = value.strip()
    m = _WDUTIL_CHANNEL.match(text)
    if m:
        channel = int(m["channel"])
        return channel, band_for_channel(channel, m["band"]), width_mhz(m["width"])
    m = _PAREN_CHANNEL.match(text)
    if m:
        channel = int(m["channel"])
        info = m["info"]
        ghz = _GHZ.search(info)
        band = band_for_channel(channel, ghz.group(1) if ghz else None)
        width = None
        for mhz in _MHZ.findall(info):
            number = float(mhz)
            if number >= 2000:  # a centre frequency, e.g. iw's "36 (5180 MHz)"
                band = band_for_frequency(number) or band
            else:
                width = width_mhz(int(number))
        return channel, band, width
    m = _AIRPORT_CHANNEL.match(text)
    if m and int(m["channel"]) > 0:
        channel = int(m["channel"])
        return channel, band_for_channel(channel), width_mhz(m["width"]) if m["width"] else None
    return None, None, None


# --- shared finishing ---------------------------------------------------------


def _finish(state: str, source: str, values: dict[str, Any]) -> WifiReading:
    """Build a reading; link fields are dropped unless connected (they are stale otherwise)."""
    if state != "connected":
        for name in _LINK_FIELDS:
            values.pop(name, None)
        values["ssid_redacted"] = False
    if state == "no_interface":
        values = {}
    return WifiReading(state=state, source=source, **values)


def _key_values(lines: Iterable[str]) -> dict[str, str]:
    """``  Key   : value`` lines -> dict (first occurrence wins, continuation lines skipped)."""
    out: dict[str, str] = {}
    for line in lines:
        m = re.match(r"^\s*([^:\s][^:]*?)\s*:\s?(.*?)\s*$", line)
        if m:
            out.setdefault(m.group(1), m.group(2))
    return out


# --- macOS: wdutil info ------------------------------------------------------

_RULER = re.compile(r"^\s*[\u2014\u2013\-=_]{10,}\s*$")


def _wdutil_wifi_lines(text: str) -> list[str]:
    """Lines of the WIFI section (sections are titled between em-dash rulers). Text without
    any section title is taken whole."""
    lines = text.splitlines()
    section: str | None = None
    titled = False
    previous_ruler = False
    wifi: list[str] = []
    for line in lines:
        if _RULER.match(line):
            previous_ruler = True
            continue
        if previous_ruler and line.strip() and not line[0].isspace():
            section = line.strip()
            titled = True
        elif section == "WIFI":
            wifi.append(line)
        previous_ruler = False
    return wifi if titled else lines


def parse_wdutil_info(text: str) -> WifiReading:
    """``sudo wdutil info`` (macOS 12+); only the WIFI section is read."""
    kv = _key_values(_wdutil_wifi_lines(text or ""))
    known = ("MAC Address", "Interface Name", "Power", "Op Mode", "SSID", "BSSID", "RSSI", "Tx Rate", "Channel")
    if not any(k in kv for k in known):
        return WifiReading(source="wdutil")
    mac_raw = (kv.get("MAC Address") or "").split(" ")[0]
    ssid_raw, bssid_raw = kv.get("SSID"), kv.get("BSSID")
    channel, band, width = parse_channel(kv.get("Channel"))
    values: dict[str, Any] = {
        "interface": _text(kv.get("Interface Name")),
        "mac_address": _mac(mac_raw),
        "mac_redacted": _is_redacted(mac_raw),
        "country_code": _country(kv.get("Country Code")),
        "ssid": _text(ssid_raw),
        "ssid_redacted": _is_redacted(ssid_raw) or _is_redacted(bssid_raw),
        "bssid": _mac(bssid_raw),
        "rssi_dbm": _dbm(kv.get("RSSI")),
        "noise_dbm": _dbm(kv.get("Noise")),
        "tx_rate_mbps": _positive(_float(kv.get("Tx Rate"))),
        "security": _security(kv.get("Security")),
        "phy_mode": _phy_mode(kv.get("PHY Mode")),
        "channel": channel,
        "band": band,
        "channel_width_mhz": width,
    }
    power = (kv.get("Power") or "").strip().lower()
    op_mode = kv.get("Op Mode")
    if power.startswith("off"):
        state = "off"
    elif op_mode is not None:
        state = "disconnected" if _text(op_mode) is None else "connected"
    elif values["ssid"] or values["ssid_redacted"] or values["bssid"] or values["rssi_dbm"] or values["tx_rate_mbps"]:
        state = "connected"
    else:
        state = "disconnected" if values["interface"] else "no_interface"
    return _finish(state, "wdutil", values)


# --- macOS: system_profiler SPAirPortDataType -json ----------------------------


def _sp_interface(data: Any) -> dict[str, Any] | None:
    """The Wi-Fi interface entry: the one with a status (``awdl0``/``llw0`` have none)."""
    if not isinstance(data, dict):
        return None
    candidates: list[dict[str, Any]] = []
    for block in data.get("SPAirPortDataType") or []:
        if isinstance(block, dict):
            candidates += [i for i in block.get("spairport_airport_interfaces") or [] if isinstance(i, dict)]
    for entry in candidates:
        if "spairport_status_information" in entry:
            return entry
    for entry in candidates:
        if str(entry.get("_name", "")).startswith("en"):
            return entry
    return None


def parse_system_profiler_airport(json_text: str) -> WifiReading:
    """``system_profiler SPAirPortDataType -json`` (integer channels on <= 12.x, strings such as
    ``"149 (5GHz, 80MHz)"`` on 14+; BSSID only on old versions)."""
    try:
        entry = _sp_interface(json.loads(json_text))
    except (ValueError, TypeError, RecursionError):
        entry = None
    if entry is None:
        return WifiReading(source="system_profiler")
    current = entry.get("spairport_current_network_information")
    current = current if isinstance(current, dict) else {}
    status = str(entry.get("spairport_status_information", ""))
    ssid_raw = current.get("_name") if isinstance(current.get("_name"), str) else None
    mac_raw = entry.get("spairport_wireless_mac_address")
    rssi = noise = None
    signal_noise = current.get("spairport_signal_noise")
    if isinstance(signal_noise, str) and "/" in signal_noise:
        rssi_text, noise_text = signal_noise.split("/", 1)
        rssi, noise = _dbm(rssi_text), _dbm(noise_text)
    channel, band, width = parse_channel(current.get("spairport_network_channel"))
    values: dict[str, Any] = {
        "interface": _text(entry.get("_name")),
        "mac_address": _mac(mac_raw) if isinstance(mac_raw, str) else None,
        "mac_redacted": _is_redacted(mac_raw) if isinstance(mac_raw, str) else False,
        "country_code": _country(entry.get("spairport_wireless_country_code"))
        or _country(current.get("spairport_network_country_code")),
        "ssid": _text(ssid_raw),
        "ssid_redacted": _is_redacted(ssid_raw),
        "bssid": _mac(current.get("spairport_network_bssid"))
        if isinstance(current.get("spairport_network_bssid"), str)
        else None,
        "rssi_dbm": rssi,
        "noise_dbm": noise,
        "tx_rate_mbps": _positive(_float(current.get("spairport_network_rate"))),
        "security": _security(current.get("spairport_security_mode")),
        "phy_mode": _phy_mode(current.get("spairport_network_phymode")),
        "channel": channel,
        "band": band,
        "channel_width_mhz": width,
    }
    if status.endswith("_off"):
        state = "off"
    elif status.endswith("_connected") or (not status and ssid_raw):
        state = "connected"
    else:  # _disassociated, _inactive, ...
        state = "disconnected"
    return _finish(state, "system_profiler", values)


# --- macOS: legacy airport -I ---------------------------------------------------


def parse_airport_info(text: str) -> WifiReading:
    """``airport -I`` (macOS <= 14.3). On 14.4+ it prints only a deprecation warning: no data."""
    kv = {k.strip(): v for k, v in _key_values((text or "").splitlines()).items()}
    if kv.get("AirPort", "").strip().lower() == "off":
        return WifiReading(state="off", source="airport")
    known = ("agrCtlRSSI", "state", "op mode", "SSID", "BSSID", "channel", "lastTxRate")
    if not any(k in kv for k in known):
        return WifiReading(source="airport")
    channel, band, width = parse_channel(kv.get("channel"))
    values: dict[str, Any] = {
        "ssid": kv.get("SSID") or None,
        "bssid": _mac(kv.get("BSSID")),
        "rssi_dbm": _dbm(kv.get("agrCtlRSSI")),
        "noise_dbm": _dbm(kv.get("agrCtlNoise")),
        "tx_rate_mbps": _positive(_float(kv.get("lastTxRate"))),
        "max_rate_mbps": _positive(_float(kv.get("maxRate"))),
        "security": _security(kv.get("link auth")),
        "channel": channel,
        "band": band,
        "channel_width_mhz": width,
    }
    airport_state = kv.get("state", "").strip().lower()
    if airport_state == "running" or (not airport_state and (values["ssid"] or values["bssid"])):
        state = "connected"
    else:  # init, scanning, authenticating, ...
        state = "disconnected"
    return _finish(state, "airport", values)


# --- macOS: ipconfig getsummary IFACE ----------------------------------------------


def parse_ipconfig_summary(text: str, interface: str | None = None) -> WifiReading:
    """``ipconfig getsummary en0`` (macOS 15 redacts SSID/BSSID here too)."""
    kv = _key_values((text or "").splitlines())
    kind = kv.get("InterfaceType")
    if kind is not None and kind.strip().lower() != "wifi":
        return WifiReading(source="ipconfig")
    if kind is None and "SSID" not in kv and "LinkStatusActive" not in kv:
        return WifiReading(source="ipconfig")
    ssid_raw, bssid_raw = kv.get("SSID"), kv.get("BSSID")
    values: dict[str, Any] = {
        "interface": interface,
        "ssid": _text(ssid_raw),
        "ssid_redacted": _is_redacted(ssid_raw) or _is_redacted(bssid_raw),
        "bssid": _mac(bssid_raw),
        "security": _security(kv.get("Security")),
    }
    active = kv.get("LinkStatusActive", "").strip().upper()
    state = (
        "connected"
        if active == "TRUE" or (not active and (values["ssid"] or values["ssid_redacted"]))
        else "disconnected"
    )
    return _finish(state, "ipconfig", values)


def wifi_interface_from_hardware_ports(text: str) -> str | None:
    """The Wi-Fi device (e.g. ``en0``) from ``networksetup -listallhardwareports``."""
    port = None
    for line in (text or "").splitlines():
        if line.startswith("Hardware Port:"):
            port = line.partition(":")[2].strip()
        elif line.startswith("Device:") and port in ("Wi-Fi", "AirPort"):
            return line.partition(":")[2].strip() or None
    return None


# --- Linux: iw -----------------------------------------------------------------------------


def iw_interfaces(text: str) -> list[str]:
    """Interface names from ``iw dev`` (or ``iw dev IFACE info``)."""
    return re.findall(r"^\s*Interface\s+(\S+)", text or "", re.MULTILINE)


def parse_iw_link(text: str) -> WifiReading:
    """``iw dev IFACE link``: ``Connected to BSSID (on IFACE)`` + indented ``key: value`` lines,
    or ``Not connected.``"""
    text = text or ""
    if re.search(r"^\s*Not connected\.?\s*$", text, re.MULTILINE):
        return WifiReading(state="disconnected", source="iw")
    m = re.search(r"^\s*Connected to\s+(\S+)(?:\s+\(on\s+([^)\s]+)\))?", text, re.MULTILINE)
    if not m:
        return WifiReading(source="iw")
    kv = _key_values(text[m.end() :].splitlines())
    freq = _float(kv.get("freq"))
    bitrate = kv.get("tx bitrate", "")
    phy = None
    for marker, mode in (("EHT-", "802.11be"), ("HE-", "802.11ax"), ("VHT-", "802.11ac"), ("MCS", "802.11n")):
        if marker in bitrate:
            phy = mode
            break
    width = None
    mw = re.search(r"\b(\d+)MHz\b", bitrate)
    if mw:
        width = width_mhz(int(mw.group(1)))
    values: dict[str, Any] = {
        "interface": m.group(2),
        "bssid": _mac(m.group(1)),
        "ssid": kv.get("SSID") or None,
        "rssi_dbm": _dbm(kv.get("signal")),
        "tx_rate_mbps": _positive(_float(bitrate)),
        "channel": channel_for_frequency(freq),
        "band": band_for_frequency(freq),
        "channel_width_mhz": width,
        "phy_mode": phy,
    }
    return _finish("connected", "iw", values)


def parse_iw_info(text: str) -> WifiReading:
    """``iw dev IFACE info`` or ``iw dev`` (first managed interface): MAC, SSID, channel, width.
    A station reports a channel only while associated."""
    blocks = re.split(r"(?m)^(?=\s*Interface\s+\S+)", text or "")
    blocks = [b for b in blocks if iw_interfaces(b)]
    if not blocks:
        return WifiReading(source="iw")
    block = next((b for b in blocks if re.search(r"^\s*type managed", b, re.MULTILINE)), blocks[0])

    def field(name: str) -> str | None:
        found = re.search(rf"^\s*{name}\s+(.+?)\s*$", block, re.MULTILINE)
        return found.group(1) if found else None

    channel = band = width = None
    mc = re.search(r"^\s*channel\s+(\d+)\s*\((\d+(?:\.\d+)?)\s*MHz\)(?:,\s*width:\s*(\d+)\s*MHz)?", block, re.MULTILINE)
    if mc:
        channel = int(mc.group(1))
        band = band_for_frequency(float(mc.group(2)))
        width = width_mhz(int(mc.group(3))) if mc.group(3) else None
    values: dict[str, Any] = {
        "interface": iw_interfaces(block)[0],
        "mac_address": _mac(field("addr")),
        "ssid": field("ssid"),
        "channel": channel,
        "band": band,
        "channel_width_mhz": width,
    }
    state = "connected" if values["ssid"] or channel is not None else "disconnected"
    return _finish(state, "iw", values)


# --- Linux: nmcli ----------------------------------------------------------------------------

# What collect_wifi asks for, and what plain ``nmcli -t dev wifi list`` prints.
NMCLI_FIELDS = ("ACTIVE", "SSID", "BSSID", "CHAN", "FREQ", "RATE", "SIGNAL", "SECURITY")
NMCLI_DEFAULT_FIELDS = ("IN-USE", "BSSID", "SSID", "MODE", "CHAN", "RATE", "SIGNAL", "BARS", "SECURITY")


def _split_terse(line: str) -> list[str]:
    r"""Split an ``nmcli -t`` line on unescaped ``:``; ``\:`` -> ``:`` and ``\\`` -> ``\``."""
    parts, current, chars = [], [], iter(line)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, "\\"))
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def nmcli_rows(text: str, fields: Sequence[str] = NMCLI_FIELDS) -> list[dict[str, str]]:
    """Unescaped rows of ``nmcli -t`` output; lines without ``len(fields)`` fields are skipped."""
    rows = []
    for line in (text or "").splitlines():
        parts = _split_terse(line)
        if line.strip() and len(parts) == len(fields):
            rows.append(dict(zip(fields, parts, strict=True)))
    return rows


def parse_nmcli_wifi_list(text: str, fields: Sequence[str] = NMCLI_FIELDS) -> WifiReading:
    """``nmcli -t -f FIELDS dev wifi list``; the active row (``*`` in IN-USE or ``yes`` in ACTIVE)
    is the connection. Rows without ``len(fields)`` fields or a valid BSSID are ignored. SIGNAL is a
    percentage (no dBm in nmcli); RATE is the access point's advertised rate."""
    rows = [r for r in nmcli_rows(text, fields) if "BSSID" not in r or _mac(r["BSSID"])]
    if not rows:
        return WifiReading(source="nmcli")
    active = next(
        (r for r in rows if r.get("IN-USE", "").strip() == "*" or r.get("ACTIVE", "").strip().lower() == "yes"), None
    )
    if active is None:
        return WifiReading(state="disconnected", source="nmcli")
    freq = _float(active.get("FREQ"))
    channel = _int(active.get("CHAN"))
    band = band_for_frequency(freq) or band_for_channel(channel)
    security = active.get("SECURITY", "").strip()
    signal = _int(active.get("SIGNAL"))
    values: dict[str, Any] = {
        "ssid": _text(active.get("SSID")) if active.get("SSID") != "--" else None,
        "bssid": _mac(active.get("BSSID")),
        "channel": channel if channel and channel > 0 else None,
        "band": band,
        "max_rate_mbps": _positive(_float(active.get("RATE"))),
        "signal_percent": signal if signal is not None and 0 <= signal <= 100 else None,
        "security": "open" if security in ("", "--") else security,
    }
    return _finish("connected", "nmcli", values)


def nmcli_wifi_devices(text: str) -> list[str]:
    """Wi-Fi devices from ``nmcli device`` (table or ``-t`` output); ``[]`` when there is none."""
    devices = []
    for line in (text or "").splitlines():
        parts = _split_terse(line) if ":" in line and "  " not in line else line.split()
        if len(parts) >= 2 and parts[1].strip() == "wifi":
            devices.append(parts[0].strip())
    return devices


# --- merging ----------------------------------------------------------------------------------


def merge(primary: WifiReading, secondary: WifiReading) -> WifiReading:
    """Fill primary's None fields from secondary. Primary's state wins; link fields are only
    taken when both are connected (adapter fields always). A no-interface primary yields
    secondary. ``source`` becomes ``"a+b"`` when secondary contributed anything."""
    if primary.state == "no_interface":
        return secondary if secondary.state != "no_interface" else primary
    names = list(_ADAPTER_FIELDS)
    if primary.state == secondary.state == "connected":
        names += _LINK_FIELDS
    changes: dict[str, Any] = {}
    for name in names:
        if getattr(primary, name) is None and getattr(secondary, name) is not None:
            changes[name] = getattr(secondary, name)
    if not changes:
        return primary
    merged = {**{f.name: getattr(primary, f.name) for f in fields(primary)}, **changes}
    merged["ssid_redacted"] = merged["ssid"] is None and (primary.ssid_redacted or secondary.ssid_redacted)
    merged["mac_redacted"] = merged["mac_address"] is None and (primary.mac_redacted or secondary.mac_redacted)
    merged["source"] = "+".join(dict.fromkeys(s for s in (primary.source, secondary.source) if s))
    merged["snr_db"] = None  # recomputed from the merged rssi/noise
    return replace(primary, **merged)


# --- runner ----------------------------------------------------------------------------------

NMCLI_COMMAND = ("nmcli", "-t", "-f", ",".join(NMCLI_FIELDS), "dev", "wifi", "list")


def _try(run: Runner, argv: Sequence[str]) -> str | None:
    try:
        return run(argv)
    except (OSError, subprocess.SubprocessError, UnicodeError):
        return None


def collect_wifi(run: Runner = run_command, platform: str | None = None) -> WifiReading:
    """One reading for this machine; a failing tool is skipped, never raised."""
    platform = platform or sys.platform
    if platform == "darwin":
        wdutil = _try(run, ("wdutil", "info"))
        reading = parse_wdutil_info(wdutil) if wdutil is not None else WifiReading(source="wdutil")
        profiler = _try(run, ("system_profiler", "SPAirPortDataType", "-json"))
        if profiler is not None:
            reading = merge(reading, parse_system_profiler_airport(profiler))
        return reading
    if platform.startswith("linux"):
        devices = _try(run, ("iw", "dev"))
        info = parse_iw_info(devices) if devices is not None else WifiReading(source="iw")
        if info.interface:
            link = _try(run, ("iw", "dev", info.interface, "link"))
            return merge(parse_iw_link(link), info) if link is not None else info
        listing = _try(run, NMCLI_COMMAND)
        return parse_nmcli_wifi_list(listing) if listing is not None else info
    return WifiReading()
