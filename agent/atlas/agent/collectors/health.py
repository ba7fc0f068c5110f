"""Health widget: CPU, memory, disks, uptime, battery, temperatures, fans and throttling.

The portable part comes from psutil (``sample_psutil``). On macOS the runner adds
``powermetrics`` (root only: Intel SMC temperatures and fans, Apple Silicon cluster
frequencies and power, thermal pressure), ``pmset -g therm`` (CPU speed/scheduler
limits) and battery details (``ioreg -rn AppleSmartBattery``, else
``system_profiler SPPowerDataType``).

Every ``parse_*`` function is pure, never raises, and returns ``None`` fields for
what the text does not show. Sentinel readings are dropped rather than reported:
``Invalid key detected!`` SMC lines, temperatures outside 0..150 °C (e.g. -127, 255),
fan speeds outside 0..20000 rpm (e.g. 65535), and 0 rpm on Macs known to be fanless.
"""

from __future__ import annotations

import math
import os
import platform as _platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, cast

from atlas.contract import HealthData

from .command import Runner, run_command

"""Runs a command and returns its stdout; raises (OSError, CalledProcessError, ...) on failure."""

TEMP_MIN_C = 0.0
TEMP_MAX_C = 150.0
FAN_MAX_RPM = 20000.0
MAX_NOTES = 32
MAX_NOTE_CHARS = 256
"""Bounds on the free-text lists kept (notes, dropped readings): a garbled output can repeat a line forever."""
FANLESS_MODELS = frozenset({"MacBook8,1", "MacBook9,1", "MacBook10,1"})
"""Intel Macs without a fan (12-inch MacBook): a ``Fan: 0 rpm`` line there is meaningless."""

PSEUDO_FSTYPES = frozenset(
    {
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devfs",
        "devpts",
        "devtmpfs",
        "fdesc",
        "fusectl",
        "hugetlbfs",
        "mqueue",
        "nullfs",
        "nsfs",
        "overlay",
        "proc",
        "pstore",
        "securityfs",
        "squashfs",
        "sysfs",
        "tmpfs",
        "tracefs",
    }
)
"""Filesystems that are not storage volumes (squashfs: read-only snap/loop images)."""

_MAC_SYSTEM_VOLUMES = "/System/Volumes/"
_MAC_DATA_VOLUME = "/System/Volumes/Data"


# --------------------------------------------------------------------------- helpers


def _num(text: str | None) -> float | None:
    """The first number in ``text`` (``.86`` and ``-2169`` included), else None."""
    if not text:
        return None
    m = re.search(r"-?\d*\.?\d+(?:[eE][-+]?\d+)?", text)
    if not m:
        return None
    try:
        value = float(m.group(0))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _int(text: str | None) -> int | None:
    value = _num(text)
    return None if value is None else int(value)


def _yes_no(text: str | None) -> bool | None:
    if text is None:
        return None
    word = text.strip().lower()
    if word in ("yes", "true", "1"):
        return True
    if word in ("no", "false", "0"):
        return False
    return None


def _temp(value: float | None) -> float | None:
    """A temperature in °C, or None for sentinels (-127, 255, 0 and the like)."""
    if value is None or not (TEMP_MIN_C < value < TEMP_MAX_C):
        return None
    return value


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf floats by None and tuples by lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _note(notes: list[str], text: str) -> None:
    """Append ``text`` (cut to MAX_NOTE_CHARS) unless MAX_NOTES are kept already."""
    if len(notes) < MAX_NOTES:
        notes.append(text[:MAX_NOTE_CHARS])


def _pm_timestamp(text: str) -> str | None:
    """``2021-05-02 11:51:57 +0800`` -> ``2021-05-02T11:51:57+08:00``."""
    try:
        return datetime.strptime(text.strip(), "%Y-%m-%d %H:%M:%S %z").isoformat()
    except ValueError:
        return None


