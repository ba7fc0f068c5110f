"""Parser for SMC key dumps: temperatures and fans on Apple Silicon (and T2) Macs.

``powermetrics --samplers smc`` shows no temperatures on M-series Macs; the SMC itself still holds
them, readable as root through the AppleSMC user client. Tools that list every key print one line a
key in the layout of the classic ``smc -l``::

      TCMb  [flt ]  36.84825 (bytes 9c 64 13 42)      iSMC ``raw -o ascii``
      Tp01  [flt ]  45.6 (bytes: B2 39 36 42)          smctemp ``-l``
      TAOL  [flt ]  (bytes 00 50 e6 41)                iSMC, older dumps (no decoded column)

The value is decoded from the bytes when the type is known (``flt`` little-endian float32 on Apple
Silicon, ``ioft`` little-endian signed 48.16 fixed point, ``sp78``/``fpe2``/``ui*``/``si*`` big-endian),
else taken from the decoded column.

What the summary reads (key names are case-sensitive: ``Tg`` is the GPU, ``TG`` a battery-area
sensor):

* ``Tp*`` / ``Te*``: CPU performance / efficiency core die sensors; ``Tg*``: GPU die sensors.
* ``TCMb`` / ``TCMz``: the firmware's own CPU die average / maximum.
* ``TB0T``..``TB2T``: battery; ``TH0x``: internal SSD (NAND) maximum.
* ``FNum``: fan count; ``F<n>Ac`` / ``F<n>Mn`` / ``F<n>Mx``: fan actual / minimum / maximum rpm.

Sentinels are dropped, not reported: temperatures that are not finite or outside 0..150 °C
(0, -4, 255 ...), die sensors below 15 °C (a power-gated core cluster reads a fixed placeholder such
as 4.633 or 6.7 °C, far below ambient), integer-typed ``T`` keys (counters, not temperatures), and
fan speeds outside 0..20000 rpm. A stopped fan (0 rpm) is a real reading.

``parse_smc_dump`` is pure and never raises.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "DIE_MIN_C",
    "FAN_MAX_RPM",
    "TEMP_MAX_C",
    "TEMP_MIN_C",
    "SmcFan",
    "SmcKey",
    "SmcTemperatures",
    "parse_smc_dump",
    "parse_smc_keys",
]

TEMP_MIN_C = 0.0
TEMP_MAX_C = 150.0
DIE_MIN_C = 15.0
"""Below this a die sensor is a power-gating placeholder, not a measurement."""
FAN_MAX_RPM = 20000.0
MAX_KEYS = 10000
"""Keys read from one dump (a real one has 1200-3400)."""
MAX_FANS = 8
MAX_NOTES = 32
MAX_NOTE_CHARS = 128

TEMP_TYPES = frozenset({"flt", "ioft", "sp78"})

_LINE = re.compile(
    r"^\s*(?P<key>\S.{3})\s+\[(?P<type>[^\[\]]{1,6})\]\s*(?P<value>[^()]*?)\s*"
    r"\(bytes:?(?P<bytes>(?:\s+[0-9A-Fa-f]{2})*)\s*\)\s*$"
)
_FAN = re.compile(r"^F(?P<index>\d)(?P<what>Ac|Mn|Mx)$")
_BATTERY = frozenset({"TB0T", "TB1T", "TB2T"})


@dataclass(frozen=True)
class SmcKey:
    """One key of a dump: its four-character name, SMC type and decoded value (None if unknown)."""

    key: str
    type: str
    value: float | None


@dataclass
class SmcFan:
    index: int
    rpm: float | None = None
    min_rpm: float | None = None
    max_rpm: float | None = None


@dataclass
class SmcTemperatures:
    """Temperatures (°C) and fans read from an SMC key dump; None when the dump did not show them."""

    cpu_die_max_c: float | None = None
    cpu_die_avg_c: float | None = None
    cpu_die_sensors: int = 0
    gpu_die_max_c: float | None = None
    gpu_die_avg_c: float | None = None
    gpu_die_sensors: int = 0
    cpu_firmware_avg_c: float | None = None
    cpu_firmware_max_c: float | None = None
    battery_c: float | None = None
    ssd_c: float | None = None
    fan_count: int | None = None
    fans: list[SmcFan] = field(default_factory=list)
    keys_read: int = 0
    unparsed_lines: int = 0
    dropped: list[str] = field(default_factory=list)
    """Readings discarded as sentinels, e.g. ``"Tp01=6.7"`` (at most MAX_NOTES)."""
    dropped_count: int = 0

    def as_data(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return asdict(self)


# --------------------------------------------------------------------------- decoding


def _decode(smc_type: str, raw: bytes) -> float | None:
    """The value of ``raw`` for the types whose encoding is known, else None."""
    try:
        if smc_type == "flt" and len(raw) == 4:
            value: float = struct.unpack("<f", raw)[0]
            return value
        if smc_type == "ioft" and len(raw) == 8:
            return int.from_bytes(raw, "little", signed=True) / 65536
        if smc_type == "sp78" and len(raw) == 2:
            return int.from_bytes(raw, "big", signed=True) / 256
        if smc_type == "fpe2" and len(raw) == 2:
            return int.from_bytes(raw, "big") / 4
        if smc_type in ("ui8", "ui16", "ui32", "ui64") and raw:
            return float(int.from_bytes(raw, "big"))
        if smc_type in ("si8", "si16", "si32", "si64") and raw:
            return float(int.from_bytes(raw, "big", signed=True))
        if smc_type == "flag" and len(raw) == 1:
            return float(raw[0] != 0)
    except (struct.error, OverflowError):
        return None
    return None


def _printed(text: str) -> float | None:
    try:
        value = float(text)
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def parse_smc_keys(text: str) -> tuple[list[SmcKey], int]:
    """The keys of a dump and the number of non-blank lines that were not key lines. Never raises."""
    keys: list[SmcKey] = []
    unparsed = 0
    if not isinstance(text, str):
        return keys, unparsed
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            unparsed += 1
            continue
        if len(keys) >= MAX_KEYS:
            break
        smc_type = m.group("type").strip()
        raw = bytes.fromhex("".join(m.group("bytes").split()))
        value = _decode(smc_type, raw)
        if value is None:
            value = _printed(m.group("value"))
        if value is not None and not math.isfinite(value):
            value = float("nan")  # kept as NaN here so the summary can count it as a dropped sentinel
        keys.append(SmcKey(key=m.group("key"), type=smc_type, value=value))
    return keys, unparsed


# --------------------------------------------------------------------------- summary


def _note(out: SmcTemperatures, key: str, value: float) -> None:
    out.dropped_count += 1
    if len(out.dropped) < MAX_NOTES:
        out.dropped.append(f"{key}={value:g}"[:MAX_NOTE_CHARS])


def _temperature(out: SmcTemperatures, key: SmcKey, floor: float = TEMP_MIN_C) -> float | None:
    """The key's temperature, or None (noted as dropped) for sentinels."""
    if key.type not in TEMP_TYPES or key.value is None:
        return None
    value = key.value
    if not math.isfinite(value) or not (floor < value < TEMP_MAX_C):
        _note(out, key.key, value)
        return None
    return round(value, 3)


