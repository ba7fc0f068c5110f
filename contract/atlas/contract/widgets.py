"""The ``data`` of each widget's logs: its keys, their types, units and ranges.

Each shape is a ``TypedDict``: at run time a plain dict, so it costs nothing,
while a type checker holds every key written against it (an agent's collector,
the dashboard's readers, the test and benchmark batches) to the one spelling
here. A key's unit, range and meaning ride in its ``Annotated`` metadata
(``Measure``); ``describe`` turns them into the tables of docs/protocol.md,
section 6.4, and a test keeps the two equal.

The ingest does not check these shapes: ``data`` stays any JSON object within
the record schema's bounds, so extra keys and older agents' keys are accepted.
Every key may be missing (``total=False``), and a reader treats a value of the
wrong type or outside its range as missing. Ranges are what a Mac can report,
generous and inclusive; the dashboard shows nothing outside them.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict


@dataclass(frozen=True, slots=True)
class Measure:
    """What one key holds: its meaning, unit, and for a number the range a reading lies in (inclusive)."""

    text: str
    unit: str = ""
    low: float | None = None
    high: float | None = None
    legacy: bool = False
    """Only older agents send it; readers fall back to it when the current key is missing."""

    @property
    def bounds(self) -> tuple[float, float]:
        """``(low, high)``; ValueError for a key without a range."""
        if self.low is None or self.high is None:
            raise ValueError(f"no range for {self.text!r}")
        return self.low, self.high


_PERCENT = (0, 100)
_MS = (0, 600_000)
_MBPS = (0, 100_000)
_BYTES = (0, 2**60)
_DBM = (-120, 0)
_CELSIUS = (-100, 250)


# --------------------------------------------------------------------------- wifi


class WifiData(TypedDict, total=False):
    """``wifi``: one Wi-Fi observation; link values are null unless ``state`` is ``connected``."""

    state: Annotated[str, Measure("`connected`, `disconnected`, `off` or `no_interface`")]
    source: Annotated[str | None, Measure("the tool(s) read, e.g. `wdutil+system_profiler`")]
    interface: Annotated[str | None, Measure("interface name, e.g. `en0`")]
    ssid: Annotated[str | None, Measure("network name; null when macOS redacts it")]
    ssid_redacted: Annotated[bool, Measure("macOS withheld the SSID (no Location Services permission)")]
    bssid: Annotated[str | None, Measure("access point MAC address, lower case")]
    rssi_dbm: Annotated[int | None, Measure("received signal strength", "dBm", *_DBM)]
    noise_dbm: Annotated[int | None, Measure("noise floor", "dBm", *_DBM)]
    snr_db: Annotated[int | None, Measure("signal to noise, `rssi_dbm - noise_dbm`", "dB", -50, 120)]
    signal_percent: Annotated[int | None, Measure("signal quality (Linux nmcli)", "%", *_PERCENT)]
    channel: Annotated[int | None, Measure("channel number", "", 1, 233)]
    band: Annotated[str | None, Measure("`2.4GHz`, `5GHz` or `6GHz`")]
    channel_width_mhz: Annotated[int | None, Measure("channel width", "MHz", 5, 320)]
    phy_mode: Annotated[str | None, Measure("e.g. `802.11ax`")]
    tx_rate_mbps: Annotated[float | None, Measure("current transmit rate", "Mbit/s", *_MBPS)]
    max_rate_mbps: Annotated[float | None, Measure("advertised maximum rate", "Mbit/s", *_MBPS)]
    security: Annotated[str | None, Measure("e.g. `WPA2 Personal`, or `open`")]
    mac_address: Annotated[str | None, Measure("the adapter's MAC address")]
    mac_redacted: Annotated[bool, Measure("macOS withheld the adapter's MAC address")]
    country_code: Annotated[str | None, Measure("regulatory country, two letters")]


# --------------------------------------------------------------------------- speedtest


class SpeedtestData(TypedDict, total=False):
    """``speedtest``: one speed test; numbers are null when not measured."""

    status: Annotated[str, Measure("`ok` or `error`")]
    timestamp: Annotated[str, Measure("when the test ran, RFC 3339 UTC")]
    source: Annotated[str, Measure("what ran it, e.g. `library`")]
    download_mbps: Annotated[float | None, Measure("download throughput", "Mbit/s", *_MBPS)]
    upload_mbps: Annotated[float | None, Measure("upload throughput", "Mbit/s", *_MBPS)]
    latency_ms: Annotated[float | None, Measure("latency to the server", "ms", *_MS)]
    jitter_ms: Annotated[float | None, Measure("latency variation", "ms", *_MS)]
    latency_samples: Annotated[int | None, Measure("latency measurements taken")]
    packet_loss_pct: Annotated[float | None, Measure("packet loss", "%", *_PERCENT)]
    isp: Annotated[str | None, Measure("the client's ISP, as the test service sees it")]
    server_id: Annotated[int | None, Measure("test server id")]
    server_name: Annotated[str | None, Measure("test server's city")]
    server_sponsor: Annotated[str | None, Measure("test server's operator")]
    server_country: Annotated[str | None, Measure("test server's country")]
    server_cc: Annotated[str | None, Measure("test server's country code")]
    server_distance_km: Annotated[float | None, Measure("great-circle distance to the server", "km")]
    bytes_sent: Annotated[int | None, Measure("uploaded", "bytes")]
    bytes_received: Annotated[int | None, Measure("downloaded", "bytes")]
    duration_s: Annotated[float | None, Measure("how long the test took", "s")]
    phase: Annotated[str | None, Measure("where an error happened: `config`, `servers`, `latency`, ...")]
    reason: Annotated[str | None, Measure("why it failed")]


# --------------------------------------------------------------------------- ping


class LegacyRtt(TypedDict, total=False):
    """Round-trip times as agents before ``rtt_*_ms`` sent them."""

    min: Annotated[float, Measure("fastest reply", "ms", *_MS)]
    avg: Annotated[float, Measure("mean reply", "ms", *_MS)]
    max: Annotated[float, Measure("slowest reply", "ms", *_MS)]


class PingData(TypedDict, total=False):
    """``ping``: one target's outcome; one log per target."""

    target: Annotated[str, Measure("host name or address pinged")]
    status: Annotated[str, Measure("`ok`, `partial_loss`, `unreachable`, `unknown_host` or `error`")]
    address: Annotated[str | None, Measure("the address it resolved to")]
    sent: Annotated[int | None, Measure("packets sent", "", 0, 1_000_000)]
    received: Annotated[int | None, Measure("replies received", "", 0, 1_000_000)]
    duplicates: Annotated[int | None, Measure("duplicate replies")]
    errors: Annotated[int | None, Measure("error replies")]
    loss_pct: Annotated[float | None, Measure("packet loss", "%", *_PERCENT)]
    rtt_min_ms: Annotated[float | None, Measure("fastest reply", "ms", *_MS)]
    rtt_avg_ms: Annotated[float | None, Measure("mean reply", "ms", *_MS)]
    rtt_max_ms: Annotated[float | None, Measure("slowest reply", "ms", *_MS)]
    rtt_stddev_ms: Annotated[float | None, Measure("standard deviation of the replies", "ms", *_MS)]
    reason: Annotated[str | None, Measure("why it failed")]
    rtt_ms: Annotated[LegacyRtt | None, Measure("round-trip times instead of `rtt_*_ms`", legacy=True)]


