"""Ingest's rate limits, per client address and per API key, against real ingest servers.

Each test starts its own ``atlas-server ingest`` with small limits. Clients
appear at other addresses through X-Forwarded-For, which the test config
trusts from 127.0.0.1 (server.forwarded_allow_ips), exactly as from the proxy
in production; other tests show the header is ignored from other peers, and
by default.
"""

from __future__ import annotations

import random
import re
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from atlas.agent.sender import Sender
from atlas.agent.store import LocalStore
from atlas.contract import Keyring
from atlas.core.config import ConfigError, settings_from_mapping
from atlas.core.ratelimit import RateLimiter, client_key, retry_after

from .. import batches
from ..fix_processes import BIN, IngestServer, ServerProcess, service_env
from ..fix_services import API_KEY

WIDGET_LOGS = "/api/fleet/widget-logs"


def with_limits(server_config: dict[str, Any], **server: Any) -> dict[str, Any]:
    config = {name: dict(values) for name, values in server_config.items()}
    config["server"].update(server)
    return config


def post(server: ServerProcess, keys: dict[str, str], address: str | None = None, api_key: str | None = API_KEY):
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if address:
        headers["X-Forwarded-For"] = address
    body = batches.sealed(batches.content(2), keys["current"])
    return httpx.post(f"{server.url}{WIDGET_LOGS}", json=body, headers=headers, timeout=10)


def rate_limited_count(server: ServerProcess) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "atlas_batches_rejected_total" and sample.labels.get("reason") == "rate_limited":
                return sample.value
    raise AssertionError("no atlas_batches_rejected_total{reason=rate_limited} series")


def assert_429(answer: httpx.Response, whose: str) -> int:
    """A 429 with an integer Retry-After and a JSON reason naming the limit; returns the Retry-After."""
    assert answer.status_code == 429, answer.text
    assert answer.headers["retry-after"].isdigit()
    seconds = int(answer.headers["retry-after"])
    assert seconds >= 1
    assert answer.json() == {"detail": f"rate limit exceeded for {whose}; retry after {seconds} s", "field": None}
    return seconds


