"""Processes widget: the top processes by CPU and by memory, plus the process count.

Main path: psutil, through a long-lived ``ProcessSampler``. psutil's ``cpu_percent``
compares a process's CPU time with the previous call *on the same Process object*,
and the first call returns a meaningless 0.0. The sampler therefore keeps a primed
``psutil.Process`` per (pid, create time) between collections, so each collection
reports the average CPU use since the previous one (the agent's collection
interval), not a 0.5 s snapshot. A fresh sampler primes every process, sleeps
``first_interval`` seconds, and then measures, so even the first collection is right.
A process first seen in a collection has no previous reading: its ``cpu_percent`` is
None (counted in ``cpu_unmeasured``), never a fake 0.0. CPU percentages are of one CPU
(the ``top``/Activity Monitor convention), so a multi-threaded process can exceed 100.

Processes that exit mid-collection (``NoSuchProcess``/``ZombieProcess``) are counted
in ``vanished`` and skipped; fields psutil may not read (``AccessDenied``) are None.

Fallback: ``parse_ps`` is a pure parser of ``ps`` output (``ps axu``, ``ps -ef``,
``ps -A -o ...``) that finds its columns from the header line. Columns before the
command are split on whitespace (a long user name can push a row out of alignment,
so fixed positions are not trusted); a ``COMM``/``UCOMM`` column followed by another
column is cut at its header width (macOS pads and truncates it to 16 characters);
the last column (``COMMAND``/``ARGS``/``CMD``) keeps its spaces. Start times come from
``ELAPSED`` (exact to the second) or ``STARTED``/``STIME``/``START`` (minute or hour
precision), and only when a ``now`` is given, since ps prints them relative to the
local clock.

Process names and commands can be chosen by any local user: they are made valid
Unicode, control and bidi-override characters are replaced by U+FFFD, and they are
cut to ``MAX_TEXT`` characters. Nothing here raises on odd input.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import psutil

from atlas.contract import ProcessesData, ProcessRow

from .command import Runner, run_command

__all__ = [
    "DEFAULT_TOP_N",
    "MAX_TEXT",
    "MAX_TOP_N",
    "PS_COMMAND",
    "ParsedPs",
    "ProcessInfo",
    "ProcessSampler",
    "ProcessesResult",
    "Runner",
    "clean_text",
    "collect_processes",
    "collect_ps",
    "name_from_command",
    "parse_ps",
    "rfc3339",
    "run_command",
    "summarize",
]

DEFAULT_TOP_N = 10
MAX_TOP_N = 25
MAX_TEXT = 256
"""Longest name or command kept, in characters."""
MAX_DATA_BYTES = 60000
"""Budget for ``as_data`` as compact JSON; the wire contract allows 65536 per log."""

PS_COMMAND = ("ps", "-A", "-ww", "-o", "pid,ppid,user,uid,%cpu,%mem,rss,vsz,stat,etime,ucomm,args")
"""The fallback command: works with macOS (BSD) ps and Linux procps ps."""

_ELLIPSIS = "\u2026"
_REPLACEMENT = "\ufffd"
# C0/C1 controls, DEL, bidi embeddings/overrides/isolates, line/paragraph separators, BOM.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")


# --------------------------------------------------------------------------- helpers


def clean_text(value: object, limit: int = MAX_TEXT) -> str | None:
    """``value`` as valid Unicode without control characters, at most ``limit`` characters.

    Bytes are decoded as UTF-8; lone surrogates (psutil's ``surrogateescape`` for
    undecodable names) and control/bidi characters become U+FFFD; a cut value ends
    with an ellipsis. Non-text gives None.
    """
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", "replace")
    elif isinstance(value, str):
        text = value
    else:
        return None
    if len(text) > 4 * limit:  # do not sanitise megabytes to keep 256 characters
        text = text[: 4 * limit]
    try:  # psutil's undecodable bytes come back as they were, then become U+FFFD
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")
    text = raw.decode("utf-8", "replace")
    text = _UNSAFE.sub(_REPLACEMENT, text)
    if len(text) > limit:
        text = text[: max(limit - 1, 0)] + _ELLIPSIS
    return text


def rfc3339(timestamp: float | None) -> str | None:
    """A POSIX timestamp as ``2026-01-01T12:00:00Z``; None when absent or out of range."""
    if timestamp is None or not isinstance(timestamp, int | float) or not math.isfinite(timestamp):
        return None
    try:
        return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return None


def _dt_rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _finite(value: object, ndigits: int) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    if not math.isfinite(number) or number < 0:
        return None
    return round(number, ndigits)


def _nonneg_int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


_BUNDLE = re.compile(r"\.(?:app|framework|bundle|xpc|appex|plugin|service|kext|prefPane|driver|systemextension)/")


def name_from_command(command: str | None) -> str | None:
    """Best-effort executable name from a ps command line.

    Paths with spaces are recognised inside macOS bundles: in
    ``/Applications/Sublime Text.app/Contents/MacOS/plugin_host 560`` the name is
    ``plugin_host``, and in ``.../Microsoft Excel.app/Contents/MacOS/Microsoft Excel -psn_0``
    it is ``Microsoft Excel`` (the executable named like its bundle). ``-bash`` (a
    login shell) gives ``bash``, ``(userInit)`` gives ``userInit``.
    """
    if not command or not command.strip():
        return None
    if command.startswith("[") and command.rstrip().endswith("]"):
        return command.strip()[1:-1].strip() or None  # Linux kernel thread: ``[kworker/0:1]``
    tokens = command.split()
    path = tokens[0]
    used = 1
    if path.startswith("/"):
        # Extend through later tokens that continue the path (before an option or a new path).
        window: list[str] = []
        for token in tokens[1:]:
            if token.startswith(("-", "/")):
                break
            window.append(token)
        last = max((i for i, t in enumerate(window) if "/" in t), default=-1)
        if last >= 0:
            candidate = " ".join([path, *window[: last + 1]])
            if _BUNDLE.search(candidate):
                path, used = candidate, last + 2
    name = path.rstrip("/").rsplit("/", 1)[-1] or path
    # ``X Y.app/Contents/MacOS/X`` followed by ``Y``: the executable is named like the bundle.
    bundle = re.search(r"([^/]+)\.app/Contents/MacOS/[^/]+$", path)
    if bundle:
        app = bundle.group(1)
        rest = tokens[used:]
        words = [name]
        for token in rest:
            if len(" ".join(words)) >= len(app):
                break
            words.append(token)
        joined = " ".join(words)
        if joined == app and len(words) > 1:
            name = joined
    if name.startswith("(") and name.endswith(")") and len(name) > 2:
        name = name[1:-1]
    elif name.startswith("-") and len(name) > 1 and "/" not in name:
        name = name[1:]
    return name or None


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ProcessInfo:
    """One process. None means "not shown by this source" or "not readable".

    ``cpu_percent`` is of one CPU; ``memory_percent`` of physical memory;
    ``start_time`` is RFC 3339 UTC; ``status`` uses psutil's names (``running``,
    ``sleeping``, ``idle``, ``disk-sleep``, ``stopped``, ``zombie``...).
    """

    pid: int
    name: str | None = None
    ppid: int | None = None
    user: str | None = None
    uid: int | None = None
    cpu_percent: float | None = None
    memory_percent: float | None = None
    rss_bytes: int | None = None
    vms_bytes: int | None = None
    status: str | None = None
    start_time: str | None = None
    command: str | None = None

    def as_data(self) -> ProcessRow:
        """JSON-safe dict (str/int/float/None only); secret-looking arguments are redacted."""
        data = cast("ProcessRow", asdict(self))
        if self.command:
            data["command"] = redact_arguments(self.command)
        return data


_SECRET_ARGUMENT = re.compile(
    r"(?i)(--?[\w.-]*(?:key|token|secret|passw(?:or)?d|pwd|auth|credential|cookie|session)[\w.-]*)(=|\s+)(\S+)"
)


def redact_arguments(command: str) -> str:
    """Replace the value of any ``--api-key X`` / ``--password=X``-style argument with ``[redacted]``.

    Command lines leave the Mac in telemetry; the values people pass as arguments
    include the agent's own keys and database passwords.
    """
    return _SECRET_ARGUMENT.sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", command)


STATUSES = ("ok", "error")


@dataclass(frozen=True)
class ProcessesResult:
    """One collection: totals and the top processes by CPU and by memory.

    ``cpu_interval_s`` is the time the CPU percentages are averaged over;
    ``cpu_unmeasured`` the processes first seen in this collection (no CPU yet);
    ``vanished`` the processes that exited while being read; ``access_limited`` the
    processes with at least one field psutil was not allowed to read;
    ``unparsed_lines`` the ps lines that were not process rows.
    """

    status: str
    source: str
    sampled_at: str | None = None
    process_count: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    top_cpu: tuple[ProcessInfo, ...] = ()
    top_memory: tuple[ProcessInfo, ...] = ()
    cpu_interval_s: float | None = None
    cpu_unmeasured: int = 0
    vanished: int = 0
    access_limited: int = 0
    unparsed_lines: int = 0
    reason: str | None = None

    def as_data(self) -> ProcessesData:
        """JSON-safe dict for a widget log's ``data``, kept under ``MAX_DATA_BYTES``.

        If very long (hostile) names would exceed the budget, commands are shortened,
        then dropped, then names shortened; numbers and totals are always kept.
        """
        data = asdict(self)
        data["top_cpu"] = [p.as_data() for p in self.top_cpu]
        data["top_memory"] = [p.as_data() for p in self.top_memory]
        data["status_counts"] = dict(self.status_counts)
        for key, limit in (("command", 64), ("command", 0), ("name", 64), ("name", 16)):
            if _json_size(data) <= MAX_DATA_BYTES:
                break
            for row in (*data["top_cpu"], *data["top_memory"]):
                row[key] = clean_text(row[key], limit) if limit and row[key] else None
        return cast("ProcessesData", data)


def _json_size(data: dict[str, Any]) -> int:
    try:
        return len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    except (TypeError, ValueError):
        return MAX_DATA_BYTES + 1


def _clamp_top(top_n: int) -> int:
    try:
        return max(1, min(int(top_n), MAX_TOP_N))
    except (TypeError, ValueError):
        return DEFAULT_TOP_N


def _cpu_key(p: ProcessInfo) -> tuple[float, int]:
    return (-(p.cpu_percent or 0.0), p.pid)


def _mem_key(p: ProcessInfo) -> tuple[float, int, int]:
    return (-(p.memory_percent or 0.0), -(p.rss_bytes or 0), p.pid)


def summarize(
    processes: Iterable[ProcessInfo],
    top_n: int = DEFAULT_TOP_N,
    *,
    source: str,
    sampled_at: str | None = None,
    **extra: Any,
) -> ProcessesResult:
    """Totals and top-N lists of ``processes``. Rows without a CPU (memory) value are
    left out of the CPU (memory) ranking; ties are broken by pid."""
    rows = list(processes)
    n = _clamp_top(top_n)
    counts: dict[str, int] = {}
    for p in rows:
        key = p.status or "unknown"
        counts[key] = counts.get(key, 0) + 1
    top_cpu = sorted((p for p in rows if p.cpu_percent is not None), key=_cpu_key)[:n]
    with_mem = (p for p in rows if p.memory_percent is not None or p.rss_bytes is not None)
    top_memory = sorted(with_mem, key=_mem_key)[:n]
    return ProcessesResult(
        status="ok",
        source=source,
        sampled_at=sampled_at,
        process_count=len(rows),
        status_counts=dict(sorted(counts.items())),
        top_cpu=tuple(top_cpu),
        top_memory=tuple(top_memory),
        **extra,
    )


# --------------------------------------------------------------------------- ps parsing

# Header -> field. ``COMMAND`` is the args column when last, ``comm`` when another follows
# (procps prints ``COMMAND`` for both ``ucomm`` and ``args``).
_HEADERS = {
    "PID": "pid",
    "PPID": "ppid",
    "USER": "user",
    "RUSER": "user",
    "UID": "uid",
    "RUID": "uid",
    "%CPU": "cpu",
    "PCPU": "cpu",
    "%MEM": "mem",
    "PMEM": "mem",
    "RSS": "rss",
    "RSZ": "rss",
    "VSZ": "vsz",
    "VSIZE": "vsz",
    "STAT": "stat",
    "S": "stat",
    "STATE": "stat",
    "ELAPSED": "etime",
    "STARTED": "started",
    "STIME": "started",
    "START": "started",
    "COMM": "comm",
    "UCOMM": "comm",
    "COMMAND": "args",
    "CMD": "args",
    "ARGS": "args",
}
_TEXT_FIELDS = ("comm", "args")

# First letter of ps STAT (BSD and procps) -> psutil status name.
_STAT_LETTERS = {
    "R": "running",
    "S": "sleeping",
    "I": "idle",
    "U": "disk-sleep",
    "D": "disk-sleep",
    "T": "stopped",
    "t": "tracing-stop",
    "Z": "zombie",
    "X": "dead",
    "W": "waking",
    "P": "parked",
}

_ETIME = re.compile(r"^(?:(?:(?P<d>\d+)-)?(?P<h>\d+):)?(?P<m>\d+):(?P<s>\d+)(?:\.\d+)?$")
_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES, 1)}
_WEEKDAYS = {d: i for i, d in enumerate(["mon", "tue", "wed", "thu", "fri", "sat", "sun"])}


@dataclass(frozen=True)
class ParsedPs:
    """Rows of one ``ps`` output; ``columns`` are the header's field names in order."""

    processes: tuple[ProcessInfo, ...] = ()
    columns: tuple[str, ...] = ()
    unparsed_lines: int = 0
    reason: str | None = None