# --------------------------------------------------------------------------- health


class MemoryUsage(TypedDict, total=False):
    """Physical memory or swap."""

    total: Annotated[int, Measure("size", "bytes", *_BYTES)]
    available: Annotated[int, Measure("available without swapping (memory only)", "bytes", *_BYTES)]
    used: Annotated[int, Measure("in use", "bytes", *_BYTES)]
    free: Annotated[int, Measure("free (swap only)", "bytes", *_BYTES)]
    percent: Annotated[float, Measure("in use", "%", *_PERCENT)]


class DiskUsage(TypedDict, total=False):
    """One mounted volume."""

    device: Annotated[str, Measure("device, e.g. `/dev/disk3s1`")]
    fstype: Annotated[str, Measure("file system, e.g. `apfs`")]
    total: Annotated[int, Measure("size", "bytes", *_BYTES)]
    used: Annotated[int, Measure("in use", "bytes", *_BYTES)]
    free: Annotated[int, Measure("free", "bytes", *_BYTES)]
    percent: Annotated[float, Measure("in use", "%", *_PERCENT)]


class PsutilBattery(TypedDict, total=False):
    """The battery as psutil sees it."""

    percent: Annotated[float, Measure("charge", "%", *_PERCENT)]
    power_plugged: Annotated[bool | None, Measure("on mains power")]
    seconds_left: Annotated[int | None, Measure("estimated time left; null when unknown or plugged in", "s")]


