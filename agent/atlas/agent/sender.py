"""The widget log collector's sending half: seal unsent logs into v1 batches and deliver them.

A batch counts as sent only on 202, or 200 "duplicate". After a network
error, a timeout, a 5xx, 408 or 429 it is re-sent later, byte for byte with
the same batch_id, after a full-jitter exponential backoff that honours
Retry-After. Any other 4xx is final for that batch: it is quarantined with
the server's reason instead of looping. A cycle stops at the first failure,
so a fleet server that is down is not hammered by a long spool; batches go
oldest first, and the oldest one's backoff holds back the whole spool (see
LocalStore.due_batches), so after an outage a spool drains in order, starting
at a jittered moment.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from atlas.contract import LOG_MAX_BEFORE_BATCH, WIDGET_LOGS_PATH, Keyring, format_timestamp, seal

from .store import LocalStore

log = logging.getLogger("atlas.agent")

DEFAULT_SEND_INTERVAL_S = 300
MAX_LOGS_PER_BATCH = 1000
"""Logs sealed into one batch; the contract allows up to 5000."""

MAX_BATCH_PLAINTEXT_BYTES = 1024 * 1024
"""Plaintext sealed into one batch, at most (one log larger than this goes alone): half the
server's default ``max_plaintext_bytes``, so a batch of the largest logs is never refused."""

BACKOFF_BASE_S = 5.0
BACKOFF_CAP_S = 900.0
RETRYABLE_4XX = frozenset({408, 429})

Outcome = Literal["sent", "retry", "quarantine"]


MISSING_API_KEY = (
    "api_key: not set; sending to a fleet server needs one of its API keys (its config.yaml's server.api_key, "
    "made on the server with `atlas-server keygen --api-key`): set api_key, or pass --api-key"
)
MISSING_ENCRYPTION_KEY = (
    "encryption_key: not set; refusing to send widget logs in plaintext (set encryption_key, or pass "
    "--encryption-key, to the server's server.encryption_key, made with `atlas-server keygen`; "
    "or allow_plaintext: true for a server that accepts plaintext)"
)


class SenderConfigError(ValueError):
    """The sender cannot run as configured (for example: no key and plaintext not allowed)."""


def batch_time(logs: list[dict[str, Any]], now: datetime) -> datetime:
    """A batch's created_at: now, or, for a spool whose oldest log is older than LOG_MAX_BEFORE_BATCH, that
    log's time plus LOG_MAX_BEFORE_BATCH, so the server, which refuses a log dated further before its batch,
    accepts every log (``LocalStore.seal_batch`` keeps a batch's logs within that span of each other)."""
    oldest = min((datetime.fromisoformat(log["timestamp"]) for log in logs), default=now)
    return min(now, oldest + LOG_MAX_BEFORE_BATCH)


def classify(status: int | None, reply: Any) -> Outcome:
    """What an answer means for a batch; ``status`` None is a network error or timeout."""
    if status == 202 and isinstance(reply, dict) and reply.get("status") == "queued":
        return "sent"
    if status == 200 and isinstance(reply, dict) and reply.get("status") == "duplicate":
        return "sent"
    if status is not None and 400 <= status < 500 and status not in RETRYABLE_4XX:
        return "quarantine"
    return "retry"


