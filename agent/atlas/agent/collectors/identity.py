"""Machine identity: serial number, model, OS version, hostname and agent version.

macOS: ``ioreg -c IOPlatformExpertDevice -d 2`` (serial, model), falling back to
``system_profiler SPHardwareDataType -json``; ``sw_vers`` for the OS version.
Linux (development): ``/etc/os-release``, ``/sys/class/dmi/id/product_serial``
(root only; falls back to ``/etc/machine-id``) and ``product_name``.

``machine_id`` is the configured value when one is given, otherwise the serial
number lowercased: stable across reinstalls and hostname changes, and unique per
Mac. Without any serial the platform UUID / machine-id, then ``host-<hostname>``,
is used, so the batch still validates (the wire contract requires 1..128 chars).

All ``parse_*`` functions are pure and never raise; unknown text gives None fields.
"""

from __future__ import annotations

import json
import re
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atlas.agent import __version__
from atlas.contract import MACHINE_MAX_CHARS, MachineInfo

from .command import Runner, run_command
from .health import sp_text_entries

FileReader = Callable[[str], str]
"""Returns a file's text; raises OSError when it is missing or unreadable."""

UNKNOWN_SERIAL = "unknown"

_SERIAL_SENTINELS = frozenset(
    {
        "",
        "...",
        "0",
        "none",
        "null",
        "n/a",
        "na",
        "unknown",
        "not specified",
        "not applicable",
        "not available",
        "default string",
        "system serial number",
        "to be filled by o.e.m.",
        "0123456789",
    }
)
"""Placeholder serials (redacted ``...``, VM/OEM firmware defaults) that identify nothing."""


def clean_serial(value: str | None) -> str | None:
    """``value`` stripped, or None for placeholders and all-zero/all-``X`` strings."""
    if not isinstance(value, str):
        return None
    value = value.strip().strip("\x00").strip()
    if value.lower() in _SERIAL_SENTINELS or re.fullmatch(r"[0X\-_ .]*", value, re.IGNORECASE):
        return None
    if any(ord(c) < 32 for c in value):
        return None
    return value


def _clean(value: str | None) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value or None


# --------------------------------------------------------------------------- ioreg


@dataclass
class PlatformInfo:
    """``IOPlatformExpertDevice`` properties."""

    serial_number: str | None = None
    model: str | None = None
    platform_uuid: str | None = None
    manufacturer: str | None = None
    board_id: str | None = None


_IOREG_NODE = re.compile(r"\+-o\s+(\S+)\s+<class IOPlatformExpertDevice\b")
_IOREG_PROP = re.compile(r'^[\s|]*"([^"]+)"\s*=\s*(.*?)\s*$')


def _ioreg_value(value: str) -> str | None:
    """Text of ``"str"`` or ``<"data">``; None for truncated (``$``-ended), hex or other values."""
    if value.endswith("$"):  # ioreg without -w0 cuts long lines at the terminal width
        return None
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if len(value) >= 4 and value.startswith('<"') and value.endswith('">'):
        return value[2:-2]
    return None


def parse_ioreg_platform(text: str) -> PlatformInfo:
    """``ioreg -c IOPlatformExpertDevice -d 2`` (or ``-r``, or the full tree).

    Reads the first IOPlatformExpertDevice node's property block; without a node
    header (e.g. grep output) every ``"key" = value`` line counts.
    """
    out = PlatformInfo()
    if not isinstance(text, str):
        return out
    lines = text.splitlines()
    node_name: str | None = None
    start = 0
    for i, line in enumerate(lines):
        if m := _IOREG_NODE.search(line):
            node_name, start = m.group(1), i + 1
            break
    props: dict[str, str] = {}
    opened = False
    for line in lines[start:]:
        bare = line.strip().lstrip("|").strip()
        if node_name is not None:
            if bare == "{":
                opened = True
                continue
            if bare == "}" or (not opened and bare.startswith("+-o")):
                break
        if m := _IOREG_PROP.match(line):
            value = _ioreg_value(m.group(2))
            if value is not None:
                props.setdefault(m.group(1), value)
    out.serial_number = clean_serial(props.get("IOPlatformSerialNumber"))
    out.model = _clean(props.get("model")) or _clean(props.get("product-name")) or node_name
    uuid = _clean(props.get("IOPlatformUUID"))
    out.platform_uuid = uuid if uuid and re.fullmatch(r"[0-9A-Fa-f\-]{8,}", uuid) else None
    out.manufacturer = _clean(props.get("manufacturer"))
    out.board_id = _clean(props.get("board-id"))
    return out


# --------------------------------------------------------------------------- system_profiler


@dataclass
class HardwareInfo:
    """``system_profiler SPHardwareDataType`` (JSON or text)."""

    model_name: str | None = None
    model_identifier: str | None = None
    model_number: str | None = None
    chip: str | None = None
    processor_name: str | None = None
    cores: str | None = None
    memory: str | None = None
    serial_number: str | None = None
    platform_uuid: str | None = None
    firmware_version: str | None = None