class TemperatureSensor(TypedDict, total=False):
    """One psutil temperature sensor."""

    label: Annotated[str, Measure("sensor name")]
    current_c: Annotated[float, Measure("temperature", "°C", *_CELSIUS)]


class PsutilSample(TypedDict, total=False):
    """The portable readings (psutil); each part that failed is missing and named in ``errors``."""

    cpu_percent_per_core: Annotated[list[float], Measure("each core's use", "%", *_PERCENT)]
    cpu_percent: Annotated[float, Measure("mean of the cores' use", "%", *_PERCENT)]
    cpu_count: Annotated[int | None, Measure("logical CPUs")]
    load_average: Annotated[list[float], Measure("1, 5 and 15 minute load averages", "", 0, 1_000_000)]
    memory: Annotated[MemoryUsage, Measure("physical memory")]
    swap: Annotated[MemoryUsage, Measure("swap")]
    disks: Annotated[dict[str, DiskUsage], Measure("mount point -> volume")]
    uptime_seconds: Annotated[int, Measure("time since boot", "s", 0, 200 * 365 * 86400)]
    battery: Annotated[PsutilBattery | None, Measure("null without a battery")]
    temperatures: Annotated[dict[str, list[TemperatureSensor]], Measure("chip -> sensors (Linux)")]
    errors: Annotated[dict[str, str], Measure("part -> why it could not be read")]


class SmcSensors(TypedDict, total=False):
    """``powermetrics`` SMC and thermal samplers (root only); sentinel readings are dropped."""

    cpu_die_temp_c: Annotated[float | None, Measure("CPU die temperature (Intel)", "°C", *_CELSIUS)]
    gpu_die_temp_c: Annotated[float | None, Measure("GPU die temperature (Intel)", "°C", *_CELSIUS)]
    fans_rpm: Annotated[list[float], Measure("each fan's speed", "rpm", 0, 100_000)]
    cpu_thermal_level: Annotated[int | None, Measure("CPU thermal level")]
    gpu_thermal_level: Annotated[int | None, Measure("GPU thermal level")]
    io_thermal_level: Annotated[int | None, Measure("IO thermal level")]
    cpu_plimit: Annotated[float | None, Measure("CPU power limit")]
    gpu_plimit: Annotated[float | None, Measure("GPU power limit")]
    prochots: Annotated[int | None, Measure("PROCHOT events")]
    thermal_pressure: Annotated[str | None, Measure("e.g. `Nominal`, `Heavy`")]
    invalid_keys: Annotated[int, Measure("`Invalid key` lines seen")]
    dropped: Annotated[list[str], Measure("readings discarded as sentinels")]


class ClusterReading(TypedDict, total=False):
    """One CPU cluster (``E``, ``P``, ``P0``...) on Apple Silicon."""

    frequency_mhz: Annotated[float | None, Measure("frequency", "MHz")]
    power_mw: Annotated[float | None, Measure("power", "mW")]
    active_residency_pct: Annotated[float | None, Measure("time active", "%", *_PERCENT)]
    idle_residency_pct: Annotated[float | None, Measure("time idle", "%", *_PERCENT)]