def parse_etime(text: str) -> int | None:
    """``[[dd-]hh:]mm:ss`` -> seconds, else None."""
    m = _ETIME.match(text.strip())
    if not m:
        return None
    days, hours = int(m.group("d") or 0), int(m.group("h") or 0)
    return ((days * 24 + hours) * 60 + int(m.group("m"))) * 60 + int(m.group("s"))


def parse_started(text: str, now: datetime) -> datetime | None:
    """A ps start-time column in ``now``'s time zone, resolved relative to ``now``.

    BSD: ``12:10PM`` (today, or yesterday if later than now), ``Mon02AM`` (last such
    weekday), ``5Jan20`` (a date). procps: ``17:19``, ``Nov28``. Else None.
    """
    value = text.strip()
    if m := re.fullmatch(r"(\d{1,2}):(\d{2})(AM|PM)?", value, re.IGNORECASE):
        hour, minute = int(m.group(1)), int(m.group(2))
        if m.group(3):
            if not 1 <= hour <= 12:
                return None
            hour = hour % 12 + (12 if m.group(3).upper() == "PM" else 0)
        if hour > 23 or minute > 59:
            return None
        candidate = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        return candidate - timedelta(days=1) if candidate > now else candidate
    if m := re.fullmatch(r"([A-Za-z]{3})(\d{1,2})(AM|PM)", value):
        weekday = _WEEKDAYS.get(m.group(1).lower())
        hour = int(m.group(2))
        if weekday is None or not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if m.group(3).upper() == "PM" else 0)
        days_back = (now.weekday() - weekday) % 7
        candidate = (now - timedelta(days=days_back)).replace(hour=hour, minute=0, second=0, microsecond=0)
        return candidate - timedelta(days=7) if candidate > now else candidate
    if m := re.fullmatch(r"(\d{1,2})([A-Za-z]{3})(\d{2})", value):
        month = _MONTHS.get(m.group(2).lower())
        if month is None:
            return None
        try:
            return now.replace(year=2000 + int(m.group(3)), month=month, day=int(m.group(1)), hour=0, minute=0)
        except ValueError:
            return None
    if m := re.fullmatch(r"([A-Za-z]{3})(\d{1,2})", value):
        month = _MONTHS.get(m.group(1).lower())
        if month is None:
            return None
        try:
            candidate = now.replace(month=month, day=int(m.group(2)), hour=0, minute=0, second=0, microsecond=0)
            return candidate.replace(year=now.year - 1) if candidate > now else candidate
        except ValueError:
            return None
    return None


