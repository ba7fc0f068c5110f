"""The live widget page's HTML: one card per widget, values with their units, the time and the source.

Pure: ``render_page`` turns an ``Agent.snapshot()`` into a small HTML page, rendered on
the server, with no script; the browser reloads it every ``REFRESH_SECONDS``. The data
keys read here are those the collectors write (``atlas.agent.collectors``); a value a
collector did not give is left out rather than shown as empty. Ping has a card per target; the
layered network checks share one card, a table with a row per layer and target and its status.
Labels are plain words, never emoji.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from html import escape
from typing import Any

REFRESH_SECONDS = 5
"""How often the page reloads itself."""

TOP_PROCESSES = 3
"""Processes shown, by CPU and by memory."""

Row = tuple[str, str]
"""A card's line: its label and its value, as text."""

STYLE = """
body{font:14px -apple-system,system-ui,sans-serif;margin:1.5rem;background:#f5f5f7;color:#1d1d1f}
h1{font-size:1.3rem;margin:0 0 .5rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:1rem}
section{background:#fff;border-radius:10px;padding:1rem;box-shadow:0 1px 3px #0002;min-width:0}
h2{font-size:1rem;margin:0 0 .4rem}.summary{margin:.2rem 0 .6rem;overflow-wrap:anywhere}
dl{display:grid;grid-template-columns:auto 1fr;gap:.2rem .8rem;margin:0}dt{color:#6e6e73}
dd{margin:0;font-variant-numeric:tabular-nums;overflow-wrap:anywhere}
.meta{color:#6e6e73;font-size:12px;margin:.6rem 0 0}.ERROR{color:#c00}.WARNING{color:#b60}
#status{margin-bottom:1rem;color:#3a3a3c}.ok{color:#1a7f37}
section[data-widget=network]{grid-column:1/-1}.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}th{color:#6e6e73;font-weight:normal;text-align:left}
th,td{padding:.25rem .8rem .25rem 0;vertical-align:top;font-variant-numeric:tabular-nums;overflow-wrap:anywhere}
tbody tr{border-top:1px solid #e5e5ea}th,td:first-child,td.status,td:last-child{white-space:nowrap}
"""


# --- values ---------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def number(value: Any, unit: str = "", digits: int = 1) -> str | None:
    """``value`` rounded to ``digits`` decimals with its unit (``"-61 dBm"``, ``"12.5%"``); None if no number."""
    if not _is_number(value):
        return None
    text = f"{round(float(value), digits):,.{digits}f}".rstrip("0").rstrip(".") if digits else f"{value:,.0f}"
    if unit == "%":
        return text + "%"
    return f"{text} {unit}" if unit else text


def size(value: Any) -> str | None:
    """Bytes in binary units: ``"15.2 GB"`` (GiB written GB, as macOS does not)."""
    if not _is_number(value) or value < 0:
        return None
    amount = float(value)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if amount < 1024 or unit == "TB":
            return number(amount, unit, 0 if unit == "bytes" else 1)
        amount /= 1024
    return None  # pragma: no cover - the loop always returns


def duration(seconds: Any) -> str | None:
    """``"3 d 4 h"``, ``"2 h 5 min"``, ``"42 s"``."""
    if not _is_number(seconds) or seconds < 0:
        return None
    s = int(seconds)
    days, hours, minutes = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else f"{s} s"


def _join(*parts: str | None, sep: str = ", ") -> str | None:
    kept = [p for p in parts if p]
    return sep.join(kept) if kept else None


def _rows(*rows: tuple[str, str | None]) -> list[Row]:
    return [(label, value) for label, value in rows if value]


def _text(value: Any) -> str | None:
    return str(value) if value is not None and str(value).strip() else None


def _word(value: Any) -> str | None:
    """A status such as ``no_interface`` as words: ``no interface``."""
    text = _text(value)
    return text.replace("_", " ") if text else None


# --- one widget's rows ----------------------------------------------------------------------------