class CpuPower(TypedDict, total=False):
    """``powermetrics`` cpu_power sampler (root only; Apple Silicon layout)."""

    machine_model: Annotated[str | None, Measure("model identifier")]
    os_build: Annotated[str | None, Measure("macOS build")]
    boot_time: Annotated[str | None, Measure("boot time as printed")]
    samples: Annotated[int, Measure("samples read; values are from the last")]
    clusters: Annotated[dict[str, ClusterReading], Measure("cluster name -> reading")]
    cpu_frequency_mhz: Annotated[dict[str, float], Measure("CPU number -> frequency", "MHz")]
    gpu_frequency_mhz: Annotated[float | None, Measure("GPU frequency", "MHz")]
    cpu_power_mw: Annotated[float | None, Measure("CPU power", "mW")]
    gpu_power_mw: Annotated[float | None, Measure("GPU power", "mW")]
    ane_power_mw: Annotated[float | None, Measure("Neural Engine power", "mW")]
    dram_power_mw: Annotated[float | None, Measure("DRAM power", "mW")]
    package_power_mw: Annotated[float | None, Measure("package power", "mW")]


class ThermalLimits(TypedDict, total=False):
    """``pmset -g therm``: CPU limits and warning levels; null when not recorded."""

    cpu_scheduler_limit: Annotated[int | None, Measure("scheduler limit", "%", *_PERCENT)]
    cpu_available_cpus: Annotated[int | None, Measure("CPUs available")]
    cpu_speed_limit: Annotated[int | None, Measure("speed limit", "%", *_PERCENT)]
    thermal_warning_level: Annotated[int | None, Measure("thermal warning level")]
    performance_warning_level: Annotated[int | None, Measure("performance warning level")]
    recorded_at: Annotated[str | None, Measure("when the limits were recorded")]
    notes: Annotated[list[str], Measure("`Note:` lines")]


class BatteryDetails(TypedDict, total=False):
    """Battery details beyond psutil (``ioreg``, else ``system_profiler``)."""

    percent: Annotated[float | None, Measure("charge", "%", *_PERCENT)]
    charging: Annotated[bool | None, Measure("charging")]
    fully_charged: Annotated[bool | None, Measure("fully charged")]
    external_connected: Annotated[bool | None, Measure("charger connected")]
    cycle_count: Annotated[int | None, Measure("charge cycles", "", 0, 1_000_000)]
    condition: Annotated[str | None, Measure("e.g. `Normal`, `Service Recommended`")]
    max_capacity_pct: Annotated[float | None, Measure("full-charge capacity of design capacity", "%", 0, 200)]
    charge_remaining_mah: Annotated[int | None, Measure("charge left", "mAh")]
    full_charge_capacity_mah: Annotated[int | None, Measure("full-charge capacity", "mAh")]
    design_capacity_mah: Annotated[int | None, Measure("design capacity", "mAh")]
    amperage_ma: Annotated[int | None, Measure("current; negative while discharging", "mA")]
    voltage_mv: Annotated[int | None, Measure("voltage", "mV")]
    temperature_c: Annotated[float | None, Measure("temperature", "°C", *_CELSIUS)]
    installed: Annotated[bool | None, Measure("a battery is installed")]
    charger_wattage_w: Annotated[int | None, Measure("charger rating", "W")]


class LegacyDisk(TypedDict, total=False):
    """One volume as agents before ``psutil.disks`` sent it."""

    mount: Annotated[str, Measure("mount point")]
    percent: Annotated[float, Measure("in use", "%", *_PERCENT)]


class HealthData(TypedDict, total=False):
    """``health``: one sample; the macOS parts are missing elsewhere and without root."""

    psutil: Annotated[PsutilSample, Measure("portable readings")]
    smc: Annotated[SmcSensors, Measure("temperatures, fans, thermal levels")]
    cpu_power: Annotated[CpuPower, Measure("frequencies and power")]
    thermal_limits: Annotated[ThermalLimits, Measure("CPU limits")]
    battery: Annotated[BatteryDetails, Measure("battery details")]
    unavailable: Annotated[dict[str, str], Measure("source -> why it could not be read")]
    cpu_percent: Annotated[float, Measure("CPU use", "%", *_PERCENT, legacy=True)]
    memory_percent: Annotated[float, Measure("memory use", "%", *_PERCENT, legacy=True)]
    disk: Annotated[list[LegacyDisk], Measure("volumes", legacy=True)]