def _header_columns(line: str) -> list[tuple[str, int]]:
    """``(field, start offset)`` for each header word; unknown words map to ``?WORD``."""
    columns: list[tuple[str, int]] = []
    for m in re.finditer(r"\S+", line):
        columns.append((_HEADERS.get(m.group(0).upper(), "?" + m.group(0)), m.start()))
    # A non-last args-like column (procps ``COMMAND COMMAND``) is the short name.
    for i, (name, start) in enumerate(columns[:-1]):
        if name == "args":
            columns[i] = ("comm", start)
    return columns


def _is_header(line: str) -> bool:
    words = line.split()
    return "PID" in (w.upper() for w in words) and not any(_NUMBER.match(w) for w in words)


def _status(stat: str | None) -> str | None:
    if not stat:
        return None
    return _STAT_LETTERS.get(stat[0], "unknown")


def _parse_row(line: str, columns: list[tuple[str, int]], now: datetime | None) -> ProcessInfo | None:
    values: dict[str, str] = {}
    rest = line
    for i, (column, start) in enumerate(columns):
        rest = rest.lstrip()
        last = i == len(columns) - 1
        if last:
            values[column] = rest.rstrip("\r\n")
            break
        if column == "comm":
            width = columns[i + 1][1] - start
            values[column], rest = rest[:width].rstrip(), rest[width:]
            continue
        token, _, rest = rest.partition(" ")
        if not token:
            return None
        values[column] = token
    pid = _int_text(values.get("pid"))
    if pid is None:
        return None
    user = values.get("user")
    uid = _int_text(values.get("uid"))
    if uid is None and values.get("uid") and user is None:
        user = values["uid"]  # Linux ``ps -ef`` prints user names under UID
    comm = values.get("comm") or None
    args = values.get("args") or None
    name = derived = name_from_command(args)
    if comm:
        # comm may be cut (macOS: 16 characters, procps: 15); prefer the command's name when it extends it.
        base = comm.rsplit("/", 1)[-1] if comm.startswith("/") else comm
        if not (derived and args and (args.startswith(comm) or derived.startswith(base))):
            name = base
    start_time: str | None = None
    if now is not None:
        try:
            if (elapsed := parse_etime(values.get("etime", ""))) is not None:
                start_time = _dt_rfc3339(now - timedelta(seconds=elapsed))
            elif values.get("started") and (started := parse_started(values["started"], now)) is not None:
                start_time = _dt_rfc3339(started)
        except (OverflowError, ValueError):  # a misaligned or absurd column: no start time, no failure
            start_time = None
    rss = _int_text(values.get("rss"))
    vsz = _int_text(values.get("vsz"))
    return ProcessInfo(
        pid=pid,
        name=clean_text(name),
        ppid=_int_text(values.get("ppid")),
        user=clean_text(user),
        uid=uid,
        cpu_percent=_float_text(values.get("cpu")),
        memory_percent=_float_text(values.get("mem")),
        rss_bytes=None if rss is None else rss * 1024,
        vms_bytes=None if vsz is None else vsz * 1024,
        status=_status(values.get("stat")),
        start_time=start_time,
        command=clean_text(args or comm),
    )