# --------------------------------------------------------------------------- powermetrics


@dataclass
class SmcSensors:
    """What ``powermetrics --samplers smc`` (Intel) and ``thermal`` (all Macs) show."""

    cpu_die_temp_c: float | None = None
    gpu_die_temp_c: float | None = None
    fans_rpm: list[float] = field(default_factory=list)
    cpu_thermal_level: int | None = None
    gpu_thermal_level: int | None = None
    io_thermal_level: int | None = None
    cpu_plimit: float | None = None
    gpu_plimit: float | None = None
    prochots: int | None = None
    thermal_pressure: str | None = None
    invalid_keys: int = 0
    dropped: list[str] = field(default_factory=list)
    """Readings seen but discarded as sentinels, e.g. ``"CPU die temperature: -127.0"``."""


_SMC_TEMP = re.compile(r"^(CPU|GPU) die temperature:\s*(\S+)", re.IGNORECASE)
_SMC_FAN = re.compile(r"^Fan(?:\s*\d+)?:\s*(\S+)\s*rpm", re.IGNORECASE)
_SMC_LEVEL = re.compile(r"^(CPU|GPU|IO) Thermal level:\s*(\S+)", re.IGNORECASE)
_SMC_PLIMIT = re.compile(r"^(CPU|GPU) Plimit(?:\s*\([^)]*\))?:\s*(\S+)", re.IGNORECASE)
_SMC_PROCHOTS = re.compile(r"^Number of prochots:\s*(\S+)", re.IGNORECASE)
_THERMAL_PRESSURE = re.compile(r"^Current pressure level:\s*(\S.*)$", re.IGNORECASE)


def parse_powermetrics_smc(text: str, *, model: str | None = None) -> SmcSensors:
    """Parse the SMC (and thermal-pressure) part of text ``powermetrics`` output.

    ``model`` (a model identifier) lets 0 rpm fans be dropped on fanless Macs; on
    other Macs 0 rpm is a real reading (fans stop when the machine is cool).
    With several samples the last value of each line wins.
    """
    out = SmcSensors()
    if not isinstance(text, str):
        return out
    fans: list[float] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.lower().startswith("invalid key"):
            out.invalid_keys += 1
            continue
        if m := _SMC_TEMP.match(line):
            value = _num(m.group(2))
            kept = _temp(value)
            if value is not None and kept is None:
                _note(out.dropped, f"{m.group(1).upper()} die temperature: {value}")
            if m.group(1).upper() == "CPU":
                out.cpu_die_temp_c = kept
            else:
                out.gpu_die_temp_c = kept
        elif m := _SMC_FAN.match(line):
            value = _num(m.group(1))
            if value is None:
                continue
            if value < 0 or value > FAN_MAX_RPM or (value == 0 and model in FANLESS_MODELS):
                _note(out.dropped, f"Fan: {value} rpm")
            else:
                fans.append(value)
        elif m := _SMC_LEVEL.match(line):
            level = _int(m.group(2))
            attr = {"CPU": "cpu_thermal_level", "GPU": "gpu_thermal_level", "IO": "io_thermal_level"}
            setattr(out, attr[m.group(1).upper()], level)
        elif m := _SMC_PLIMIT.match(line):
            setattr(out, "cpu_plimit" if m.group(1).upper() == "CPU" else "gpu_plimit", _num(m.group(2)))
        elif m := _SMC_PROCHOTS.match(line):
            out.prochots = _int(m.group(1))
        elif m := _THERMAL_PRESSURE.match(line):
            out.thermal_pressure = m.group(1).strip()[:MAX_NOTE_CHARS] or None
    out.fans_rpm = fans
    return out


@dataclass
class ClusterReading:
    """One CPU cluster (``E``, ``P``, ``P0``, ``P1``...) in a powermetrics sample."""

    frequency_mhz: float | None = None
    power_mw: float | None = None
    active_residency_pct: float | None = None
    idle_residency_pct: float | None = None