# --------------------------------------------------------------------------- processes


class ProcessRow(TypedDict, total=False):
    """One process; null where the source does not show it or may not read it."""

    pid: Annotated[int, Measure("process id", "", 0, 2**32)]
    name: Annotated[str | None, Measure("process name")]
    ppid: Annotated[int | None, Measure("parent process id")]
    user: Annotated[str | None, Measure("owner")]
    uid: Annotated[int | None, Measure("owner's uid")]
    cpu_percent: Annotated[float | None, Measure("CPU use, of one core (sums over cores)", "%", 0, 100 * 4096)]
    memory_percent: Annotated[float | None, Measure("share of physical memory", "%", *_PERCENT)]
    rss_bytes: Annotated[int | None, Measure("resident memory", "bytes", *_BYTES)]
    vms_bytes: Annotated[int | None, Measure("virtual memory", "bytes", *_BYTES)]
    status: Annotated[str | None, Measure("psutil's names: `running`, `sleeping`, `idle`, `zombie`...")]
    start_time: Annotated[str | None, Measure("start, RFC 3339 UTC")]
    command: Annotated[str | None, Measure("command line; secret-looking arguments `[redacted]`")]


class ProcessesData(TypedDict, total=False):
    """``processes``: totals and the top processes by CPU and by memory."""

    status: Annotated[str, Measure("`ok` or `error`")]
    source: Annotated[str, Measure("`psutil` or `ps`")]
    sampled_at: Annotated[str | None, Measure("when, RFC 3339 UTC")]
    process_count: Annotated[int, Measure("processes running", "", 0, 100_000_000)]
    status_counts: Annotated[dict[str, int], Measure("status -> processes")]
    top_cpu: Annotated[list[ProcessRow], Measure("the most CPU first")]
    top_memory: Annotated[list[ProcessRow], Measure("the most memory first")]
    cpu_interval_s: Annotated[float | None, Measure("time the CPU use is averaged over", "s")]
    cpu_unmeasured: Annotated[int, Measure("processes first seen now (no CPU yet)")]
    vanished: Annotated[int, Measure("processes that exited while read")]
    access_limited: Annotated[int, Measure("processes with a field not readable")]
    unparsed_lines: Annotated[int, Measure("`ps` lines that were not process rows")]
    reason: Annotated[str | None, Measure("why it failed")]


# --------------------------------------------------------------------------- network