def parse_sp_hardware_json(text: str) -> HardwareInfo:
    """``system_profiler SPHardwareDataType -json``; ``number_processors`` may be a string."""
    out = HardwareInfo()
    try:
        doc = json.loads(text)
        item = doc["SPHardwareDataType"][0]
    except (ValueError, TypeError, KeyError, IndexError, RecursionError):
        return out
    if not isinstance(item, dict):
        return out

    def get(key: str) -> str | None:
        value = item.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return _clean(value) if isinstance(value, str) else None

    out.model_name = get("machine_name")
    out.model_identifier = get("machine_model")
    out.model_number = get("model_number")
    out.chip = get("chip_type")
    out.processor_name = get("cpu_type")
    out.cores = get("number_processors")
    out.memory = get("physical_memory")
    out.serial_number = clean_serial(get("serial_number"))
    out.platform_uuid = get("platform_UUID")
    out.firmware_version = get("boot_rom_version")
    return out


def parse_sp_hardware_text(text: str) -> HardwareInfo:
    """Text ``system_profiler SPHardwareDataType`` (also ``-detailLevel mini`` and full reports).

    The first ``Hardware Overview`` wins when several reports are concatenated.
    """
    out = HardwareInfo()
    entries = [e for e in sp_text_entries(text) if "Hardware Overview" in e[0]]

    def get(*keys: str) -> str | None:
        for key in keys:
            for _, k, v in entries:
                if k == key:
                    return _clean(v)
        return None

    out.model_name = get("Model Name")
    out.model_identifier = get("Model Identifier")
    out.model_number = get("Model Number")
    out.chip = get("Chip")
    out.processor_name = get("Processor Name")
    out.cores = get("Total Number of Cores")
    out.memory = get("Memory")
    out.serial_number = clean_serial(get("Serial Number (system)", "Serial Number"))
    out.platform_uuid = get("Hardware UUID")
    out.firmware_version = get("System Firmware Version", "Boot ROM Version")
    return out


# --------------------------------------------------------------------------- sw_vers, os-release, sysctl


@dataclass
class OsInfo:
    """``sw_vers`` fields; ``product_version_extra`` is the Rapid Security Response, e.g. ``(a)``."""

    product_name: str | None = None
    product_version: str | None = None
    product_version_extra: str | None = None
    build_version: str | None = None

    def display(self) -> str | None:
        """``macOS 15.5 (24F74)``, ``macOS 13.3.1 (a) (22E772610a)``; None without a version."""
        if not self.product_version:
            return None
        parts = [p for p in (self.product_name, self.product_version, self.product_version_extra) if p]
        text = " ".join(parts)
        return f"{text} ({self.build_version})" if self.build_version else text


def parse_sw_vers(text: str) -> OsInfo:
    """``sw_vers`` output; keys end at the first ``:``, then tabs or spaces."""
    out = OsInfo()
    if not isinstance(text, str):
        return out
    fields = {
        "productname": "product_name",
        "productversion": "product_version",
        "productversionextra": "product_version_extra",
        "buildversion": "build_version",
    }
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        attr = fields.get(key.strip().lower())
        if sep and attr and getattr(out, attr) is None:
            setattr(out, attr, _clean(value))
    return out


def parse_os_release(text: str) -> dict[str, str]:
    """``/etc/os-release``: ``KEY=value`` with optional quotes and backslash escapes."""
    out: dict[str, str] = {}
    if not isinstance(text, str):
        return out
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
            if line.partition("=")[2].strip()[0] == '"':
                value = re.sub(r"\\(.)", r"\1", value)
        out[key] = value
    return out


def os_release_version(fields: dict[str, str]) -> str | None:
    """``PRETTY_NAME``, else ``NAME VERSION_ID``."""
    pretty = _clean(fields.get("PRETTY_NAME"))
    if pretty:
        return pretty
    parts = [p for p in (_clean(fields.get("NAME")), _clean(fields.get("VERSION_ID"))) if p]
    return " ".join(parts) or None


_SYSCTL_LINE = re.compile(r"^([A-Za-z_][\w.\-]*)(?::\s?| = )(.*)$")


def parse_sysctl(text: str) -> dict[str, str]:
    """``sysctl -a`` / ``sysctl name...`` as ``{name: value}``; continuation lines are appended."""
    out: dict[str, str] = {}
    if not isinstance(text, str):
        return out
    last: str | None = None
    for line in text.splitlines():
        if m := _SYSCTL_LINE.match(line):
            last = m.group(1)
            out[last] = m.group(2).strip()
        elif last is not None and line.strip():
            out[last] = f"{out[last]}\n{line.strip()}".strip()
    return out


def cpu_brand(sysctl: dict[str, str]) -> str | None:
    """``machdep.cpu.brand_string`` (e.g. ``Apple M1``, ``Intel(R) Core(TM) i5-8279U ...``)."""
    return _clean(sysctl.get("machdep.cpu.brand_string"))


# --------------------------------------------------------------------------- identity and runner