def _summary(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return round(max(values), 3), round(sum(values) / len(values), 3)


def parse_smc_dump(text: str) -> SmcTemperatures:
    """Summarize an SMC key dump (``smc -l`` layout) into temperatures and fans. Never raises."""
    try:
        return _parse(text)
    except Exception as exc:  # a parser bug must not kill the agent
        out = SmcTemperatures()
        out.dropped.append(f"unparsable SMC dump: {exc!r}"[:MAX_NOTE_CHARS])
        return out


def _parse(text: str) -> SmcTemperatures:
    keys, unparsed = parse_smc_keys(text)
    out = SmcTemperatures(keys_read=len(keys), unparsed_lines=unparsed)
    cpu: list[float] = []
    gpu: list[float] = []
    battery: list[float] = []
    fans: dict[int, SmcFan] = {}
    for key in keys:
        name = key.key
        if name.startswith(("Tp", "Te")):
            if (value := _temperature(out, key, DIE_MIN_C)) is not None:
                cpu.append(value)
        elif name.startswith("Tg"):
            if (value := _temperature(out, key, DIE_MIN_C)) is not None:
                gpu.append(value)
        elif name == "TCMb":
            out.cpu_firmware_avg_c = _temperature(out, key, DIE_MIN_C)
        elif name == "TCMz":
            out.cpu_firmware_max_c = _temperature(out, key, DIE_MIN_C)
        elif name in _BATTERY:
            if (value := _temperature(out, key)) is not None:
                battery.append(value)
        elif name == "TH0x":
            out.ssd_c = _temperature(out, key)
        elif name == "FNum":
            count = key.value
            out.fan_count = int(count) if count is not None and 0 <= count <= MAX_FANS else None
        elif m := _FAN.match(name):
            _fan(out, fans, int(m.group("index")), m.group("what"), key.value)
    out.cpu_die_max_c, out.cpu_die_avg_c = _summary(cpu)
    out.cpu_die_sensors = len(cpu)
    out.gpu_die_max_c, out.gpu_die_avg_c = _summary(gpu)
    out.gpu_die_sensors = len(gpu)
    out.battery_c = max(battery) if battery else None
    limit = out.fan_count if out.fan_count is not None else MAX_FANS
    out.fans = [fans[i] for i in sorted(fans) if i < limit]
    return out


def _fan(out: SmcTemperatures, fans: dict[int, SmcFan], index: int, what: str, value: float | None) -> None:
    if value is None:
        return
    if not math.isfinite(value) or not (0 <= value <= FAN_MAX_RPM):
        _note(out, f"F{index}{what}", value)
        return
    fan = fans.setdefault(index, SmcFan(index=index))
    value = round(value, 1)
    if what == "Ac":
        fan.rpm = value
    elif what == "Mn":
        fan.min_rpm = value
    else:
        fan.max_rpm = value