def _int_text(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() and text.isascii() else None


def _float_text(text: str | None) -> float | None:
    if not text or not _NUMBER.match(text):
        return None
    return _finite(float(text), 2)


def parse_ps(text: str, *, now: datetime | None = None) -> ParsedPs:
    """Parse ``ps`` output with a header line. Never raises.

    ``now`` (aware; naive means local time) is when ps ran: with it, start times are
    derived from ``ELAPSED``/``STARTED``/``STIME``/``START``; without it they are None.
    Blank lines, repeated headers and rows that do not fit the header are skipped and
    counted in ``unparsed_lines``.
    """
    try:
        if not isinstance(text, str):
            return ParsedPs(reason="no ps output")
        if now is not None and now.tzinfo is None:
            now = now.astimezone()
        return _parse_ps(text, now)
    except Exception as exc:  # a parser bug must not kill the agent
        return ParsedPs(reason=f"unparsable ps output: {type(exc).__name__}")


def _parse_ps(text: str, now: datetime | None) -> ParsedPs:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _is_header(line)), None)
    if start is None:
        reason = "empty ps output" if not text.strip() else "no ps header line with PID"
        return ParsedPs(reason=reason, unparsed_lines=sum(1 for line in lines if line.strip()))
    columns = _header_columns(lines[start])
    rows: list[ProcessInfo] = []
    unparsed = sum(1 for line in lines[:start] if line.strip())
    for line in lines[start + 1 :]:
        if not line.strip() or _is_header(line):
            continue
        row = _parse_row(line.replace("\t", " "), columns, now)
        if row is None:
            unparsed += 1
        else:
            rows.append(row)
    return ParsedPs(processes=tuple(rows), columns=tuple(name for name, _ in columns), unparsed_lines=unparsed)