def backoff_delay(
    attempts: int,
    retry_after: float | None,
    rng: random.Random,
    *,
    base_s: float = BACKOFF_BASE_S,
    cap_s: float = BACKOFF_CAP_S,
) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempts)], but never less than Retry-After."""
    ceiling = min(cap_s, base_s * 2 ** min(attempts, 20))
    return max(rng.uniform(0, ceiling), retry_after or 0.0)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None


@dataclass
class CycleReport:
    sealed_batches: int = 0
    sent_batches: int = 0
    sent_logs: int = 0
    retried: int = 0
    quarantined: int = 0


class Sender:
    """Seals the store's unsent logs and delivers pending batches to the fleet server."""

    def __init__(
        self,
        store: LocalStore,
        *,
        fleet_server: str,
        api_key: str,
        keyring: Keyring,
        machine: Callable[[], dict[str, str]],
        allow_plaintext: bool = False,
        ca_bundle: str | None = None,
        timeout_s: float = 30.0,
        send_interval_s: int = DEFAULT_SEND_INTERVAL_S,
        rng: random.Random | None = None,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
    ) -> None:
        if not api_key:
            raise SenderConfigError(MISSING_API_KEY)
        if not keyring and not allow_plaintext:
            raise SenderConfigError(MISSING_ENCRYPTION_KEY)
        self.store = store
        self.url = fleet_server.rstrip("/") + WIDGET_LOGS_PATH
        self.keyring = keyring
        self.machine = machine
        self.rng = rng or random.SystemRandom()
        self.backoff_base_s, self.backoff_cap_s = backoff_base_s, backoff_cap_s
        self.client = httpx.Client(
            verify=ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True,
            timeout=timeout_s,
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        )
        minutes = send_interval_s / 60
        every = f"{minutes:g} minutes" if send_interval_s % 60 == 0 else f"{send_interval_s} seconds"
        log.info("Widget log collector initialized (sends every %s to %s)", every, fleet_server)
        if keyring:
            log.info("Widget log encryption enabled (AES-256-GCM)")
        else:
            log.warning("Widget log encryption DISABLED: sending plaintext because allow_plaintext is set")

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _seal(self, logs: list[dict[str, Any]]) -> tuple[str, str, bytes]:
        batch_id = str(uuid.uuid4())
        created_at = format_timestamp(batch_time(logs, datetime.now(UTC)))
        content = {"machine": self.machine(), "logs": logs}
        key = self.keyring.current
        if key is None:
            body: dict[str, Any] = {"v": 1, "batch_id": batch_id, "created_at": created_at, **content}
        else:
            plaintext = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            body = seal(plaintext, key, batch_id=batch_id, created_at=created_at, compression="gzip")
        return batch_id, created_at, json.dumps(body, separators=(",", ":")).encode("utf-8")

    def seal_pending(self) -> int:
        """Turn every unsent log into batches; returns how many batches were sealed."""
        count = 0
        while (
            self.store.seal_batch(self._seal, max_logs=MAX_LOGS_PER_BATCH, max_bytes=MAX_BATCH_PLAINTEXT_BYTES)
            is not None
        ):
            count += 1
        return count

    def send_due(self, now: float | None = None) -> CycleReport:
        """Send the pending batches that are due, oldest first, stopping at the first failure."""
        report = CycleReport()
        for batch in self.store.due_batches(now):
            try:
                response = self.client.post(self.url, content=batch.body)
            except httpx.HTTPError as exc:
                status, reply, retry_after, reason = None, None, None, f"{type(exc).__name__}: {exc}"
            else:
                status, retry_after = response.status_code, _retry_after(response)
                try:
                    reply = response.json()
                except ValueError:
                    reply = None
                detail = reply.get("detail") if isinstance(reply, dict) else None
                reason = f"HTTP {status}" + (f": {detail}" if detail else "")
            outcome = classify(status, reply)
            if outcome == "sent":
                self.store.mark_sent(batch.batch_id)
                report.sent_batches += 1
                report.sent_logs += batch.log_count
                log.info("Sent %d widget logs to fleet server", batch.log_count)
                continue
            if outcome == "quarantine":
                self.store.quarantine(batch.batch_id, reason)
                report.quarantined += 1
                log.error("Batch %s refused by the fleet server, quarantined: %s", batch.batch_id, reason)
                continue
            delay = backoff_delay(
                batch.attempts, retry_after, self.rng, base_s=self.backoff_base_s, cap_s=self.backoff_cap_s
            )
            self.store.mark_retry(batch.batch_id, delay=delay, error=reason)
            report.retried += 1
            log.warning("Sending batch %s failed (%s); next try in %.0f s", batch.batch_id, reason, delay)
            break
        return report

    def run_cycle(self, now: float | None = None) -> CycleReport:
        """One send cycle: enforce the store's limits, seal what is unsent, send what is due."""
        self.store.enforce_limits()
        sealed = self.seal_pending()
        report = self.send_due(now)
        report.sealed_batches = sealed
        return report