@dataclass
class CpuPower:
    """The ``cpu_power`` sampler of text ``powermetrics`` (Apple Silicon layout)."""

    machine_model: str | None = None
    os_build: str | None = None
    boot_time: str | None = None
    samples: int = 0
    """Number of ``*** Sampled system activity`` blocks; values are from the last one."""
    clusters: dict[str, ClusterReading] = field(default_factory=dict)
    cpu_frequency_mhz: dict[str, float] = field(default_factory=dict)
    gpu_frequency_mhz: float | None = None
    cpu_power_mw: float | None = None
    gpu_power_mw: float | None = None
    ane_power_mw: float | None = None
    dram_power_mw: float | None = None
    package_power_mw: float | None = None


_CLUSTER = re.compile(r"^([A-Z]\d*)-Cluster (.+?):\s*(\S.*)$")
_CPU_FREQ = re.compile(r"^CPU (\d+) frequency:\s*(\S+)\s*MHz", re.IGNORECASE)
_GPU_FREQ = re.compile(r"^GPU (?:HW )?active frequency:\s*(\S+)\s*MHz", re.IGNORECASE)
_POWER = re.compile(r"^(CPU|GPU|ANE|DRAM|Package) Power:\s*(\S+)\s*(mW|W)\b", re.IGNORECASE)
_SAMPLE = re.compile(r"^\*\*\* Sampled system activity")


def _milliwatts(value: str, unit: str) -> float | None:
    number = _num(value)
    if number is None:
        return None
    return number * 1000.0 if unit.lower() == "w" else number


def parse_powermetrics_cpu(text: str) -> CpuPower:
    """Cluster and per-CPU frequencies and power from text ``powermetrics``.

    Takes the header (machine model, OS build, boot time) and the last sample;
    also accepts ``grep``-filtered output without sample separators.
    """
    out = CpuPower()
    if not isinstance(text, str):
        return out
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if _SAMPLE.match(line.strip())]
    out.samples = len(starts)
    header = lines[: starts[0]] if starts else lines
    body = lines[starts[-1] :] if starts else lines
    for raw in header:
        key, sep, value = raw.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "machine model":
            out.machine_model = value or None
        elif key == "os version":
            out.os_build = value or None
        elif key == "boot time":
            out.boot_time = value or None
    for raw in body:
        line = raw.strip()
        if m := _CLUSTER.match(line):
            cluster = out.clusters.setdefault(m.group(1), ClusterReading())
            what, value = m.group(2).lower(), m.group(3)
            if what == "power":
                unit = "W" if re.search(r"\bW\b", value) else "mW"
                cluster.power_mw = _milliwatts(value, unit)
            elif what in ("hw active frequency", "frequency"):
                cluster.frequency_mhz = _num(value)
            elif what == "hw active residency":
                cluster.active_residency_pct = _num(value)
            elif what == "idle residency":
                cluster.idle_residency_pct = _num(value)
        elif m := _CPU_FREQ.match(line):
            mhz = _num(m.group(2))
            if mhz is not None:
                out.cpu_frequency_mhz[m.group(1)] = mhz
        elif m := _GPU_FREQ.match(line):
            out.gpu_frequency_mhz = _num(m.group(1))
        elif m := _POWER.match(line):
            name = m.group(1).lower()
            setattr(out, f"{name}_power_mw", _milliwatts(m.group(2), m.group(3)))
    return out


# --------------------------------------------------------------------------- pmset


@dataclass
class ThermalLimits:
    """``pmset -g therm``: CPU limits (percent) and warning levels; None = not recorded."""

    cpu_scheduler_limit: int | None = None
    cpu_available_cpus: int | None = None
    cpu_speed_limit: int | None = None
    thermal_warning_level: int | None = None
    performance_warning_level: int | None = None
    recorded_at: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class ThermEvent:
    """One timestamped block of ``pmset -g therm``/``thermlog``."""

    timestamp: str | None
    event: str
    values: dict[str, int] = field(default_factory=dict)


