"""Processes collector: ``parse_ps`` against every real capture in tests/fixtures/processes/
(copied byte for byte from /work/shared/fixtures/processes/, sources in that folder's SOURCES.md),
and psutil sampling of real processes on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psutil
import pytest

from atlas.agent.collectors import processes as pr
from atlas.agent.collectors.processes import (
    MAX_TEXT,
    PS_COMMAND,
    ProcessInfo,
    ProcessSampler,
    clean_text,
    collect_ps,
    name_from_command,
    parse_ps,
    summarize,
)
from atlas.contract.schema import LogEntry

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "processes"
ALL_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.txt"))
NOW = datetime(2020, 1, 6, 12, 0, 0, tzinfo=UTC)  # a Monday


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def parsed(name: str, now: datetime | None = NOW) -> dict[int, ProcessInfo]:
    result = parse_ps(fixture(name), now=now)
    assert result.reason is None
    assert result.unparsed_lines == 0
    return {p.pid: p for p in result.processes}


def validate(data: dict[str, Any]) -> None:
    LogEntry.model_validate(
        {"timestamp": "2026-01-01T00:00:00Z", "level": "INFO", "widget_type": "processes", "message": "", "data": data}
    )


# --------------------------------------------------------------------------- ps fixtures


def test_all_fixtures_are_covered() -> None:
    assert ALL_FIXTURES == [
        "macos_elcapitan10.11.6_ps_axu.txt",
        "macos_mojave10.14.6_ps_axu.txt",
        "macos_mojave10.14.6_ps_ef.txt",
        "macos_ps_pid_ppid_uid_pcpu_pmem_comm_args_truncated_comm.txt",
        "macos_snowleopard_ps_A_o_user_pid_pcpu_pmem_vsz_tty_etime_command.txt",
        "macos_sonoma_apple_silicon_ps_ef_excerpt.txt",
    ]


ROW_COUNTS = {
    "macos_elcapitan10.11.6_ps_axu.txt": 210,
    "macos_mojave10.14.6_ps_axu.txt": 377,
    "macos_mojave10.14.6_ps_ef.txt": 377,
    "macos_ps_pid_ppid_uid_pcpu_pmem_comm_args_truncated_comm.txt": 3,
    "macos_snowleopard_ps_A_o_user_pid_pcpu_pmem_vsz_tty_etime_command.txt": 66,
    "macos_sonoma_apple_silicon_ps_ef_excerpt.txt": 12,
}


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_every_fixture_parses_without_raising(name: str) -> None:
    text = fixture(name)
    for now in (None, NOW, datetime(2020, 1, 6, 12, 0)):  # none, aware, naive
        result = parse_ps(text, now=now)
        assert result.reason is None
        assert result.unparsed_lines == 0  # every non-header line is a process row
        assert len(result.processes) == ROW_COUNTS[name] == len(text.splitlines()) - 1
        assert len({p.pid for p in result.processes}) == len(result.processes)
        for p in result.processes:
            assert p.name
            assert p.command
            assert len(p.command) <= MAX_TEXT
        summary = summarize(result.processes, source="ps")
        data = summary.as_data()
        json.dumps(data, allow_nan=False)
        validate(data)
    # Truncated inputs (a capture cut mid-line) must not raise either.
    for cut in (1, 7, len(text) // 3, len(text) - 5):
        assert isinstance(parse_ps(text[:cut], now=NOW).processes, tuple)


def test_elcapitan_ps_axu() -> None:
    rows = parsed("macos_elcapitan10.11.6_ps_axu.txt")
    # First row, also the top CPU row; STAT ``U`` (uninterruptible wait) and a command with a space.
    assert rows[568] == ProcessInfo(
        pid=568,
        name="codesign",
        user="kelly",
        cpu_percent=47.8,
        memory_percent=1.0,
        rss_bytes=43136 * 1024,
        vms_bytes=2534864 * 1024,
        status="disk-sleep",
        start_time="2020-01-06T10:11:00Z",
        command="/usr/bin/codesign --verify --deep /Applications/Microsoft PowerPoint.app",
    )
    assert rows[519].status == "running"  # ``RN``
    # Spaces in the executable path.
    assert rows[477].name == "System Events"
    assert rows[477].command == "/System/Library/CoreServices/System Events.app/Contents/MacOS/System Events"
    assert rows[477].start_time == "2020-01-06T10:07:00Z"
    assert rows[493].name == "Image Capture Extension"
    summary = summarize(rows.values(), 3, source="ps")
    assert [p.pid for p in summary.top_cpu] == [568, 519, 514]
    assert [p.pid for p in summary.top_memory] == [419, 206, 179]
    assert summary.top_memory[0].name == "Backup and Sync"
    assert summary.top_memory[0].memory_percent == 4.1
    assert summary.process_count == 210


def test_mojave_ps_axu() -> None:
    rows = parsed("macos_mojave10.14.6_ps_axu.txt")
    first = rows[1046]  # first row and top CPU row; its command is longer than MAX_TEXT
    assert first.name == "com.docker.hyperkit"
    assert first.user == "kbrazil"
    assert (first.cpu_percent, first.memory_percent) == (3.7, 3.0)
    assert (first.rss_bytes, first.vms_bytes) == (498788 * 1024, 6595412 * 1024)
    assert first.status == "sleeping"
    assert first.start_time == "2020-01-05T12:10:00Z"  # 12:10PM is after NOW's 12:00 -> yesterday
    assert first.command is not None
    assert len(first.command) == MAX_TEXT
    assert first.command.startswith("com.docker.hyperkit -A -u -F vms/0/hyperkit.pid -c 4 -m 2048M")
    assert first.command.endswith("\u2026")
    # Spaces in the path: the helper is ``plugin_host``, the app is ``Sublime Text``.
    assert rows[633] == ProcessInfo(
        pid=633,
        name="plugin_host",
        user="kbrazil",
        cpu_percent=1.1,
        memory_percent=0.4,
        rss_bytes=61740 * 1024,
        vms_bytes=4421912 * 1024,
        status="sleeping",
        start_time="2020-01-05T12:10:00Z",
        command="/Applications/Sublime Text.app/Contents/MacOS/plugin_host 560 --auto-shell-env",
    )
    assert rows[560].name == "Sublime Text"
    assert rows[112].user == "_hidd"
    assert rows[112].status == "sleeping"  # ``Ss``
    summary = summarize(rows.values(), 2, source="ps")
    assert [(p.pid, p.cpu_percent) for p in summary.top_cpu] == [(1046, 3.7), (556, 3.5)]
    assert [(p.pid, p.name) for p in summary.top_memory] == [(8297, "Microsoft Outlook"), (1046, "com.docker.hyperkit")]


def test_mojave_ps_ef_numeric_uid_no_cpu() -> None:
    rows = parsed("macos_mojave10.14.6_ps_ef.txt")
    assert rows[1] == ProcessInfo(
        pid=1, name="launchd", ppid=0, uid=0, start_time="2020-01-05T12:09:00Z", command="/sbin/launchd"
    )
    assert rows[41].name == "UserEventAgent"
    assert rows[41].command == "/usr/libexec/UserEventAgent (System)"
    assert rows[633] == ProcessInfo(
        pid=633,
        name="plugin_host",
        ppid=560,
        uid=501,
        start_time="2020-01-05T12:10:00Z",
        command="/Applications/Sublime Text.app/Contents/MacOS/plugin_host 560 --auto-shell-env",
    )
    assert rows[37211].start_time == "2020-01-05T14:00:00Z"  # `` 2:00PM`` is after NOW's noon: yesterday
    assert rows[37211].name == "Python"
    assert rows[37211].command is not None
    assert "Sublime Text 3/Packages" in rows[37211].command
    # ``ps -ef`` has no %CPU/%MEM/RSS: no ranking rather than a made-up one.
    summary = summarize(rows.values(), source="ps")
    assert summary.top_cpu == ()
    assert summary.top_memory == ()
    assert summary.process_count == 377
    assert summary.status_counts == {"unknown": 377}


def test_ps_o_truncated_comm() -> None:
    rows = parsed("macos_ps_pid_ppid_uid_pcpu_pmem_comm_args_truncated_comm.txt", now=None)
    assert rows[1] == ProcessInfo(
        pid=1, name="launchd", ppid=0, uid=0, cpu_percent=0.0, memory_percent=0.1, command="/sbin/launchd"
    )
    # COMM is cut to 16 characters (``/System/Applicat``): the name comes from ARGS.
    assert rows[472] == ProcessInfo(
        pid=472,
        name="Messages",
        ppid=1,
        uid=502,
        cpu_percent=1.3,
        memory_percent=0.5,
        command="/System/Applications/Messages.app/Contents/MacOS/Messages",
    )
    assert rows[473].name == "IMTranscoderAgent"
    assert rows[473].command is not None
    assert rows[473].command.endswith("/IMTranscoderAgent.xpc/Contents/MacOS/IMTranscoderAgent")
    assert parse_ps(fixture("macos_ps_pid_ppid_uid_pcpu_pmem_comm_args_truncated_comm.txt")).columns == (
        "pid",
        "ppid",
        "uid",
        "cpu",
        "mem",
        "comm",
        "args",
    )
    summary = summarize(rows.values(), source="ps")
    assert [p.pid for p in summary.top_cpu] == [472, 1, 473]


def test_snowleopard_ps_o_etime_and_misaligned_users() -> None:
    rows = parsed("macos_snowleopard_ps_A_o_user_pid_pcpu_pmem_vsz_tty_etime_command.txt")
    # ELAPSED 07-21:28:18 before NOW.
    assert rows[1] == ProcessInfo(
        pid=1,
        name="launchd",
        user="root",
        cpu_percent=0.1,
        memory_percent=0.0,
        vms_bytes=2456844 * 1024,
        start_time=(NOW - timedelta(days=7, hours=21, minutes=28, seconds=18)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        command="/sbin/launchd",
    )
    assert rows[1].start_time == "2019-12-29T14:31:42Z"
    # Long user names push the row out of the header's alignment.
    assert rows[30].user == "_mdnsresponder"
    assert rows[30].name == "mDNSResponder"
    assert rows[77].user == "_windowserver"
    assert rows[77].memory_percent == 3.9
    assert rows[1214].user == "_securityagent"
    # Spaces in the path and in the executable name; top CPU row.
    assert rows[399] == ProcessInfo(
        pid=399,
        name="Adobe Photoshop CS3",
        user="admin",
        cpu_percent=0.3,
        memory_percent=2.8,
        vms_bytes=815420 * 1024,
        start_time="2019-12-29T16:08:51Z",
        command=(
            "/Applications/Adobe Photoshop CS3/Adobe Photoshop CS3.app/Contents/MacOS/Adobe Photoshop CS3 -psn_0_254014"
        ),
    )
    assert rows[959].name == "Microsoft Database Daemon"
    assert rows[1232].name == "userInit"  # ``(userInit)``: no arguments readable
    assert rows[1202].name == "bash"  # ``-bash``: login shell
    assert rows[1197].start_time == "2020-01-06T11:56:26Z"  # ELAPSED ``03:34``
    summary = summarize(rows.values(), 1, source="ps")
    assert [p.pid for p in summary.top_cpu] == [399]
    assert [p.pid for p in summary.top_memory] == [77]


def test_sonoma_ps_ef_weekday_stime() -> None:
    rows = parsed("macos_sonoma_apple_silicon_ps_ef_excerpt.txt")
    assert rows[1] == ProcessInfo(
        pid=1, name="launchd", ppid=0, uid=0, start_time="2020-01-06T02:00:00Z", command="/sbin/launchd"
    )  # ``Mon02AM`` with NOW a Monday noon
    assert rows[95].name == "UserEventAgent"
    assert rows[95].command == "/usr/libexec/UserEventAgent (System)"
    assert rows[102].command == "/usr/sbin/systemstats --daemon"
    assert rows[108].name == "IOMFB_bics_daemon"
    later = parse_ps(fixture("macos_sonoma_apple_silicon_ps_ef_excerpt.txt"), now=NOW + timedelta(days=3))
    assert later.processes[0].start_time == "2020-01-06T02:00:00Z"  # Thursday: last Monday
    assert parse_ps(fixture("macos_sonoma_apple_silicon_ps_ef_excerpt.txt")).processes[0].start_time is None


# --------------------------------------------------------------------------- ps edge cases


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n",
        "garbage",
        "PID\n",
        "  PID COMMAND\nabc def\n",
        "USER PID %CPU\nroot x 1.0\nroot 5 nan\n",
        "\x00\x01\x02 PID \udcff\n 1 \udcff\n",
        "PID PPID COMM ARGS\n1 0\n",
        "PID COMM ARGS\n 1 ",
    ],
)
def test_parse_ps_odd_input_never_raises(text: str) -> None:
    result = parse_ps(text, now=NOW)
    for p in result.processes:
        json.dumps(p.as_data(), allow_nan=False).encode("utf-8")
    validate(summarize(result.processes, source="ps").as_data())


def test_parse_ps_non_text() -> None:
    assert parse_ps(None).reason == "no ps output"  # type: ignore[arg-type]
    assert parse_ps("").reason == "empty ps output"
    assert parse_ps("hello\nworld\n").reason == "no ps header line with PID"


def test_parse_ps_bad_rows_are_counted() -> None:
    text = "  PID %CPU COMMAND\n    1  0.5 /sbin/launchd\n  foo  1.0 bar\n\n  PID %CPU COMMAND\n    2  nan x\n"
    result = parse_ps(text)
    assert [p.pid for p in result.processes] == [1, 2]
    assert result.processes[1].cpu_percent is None
    assert result.unparsed_lines == 1


def test_parse_ps_procps_duplicate_command_header() -> None:
    # What PS_COMMAND prints on Linux procps: ``ucomm`` and ``args`` are both headed COMMAND.
    text = (
        "  PID  PPID USER       UID %CPU %MEM   RSS    VSZ STAT     ELAPSED COMMAND         COMMAND\n"
        "    1     0 root         0  0.5  0.0 11768  42776 SLl     01:36:39 process_api     /process_api --addr 0\n"
        "    3     2 root         0  0.0  0.0     0      0 S       01:36:39 pool_workqueue_ [pool_workqueue_release]\n"
        "  900     1 averyverylongname 1000 99.0 12.5 2048 4096 R+ 5-00:00:01 my prog w sp    /opt/x/my prog -v\n"
    )
    rows = {p.pid: p for p in parse_ps(text, now=NOW).processes}
    assert rows[1].name == "process_api"
    assert rows[1].status == "sleeping"
    assert rows[1].start_time == "2020-01-06T10:23:21Z"
    assert rows[1].command == "/process_api --addr 0"
    assert rows[3].name == "pool_workqueue_release"  # comm cut to 15; the kernel thread's [name] is whole
    assert rows[900] == ProcessInfo(
        pid=900,
        name="my prog w sp",
        ppid=1,
        user="averyverylongname",
        uid=1000,
        cpu_percent=99.0,
        memory_percent=12.5,
        rss_bytes=2048 * 1024,
        vms_bytes=4096 * 1024,
        status="running",
        start_time="2020-01-01T11:59:59Z",
        command="/opt/x/my prog -v",
    )


def test_parse_ps_hostile_names() -> None:
    evil = "\x1b[31mred\x07\u202egnp.exe" + "A" * 5000
    text = f"  PID COMMAND\n    7 {evil}\n"
    (row,) = parse_ps(text).processes
    assert row.name is not None
    assert row.command is not None
    assert len(row.name) <= MAX_TEXT
    assert len(row.command) == MAX_TEXT
    assert not any(ord(c) < 32 or c == "\u202e" for c in row.command)
    assert row.command.startswith("\ufffd[31mred\ufffd\ufffdgnp.exe")


@pytest.mark.parametrize(
    ("started", "expected"),
    [
        ("11:05AM", "2020-01-06T11:05:00Z"),
        ("12:10PM", "2020-01-05T12:10:00Z"),
        ("12:10AM", "2020-01-06T00:10:00Z"),
        ("Sat10PM", "2020-01-04T22:00:00Z"),
        ("Mon02PM", "2019-12-30T14:00:00Z"),  # later today -> a week ago
        ("5Jan20", "2020-01-05T00:00:00Z"),
        ("17:19", "2020-01-05T17:19:00Z"),
        ("Nov28", "2019-11-28T00:00:00Z"),
        ("Jan02", "2020-01-02T00:00:00Z"),
        ("2019", None),
        ("13:00PM", None),
        ("Foo02AM", None),
        ("31Feb20", None),
    ],
)
def test_parse_started(started: str, expected: str | None) -> None:
    value = pr.parse_started(started, NOW)
    assert (None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")) == expected


def test_parse_started_uses_now_time_zone() -> None:
    paris = timezone(timedelta(hours=1))
    value = pr.parse_started("10:11AM", NOW.astimezone(paris))
    assert value is not None
    assert value.astimezone(UTC) == datetime(2020, 1, 6, 9, 11, tzinfo=UTC)


@pytest.mark.parametrize(
    ("etime", "seconds"),
    [("03:34", 214), ("20:58:56", 75536), ("07-21:28:18", 682_098), ("1-00:00:00", 86400), ("x", None), ("", None)],
)
def test_parse_etime(etime: str, seconds: int | None) -> None:
    assert pr.parse_etime(etime) == seconds


@pytest.mark.parametrize(
    ("command", "name"),
    [
        ("/usr/bin/codesign --verify --deep /Applications/Microsoft PowerPoint.app", "codesign"),
        ("/usr/libexec/launchproxy /usr/sbin/sshd -i", "launchproxy"),
        ("/bin/cp a/b c/d", "cp"),
        ("/Applications/Sublime Text.app/Contents/MacOS/plugin_host 560 --auto-shell-env", "plugin_host"),
        (
            "/Applications/Microsoft Office 2008/Microsoft Excel.app/Contents/MacOS/Microsoft Excel -psn_0",
            "Microsoft Excel",
        ),
        ("com.docker.hyperkit -A", "com.docker.hyperkit"),
        ("-zsh", "zsh"),
        ("(uname)", "uname"),
        ("[kworker/0:1]", "kworker/0:1"),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_name_from_command(command: str | None, name: str | None) -> None:
    assert name_from_command(command) == name


def test_clean_text() -> None:
    assert clean_text("ok") == "ok"
    assert clean_text(b"caf\xc3\xa9 \xff") == "caf\u00e9 \ufffd"
    assert clean_text("bad\udcffname") == "bad\ufffdname"  # surrogateescape'd byte
    assert clean_text("a\x00b\nc\u2066d") == "a\ufffdb\ufffdc\ufffdd"
    assert clean_text("x" * 1000) == "x" * (MAX_TEXT - 1) + "\u2026"
    assert clean_text(42) is None
    assert clean_text("\U0001f600" * 300, 10) == "\U0001f600" * 9 + "\u2026"


# --------------------------------------------------------------------------- ps runner


def test_collect_ps_with_fake_runner() -> None:
    calls: list[list[str]] = []

    def run(argv: Sequence[str]) -> str:
        calls.append(list(argv))
        return fixture("macos_mojave10.14.6_ps_axu.txt")

    result = collect_ps(run, top_n=3, now=lambda: NOW)
    assert calls == [list(PS_COMMAND)]
    assert result.status == "ok"
    assert result.source == "ps"
    assert result.sampled_at == "2020-01-06T12:00:00Z"
    assert result.process_count == 377
    assert [p.pid for p in result.top_cpu] == [1046, 556, 112]
    validate(result.as_data())


def test_collect_ps_failures() -> None:
    def boom(argv: Sequence[str]) -> str:
        raise subprocess.CalledProcessError(1, list(argv))

    failed = collect_ps(boom)
    assert (failed.status, failed.reason) == ("error", "ps failed: CalledProcessError")
    empty = collect_ps(lambda argv: "")
    assert (empty.status, empty.reason) == ("error", "empty ps output")


@pytest.mark.skipif(sys.platform not in ("linux", "darwin"), reason="needs a POSIX ps")
def test_collect_ps_real_system_ps() -> None:
    result = collect_ps(top_n=5)
    assert result.status == "ok", result.reason
    assert result.unparsed_lines == 0
    assert result.process_count >= 2
    everyone = parse_ps(pr.run_command(PS_COMMAND), now=datetime.now(UTC)).processes
    me = next(p for p in everyone if p.pid == os.getpid())
    assert me.ppid == os.getppid()
    assert me.uid == os.getuid()
    assert me.command is not None
    assert "pytest" in me.command or "python" in me.command
    assert me.start_time is not None
    validate(result.as_data())


# --------------------------------------------------------------------------- psutil sampling


@pytest.fixture
def busy_child() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        yield child
    finally:
        child.kill()
        child.wait(timeout=10)


def test_sampler_finds_busy_child(busy_child: subprocess.Popen[bytes]) -> None:
    sampler = ProcessSampler(first_interval=0.5)
    first = sampler.sample(top_n=5)
    assert first.status == "ok", first.reason
    assert first.cpu_interval_s is not None
    assert first.cpu_interval_s >= 0.45
    time.sleep(0.5)
    second = sampler.sample(top_n=5)
    assert second.status == "ok", second.reason
    assert second.source == "psutil"
    top = {p.pid: p for p in second.top_cpu}
    assert busy_child.pid in top, [(p.pid, p.name, p.cpu_percent) for p in second.top_cpu]
    busy = top[busy_child.pid]
    assert busy.cpu_percent is not None
    assert busy.cpu_percent > 20
    assert busy.ppid == os.getpid()
    assert busy.name is not None
    assert "python" in busy.name.lower()
    assert busy.command is not None
    assert busy.command == sys.executable  # the executable only: arguments can carry secrets
    assert busy.rss_bytes is not None
    assert busy.rss_bytes > 0
    assert busy.memory_percent is not None
    assert busy.status in ("running", "sleeping")
    expected_start = datetime.fromtimestamp(psutil.Process(busy_child.pid).create_time(), tz=UTC)
    assert busy.start_time == expected_start.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert busy.user == psutil.Process().username()
    assert second.process_count >= 3
    assert sum(second.status_counts.values()) == second.process_count
    assert len(second.top_memory) == 5
    assert [p.rss_bytes for p in second.top_memory] == sorted((p.rss_bytes for p in second.top_memory), reverse=True)
    validate(second.as_data())


def test_new_process_is_unmeasured_not_zero() -> None:
    sampler = ProcessSampler(first_interval=0.1)
    sampler.sample()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        result = sampler.sample(top_n=25)
        assert result.cpu_unmeasured >= 1
        assert child.pid not in {p.pid for p in result.top_cpu}  # None, not a fake 0.0
        assert sampler._cache[child.pid][1].pid == child.pid  # primed: measured from the next sample
    finally:
        child.kill()
        child.wait(timeout=10)
    after = sampler.sample()
    assert after.status == "ok"
    assert child.pid not in sampler._cache  # forgotten once gone


def test_sampling_survives_processes_exiting_mid_collection() -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            while not stop.is_set():
                kids = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(3)]
                kids.append(subprocess.Popen(["sleep", "5"]))
                time.sleep(0.01)
                for kid in kids:
                    kid.kill()
                for kid in kids:
                    kid.wait(timeout=10)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    sampler = ProcessSampler(first_interval=0.05)
    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        results = [sampler.sample(top_n=5) for _ in range(25)]
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors
    assert all(r.status == "ok" for r in results), [r.reason for r in results if r.status != "ok"]
    assert all(r.process_count > 0 for r in results)


class _Listed:
    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.pid = info["pid"]


def test_sampler_handles_exit_between_listing_and_reading() -> None:
    # A real process listed, then gone before its CPU time is read.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=10)
    me = psutil.Process()
    me_info = me.as_dict(list(pr.PSUTIL_ATTRS), ad_value=None)
    dead_info = dict(me_info, pid=dead.pid, create_time=1.0, name="gone")

    def process_iter(attrs: Sequence[str] | None = None, ad_value: object = None) -> Iterator[_Listed]:
        yield _Listed(dict(me_info))
        yield _Listed(dict(dead_info))

    sampler = ProcessSampler(first_interval=0.0, process_iter=process_iter)
    result = sampler.sample()
    assert result.status == "ok", result.reason
    assert result.process_count == 1
    assert result.vanished == 1
    assert result.top_cpu[0].pid == me.pid


def test_sampler_access_denied_and_zombie_from_psutil() -> None:
    class Proc:
        def __init__(self, pid: int) -> None:
            self.pid = pid

        def create_time(self) -> float:
            return 100.0

        def cpu_percent(self, interval: float | None = None) -> float:
            if self.pid == 2:
                raise psutil.AccessDenied(self.pid)
            if self.pid == 3:
                raise psutil.ZombieProcess(self.pid)
            return 12.5

    infos = [
        {"pid": 1, "name": "ok", "create_time": 100.0, "username": "root", "status": "running"},
        {"pid": 2, "name": "denied", "create_time": 100.0, "username": None, "status": None},
        {"pid": 3, "name": "zombie", "create_time": 100.0, "username": "root", "status": "zombie"},
        {"pid": -1},
        {"pid": "x"},
    ]

    def process_iter(attrs: Sequence[str] | None = None, ad_value: object = None) -> Iterator[_Listed]:
        for info in infos:
            listed = _Listed.__new__(_Listed)
            listed.info = dict(info)
            yield listed

    sampler = ProcessSampler(first_interval=0.0, process_iter=process_iter, process_factory=Proc)
    result = sampler.sample()
    assert result.status == "ok"
    assert result.vanished == 1
    assert result.process_count == 2
    assert [(p.pid, p.cpu_percent) for p in result.top_cpu] == [(1, 12.5)]
    assert result.access_limited == 2  # no memory_info for either, no username for pid 2
    assert result.top_memory == ()  # no memory readable at all
    validate(result.as_data())


def test_sampler_psutil_failure_is_an_error_result() -> None:
    def process_iter(*args: object, **kwargs: object) -> Iterator[_Listed]:
        raise OSError("proc not mounted")

    result = ProcessSampler(first_interval=0.0, process_iter=process_iter).sample()
    assert result.status == "error"
    assert result.reason == "psutil failed: OSError: proc not mounted"
    validate(result.as_data())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="zombie timing checked on Linux")
def test_sampler_reports_real_zombie() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.02)
        sampler = ProcessSampler(first_interval=0.05)
        sampler.sample()
        result = sampler.sample(top_n=25)
        assert result.status == "ok"
        assert result.status_counts.get("zombie", 0) >= 1
    finally:
        child.wait(timeout=10)


def test_hostile_process_name_is_bounded(tmp_path: Path) -> None:
    # A real process whose argv[0] has control characters, a bidi override and 5000 characters.
    evil = "\x1b[2J\u202eevil\x07" + "B" * 5000
    # It spins, so it ranks among the top CPU users however many other processes the machine runs.
    child = subprocess.Popen([evil, "-c", "while :; do :; done"], executable="/bin/sh")
    try:
        sampler = ProcessSampler(first_interval=0.05)
        sampler.sample()
        time.sleep(0.5)
        result = sampler.sample(top_n=25)
        rows = [p for p in (*result.top_cpu, *result.top_memory) if p.pid == child.pid]
        assert rows, "child not in the top lists"
        for row in rows:
            assert row.command is not None
            assert len(row.command) == MAX_TEXT
            assert "\x1b" not in row.command
            assert "\u202e" not in row.command
            assert "\ufffd[2J\ufffdevil\ufffd" in row.command
        validate(result.as_data())
    finally:
        child.kill()
        child.wait(timeout=10)


def test_as_data_stays_under_the_contract_size() -> None:
    fat = "\U0001f600" * MAX_TEXT
    rows = [
        ProcessInfo(pid=i, name=clean_text(fat), cpu_percent=float(i), rss_bytes=i, command=clean_text(fat))
        for i in range(1, 60)
    ]
    result = summarize(rows, 25, source="psutil")
    assert len(result.top_cpu) == len(result.top_memory) == 25
    data = result.as_data()
    size = len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    assert size <= pr.MAX_DATA_BYTES
    # Commands went first, then names were shortened; numbers are all kept.
    assert all(row["command"] is None for row in data["top_cpu"])
    assert all(row["name"] == clean_text(fat, 64) for row in data["top_cpu"])
    assert [row["cpu_percent"] for row in data["top_cpu"]] == [float(i) for i in range(59, 34, -1)]
    # A normal result is left alone.
    small = summarize(rows[:3], source="psutil").as_data()
    assert small["top_cpu"][0]["command"] == clean_text(fat)
    validate(data)


def test_top_n_is_clamped() -> None:
    rows = [ProcessInfo(pid=i, cpu_percent=float(i), memory_percent=1.0) for i in range(1, 40)]
    assert len(summarize(rows, 0, source="ps").top_cpu) == 1
    assert len(summarize(rows, 1000, source="ps").top_cpu) == pr.MAX_TOP_N
    assert len(summarize(rows, "x", source="ps").top_cpu) == pr.DEFAULT_TOP_N  # type: ignore[arg-type]
    # Ties are broken by pid; memory ties by rss.
    tied = [ProcessInfo(pid=p, cpu_percent=1.0, memory_percent=1.0, rss_bytes=p) for p in (5, 3, 4)]
    summary = summarize(tied, source="ps")
    assert [p.pid for p in summary.top_cpu] == [3, 4, 5]
    assert [p.pid for p in summary.top_memory] == [5, 4, 3]


def test_collect_processes_uses_a_persistent_sampler() -> None:
    sampler = ProcessSampler(first_interval=0.05)
    first = pr.collect_processes(3, sampler=sampler)
    second = pr.collect_processes(3, sampler=sampler)
    assert first.status == second.status == "ok"
    assert second.cpu_interval_s is not None
    assert first.cpu_interval_s is not None


def test_collect_processes_falls_back_to_ps(monkeypatch: pytest.MonkeyPatch) -> None:
    def process_iter(*args: object, **kwargs: object) -> Iterator[_Listed]:
        raise OSError("no psutil here")

    monkeypatch.setattr(pr, "collect_ps", lambda top_n: summarize([ProcessInfo(pid=1)], top_n, source="ps"))
    result = pr.collect_processes(3, sampler=ProcessSampler(first_interval=0.0, process_iter=process_iter))
    assert result.source == "ps"
    assert result.status == "ok"


def test_secrets_in_arguments_never_leave_the_mac():
    """A process started with the agent's keys as arguments must not leak them into telemetry."""
    import subprocess
    import sys

    from atlas.agent.collectors.processes import ProcessInfo, ProcessSampler, redact_arguments

    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "x = bytearray(300 * 2**20); import time; time.sleep(30)",
            "--api-key",
            "SECRETAPIKEY123",
            "--encryption-key=SECRETENCKEY456",
        ]
    )
    try:
        time.sleep(1.0)
        text = json.dumps(ProcessSampler(first_interval=0.2).sample().as_data())
        assert str(child.pid) in text  # the process is there (it is the top memory user)
        assert "SECRETAPIKEY123" not in text
        assert "SECRETENCKEY456" not in text
    finally:
        child.kill()
        child.wait()
    row = ProcessInfo(pid=1, command="mysql -u root --password=hunter2 --auth-token abc db")
    assert row.as_data()["command"] == "mysql -u root --password=[redacted] --auth-token [redacted] db"
    assert redact_arguments("/usr/bin/vim notes.txt") == "/usr/bin/vim notes.txt"


def test_absurd_elapsed_time_does_not_fail_the_parse():
    """A ps row with an elapsed time past datetime's range (OverflowError) does not fail the parse."""
    header = "  PID  PPID USER      UID %CPU %MEM   RSS    VSZ STAT     ELAPSED UCOMM ARGS\n"
    # HAND-WRITTEN: the layout of PS_COMMAND's header, with an impossible 99999999-day elapsed time.
    row = "    7     1 root        0  0.0  0.0  1000   2000 S   99999999-00:00:00 sleep sleep 30\n"
    parsed = parse_ps(header + row, now=datetime.now(UTC))
    assert [p.pid for p in parsed.processes] == [7]
    assert parsed.processes[0].start_time is None