class MachineIdentity(MachineInfo):
    """The wire contract's machine object (``MachineInfo``): its fields and bounds, built by ``build_identity``."""

    def as_machine(self) -> dict[str, Any]:
        return self.model_dump()


def _bounded(value: str | None, limit: int, default: str = "") -> str:
    value = (value or "").replace("\x00", "").strip()
    return value[:limit] if value else default


def build_identity(
    *,
    serial_number: str | None,
    hostname: str | None,
    model: str | None,
    os_version: str | None,
    agent_version: str = __version__,
    machine_id: str | None = None,
    fallback_id: str | None = None,
) -> MachineIdentity:
    """Apply the machine_id rule (configured > serial lowercased > fallback_id > host-name) and bounds."""
    serial = clean_serial(serial_number)
    host = _bounded(hostname, MACHINE_MAX_CHARS["hostname"])
    chosen = _clean(machine_id) or (serial.lower() if serial else None) or _clean(fallback_id)
    if not chosen:
        chosen = f"host-{host}" if host else UNKNOWN_SERIAL
    bound = MACHINE_MAX_CHARS
    return MachineIdentity(
        machine_id=_bounded(chosen, bound["machine_id"], UNKNOWN_SERIAL),
        serial_number=_bounded(serial, bound["serial_number"], UNKNOWN_SERIAL),
        hostname=host,
        model=_bounded(model, bound["model"]),
        os_version=_bounded(os_version, bound["os_version"]),
        agent_version=_bounded(agent_version, bound["agent_version"]),
    )


def read_text_file(path: str) -> str:
    """Default file reader."""
    return Path(path).read_text(encoding="utf-8", errors="replace")


def _try(fn: Callable[[], str], problems: list[str], what: str) -> str | None:
    try:
        return fn()
    except Exception as exc:
        problems.append(f"{what}: {type(exc).__name__}: {exc}")
        return None


def collect_identity(
    run: Runner = run_command,
    read_file: FileReader = read_text_file,
    *,
    platform: str | None = None,
    machine_id: str | None = None,
    hostname: str | None = None,
    agent_version: str = __version__,
    problems: list[str] | None = None,
) -> MachineIdentity:
    """Identify this machine. Never raises; what failed is appended to ``problems`` if given."""
    platform = platform or sys.platform
    problems = problems if problems is not None else []
    if hostname is None:
        hostname = _try(socket.gethostname, problems, "hostname")
    serial = model = os_version = fallback = None

    def run_(argv: Sequence[str]) -> str | None:
        return _try(lambda: run(argv), problems, " ".join(argv))

    def read_(path: str) -> str | None:
        return _try(lambda: read_file(path), problems, path)

    if platform == "darwin":
        text = run_(["ioreg", "-c", "IOPlatformExpertDevice", "-d", "2"])
        info = parse_ioreg_platform(text or "")
        serial, model, fallback = info.serial_number, info.model, info.platform_uuid
        if serial is None or model is None:
            text = run_(["system_profiler", "SPHardwareDataType", "-json"])
            hw = parse_sp_hardware_json(text or "")
            serial = serial or hw.serial_number
            model = model or hw.model_identifier
            fallback = fallback or (hw.platform_uuid.lower() if hw.platform_uuid else None)
        os_version = parse_sw_vers(run_(["sw_vers"]) or "").display()
    else:
        release = read_("/etc/os-release") or read_("/usr/lib/os-release") or ""
        os_version = os_release_version(parse_os_release(release))
        serial = clean_serial(read_("/sys/class/dmi/id/product_serial"))
        machine = _clean(read_("/etc/machine-id"))
        fallback = machine
        serial = serial or machine
        model = _clean(read_("/sys/class/dmi/id/product_name"))
    if not os_version:
        import platform as _platform

        os_version = _clean(f"{_platform.system()} {_platform.release()}")
    return build_identity(
        serial_number=serial,
        hostname=hostname,
        model=model,
        os_version=os_version,
        agent_version=agent_version,
        machine_id=machine_id,
        fallback_id=fallback.lower() if fallback else None,
    )


def collect_hardware_uuid(
    run: Runner = run_command,
    read_file: FileReader = read_text_file,
    *,
    platform: str | None = None,
    problems: list[str] | None = None,
) -> str | None:
    """The hardware UUID a v2 enrollment names: ``IOPlatformUUID`` on macOS (as ioreg prints it, upper case),
    else ``system_profiler``'s; on Linux (development) ``/etc/machine-id``. None when nothing answers."""
    platform = platform or sys.platform
    problems = problems if problems is not None else []
    if platform == "darwin":
        found = parse_ioreg_platform(
            _try(lambda: run(["ioreg", "-c", "IOPlatformExpertDevice", "-d", "2"]), problems, "ioreg") or ""
        ).platform_uuid
        if found is None:
            text = _try(lambda: run(["system_profiler", "SPHardwareDataType", "-json"]), problems, "system_profiler")
            found = parse_sp_hardware_json(text or "").platform_uuid
        return found
    return _clean(_try(lambda: read_file("/etc/machine-id"), problems, "/etc/machine-id"))
