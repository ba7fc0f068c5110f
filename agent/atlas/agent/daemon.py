"""The agent daemon: collect on schedule, keep every log in the local store, send in batches.

Collection runs every ``collect_interval_seconds`` (Wi-Fi, ping, health,
processes; a roam when the access point, channel or band changed since the
previous Wi-Fi reading), the speed test on its own slower schedule in a thread
of its own, the layered network checks every ``network_interval_seconds`` in
another, and the sender every ``send_interval_seconds``. The latest result of
each widget is kept in memory for the live widget page.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .collectors.health import collect_health
from .collectors.identity import collect_identity
from .collectors.network import (
    NetworkCheck,
    check_dns,
    check_gateway,
    check_http,
    check_wifi_link,
    default_gateway,
    system_resolvers,
    tls_context,
)
from .collectors.ping import default_targets, ping
from .collectors.processes import ProcessSampler
from .collectors.roam import RoamTracker
from .collectors.speedtest import SpeedtestRunner
from .collectors.wifi import WifiReading, collect_wifi
from .config import AgentConfig
from .enroll import load_enrollment
from .sender import Sender
from .store import LocalStore
from .widgets import (
    LogEntry,
    agent_log,
    health_log,
    network_log,
    ping_log,
    processes_log,
    roam_log,
    speedtest_log,
    wifi_log,
)

log = logging.getLogger("atlas.agent")


class Agent:
    """One agent: its store, collectors, sender (when a fleet server is set) and latest readings."""

    def __init__(self, config: AgentConfig, *, speedtest: SpeedtestRunner | None = None) -> None:
        self.config = config
        self.keyring = config.keyring()
        self.store = LocalStore(
            config.store_path,
            self.keyring,
            max_age_days=config.store_max_age_days,
            max_bytes=config.store_max_mb * 1024 * 1024,
        )
        self.identity = collect_identity(machine_id=config.machine_id)
        self.processes = ProcessSampler()
        self.speedtest = speedtest or SpeedtestRunner(interval_s=config.speedtest_interval_seconds)
        self.latest: dict[str, LogEntry] = {}
        self.roams = RoamTracker()
        self._wifi_seen: tuple[WifiReading, float] | None = None
        self._lock = threading.Lock()
        self.sender: Sender | None = None
        enrolled = load_enrollment(config.data_dir)
        fleet_server = config.fleet_server or (enrolled.server if enrolled else None)
        if fleet_server:
            self.sender = Sender(
                self.store,
                fleet_server=fleet_server,
                data_dir=config.data_dir,
                api_key=config.api_key or "",
                keyring=self.keyring,
                machine=self.identity.as_machine,
                allow_plaintext=config.allow_plaintext,
                ca_bundle=config.ca_bundle,
                send_interval_s=config.send_interval_seconds,
            )

    def ping_targets(self) -> list[str]:
        return list(self.config.ping_targets) or default_targets(self.config.fleet_server)

    def collect(self, *, store: bool = True) -> list[LogEntry]:
        """One round of the fast widgets; each collector's failure becomes an ERROR log, not a crash."""
        entries: list[LogEntry] = []
        steps: list[tuple[str, Callable[[], list[LogEntry]]]] = [
            ("wifi", lambda: self.wifi_logs(collect_wifi())),
            ("ping", lambda: [ping_log(ping(t, count=3, timeout_s=5)) for t in self.ping_targets()]),
            ("health", lambda: [health_log(collect_health())]),
            ("processes", lambda: [processes_log(self.processes.sample())]),
        ]
        for widget, step in steps:
            try:
                entries += step()
            except Exception as exc:  # a collector bug must not stop the others
                log.exception("Collector %s failed", widget)
                entries.append(agent_log("ERROR", f"{widget} collector failed: {type(exc).__name__}"))
        self._record(entries, store)
        return entries

    def wifi_logs(self, reading: WifiReading) -> list[LogEntry]:
        """The Wi-Fi log, and a roam log when the reading differs from the one before in BSSID, channel or band."""
        self._wifi_seen = (reading, time.monotonic())
        entries = [wifi_log(reading)]
        roam = self.roams.observe(reading, datetime.now(UTC))
        if roam is not None:
            entries.append(roam_log(roam))
        return entries

    def network_checks(self) -> list[tuple[str, Callable[[], NetworkCheck]]]:
        """This round's checks, by layer: the link, the gateway, each resolver and name, each HTTP target."""
        timeout = float(self.config.network_timeout_seconds)
        seen = self._wifi_seen
        checks: list[tuple[str, Callable[[], NetworkCheck]]] = [
            (
                "wifi",
                lambda: check_wifi_link(
                    seen[0] if seen else None,
                    time.monotonic() - seen[1] if seen else None,
                    self.roams.take_period_count(),
                ),
            ),
            ("gateway", lambda: check_gateway(default_gateway(), count=3, timeout_s=timeout)),
        ]
        resolvers = list(self.config.dns_resolvers) or system_resolvers()
        names = self.config.dns_names
        if not resolvers:
            checks.append(("dns", lambda: NetworkCheck("dns", "", "no_resolver", reason="no DNS resolver configured")))
        checks += [("dns", functools.partial(check_dns, r, n, timeout_s=timeout)) for r in resolvers for n in names]
        if self.config.http_targets:
            context = tls_context(self.config.ca_bundle)
            checks += [
                ("http", functools.partial(check_http, url, timeout_s=timeout, verify=context))
                for url in self.config.http_targets
            ]
        return checks

    def run_network(self, *, store: bool = True) -> list[LogEntry]:
        """One round of the layered checks, one after another (each bounded by ``network_timeout_seconds``)."""
        entries: list[LogEntry] = []
        try:
            checks = self.network_checks()
        except Exception as exc:
            log.exception("Network checks could not be set up")
            checks = []
            entries.append(agent_log("ERROR", f"network checks failed: {type(exc).__name__}"))
        for layer, check in checks:
            try:
                entries.append(network_log(check()))
            except Exception as exc:  # a check's bug must not stop the others
                log.exception("Network check %s failed", layer)
                entries.append(agent_log("ERROR", f"network {layer} check failed: {type(exc).__name__}"))
        self._record(entries, store)
        return entries

    def run_speedtest(self, *, store: bool = True) -> LogEntry | None:
        result = self.speedtest.run_if_due()
        if result is None or result.status == "skipped_busy":
            return None
        entry = speedtest_log(result)
        self._record([entry], store)
        return entry

    def _record(self, entries: list[LogEntry], store: bool) -> None:
        with self._lock:
            for entry in entries:
                key = entry["widget_type"]
                if key == "ping":
                    key = f"ping:{entry['data'].get('target')}"
                elif key == "network":
                    key = f"network:{entry['data'].get('layer')}:{entry['data'].get('target')}"
                self.latest[key] = entry
        if store:
            for entry in entries:
                self.store.add(**entry)

    def send(self) -> None:
        if self.sender is None:
            return
        dropped_before = self.store.status()["counters"].get("dropped_unsent", 0)
        self.sender.run_cycle()
        total = self.store.status()["counters"].get("dropped_unsent", 0)
        dropped = total - dropped_before
        if dropped:  # the running total too: an earlier warning may itself have been dropped
            self._record(
                [
                    agent_log(
                        "WARNING",
                        f"Local store limit reached: dropped {dropped} unsent logs ({total} in all)",
                        {"dropped_unsent": dropped, "dropped_unsent_total": total},
                    )
                ],
                True,
            )

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            widgets = dict(self.latest)
        status = self.store.status()
        return {
            "machine": self.identity.as_machine(),
            "encryption": bool(self.keyring),
            "fleet_server": self.config.fleet_server,
            "last_sent_at": status["last_sent_at"],
            "pending_batches": status["pending_batches"],
            "widgets": widgets,
        }

    def _retry_at(self) -> float | None:
        """When (time.monotonic() scale) the spool's backoff ends; None when nothing is pending."""
        at = self.store.next_attempt_at() if self.sender else None
        return None if at is None else time.monotonic() + (at - time.time())

    def _run_network_safely(self) -> None:
        try:
            self.run_network()
        except Exception:
            log.exception("Network checks failed")

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set.

        Besides every ``send_interval_seconds``, a send cycle also runs when the spool's
        jittered backoff ends, so after an outage agents come back at their own random
        moments rather than all on the same interval tick.
        """
        next_collect = next_send = time.monotonic()
        last_send = -math.inf
        speedtest_thread: threading.Thread | None = None
        network_thread: threading.Thread | None = None
        next_network = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_collect:
                self.collect()
                next_collect = now + self.config.collect_interval_seconds
            speedtest_idle = speedtest_thread is None or not speedtest_thread.is_alive()
            if self.config.speedtest_interval_seconds and self.speedtest.due() and speedtest_idle:
                speedtest_thread = threading.Thread(target=self.run_speedtest, name="speedtest", daemon=True)
                speedtest_thread.start()
            network_idle = network_thread is None or not network_thread.is_alive()
            if self.config.network_interval_seconds and now >= next_network and network_idle:
                network_thread = threading.Thread(target=self._run_network_safely, name="network", daemon=True)
                network_thread.start()
                next_network = now + self.config.network_interval_seconds
            retry_at = self._retry_at()
            if now >= next_send or (retry_at is not None and last_send < retry_at <= now):
                try:
                    self.send()
                except Exception:
                    log.exception("Send cycle failed")
                last_send = now
                if now >= next_send:
                    next_send = now + self.config.send_interval_seconds
                retry_at = self._retry_at()
            wake = min(next_collect, next_send)
            if self.config.network_interval_seconds:
                wake = min(wake, next_network)
            if retry_at is not None and retry_at > last_send:
                wake = min(wake, retry_at)
            stop.wait(max(0.5, wake - time.monotonic()))
        if self.sender:
            self.sender.close()
