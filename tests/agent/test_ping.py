"""Ping collector: parser against every real captured output in tests/fixtures/ping/
(copied byte for byte from /work/shared/fixtures/ping/, sources in that folder's SOURCES.md),
the runner against the real system ``ping``, and the default-target discovery."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from atlas.agent.collectors.ping import (
    PUBLIC_RESOLVER,
    STATUSES,
    PingResult,
    build_command,
    default_targets,
    parse_default_gateway,
    parse_ping,
    ping,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ping"
ALL_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.txt"))


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def R(**kwargs: object) -> PingResult:  # short constructor for the table below
    return PingResult(target="t", **kwargs)  # type: ignore[arg-type]


# Every fixture with its expected values written out. ``target`` is what the caller passed ("t").
EXPECTED: dict[str, PingResult] = {
    # macOS
    "macos_mojave_success_hostname.txt": R(
        status="ok", address="151.101.1.67", sent=3, received=3, duplicates=0, loss_pct=0.0,
        rtt_min_ms=28.042, rtt_avg_ms=34.670, rtt_max_ms=41.182, rtt_stddev_ms=5.365,
    ),
    "macos_mojave_success_loopback.txt": R(
        status="ok", address="127.0.0.1", sent=3, received=3, duplicates=0, loss_pct=0.0,
        rtt_min_ms=0.050, rtt_avg_ms=0.066, rtt_max_ms=0.095, rtt_stddev_ms=0.021,
    ),
    "macos_mojave_100pct_loss_host_unreachable.txt": R(
        status="unreachable", address="192.168.1.220", sent=8, received=0, duplicates=0, loss_pct=100.0,
    ),
    # macOS does not mark duplicates with (DUP!); only the summary counts them.
    "macos_mojave_broadcast_duplicates.txt": R(
        status="ok", address="192.168.1.255", sent=2, received=2, duplicates=13, loss_pct=0.0,
        rtt_min_ms=0.235, rtt_avg_ms=226.389, rtt_max_ms=1084.262, rtt_stddev_ms=344.729,
    ),
    "macos_permission_denied.txt": R(
        status="error", address="1.1.1.1", reason="permission denied (are you root?)",
    ),
    "macos_success_c5_macbookpro.txt": R(
        status="ok", address="142.250.186.131", sent=5, received=5, duplicates=0, loss_pct=0.0,
        rtt_min_ms=5.029, rtt_avg_ms=63.442, rtt_max_ms=286.262, rtt_stddev_ms=111.483,
    ),
    "macos_ghactions_success_localhost_c1.txt": R(
        status="ok", address="127.0.0.1", sent=1, received=1, duplicates=0, loss_pct=0.0,
        rtt_min_ms=0.157, rtt_avg_ms=0.157, rtt_max_ms=0.157, rtt_stddev_ms=0.0,
    ),
    "macos_unknown_host.txt": R(
        status="unknown_host", reason="cannot resolve Mac-1752083390647.local: Unknown host",
    ),
    "macos_partial_loss_20pct_request_timeout.txt": R(
        status="partial_loss", address="8.8.8.8", sent=10, received=8, duplicates=0, loss_pct=20.0,
        rtt_min_ms=10.126, rtt_avg_ms=71.642, rtt_max_ms=485.743, rtt_stddev_ms=156.525,
    ),
    # Linux iputils
    "linux_ubuntu18.04_success_hostname.txt": R(
        status="ok", address="151.101.189.67", sent=20, received=20, duplicates=0, loss_pct=0.0,
        rtt_min_ms=24.330, rtt_avg_ms=30.420, rtt_max_ms=35.259, rtt_stddev_ms=3.840,
    ),
    "linux_success_localhost.txt": R(
        status="ok", address="127.0.0.1", sent=4, received=4, duplicates=0, loss_pct=0.0,
        rtt_min_ms=0.022, rtt_avg_ms=0.027, rtt_max_ms=0.030, rtt_stddev_ms=0.003,
    ),
    "linux_partial_loss_42pct_sendmsg_unreachable.txt": R(
        status="partial_loss", address="10.48.249.8", sent=19, received=11, duplicates=0, loss_pct=42.0,
        rtt_min_ms=0.646, rtt_avg_ms=73.819, rtt_max_ms=797.744, rtt_stddev_ms=228.927,
        reason="sendmsg: Network is unreachable",
    ),
    "linux_partial_loss_20pct_ctrl_c.txt": R(
        status="partial_loss", address="39.156.66.14", sent=5, received=4, duplicates=0, loss_pct=20.0,
        rtt_min_ms=94.154, rtt_avg_ms=201.788, rtt_max_ms=302.777, rtt_stddev_ms=85.718,
    ),
    "linux_fedora_dup_loss_ipg_ewma.txt": R(
        status="partial_loss", address="192.168.0.1", sent=1688, received=1553, duplicates=1, loss_pct=7.0,
        rtt_min_ms=0.282, rtt_avg_ms=0.642, rtt_max_ms=11.699, rtt_stddev_ms=0.699,
    ),
    "linux_centos7.7_broadcast_duplicates.txt": R(
        status="ok", address="192.168.1.255", sent=2, received=2, duplicates=19, loss_pct=0.0,
        rtt_min_ms=0.586, rtt_avg_ms=504.260, rtt_max_ms=1276.448, rtt_stddev_ms=417.208,
    ),
    "linux_ubuntu22.04_100pct_loss_dest_unreachable.txt": R(
        status="unreachable", address="10.0.3.22", sent=3, received=0, duplicates=0, errors=3, loss_pct=100.0,
    ),
    "linux_100pct_loss_host_unreachable_errors.txt": R(
        status="unreachable", address="10.48.249.150", sent=5, received=0, duplicates=0, errors=3, loss_pct=100.0,
    ),
    "linux_raspberrypi_100pct_loss_no_answer_O.txt": R(
        status="unreachable", address="192.168.120.164", sent=5, received=0, duplicates=0, loss_pct=100.0,
    ),
    "linux_unknown_host_name_or_service_not_known.txt": R(
        status="unknown_host", reason="repo.we.com: Name or service not known",
    ),
    "linux_unknown_host_temporary_failure.txt": R(
        status="unknown_host", reason="www.baidu.com: Temporary failure in name resolution",
    ),
    # BusyBox: round-trip min/avg/max without a stddev.
    "linux_alpine3.13_busybox_success.txt": R(
        status="ok", address="142.250.125.102", sent=4, received=4, duplicates=0, loss_pct=0.0,
        rtt_min_ms=1.281, rtt_avg_ms=1.345, rtt_max_ms=1.408, rtt_stddev_ms=None,
    ),
}  # fmt: skip


def test_every_fixture_has_expected_values() -> None:
    assert sorted(EXPECTED) == ALL_FIXTURES


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_parses_to_expected(name: str) -> None:
    assert parse_ping(fixture(name), "t") == EXPECTED[name]


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_fixture_parses_without_raising_and_is_json_safe(name: str) -> None:
    result = parse_ping(fixture(name), "t")
    assert result.status in STATUSES
    data = result.as_data()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert set(data) >= {"target", "status", "address", "sent", "received", "duplicates", "errors", "loss_pct"}


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_every_truncation_of_a_fixture_parses(name: str) -> None:
    """Output cut at any line (killed ping, partial read) is still a result, never an exception."""
    lines = fixture(name).splitlines(keepends=True)
    for end in range(len(lines) + 1):
        assert parse_ping("".join(lines[:end]), "t").status in STATUSES


def test_stats_without_rtt_line_have_no_rtt() -> None:
    result = parse_ping(fixture("macos_mojave_100pct_loss_host_unreachable.txt"), "192.168.1.220")
    assert result.target == "192.168.1.220"
    assert (result.rtt_min_ms, result.rtt_avg_ms, result.rtt_max_ms, result.rtt_stddev_ms) == (None,) * 4


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty ping output"),  # hand-written: empty output
        ("   \n\n", "empty ping output"),  # hand-written: whitespace only
        ("garbage \x00\ufffd not ping output\n", "no statistics in ping output"),  # hand-written garbage
        ("PING\n", "no statistics in ping output"),  # hand-written: header cut short
    ],
)
def test_odd_input_is_an_error_result(text: str, reason: str) -> None:
    assert parse_ping(text, "t") == R(status="error", reason=reason)


def test_non_string_input_does_not_raise() -> None:
    assert parse_ping(None, "t").status == "error"  # type: ignore[arg-type]
    assert parse_ping(b"bytes", "t").status == "error"  # type: ignore[arg-type]


# --- runner with a fake ``run`` ---------------------------------------------


class FakeRun:
    """Records argv and returns a real captured output (or raises)."""

    def __init__(self, output: str = "", exc: BaseException | None = None) -> None:
        self.output, self.exc = output, exc
        self.calls: list[tuple[list[str], float]] = []

    def __call__(self, argv: Sequence[str], timeout_s: float) -> str:
        self.calls.append((list(argv), timeout_s))
        if self.exc is not None:
            raise self.exc
        return self.output


def test_build_command_macos_and_linux() -> None:
    assert build_command("1.1.1.1", 5, 10, "darwin") == ["ping", "-n", "-c", "5", "-t", "10", "1.1.1.1"]
    assert build_command("1.1.1.1", 3, 2.5, "linux") == ["ping", "-n", "-c", "3", "-w", "3", "1.1.1.1"]
    assert build_command("h", 0, 0, "linux") == ["ping", "-n", "-c", "1", "-w", "1", "h"]


def test_ping_runs_command_with_python_timeout_and_parses() -> None:
    run = FakeRun(fixture("macos_success_c5_macbookpro.txt"))
    result = ping("google.de", count=5, timeout_s=10, run=run, platform="darwin")
    assert result == PingResult(
        target="google.de", status="ok", address="142.250.186.131", sent=5, received=5, duplicates=0,
        loss_pct=0.0, rtt_min_ms=5.029, rtt_avg_ms=63.442, rtt_max_ms=286.262, rtt_stddev_ms=111.483,
    )  # fmt: skip
    [(argv, timeout_s)] = run.calls
    assert argv == ["ping", "-n", "-c", "5", "-t", "10", "google.de"]
    assert timeout_s > 10  # the Python-side timeout leaves ping time to print its summary


def test_ping_unknown_host_is_a_result() -> None:
    run = FakeRun(fixture("linux_unknown_host_name_or_service_not_known.txt"))
    assert ping("repo.we.com", run=run, platform="linux").status == "unknown_host"


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (FileNotFoundError(2, "No such file or directory", "ping"), "ping command not found"),
        (subprocess.TimeoutExpired(["ping"], 15.0), "ping timed out after 15 s"),
        (PermissionError(13, "Permission denied"), "could not run ping: [Errno 13] Permission denied"),
    ],
)
def test_ping_failures_become_error_status(exc: BaseException, reason: str) -> None:
    result = ping("1.1.1.1", timeout_s=10, run=FakeRun(exc=exc), platform="linux")
    assert result == PingResult(target="1.1.1.1", status="error", reason=reason)


@pytest.mark.parametrize("target", ["", "-f", "--help", "1.1.1.1 -f", "a\nb"])
def test_ping_rejects_targets_that_are_options_or_empty(target: str) -> None:
    run = FakeRun("should not run")
    assert ping(target, run=run, platform="linux").status == "error"
    assert run.calls == []


# --- runner against the real system ping ------------------------------------


def require_system_ping() -> None:
    """Fail loudly (no skip, nothing installed) when the machine has no ``ping``."""
    if shutil.which("ping") is None:
        pytest.fail(
            "the system `ping` binary is not on PATH on this machine, so the real-ping test cannot run. "
            "This test installs nothing; install ping on the host (Debian/Ubuntu: iputils-ping) and re-run."
        )


def test_real_ping_loopback() -> None:
    require_system_ping()
    result = ping("127.0.0.1", count=2, timeout_s=5)
    assert result.status == "ok", result
    assert result.sent == 2
    assert result.received == result.sent
    assert result.loss_pct == 0.0
    assert result.address == "127.0.0.1"
    assert result.rtt_avg_ms is not None


def test_real_ping_unresolvable_name() -> None:
    require_system_ping()
    result = ping("no-such-host.invalid", count=1, timeout_s=5)  # .invalid never resolves (RFC 6761)
    assert result.status == "unknown_host", result


# --- default targets ----------------------------------------------------------

# Real output of `ip route show default` on the development machine this was written on (trailing space kept).
IP_ROUTE_THIS_MACHINE = "default via 192.0.2.1 dev eth0 \n"
# Hand-written in the `route -n get default` layout: no attributed real macOS capture is in the shared fixtures.
ROUTE_GET_MACOS_HANDWRITTEN = "   route to: default\ndestination: default\n    gateway: 192.168.1.1\n  interface: en0\n"


def test_parse_default_gateway() -> None:
    assert parse_default_gateway(IP_ROUTE_THIS_MACHINE, "linux") == "192.0.2.1"
    assert parse_default_gateway(ROUTE_GET_MACOS_HANDWRITTEN, "darwin") == "192.168.1.1"
    assert parse_default_gateway("", "linux") is None
    assert parse_default_gateway("", "darwin") is None
    assert parse_default_gateway("    gateway: link#5\n", "darwin") is None  # hand-written: not an IP
    assert parse_default_gateway("    gateway: fe80::1%en0\n", "darwin") == "fe80::1"  # hand-written: IPv6 zone


def test_default_targets_linux_uses_ip_route() -> None:
    run = FakeRun(IP_ROUTE_THIS_MACHINE)
    targets = default_targets("https://fleet.example.com:8443/api/v1", run=run, platform="linux")
    assert targets == ["192.0.2.1", "1.1.1.1", "fleet.example.com"]
    assert run.calls[0][0] == ["ip", "route", "show", "default"]


def test_default_targets_macos_uses_route_get() -> None:
    run = FakeRun(ROUTE_GET_MACOS_HANDWRITTEN)
    assert default_targets("http://[2001:db8::1]:8080", run=run, platform="darwin") == [
        "192.168.1.1",
        "1.1.1.1",
        "2001:db8::1",
    ]
    assert run.calls[0][0] == ["route", "-n", "get", "default"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (None, ["192.0.2.1", "1.1.1.1"]),
        ("", ["192.0.2.1", "1.1.1.1"]),
        ("fleet.example.com:8443", ["192.0.2.1", "1.1.1.1", "fleet.example.com"]),
        ("https://1.1.1.1/", ["192.0.2.1", "1.1.1.1"]),
        ("https://192.0.2.1", ["192.0.2.1", "1.1.1.1"]),
        ("https://FLEET.Example.com", ["192.0.2.1", "1.1.1.1", "fleet.example.com"]),
        ("http://[broken", ["192.0.2.1", "1.1.1.1"]),
    ],
)
def test_default_targets_fleet_host_and_dedup(url: str | None, expected: list[str]) -> None:
    assert default_targets(url, run=FakeRun(IP_ROUTE_THIS_MACHINE), platform="linux") == expected


@pytest.mark.parametrize(
    "run",
    [
        FakeRun(""),  # no default route: `ip route show default` prints nothing
        FakeRun(exc=FileNotFoundError(2, "No such file or directory", "ip")),
        FakeRun(exc=subprocess.TimeoutExpired(["ip"], 5.0)),
    ],
)
def test_default_targets_skip_unknown_gateway(run: FakeRun) -> None:
    assert default_targets("https://fleet.example.com", run=run, platform="linux") == [
        "1.1.1.1",
        "fleet.example.com",
    ]


def test_default_targets_real_route_command() -> None:
    """Runs the real route command of this OS; with no default route (or no `ip`) the gateway is skipped."""
    targets = default_targets(None)
    assert targets[-1] == PUBLIC_RESOLVER
    assert len(targets) in (1, 2)
    if len(targets) == 2:
        ipaddress.ip_address(targets[0])
    if sys.platform.startswith("linux") and shutil.which("ip"):
        out = subprocess.run(["ip", "route", "show", "default"], capture_output=True, text=True, check=False).stdout
        assert targets[0] == (parse_default_gateway(out, "linux") or PUBLIC_RESOLVER)