_PM_EVENT = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} [+-]\d{4})\s+(.*)$")
_PM_VALUE = re.compile(r"^([A-Za-z_][\w ]*?)\s*=\s*(-?\d+)\s*$")
_PM_LEVEL = re.compile(r"(thermal|performance) warning level\s*(?:[:=]|is)\s*(-?\d+)", re.IGNORECASE)


def parse_pmset_thermlog(text: str) -> list[ThermEvent]:
    """Timestamped blocks (``CPU Power notify`` ...) with their ``NAME = number`` values."""
    events: list[ThermEvent] = []
    if not isinstance(text, str):
        return events
    current: ThermEvent | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if m := _PM_EVENT.match(line):
            current = ThermEvent(timestamp=_pm_timestamp(m.group(1)), event=m.group(2).strip())
            events.append(current)
        elif current is not None and (m := _PM_VALUE.match(line)):
            current.values[m.group(1).strip()] = int(m.group(2))
    return events


def parse_pmset_therm(text: str) -> ThermalLimits:
    """``pmset -g therm``. Apple Silicon prints only ``Note: No ...`` lines: nothing recorded."""
    out = ThermalLimits()
    if not isinstance(text, str):
        return out
    for raw in text.splitlines():
        line = raw.strip()
        if line.lower().startswith("note:"):
            _note(out.notes, line)
        elif m := _PM_LEVEL.search(line):
            attr = f"{m.group(1).lower()}_warning_level"
            setattr(out, attr, int(m.group(2)))
    for event in parse_pmset_thermlog(text):
        values = {k.lower(): v for k, v in event.values.items()}
        if not values:
            continue
        out.recorded_at = event.timestamp
        out.cpu_scheduler_limit = values.get("cpu_scheduler_limit", out.cpu_scheduler_limit)
        out.cpu_available_cpus = values.get("cpu_available_cpus", out.cpu_available_cpus)
        out.cpu_speed_limit = values.get("cpu_speed_limit", out.cpu_speed_limit)
    return out


# --------------------------------------------------------------------------- battery


@dataclass
class BatteryDetails:
    """Battery details beyond psutil; units in the field names, None when not shown."""

    percent: float | None = None
    charging: bool | None = None
    fully_charged: bool | None = None
    external_connected: bool | None = None
    cycle_count: int | None = None
    condition: str | None = None
    max_capacity_pct: float | None = None
    """Health: full-charge capacity relative to design capacity."""
    charge_remaining_mah: int | None = None
    full_charge_capacity_mah: int | None = None
    design_capacity_mah: int | None = None
    amperage_ma: int | None = None
    voltage_mv: int | None = None
    temperature_c: float | None = None
    installed: bool | None = None
    charger_wattage_w: int | None = None


def sp_text_entries(text: str) -> list[tuple[tuple[str, ...], str, str]]:
    """Flatten indented ``system_profiler`` text into ``(section path, key, value)``.

    A line ``Key:`` with no value opens a section; its children are indented deeper.
    Keys are split at the first ``:`` (values such as ``1 day 23:56`` keep theirs).
    """
    entries: list[tuple[tuple[str, ...], str, str]] = []
    if not isinstance(text, str):
        return entries
    stack: list[tuple[int, str]] = []
    for raw in text.splitlines():
        if not raw.strip() or ":" not in raw:
            continue
        indent = len(raw) - len(raw.lstrip())
        key, _, value = raw.strip().partition(":")
        key, value = key.strip(), value.strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = tuple(name for _, name in stack)
        if value:
            entries.append((path, key, value))
        else:
            stack.append((indent, key))
    return entries