def wifi_rows(data: Mapping[str, Any]) -> list[Row]:
    ssid = _text(data.get("ssid")) or ("(hidden by macOS)" if data.get("ssid_redacted") else None)
    channel = _join(
        _text(data.get("channel")), _text(data.get("band")), number(data.get("channel_width_mhz"), "MHz", 0)
    )
    return _rows(
        ("State", _word(data.get("state"))),
        ("Network", ssid),
        ("Signal", _join(number(data.get("rssi_dbm"), "dBm", 0), number(data.get("signal_percent"), "%", 0))),
        ("Noise", number(data.get("noise_dbm"), "dBm", 0)),
        ("SNR", number(data.get("snr_db"), "dB", 0)),
        ("Channel", channel),
        ("Tx rate", number(data.get("tx_rate_mbps"), "Mbps")),
        ("Max rate", number(data.get("max_rate_mbps"), "Mbps")),
        ("PHY mode", _text(data.get("phy_mode"))),
        ("Security", _text(data.get("security"))),
        ("Interface", _text(data.get("interface"))),
        ("BSSID", _text(data.get("bssid"))),
        ("Country", _text(data.get("country_code"))),
    )


def speedtest_rows(data: Mapping[str, Any]) -> list[Row]:
    server = _join(_text(data.get("server_sponsor")), _text(data.get("server_name")), _text(data.get("server_cc")))
    return _rows(
        ("Status", _word(data.get("status"))),
        ("Download", number(data.get("download_mbps"), "Mbps")),
        ("Upload", number(data.get("upload_mbps"), "Mbps")),
        ("Latency", number(data.get("latency_ms"), "ms")),
        ("Jitter", number(data.get("jitter_ms"), "ms")),
        ("Packet loss", number(data.get("packet_loss_pct"), "%")),
        ("ISP", _text(data.get("isp"))),
        ("Server", _join(server, number(data.get("server_distance_km"), "km", 0), sep=" · ")),
        ("Took", number(data.get("duration_s"), "s")),
        ("Failed at", _text(data.get("phase")) if data.get("status") != "ok" else None),
        ("Reason", _text(data.get("reason"))),
    )


def ping_rows(data: Mapping[str, Any]) -> list[Row]:
    rtt = "/".join(number(data.get(k), "", 3) or "?" for k in ("rtt_min_ms", "rtt_avg_ms", "rtt_max_ms"))
    address = _text(data.get("address"))
    packets = None
    if _is_number(data.get("sent")) and _is_number(data.get("received")):
        packets = f"{data['received']} of {data['sent']} answered"
    return _rows(
        ("Address", address if address != data.get("target") else None),
        ("Status", _word(data.get("status"))),
        ("Average", number(data.get("rtt_avg_ms"), "ms", 3)),
        ("Min/avg/max", f"{rtt} ms" if rtt != "?/?/?" else None),
        ("Std dev", number(data.get("rtt_stddev_ms"), "ms", 3)),
        ("Loss", number(data.get("loss_pct"), "%")),
        ("Packets", packets),
        ("Reason", _text(data.get("reason"))),
    )


LAYERS = {"wifi": "Wi-Fi link", "gateway": "Gateway", "dns": "DNS", "http": "HTTP"}
"""The layered checks, bottom up, as the network card lists them."""

LAYER_SOURCES = {
    "wifi": "Wi-Fi reading",
    "gateway": "ping",
    "dns": "DNS query over UDP",
    "http": "HTTP GET",
}


def _count(value: Any, noun: str) -> str | None:
    """``"1 answer"``, ``"3 answers"``; None if no number."""
    return f"{value} {noun}" + ("" if value == 1 else "s") if _is_number(value) else None


def _ms(value: Any) -> str | None:
    return number(value, "ms", 1)