def raw_headers_only(server: ServerProcess, headers: dict[str, str], *, timeout: float = 5) -> bytes:
    """Send a POST's headers announcing a 1 MB body, send no body, and return what the server answers."""
    host, port = "127.0.0.1", int(server.url.rsplit(":", 1)[1])
    lines = [f"POST {WIDGET_LOGS} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()] + ["Content-Length: 1000000", "", ""]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall("\r\n".join(lines).encode())
        return sock.recv(65536)  # a server waiting for the body would time out here


# --- the limiter itself (a fake clock; no I/O) ----------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_burst_refill_and_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(2, 3, clock=clock)
    assert [limiter.hit("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.hit("a") == pytest.approx(0.5)  # 2 a second: a token is back in half a second
    assert limiter.hit("b") == 0.0  # keys are independent
    clock.now += 0.5
    assert limiter.hit("a") == 0.0
    assert limiter.hit("a") == pytest.approx(0.5)
    clock.now += 60
    assert [limiter.hit("a") for _ in range(4)][-1] > 0  # refilled to the burst, never above it
    limiter.refund("a")
    assert limiter.hit("a") == 0.0
    assert retry_after(0.01) == "1"
    assert retry_after(1.0) == "1"
    assert retry_after(1.2) == "2"
    off = RateLimiter(0, 1)
    assert all(off.hit("x") == 0.0 for _ in range(100))
    assert len(off) == 0


def test_memory_is_bounded_and_idle_buckets_are_forgotten() -> None:
    clock = Clock()
    limiter = RateLimiter(10, 5, max_keys=1000, clock=clock)
    for i in range(50_000):  # a flood from 50,000 addresses in the same instant
        limiter.hit(f"10.0.{i >> 8 & 255}.{i & 255}-{i}")
    assert len(limiter) == 1000
    assert limiter.evicted == 49_000
    clock.now += 1  # every bucket has refilled: each new key drops two idle ones
    for i in range(400):
        limiter.hit(f"new-{i}")
    assert len(limiter) == 1000 - 400
    busy = RateLimiter(1, 2, max_keys=1000, clock=clock)
    for _ in range(3):
        busy.hit("busy")
    for i in range(10):
        busy.hit(f"other-{i}")
    assert busy.hit("busy") > 0  # a bucket still refilling is not forgotten as idle


def test_exempt_networks_and_ipv6_prefixes() -> None:
    limiter = RateLimiter(1, 1, exempt=["127.0.0.0/8", "::1/128"])
    for host in ("127.0.0.1", "127.9.9.9", "::1"):
        assert all(limiter.hit(client_key(host)) == 0.0 for _ in range(5)), host
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key(None) == "unknown"
    limiter.hit(client_key("2001:db8:1:2:aaaa::1"))
    assert limiter.hit(client_key("2001:db8:1:2:bbbb::2")) > 0  # one /64, one bucket


def test_an_exempt_address_from_x_forwarded_for_is_limited() -> None:
    limiter = RateLimiter(1, 2, exempt=["127.0.0.0/8"])
    assert all(limiter.hit("127.0.0.1") == 0.0 for _ in range(5))
    assert [limiter.hit("127.0.0.1", forwarded=True) > 0 for _ in range(3)] == [False, False, True]
    assert limiter.hit("127.0.0.1") == 0.0  # the proxy's own requests stay exempt
    assert limiter.hit("198.51.100.1", forwarded=True) == 0.0


def test_a_check_costs_about_a_microsecond() -> None:
    """Generous bound (the machine is shared): a per-request scan of the buckets would blow it."""
    limiter = RateLimiter(100, 1000, max_keys=100_000)
    keys = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(100_000)]
    for key in keys:
        limiter.hit(key)
    started = time.perf_counter()
    for i in range(100_000):
        limiter.hit(keys[i])
    per_hit = (time.perf_counter() - started) / 100_000
    assert per_hit < 25e-6, f"{per_hit * 1e6:.1f} µs per check"


def test_settings_defaults_and_validation() -> None:
    base = {"server": {"api_key": API_KEY}}
    settings = settings_from_mapping(base, env={})
    assert (settings.rate_limit_per_key, settings.rate_limit_per_key_burst) == (2000, 20000)
    assert (settings.rate_limit_per_address, settings.rate_limit_per_address_burst) == (100, 1000)
    assert settings.rate_limit_exempt == ("127.0.0.0/8", "::1/128")
    assert (settings.login_attempts_per_minute, settings.lockout_failures) == (10, 5)
    assert settings.lockout_duration.total_seconds() == 900
    for server, message in (
        ({"rate_limit_per_address": -1}, "server.rate_limit_per_address: must be an integer >= 0"),
        ({"rate_limit_per_key_burst": 0}, "server.rate_limit_per_key_burst: must be an integer >= 1"),
        ({"rate_limit_exempt": ["10.0.0.0/33"]}, "server.rate_limit_exempt: '10.0.0.0/33' is not an address"),
        ({"rate_limit_exempt": "not-an-address"}, "server.rate_limit_exempt: 'not-an-address'"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            settings_from_mapping({"server": {**base["server"], **server}}, env={})
    with pytest.raises(ConfigError, match=re.escape("dashboard.lockout_seconds: must be an integer >= 1")):
        settings_from_mapping({**base, "dashboard": {"lockout_seconds": 0}}, env={})
    assert (
        settings_from_mapping({**base, "server": {**base["server"], "rate_limit_exempt": []}}, env={}).rate_limit_exempt
        == ()
    )
    assert settings.forwarded_allow_ips == ()  # no proxy is trusted unless named


def test_forwarded_allow_ips_refuses_any_peer() -> None:
    def load(value: Any, env: dict[str, str] | None = None):
        return settings_from_mapping({"server": {"api_key": API_KEY, "forwarded_allow_ips": value}}, env=env or {})

    assert load(["172.30.87.10", "10.244.0.0/16"]).forwarded_allow_ips == ("172.30.87.10", "10.244.0.0/16")
    assert load("10.244.1.7/16").forwarded_allow_ips == ("10.244.0.0/16",)  # as uvicorn parses networks
    assert load([], {"FORWARDED_ALLOW_IPS": "172.30.87.10, ::1"}).forwarded_allow_ips == ("172.30.87.10", "::1")
    for value, env, message in (
        ("*", None, "server.forwarded_allow_ips: '*' trusts X-Forwarded-For from any peer"),
        (["10.0.0.1", "*"], None, "server.forwarded_allow_ips: '*' trusts X-Forwarded-For from any peer"),
        ([], {"FORWARDED_ALLOW_IPS": "*"}, "FORWARDED_ALLOW_IPS: '*' trusts X-Forwarded-For from any peer"),
        (["0.0.0.0/0"], None, "server.forwarded_allow_ips: '0.0.0.0/0' trusts every peer"),
        (["proxy.local"], None, "server.forwarded_allow_ips: 'proxy.local' is not an address or network"),
        ([1], None, "server.forwarded_allow_ips: must be a string or a list of strings"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load(value, env)


def test_serve_refuses_a_wildcard_proxy_at_start(tmp_path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"server:\n  api_key: {API_KEY}\n  forwarded_allow_ips: '*'\n")
    result = subprocess.run(
        [BIN / "atlas-server", "ingest", "--config", config],
        capture_output=True,
        text=True,
        env=service_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "configuration error: server.forwarded_allow_ips: '*' trusts X-Forwarded-For" in result.stderr


# --- against real ingest servers ------------------------------------------------------------


def test_per_address_limit_answers_429_then_recovers(
    start_ingest: Callable[..., IngestServer], server_config: dict[str, Any], keys: dict[str, str]
) -> None:
    server = start_ingest(with_limits(server_config, rate_limit_per_address=1, rate_limit_per_address_burst=3))
    before = rate_limited_count(server)
    assert [post(server, keys, "198.51.100.7").status_code for _ in range(3)] == [202, 202, 202]
    wait = assert_429(post(server, keys, "198.51.100.7"), "this client address")
    assert wait == 1  # 1 a second
    assert post(server, keys, "198.51.100.8").status_code == 202  # another address is not held back
    assert post(server, keys, "2001:db8:7:7::1").status_code == 202
    assert rate_limited_count(server) == before + 1
    assert "Rate limit reached by client address 198.51.100.7; answering 429" in server.logs()
    time.sleep(wait)
    assert post(server, keys, "198.51.100.7").status_code == 202  # recovered after Retry-After


def test_per_key_limit_holds_whatever_the_address(
    start_ingest: Callable[..., IngestServer], server_config: dict[str, Any], keys: dict[str, str]
) -> None:
    server = start_ingest(with_limits(server_config, rate_limit_per_key=1, rate_limit_per_key_burst=3))
    answers = [post(server, keys, f"198.51.100.{20 + i}").status_code for i in range(3)]
    assert answers == [202, 202, 202]
    wait = assert_429(post(server, keys, "198.51.100.99"), "this API key")
    assert post(server, keys, "198.51.100.99", api_key="wrong-key-0123456789abcdef").status_code == 401
    assert "Rate limit reached by an API key; answering 429" in server.logs()
    assert API_KEY not in server.logs()
    time.sleep(wait)
    assert post(server, keys, "198.51.100.99").status_code == 202


def test_unauthenticated_flood_is_limited_before_the_body_is_read(
    start_ingest: Callable[..., IngestServer], server_config: dict[str, Any], keys: dict[str, str]
) -> None:
    server = start_ingest(with_limits(server_config, rate_limit_per_address=1, rate_limit_per_address_burst=3))
    before = rate_limited_count(server)
    flood = [post(server, keys, "203.0.113.50", api_key=None).status_code for _ in range(3)]
    assert flood == [401, 401, 401]
    assert_429(post(server, keys, "203.0.113.50", api_key=None), "this client address")
    # Headers announcing a 1 MB body that never comes: answered at once, without waiting for it.
    for headers in ({"X-Forwarded-For": "203.0.113.50"}, {"X-Forwarded-For": "203.0.113.50", "X-API-Key": API_KEY}):
        started = time.monotonic()
        answer = raw_headers_only(server, headers)
        assert answer.startswith(b"HTTP/1.1 429 "), answer[:200]
        assert b"\r\nretry-after: 1\r\n" in answer.lower()
        assert time.monotonic() - started < 2
    assert rate_limited_count(server) == before + 3
    assert post(server, keys, "203.0.113.51").status_code == 202  # a valid client elsewhere carries on


def test_forwarded_for_counts_only_from_trusted_proxies(
    start_server: Callable[..., ServerProcess], server_config: dict[str, Any], keys: dict[str, str]
) -> None:
    """From a peer outside FORWARDED_ALLOW_IPS, a forged X-Forwarded-For does not make a new client."""
    config = with_limits(server_config, rate_limit_per_address=1, rate_limit_per_address_burst=2, rate_limit_exempt=[])
    server = start_server("ingest", config, env={"FORWARDED_ALLOW_IPS": "192.0.2.1"})
    answers = [post(server, keys, f"198.51.100.{i}").status_code for i in range(1, 4)]
    assert answers == [202, 202, 429]


def test_no_proxy_is_trusted_by_default(
    start_server: Callable[..., ServerProcess], server_config: dict[str, Any], keys: dict[str, str]
) -> None:
    """Without server.forwarded_allow_ips, X-Forwarded-For from loopback names no new client either."""
    config = with_limits(server_config, rate_limit_per_address=1, rate_limit_per_address_burst=2, rate_limit_exempt=[])
    del config["server"]["forwarded_allow_ips"]
    server = start_server("ingest", config)
    answers = [post(server, keys, f"198.51.100.{i}").status_code for i in range(11, 14)]
    assert answers == [202, 202, 429]


def test_a_forwarded_exempt_address_is_limited(
    start_ingest: Callable[..., IngestServer], server_config: dict[str, Any], keys: dict[str, str]
) -> None:
    """A client behind the trusted proxy writing 127.0.0.1 into X-Forwarded-For is no local tool."""
    server = start_ingest(with_limits(server_config, rate_limit_per_address=1, rate_limit_per_address_burst=2))
    answers = [post(server, keys, "127.0.0.1").status_code for _ in range(3)]
    assert answers == [202, 202, 429]
    assert "Rate limit reached by client address 127.0.0.1; answering 429" in server.logs()
    assert {post(server, keys).status_code for _ in range(3)} == {202}  # loopback itself stays exempt


def test_loopback_is_exempt_by_default(
    start_ingest: Callable[..., IngestServer], server_config: dict[str, Any], keys: dict[str, str]
) -> None:
    server = start_ingest(with_limits(server_config, rate_limit_per_address=1, rate_limit_per_address_burst=1))
    assert {post(server, keys, api_key=None).status_code for _ in range(5)} == {401}
    assert {post(server, keys).status_code for _ in range(3)} == {202}
    assert [post(server, keys, "198.51.100.60").status_code for _ in range(2)] == [202, 429]


def test_agent_keeps_a_rate_limited_batch_and_sends_it_after_retry_after(
    start_ingest: Callable[..., IngestServer],
    server_config: dict[str, Any],
    keys: dict[str, str],
    drain: Callable[..., bool],
    db,
    tmp_path,
) -> None:
    server = start_ingest(with_limits(server_config, rate_limit_per_key=1, rate_limit_per_key_burst=1))
    store = LocalStore(tmp_path / "atlas.db", Keyring.from_base64([keys["current"]]))
    info = batches.machine()
    with Sender(
        store,
        fleet_server=server.url,
        api_key=API_KEY,
        keyring=Keyring.from_base64([keys["current"]]),
        machine=lambda: info,
        rng=random.Random(3),
    ) as sender:
        for _ in range(2):
            for log in batches.logs(3):
                store.add(**log)
            assert sender.seal_pending() == 1
        report = sender.send_due()
        assert (report.sent_batches, report.retried, report.quarantined) == (1, 1, 0)
        status = store.status()
        assert (status["pending_batches"], status["quarantined_batches"]) == (1, 0)
        assert status["last_error"].startswith("HTTP 429: rate limit exceeded for this API key")
        assert store.due_batches(time.time() + 0.9) == []  # not before Retry-After (1 s)
        time.sleep(1)
        report = sender.send_due(now=time.time() + 3600)  # past the jittered backoff too
        assert (report.sent_batches, report.retried) == (1, 0)
    drain()
    stored = db.execute("SELECT count(*) FROM widget_logs WHERE machine_id = %s", (info["machine_id"],)).fetchone()
    assert stored == (6,)