class NetworkData(TypedDict, total=False):
    """``network``: one layered check, one log per layer and target; a key a layer does not measure is missing."""

    layer: Annotated[str, Measure("what it measures: `wifi` (the link), `gateway`, `dns` or `http`")]
    target: Annotated[str, Measure("the interface, gateway address, resolver address or URL checked")]
    status: Annotated[
        str,
        Measure(
            "`ok`; `partial_loss` or `unreachable` (gateway), `disconnected` (wifi), `dns_error` (an error"
            " answer, or a name that does not resolve), `http_error` (status 400 or above), `tls_error`,"
            " `connect_error`, `timeout`, `no_gateway`, `no_resolver` or `error`"
        ),
    ]
    reason: Annotated[str | None, Measure("why it is not `ok`")]
    address: Annotated[str | None, Measure("the address reached (gateway, resolver, or the URL's host)")]
    sent: Annotated[int | None, Measure("gateway: packets sent", "", 0, 1_000_000)]
    received: Annotated[int | None, Measure("gateway: replies received", "", 0, 1_000_000)]
    loss_pct: Annotated[float | None, Measure("gateway: packet loss", "%", *_PERCENT)]
    rtt_min_ms: Annotated[float | None, Measure("gateway: fastest reply", "ms", *_MS)]
    rtt_avg_ms: Annotated[float | None, Measure("gateway: mean reply", "ms", *_MS)]
    rtt_max_ms: Annotated[float | None, Measure("gateway: slowest reply", "ms", *_MS)]
    query_name: Annotated[str | None, Measure("dns: the name asked for")]
    query_type: Annotated[str | None, Measure("dns: the record type asked for, e.g. `A`")]
    rcode: Annotated[str | None, Measure("dns: the answer's response code, e.g. `NOERROR`, `NXDOMAIN`")]
    answers: Annotated[int | None, Measure("dns: records in the answer", "", 0, 65_535)]
    dns_ms: Annotated[
        float | None, Measure("dns: the resolver's answer time; http: resolving the URL's host", "ms", *_MS)
    ]
    connect_ms: Annotated[float | None, Measure("http: opening the TCP connection", "ms", *_MS)]
    tls_ms: Annotated[float | None, Measure("http: the TLS handshake (null for plain HTTP)", "ms", *_MS)]
    ttfb_ms: Annotated[
        float | None, Measure("http: from the request sent to the response's first byte (its headers)", "ms", *_MS)
    ]
    total_ms: Annotated[float | None, Measure("http: the whole request, resolving to the body's last byte", "ms", *_MS)]
    status_code: Annotated[int | None, Measure("http: the response status", "", 100, 599)]
    http_version: Annotated[str | None, Measure("http: e.g. `HTTP/1.1`")]
    state: Annotated[str | None, Measure("wifi: the link's state, as in `wifi` logs")]
    bssid: Annotated[str | None, Measure("wifi: access point MAC address")]
    rssi_dbm: Annotated[int | None, Measure("wifi: received signal strength", "dBm", *_DBM)]
    snr_db: Annotated[int | None, Measure("wifi: signal to noise", "dB", -50, 120)]
    tx_rate_mbps: Annotated[float | None, Measure("wifi: current transmit rate", "Mbit/s", *_MBPS)]
    channel: Annotated[int | None, Measure("wifi: channel number", "", 1, 233)]
    band: Annotated[str | None, Measure("wifi: `2.4GHz`, `5GHz` or `6GHz`")]
    reading_age_s: Annotated[float | None, Measure("wifi: age of the Wi-Fi reading the link layer reports", "s")]
    roams: Annotated[int | None, Measure("wifi: roams seen since the previous round of checks", "", 0, 1_000_000)]


# --------------------------------------------------------------------------- roam


class RoamData(TypedDict, total=False):
    """``roam``: the access point, channel or band changed between two connected Wi-Fi readings."""

    changed: Annotated[list[str], Measure("what changed: `bssid`, `channel` and/or `band`")]
    interface: Annotated[str | None, Measure("interface name, e.g. `en0`")]
    ssid: Annotated[str | None, Measure("network name after the change; null when redacted")]
    ssid_changed: Annotated[bool, Measure("the SSID changed too (a move to another network, not a roam within one)")]
    from_bssid: Annotated[str | None, Measure("access point before; null when redacted")]
    to_bssid: Annotated[str | None, Measure("access point after; null when redacted")]
    from_channel: Annotated[int | None, Measure("channel before", "", 1, 233)]
    to_channel: Annotated[int | None, Measure("channel after", "", 1, 233)]
    from_band: Annotated[str | None, Measure("band before")]
    to_band: Annotated[str | None, Measure("band after")]
    rssi_before_dbm: Annotated[int | None, Measure("signal at the reading before", "dBm", *_DBM)]
    rssi_after_dbm: Annotated[int | None, Measure("signal at the reading after", "dBm", *_DBM)]
    previous_at: Annotated[str, Measure("when the reading before was taken, RFC 3339 UTC")]
    interval_s: Annotated[float, Measure("time between the two readings", "s", 0, 366 * 86400)]
    roam_count: Annotated[int, Measure("roams seen since the agent started, this one included", "", 1, 2**31)]


WIDGET_DATA: Mapping[str, type] = {
    "wifi": WifiData,
    "speedtest": SpeedtestData,
    "ping": PingData,
    "health": HealthData,
    "processes": ProcessesData,
    "network": NetworkData,
    "roam": RoamData,
}
"""Each widget's ``data`` shape; ``agent`` logs carry free-form data."""


# --------------------------------------------------------------------------- reading the shapes


@functools.cache
def _hints(shape: type) -> dict[str, Any]:
    return typing.get_type_hints(shape, include_extras=True)