def network_measured(data: Mapping[str, Any]) -> str | None:
    """What one layered check measured, in a line: its timings and values with their units."""
    layer = data.get("layer")
    if layer == "wifi":
        band = _text(data.get("band"))
        channel = _join(_text(data.get("channel")) and f"channel {data['channel']}", band and f"({band})", sep=" ")
        return _join(
            number(data.get("rssi_dbm"), "dBm", 0),
            number(data.get("snr_db"), "dB", 0) and f"SNR {number(data.get('snr_db'), 'dB', 0)}",
            number(data.get("tx_rate_mbps"), "Mbps"),
            channel,
            _count(data.get("roams"), "roam") and f"{_count(data.get('roams'), 'roam')} since the last round",
            duration(data.get("reading_age_s")) and f"reading {duration(data.get('reading_age_s'))} old",
        )
    if layer == "gateway":
        packets = None
        if _is_number(data.get("sent")) and _is_number(data.get("received")):
            packets = f"{data['received']} of {data['sent']} answered"
        return _join(
            _ms(data.get("rtt_avg_ms")) and f"avg {_ms(data.get('rtt_avg_ms'))}",
            _ms(data.get("rtt_min_ms")) and f"min {_ms(data.get('rtt_min_ms'))}",
            _ms(data.get("rtt_max_ms")) and f"max {_ms(data.get('rtt_max_ms'))}",
            number(data.get("loss_pct"), "%") and f"{number(data.get('loss_pct'), '%')} loss",
            packets,
        )
    if layer == "dns":
        return _join(
            _join(_text(data.get("query_name")), _text(data.get("query_type")), sep=" "),
            _text(data.get("rcode")),
            _count(data.get("answers"), "answer"),
            _ms(data.get("dns_ms")) and f"in {_ms(data.get('dns_ms'))}",
        )
    if layer == "http":
        phases = _join(
            _ms(data.get("dns_ms")) and f"DNS {_ms(data.get('dns_ms'))}",
            _ms(data.get("connect_ms")) and f"connect {_ms(data.get('connect_ms'))}",
            _ms(data.get("tls_ms")) and f"TLS {_ms(data.get('tls_ms'))}",
            _ms(data.get("ttfb_ms")) and f"first byte {_ms(data.get('ttfb_ms'))}",
        )
        answer = _join(_text(data.get("http_version")), _text(data.get("status_code")), sep=" ")
        total = _ms(data.get("total_ms")) and f"in {_ms(data.get('total_ms'))}"
        return _join(_join(answer, total, sep=" "), phases and f"({phases})", sep=" ")
    return None


def network_source(entries: Iterable[Mapping[str, Any]]) -> str:
    layers = {(e.get("data") or {}).get("layer") for e in entries}
    return ", ".join(source for layer, source in LAYER_SOURCES.items() if layer in layers) or "unknown"


def roam_rows(data: Mapping[str, Any]) -> list[Row]:
    def change(before: str | None, after: str | None) -> str | None:
        if before and after and before != after:
            return f"{before} to {after}"
        return after or before

    def channel(number_key: str, band_key: str) -> str | None:
        band = _text(data.get(band_key))
        return _join(_text(data.get(number_key)), band and f"({band})", sep=" ")

    before, after = number(data.get("rssi_before_dbm"), "dBm", 0), number(data.get("rssi_after_dbm"), "dBm", 0)
    signal = after or before
    if before and after:
        signal = f"{before} to {after} ({data['rssi_after_dbm'] - data['rssi_before_dbm']:+.0f} dB)"
    moved = "(a different network)" if data.get("ssid_changed") else None
    changed = [{"bssid": "access point"}.get(str(c), str(c)) for c in data.get("changed") or []]
    return _rows(
        ("Changed", ", ".join(changed) if changed else None),
        ("Access point", change(_text(data.get("from_bssid")), _text(data.get("to_bssid")))),
        ("Channel", change(channel("from_channel", "from_band"), channel("to_channel", "to_band"))),
        ("Signal", signal),
        ("Network", _join(_text(data.get("ssid")), moved, sep=" ")),
        ("Interface", _text(data.get("interface"))),
        ("Between readings", duration(data.get("interval_s"))),
        ("Roams", number(data.get("roam_count"), "since the agent started", 0)),
    )


def _used_of(part: Mapping[str, Any]) -> str | None:
    used, total = size(part.get("used")), size(part.get("total"))
    share = number(part.get("percent"), "%")
    if used and total:
        return f"{used} of {total}" + (f" ({share})" if share else "")
    return share