def _sp_find(
    entries: list[tuple[tuple[str, ...], str, str]], section: str, key: str, *, top: str | None = None
) -> str | None:
    """First value of ``key`` under a section named ``section`` (and top-level ``top``)."""
    for path, k, v in entries:
        if k.lower() == key.lower() and section in path and (top is None or (path and path[0] == top)):
            return v
    return None


def parse_sp_power_text(text: str) -> BatteryDetails:
    """``system_profiler SPPowerDataType`` text (alone or inside a full report)."""
    out = BatteryDetails()
    entries = sp_text_entries(text)
    if any(path and path[0] == "Power" for path, _, _ in entries):
        entries = [e for e in entries if e[0] and e[0][0] == "Power"]

    def battery(key: str) -> str | None:
        return _sp_find(entries, "Battery Information", key)

    def charger(key: str) -> str | None:
        return _sp_find(entries, "AC Charger Information", key)

    out.cycle_count = _int(battery("Cycle Count"))
    out.condition = battery("Condition")
    out.charging = _yes_no(battery("Charging"))
    out.fully_charged = _yes_no(battery("Fully Charged"))
    out.charge_remaining_mah = _int(battery("Charge Remaining (mAh)"))
    out.full_charge_capacity_mah = _int(battery("Full Charge Capacity (mAh)"))
    out.max_capacity_pct = _num(battery("Maximum Capacity"))
    out.amperage_ma = _int(battery("Amperage (mA)"))
    out.voltage_mv = _int(battery("Voltage (mV)"))
    out.installed = _yes_no(battery("Battery Installed"))
    out.external_connected = _yes_no(charger("Connected"))
    out.charger_wattage_w = _int(charger("Wattage (W)"))
    state = _num(battery("State of Charge (%)"))
    if state is not None:
        out.percent = state
    elif out.charge_remaining_mah is not None and out.full_charge_capacity_mah:
        out.percent = round(100.0 * out.charge_remaining_mah / out.full_charge_capacity_mah, 1)
    return out


_IOREG_PROP = re.compile(r'^[\s|]*"([^"]+)"\s*=\s*(.*?)\s*$')


def _ioreg_scalar(value: str) -> int | bool | str | None:
    """A top-level ioreg value: integers (unsigned 64-bit wrapped to signed), Yes/No, strings."""
    if value.endswith("$"):  # line truncated to the terminal width
        return None
    if value in ("Yes", "No"):
        return value == "Yes"
    if re.fullmatch(r"-?\d+", value):
        number = int(value)
        if not -(1 << 63) <= number < 1 << 64:  # ioreg prints 64-bit values; anything else is garbled
            return None
        return number - (1 << 64) if number >= 1 << 63 else number
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return None


def parse_ioreg_battery(text: str) -> BatteryDetails:
    """``ioreg -rn AppleSmartBattery`` (full or grep-filtered) top-level properties.

    ``MaxCapacity`` is mAh up to macOS 10.15 and a percentage on newer systems
    (with ``AppleRawMaxCapacity`` in mAh); both are handled.
    """
    out = BatteryDetails()
    props: dict[str, int | bool | str] = {}
    if isinstance(text, str):
        for raw in text.splitlines():
            if m := _IOREG_PROP.match(raw):
                value = _ioreg_scalar(m.group(2))
                if value is not None:
                    props.setdefault(m.group(1), value)

    def num(key: str) -> int | None:
        value = props.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def flag(key: str) -> bool | None:
        value = props.get(key)
        return value if isinstance(value, bool) else None

    out.cycle_count = num("CycleCount")
    out.design_capacity_mah = num("DesignCapacity")
    out.charging = flag("IsCharging")
    out.fully_charged = flag("FullyCharged")
    out.external_connected = flag("ExternalConnected")
    out.installed = flag("BatteryInstalled")
    out.amperage_ma = num("Amperage") if num("Amperage") is not None else num("InstantAmperage")
    out.voltage_mv = num("Voltage")
    temp = num("Temperature")  # centi-degrees Celsius
    out.temperature_c = _temp(temp / 100.0) if temp is not None else None
    max_cap, raw_max, current = num("MaxCapacity"), num("AppleRawMaxCapacity"), num("CurrentCapacity")
    raw_current = num("AppleRawCurrentCapacity")
    design = out.design_capacity_mah
    percent_scale = max_cap is not None and max_cap <= 100 and (design is None or design > 100)
    full_mah = raw_max if raw_max is not None else (None if percent_scale else max_cap)
    out.full_charge_capacity_mah = full_mah
    if percent_scale:
        out.max_capacity_pct = float(max_cap) if max_cap is not None else None
        out.percent = float(current) if current is not None else None
        out.charge_remaining_mah = raw_current
    else:
        out.charge_remaining_mah = current
        if current is not None and max_cap:
            out.percent = round(100.0 * current / max_cap, 1)
    if out.max_capacity_pct is None and full_mah and design:
        out.max_capacity_pct = round(100.0 * full_mah / design, 1)
    return out