def _split(hint: Any) -> tuple[Any, Measure | None]:
    """(the type without ``Annotated``/``NotRequired``, its Measure)."""
    while typing.get_origin(hint) in (typing.NotRequired, typing.Required):
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is Annotated:
        measure = next((m for m in hint.__metadata__ if isinstance(m, Measure)), None)
        return hint.__origin__, measure
    return hint, None


def _is_shape(hint: Any) -> bool:
    return typing.is_typeddict(hint)


def _inner_shape(hint: Any) -> type | None:
    """The TypedDict a key's values are (directly, optional, in a list, or as a mapping's values)."""
    if _is_shape(hint):
        return typing.cast(type, hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _inner_shape(args[0])
    if origin is list and args:
        return _inner_shape(args[0])
    if origin is dict and len(args) == 2:
        return _inner_shape(args[1])
    return None


def measure(shape: type, *path: str) -> Measure:
    """The Measure of the key at ``path`` in ``shape`` (a key of a nested shape by its keys in turn).

    KeyError for a path the shape does not have: readers name their keys through here or a typed dict.
    """
    current: type | None = shape
    found: Measure | None = None
    for key in path:
        if current is None or key not in _hints(current):
            raise KeyError(f"{shape.__name__} has no key {'.'.join(path)!r}")
        hint, found = _split(_hints(current)[key])
        current = _inner_shape(hint)
    if found is None:
        raise KeyError(f"{shape.__name__}.{'.'.join(path)} has no Measure")
    return found


def widget_keys(shape: type, *, legacy: bool = False) -> tuple[str, ...]:
    """The keys of ``shape`` in order; older agents' keys only with ``legacy``."""
    return tuple(k for k, h in _hints(shape).items() if legacy or not (_split(h)[1] or Measure("")).legacy)


def key_paths(shape: type) -> Iterator[tuple[tuple[str, ...], Measure]]:
    """Every key of ``shape`` and of the shapes nested in it (through lists and mappings), as a path, with its
    Measure: ``(("psutil", "memory", "percent"), Measure(...))``."""
    for key, hint in _hints(shape).items():
        kind, found = _split(hint)
        yield (key,), found or Measure("")
        inner = _inner_shape(kind)
        if inner is not None:
            for path, nested in key_paths(inner):
                yield (key, *path), nested


def _type_name(hint: Any) -> str:
    if _is_shape(hint):
        return f"object ({hint.__name__})"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
    if hint in names:
        return names[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"array of {_type_name(args[0])}"
    if origin is dict:
        return f"object of {_type_name(args[1])}"
    return str(hint)


def _number(value: float) -> str:
    if isinstance(value, int) and value >= 2**20 and value & (value - 1) == 0:
        return f"2^{value.bit_length() - 1}"
    return f"{value:,}"


def _range(m: Measure) -> str:
    if m.low is None or m.high is None:
        return ""
    return f"{_number(m.low)} to {_number(m.high)}"


def _shapes(shape: type, seen: set[type]) -> Iterator[type]:
    if shape in seen:
        return
    seen.add(shape)
    yield shape
    for hint in _hints(shape).values():
        inner = _inner_shape(_split(hint)[0])
        if inner is not None:
            yield from _shapes(inner, seen)


def describe() -> str:
    """The Markdown tables of every widget's ``data`` (docs/protocol.md, section 6.4), from the shapes."""
    out: list[str] = []
    seen: set[type] = set()
    for widget, root in WIDGET_DATA.items():
        out.append(f"#### `{widget}`\n")
        for shape in _shapes(root, seen):
            doc = (shape.__doc__ or "").strip().replace("``", "`")
            out.append(f"`{shape.__name__}`: {doc}\n")
            out.append("| Key | Type | Unit | Range | Meaning |")
            out.append("|---|---|---|---|---|")
            for key, hint in _hints(shape).items():
                kind, m = _split(hint)
                m = m or Measure("")
                text = f"older agents: {m.text}" if m.legacy else m.text
                out.append(f"| `{key}` | {_type_name(kind)} | {m.unit} | {_range(m)} | {text} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"