def health_rows(data: Mapping[str, Any]) -> list[Row]:
    sample = data.get("psutil") or {}
    smc, power, battery = data.get("smc") or {}, data.get("cpu_power") or {}, data.get("battery") or {}
    plain_battery = sample.get("battery") or {}
    load = sample.get("load_average")
    rows = _rows(
        ("CPU", _join(number(sample.get("cpu_percent"), "%"), number(sample.get("cpu_count"), "cores", 0))),
        ("Load", " / ".join(number(x, "", 2) or "?" for x in load) if isinstance(load, list) and load else None),
        ("Memory", _used_of(sample.get("memory") or {})),
        ("Swap", _used_of(sample.get("swap") or {}) if (sample.get("swap") or {}).get("total") else None),
        ("Uptime", duration(sample.get("uptime_seconds"))),
        ("CPU temperature", number(smc.get("cpu_die_temp_c"), "°C")),
        ("GPU temperature", number(smc.get("gpu_die_temp_c"), "°C")),
        ("Fans", _join(*(number(rpm, "rpm", 0) for rpm in smc.get("fans_rpm") or []))),
        ("Thermal pressure", _text(smc.get("thermal_pressure"))),
        ("Package power", number(power.get("package_power_mw"), "mW", 0)),
        (
            "Battery",
            _join(
                number(battery.get("percent", plain_battery.get("percent")), "%", 0),
                "charging" if battery.get("charging") else None,
                "on power" if battery.get("charging") is None and plain_battery.get("power_plugged") else None,
                duration(plain_battery.get("seconds_left")) and f"{duration(plain_battery.get('seconds_left'))} left",
            ),
        ),
        ("Battery cycles", number(battery.get("cycle_count"), "", 0)),
        ("Battery health", _join(_text(battery.get("condition")), number(battery.get("max_capacity_pct"), "%", 0))),
    )
    disks = sample.get("disks") or {}
    if isinstance(disks, dict):
        rows += [(f"Disk {mount}", value) for mount, part in disks.items() if (value := _used_of(part or {}))]
    return rows


def _process(row: Mapping[str, Any], first: str) -> str | None:
    cpu, memory = number(row.get("cpu_percent"), "%"), size(row.get("rss_bytes"))
    values = (cpu and f"{cpu} CPU", memory) if first == "cpu" else (memory, cpu and f"{cpu} CPU")
    return _join(*values, _text(row.get("pid")) and f"pid {row['pid']}")


def processes_rows(data: Mapping[str, Any]) -> list[Row]:
    rows = _rows(
        ("Processes", number(data.get("process_count"), "running", 0)),
        ("Reason", _text(data.get("reason"))),
    )
    for key, title, first in (("top_cpu", "CPU", "cpu"), ("top_memory", "memory", "memory")):
        for row in (data.get(key) or [])[:TOP_PROCESSES]:
            if isinstance(row, dict) and (value := _process(row, first)):
                rows.append((f"{_text(row.get('name')) or '?'} ({title})", value))
    return rows


def health_source(data: Mapping[str, Any]) -> str:
    parts = ["psutil"]
    if data.get("smc") or data.get("cpu_power"):
        parts.append("powermetrics")
    if data.get("thermal_limits"):
        parts.append("pmset")
    if data.get("battery"):
        parts.append("battery report")
    return ", ".join(parts)


WIDGETS: dict[str, tuple[str, Callable[[Mapping[str, Any]], list[Row]]]] = {
    "wifi": ("Wi-Fi", wifi_rows),
    "speedtest": ("Speed test", speedtest_rows),
    "ping": ("Ping", ping_rows),
    "health": ("Health", health_rows),
    "processes": ("Processes", processes_rows),
    "network": ("Network checks", lambda _: []),  # a table of every check: network_card
    "roam": ("Last roam", roam_rows),
}
"""Each widget's title and rows, in the page's order."""


def source_of(widget: str, data: Mapping[str, Any]) -> str:
    if widget == "health":
        return health_source(data)
    if widget == "ping":
        return "ping"
    if widget == "network":
        return LAYER_SOURCES.get(str(data.get("layer")), "unknown")
    if widget == "roam":
        return "consecutive Wi-Fi readings"
    return _text(data.get("source")) or "unknown"


# --- the page -------------------------------------------------------------------------------------


def when(timestamp: str | None, now: datetime) -> str:
    """``<time>`` of an RFC 3339 UTC timestamp in this Mac's local time, and how long ago."""
    try:
        moment = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return escape(str(timestamp))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    local = moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    ago = duration(max(0, (now - moment).total_seconds()))
    return f'<time datetime="{escape(str(timestamp))}">{escape(local)}</time> ({ago} ago)'


def card(widget: str, title: str, entry: Mapping[str, Any] | None, now: datetime) -> str:
    """One widget's card: its message, its values, when it was read and from where."""
    head = f'<section class="card" data-widget="{escape(widget)}"><h2>{escape(title)}</h2>'
    if entry is None:
        return head + '<p class="summary">No reading yet</p></section>'
    raw = entry.get("data")
    data: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    rows = WIDGETS[widget][1](data)
    level = str(entry.get("level", ""))
    parts = [head, f'<p class="summary {escape(level)}">{escape(str(entry.get("message", "")))}</p>']
    if rows:
        items = "".join(f"<dt>{escape(label)}</dt><dd>{escape(value)}</dd>" for label, value in rows)
        parts.append(f"<dl>{items}</dl>")
    parts.append(
        f'<p class="meta">Read {when(entry.get("timestamp"), now)} · source: {escape(source_of(widget, data))}</p>'
    )
    return "".join(parts) + "</section>"