# --------------------------------------------------------------------------- psutil


def _disk_is_volume(mountpoint: str, fstype: str) -> bool:
    if fstype.lower() in PSEUDO_FSTYPES:
        return False
    if mountpoint.startswith(_MAC_SYSTEM_VOLUMES) and mountpoint != _MAC_DATA_VOLUME:
        return False  # APFS helper volumes: VM, Preboot, Update, xarts, iSCPreboot, Hardware
    return not mountpoint.startswith(("/proc", "/sys", "/dev", "/run", "/snap/"))


def sample_psutil(interval: float = 0.5) -> dict[str, Any]:
    """Portable readings from psutil; each part that fails is left out and named in ``errors``.

    ``cpu_percent`` is the mean of the per-core percentages over ``interval`` seconds (0..100).
    """
    import psutil

    data: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def attempt(name: str, fn: Callable[[], Any]) -> None:
        try:
            data[name] = fn()
        except Exception as exc:  # psutil raises many kinds on odd systems
            errors[name] = f"{type(exc).__name__}: {exc}"

    def cpu() -> list[float]:
        return [float(p) for p in psutil.cpu_percent(interval=interval, percpu=True)]

    attempt("cpu_percent_per_core", cpu)
    cores = data.get("cpu_percent_per_core")
    if cores:
        data["cpu_percent"] = round(sum(cores) / len(cores), 1)
    attempt("cpu_count", lambda: psutil.cpu_count())
    attempt("load_average", lambda: [round(x, 2) for x in psutil.getloadavg()])

    def memory() -> dict[str, Any]:
        vm = psutil.virtual_memory()
        return {"total": vm.total, "available": vm.available, "used": vm.used, "percent": vm.percent}

    def swap() -> dict[str, Any]:
        sw = psutil.swap_memory()
        return {"total": sw.total, "used": sw.used, "free": sw.free, "percent": sw.percent}

    attempt("memory", memory)
    attempt("swap", swap)

    def disks() -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = {}
        for part in psutil.disk_partitions(all=False):
            if part.mountpoint in result or not _disk_is_volume(part.mountpoint, part.fstype):
                continue
            try:
                usage = psutil.disk_usage(part.mountpoint)
            except OSError:
                continue
            result[part.mountpoint] = {
                "device": part.device,
                "fstype": part.fstype,
                "total": usage.total,
                "used": usage.used,
                "free": usage.free,
                "percent": usage.percent,
            }
        return result

    attempt("disks", disks)
    attempt("uptime_seconds", lambda: max(0, int(time.time() - psutil.boot_time())))

    def battery() -> dict[str, Any] | None:
        sensors = getattr(psutil, "sensors_battery", None)
        reading = sensors() if sensors else None
        if reading is None:
            return None
        secs = reading.secsleft
        # POWER_TIME_UNKNOWN (-1) and POWER_TIME_UNLIMITED (-2) are sentinels, not durations.
        known = isinstance(secs, int | float) and secs >= 0
        return {
            "percent": float(reading.percent),
            "power_plugged": reading.power_plugged,
            "seconds_left": int(secs) if known else None,
        }

    attempt("battery", battery)

    def temperatures() -> dict[str, list[dict[str, Any]]]:
        sensors = getattr(psutil, "sensors_temperatures", None)
        result: dict[str, list[dict[str, Any]]] = {}
        for chip, readings in (sensors() if sensors else {}).items():
            kept = [
                {"label": r.label or chip, "current_c": r.current} for r in readings if _temp(r.current) is not None
            ]
            if kept:
                result[chip] = kept
        return result

    if hasattr(psutil, "sensors_temperatures"):
        attempt("temperatures", temperatures)
    if errors:
        data["errors"] = errors
    return data