def collect_ps(
    run: Runner = run_command,
    top_n: int = DEFAULT_TOP_N,
    *,
    now: Callable[[], datetime] = lambda: datetime.now().astimezone(),
) -> ProcessesResult:
    """Run ``PS_COMMAND`` and summarise it. Never raises.

    ps's ``%CPU`` is its own average (a decaying one on macOS, the lifetime one on
    Linux), not a measurement over the collection interval.
    """
    taken = now()
    try:
        text = run(PS_COMMAND)
    except Exception as exc:
        return ProcessesResult(status="error", source="ps", reason=f"ps failed: {type(exc).__name__}")
    parsed = parse_ps(text, now=taken)
    if parsed.reason is not None:
        return ProcessesResult(status="error", source="ps", reason=parsed.reason, unparsed_lines=parsed.unparsed_lines)
    return summarize(
        parsed.processes, top_n, source="ps", sampled_at=_dt_rfc3339(taken), unparsed_lines=parsed.unparsed_lines
    )


# --------------------------------------------------------------------------- psutil sampling

PSUTIL_ATTRS = (
    "pid",
    "ppid",
    "name",
    "username",
    "uids",
    "status",
    "create_time",
    "memory_info",
    "memory_percent",
    "cmdline",
)
_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess)


class ProcessSampler:
    """Keeps one primed ``psutil.Process`` per live process between collections.

    Call ``sample()`` once per collection from a single thread. The first call primes
    every process and sleeps ``first_interval`` seconds before measuring; later calls
    measure CPU use since the previous call and do not sleep.
    """

    def __init__(
        self,
        *,
        first_interval: float = 0.5,
        process_iter: Callable[..., Iterable[Any]] = psutil.process_iter,
        process_factory: Callable[[int], Any] = psutil.Process,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.first_interval = first_interval
        self._process_iter = process_iter
        self._process_factory = process_factory
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._cache: dict[int, tuple[float | None, Any]] = {}
        self._last_sample: float | None = None

    def _cached(self, pid: int, create_time: float | None) -> tuple[Any, bool]:
        """``(process, primed_before)``; a new or pid-reused process is primed now."""
        entry = self._cache.get(pid)
        if entry is not None and entry[0] == create_time:
            return entry[1], True
        proc = self._process_factory(pid)
        if create_time is not None and proc.create_time() != create_time:
            raise psutil.NoSuchProcess(pid)  # the pid was reused between listing and now
        proc.cpu_percent(None)
        self._cache[pid] = (create_time, proc)
        return proc, False

    def _prime(self) -> None:
        for listed in self._process_iter(["pid", "create_time"]):
            info = getattr(listed, "info", None)
            if not isinstance(info, dict):
                continue
            pid = _nonneg_int(info.get("pid"))
            if pid is None:
                continue
            try:
                self._cached(pid, info.get("create_time"))
            except (psutil.Error, OSError, TypeError, ValueError):
                continue

    def sample(self, top_n: int = DEFAULT_TOP_N) -> ProcessesResult:
        """One collection. Never raises: a failure is a result with status ``error``."""
        try:
            if self._last_sample is None:
                self._prime()
                self._last_sample = self._clock()
                self._sleep(self.first_interval)
            return self._sample(top_n)
        except Exception as exc:  # psutil itself failing must not kill the agent
            return ProcessesResult(
                status="error", source="psutil", reason=f"psutil failed: {type(exc).__name__}: {exc}"[:MAX_TEXT]
            )

    def _sample(self, top_n: int) -> ProcessesResult:
        started = self._clock()
        interval = None if self._last_sample is None else round(started - self._last_sample, 3)
        rows: list[ProcessInfo] = []
        seen: set[int] = set()
        vanished = unmeasured = limited = 0
        for listed in self._process_iter(list(PSUTIL_ATTRS), ad_value=None):
            info = getattr(listed, "info", None)
            if not isinstance(info, dict):
                continue
            pid = _nonneg_int(info.get("pid"))
            if pid is None:
                continue
            try:
                proc, primed = self._cached(pid, info.get("create_time"))
                cpu = proc.cpu_percent(None) if primed else None
            except _GONE:
                vanished += 1
                continue
            except psutil.AccessDenied:
                cpu, primed = None, True
            except (psutil.Error, OSError):
                vanished += 1
                continue
            seen.add(pid)
            if not primed:
                unmeasured += 1
            row = _from_psutil(pid, info, cpu)
            if any(info.get(k) is None for k in ("username", "memory_info", "status", "create_time")):
                limited += 1
            rows.append(row)
        for pid in set(self._cache) - seen:
            del self._cache[pid]
        self._last_sample = started
        return summarize(
            rows,
            top_n,
            source="psutil",
            sampled_at=rfc3339(self._wall_clock()),
            cpu_interval_s=interval,
            cpu_unmeasured=unmeasured,
            vanished=vanished,
            access_limited=limited,
        )


def _from_psutil(pid: int, info: dict[str, Any], cpu: object) -> ProcessInfo:
    mem = info.get("memory_info")
    uids = info.get("uids")
    cmdline = info.get("cmdline")
    command = None
    if isinstance(cmdline, list | tuple) and cmdline:
        command = clean_text(str(cmdline[0]))  # the executable only: arguments can carry secrets
    return ProcessInfo(
        pid=pid,
        name=clean_text(info.get("name")),
        ppid=_nonneg_int(info.get("ppid")),
        user=clean_text(info.get("username")),
        uid=_nonneg_int(getattr(uids, "real", None)),
        cpu_percent=_finite(cpu, 1),
        memory_percent=_finite(info.get("memory_percent"), 2),
        rss_bytes=_nonneg_int(getattr(mem, "rss", None)),
        vms_bytes=_nonneg_int(getattr(mem, "vms", None)),
        status=clean_text(info.get("status"), 32),
        start_time=rfc3339(info.get("create_time")),
        command=command,
    )


_DEFAULT_SAMPLER: ProcessSampler | None = None


def collect_processes(top_n: int = DEFAULT_TOP_N, *, sampler: ProcessSampler | None = None) -> ProcessesResult:
    """psutil collection with a module-wide sampler (kept between calls); ``ps`` if psutil fails."""
    global _DEFAULT_SAMPLER
    if sampler is None:
        if _DEFAULT_SAMPLER is None:
            _DEFAULT_SAMPLER = ProcessSampler()
        sampler = _DEFAULT_SAMPLER
    result = sampler.sample(top_n)
    if result.status == "ok" or os.name != "posix":
        return result
    fallback = collect_ps(top_n=top_n)
    return fallback if fallback.status == "ok" else result