def _network_order(entry: Mapping[str, Any]) -> int:
    layer = (entry.get("data") or {}).get("layer")
    return list(LAYERS).index(layer) if layer in LAYERS else len(LAYERS)


def network_card(entries: list[Mapping[str, Any]], now: datetime) -> str:
    """The layered checks in one card, a row per layer and target, bottom up: where the chain breaks shows.

    Within a layer the targets keep ``entries``' order, the configured one.
    """
    if not entries:
        return card("network", WIDGETS["network"][0], None, now)
    entries = sorted(entries, key=_network_order)
    ok = sum(1 for e in entries if (e.get("data") or {}).get("status") == "ok")
    worst = next((level for level in ("ERROR", "WARNING") if any(e.get("level") == level for e in entries)), "ok")
    rows = []
    for entry in entries:
        data: Mapping[str, Any] = entry.get("data") or {}
        status = _word(data.get("status")) or "unknown"
        level = "ok" if data.get("status") == "ok" else str(entry.get("level", ""))
        reason = _text(data.get("reason")) if data.get("status") != "ok" else None
        measured = _join(network_measured(data), reason, sep="; ") or ""
        rows.append(
            f'<tr data-layer="{escape(str(data.get("layer", "")))}">'
            f"<td>{escape(LAYERS.get(str(data.get('layer')), str(data.get('layer', ''))))}</td>"
            f"<td>{escape(_text(data.get('target')) or '')}</td>"
            f'<td class="status {escape(level)}">{escape(status)}</td>'
            f"<td>{escape(measured)}</td><td>{when(entry.get('timestamp'), now)}</td></tr>"
        )
    return (
        f'<section class="card" data-widget="network"><h2>{escape(WIDGETS["network"][0])}</h2>'
        f'<p class="summary {worst}">{ok} of {len(entries)} checks ok</p>'
        '<div class="scroll"><table><thead><tr><th>Layer</th><th>Target</th><th>Status</th><th>Measured</th>'
        f"<th>Read</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        f'<p class="meta">source: {escape(network_source(entries))}</p></section>'
    )


def _entries(widgets: Mapping[str, Any], widget: str) -> list[Mapping[str, Any]]:
    """The latest entries of ``widget``: ping has one per target (``ping:<target>``), network one per
    layer and target (``network:<layer>:<target>``)."""
    return [v for k, v in sorted(widgets.items()) if k == widget or k.startswith(widget + ":")]


def status_line(snapshot: Mapping[str, Any]) -> str:
    machine = snapshot.get("machine") or {}
    parts: Iterable[str | None] = (
        _join(_text(machine.get("hostname")), _text(machine.get("machine_id")) and f"id {machine['machine_id']}"),
        "Encryption on (AES-256-GCM)" if snapshot.get("encryption") else "Encryption OFF",
        f"sending to {snapshot['fleet_server']}" if snapshot.get("fleet_server") else "live only (no fleet server)",
        f"last send: {snapshot.get('last_sent_at') or 'not yet'}" if snapshot.get("fleet_server") else None,
        f"pending batches: {snapshot.get('pending_batches', 0)}" if snapshot.get("fleet_server") else None,
    )
    return escape(" · ".join(p for p in parts if p))


def render_page(snapshot: Mapping[str, Any], now: datetime | None = None) -> str:
    """The whole page for one ``Agent.snapshot()``."""
    now = now or datetime.now(UTC)
    widgets = snapshot.get("widgets") or {}
    cards = []
    for widget, (title, _) in WIDGETS.items():
        entries = _entries(widgets, widget)
        if widget == "ping" and entries:
            cards += [card(widget, f"Ping {e.get('data', {}).get('target', '')}".strip(), e, now) for e in entries]
        elif widget == "network":
            cards.append(network_card([v for k, v in widgets.items() if k.startswith("network:")], now))
        else:
            cards.append(card(widget, title, entries[0] if entries else None, now))
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Atlas live widgets</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}"><style>{STYLE}</style></head><body>'
        f'<h1>Atlas live widgets</h1><div id="status">{status_line(snapshot)}</div>'
        f'<div class="grid">{"".join(cards)}</div></body></html>\n'
    )