# --------------------------------------------------------------------------- reading and runner


@dataclass
class HealthReading:
    """One health sample; ``as_data()`` is the widget log's ``data``."""

    psutil: dict[str, Any] = field(default_factory=dict)
    smc: SmcSensors | None = None
    cpu_power: CpuPower | None = None
    thermal_limits: ThermalLimits | None = None
    battery: BatteryDetails | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    """Source name -> why it could not be read (missing command, not root, failure)."""

    def as_data(self) -> HealthData:
        """JSON-safe dict for a widget log's ``data``; the sources not read are left out."""
        data: dict[str, Any] = {"psutil": self.psutil}
        for name in ("smc", "cpu_power", "thermal_limits", "battery"):
            value = getattr(self, name)
            if value is not None:
                data[name] = asdict(value)
        if self.unavailable:
            data["unavailable"] = dict(self.unavailable)
        return cast("HealthData", _json_safe(data))


def _model_identifier(run: Runner) -> str | None:
    try:
        value = run(["sysctl", "-n", "hw.model"]).strip()
    except Exception:
        return None
    return value or None


def collect_health(
    run: Runner = run_command,
    *,
    platform: str | None = None,
    machine: str | None = None,
    is_root: bool | None = None,
    psutil_sampler: Callable[[], dict[str, Any]] = sample_psutil,
) -> HealthReading:
    """Sample health now. Never raises: what could not be read is named in ``unavailable``."""
    platform = platform or sys.platform
    machine = machine or _platform.machine()
    if is_root is None:
        is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    reading = HealthReading()
    try:
        reading.psutil = psutil_sampler()
    except Exception as exc:
        reading.unavailable["psutil"] = f"{type(exc).__name__}: {exc}"
    if platform != "darwin":
        return reading

    def attempt(name: str, argv: Sequence[str]) -> str | None:
        try:
            return run(argv)
        except Exception as exc:
            reading.unavailable[name] = f"{type(exc).__name__}: {exc}"
            return None

    apple_silicon = machine == "arm64"
    if is_root:
        samplers = "cpu_power,thermal" if apple_silicon else "smc,thermal"
        text = attempt("powermetrics", ["powermetrics", "-n", "1", "-i", "1000", "--samplers", samplers])
        if text is not None:
            reading.smc = parse_powermetrics_smc(text, model=_model_identifier(run))
            if apple_silicon:
                reading.cpu_power = parse_powermetrics_cpu(text)
    else:
        reading.unavailable["powermetrics"] = "needs root"
    text = attempt("pmset", ["pmset", "-g", "therm"])
    if text is not None:
        reading.thermal_limits = parse_pmset_therm(text)
    if reading.psutil.get("battery"):
        text = attempt("ioreg_battery", ["ioreg", "-rn", "AppleSmartBattery"])
        battery = parse_ioreg_battery(text) if text is not None else None
        if battery is None or battery.cycle_count is None:
            text = attempt("system_profiler_power", ["system_profiler", "SPPowerDataType"])
            if text is not None:
                battery = parse_sp_power_text(text)
        reading.battery = battery
    return reading
