"""The widget log collector's sending half: seal unsent logs into batches and deliver them.

An enrolled agent (``atlas-agent enroll``) sends contract v2: each batch sealed with HPKE to the server's
current public key, each request signed with the device key, to the v2 path; the server's public keys in each
answer replace the stored ones, and a batch sealed to a key the server no longer holds is sealed again to its
current one. A 401 there (device revoked or replaced, or a wrong clock) stops sending, with
one log line, until the Mac is enrolled again; the unsent logs stay in the store. Without an enrollment the
agent sends v1 as before.

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
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from atlas.contract import (
    HEADER_TIMESTAMP,
    LOG_MAX_BEFORE_BATCH,
    WIDGET_LOGS_PATH,
    WIDGET_LOGS_V2_PATH,
    ContractError,
    HpkePublicKey,
    Keyring,
    format_timestamp,
    seal,
    seal_v2,
    sign_request,
)

from .enroll import EnrollError, Enrollment, credentials_path, load_enrollment, save_credentials, with_hpke_keys
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


_V2_PREFIX = b'{"v":2,'
"""How a body sealed by ``seal_v2`` begins, as this sender serialises it."""

REENROLL = "atlas-agent enroll --server URL --secret SECRET"


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
        data_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.data_dir = data_dir
        self.clock = clock
        """The time a v2 request is signed with (seconds since the epoch)."""
        self.enrollment = load_enrollment(data_dir) if data_dir is not None else None
        self._credentials_stamp = self._stamp()
        self.halted: str | None = None
        """Why v2 sending stopped (a 401), until the credentials file changes; None while sending."""
        if self.enrollment is None:
            if not api_key:
                raise SenderConfigError(MISSING_API_KEY)
            if not keyring and not allow_plaintext:
                raise SenderConfigError(MISSING_ENCRYPTION_KEY)
        self.store = store
        self._reseal_for_this_device()
        self.url = fleet_server.rstrip("/") + WIDGET_LOGS_PATH
        self.v2_url = fleet_server.rstrip("/") + WIDGET_LOGS_V2_PATH
        self.v2_path = urlsplit(self.v2_url).path
        self.keyring = keyring
        self.machine = machine
        self.rng = rng or random.SystemRandom()
        self.backoff_base_s, self.backoff_cap_s = backoff_base_s, backoff_cap_s
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
        self.client = httpx.Client(
            verify=verify,
            timeout=timeout_s,
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        )
        self.v2_client = httpx.Client(verify=verify, timeout=timeout_s, headers={"Content-Type": "application/json"})
        """v2 requests carry the device's signature, never the API key."""
        minutes = send_interval_s / 60
        every = f"{minutes:g} minutes" if send_interval_s % 60 == 0 else f"{send_interval_s} seconds"
        log.info("Widget log collector initialized (sends every %s to %s)", every, fleet_server)
        if self.enrollment is not None:
            log.info(
                "Enrolled as device %s (machine_id %s): sending contract v2 (HPKE %s)",
                self.enrollment.device_id,
                self.enrollment.machine_id,
                self.enrollment.seal_key.suite if self.enrollment.seal_key else "no key",
            )
        elif keyring:
            log.info("Widget log encryption enabled (AES-256-GCM)")
        else:
            log.warning("Widget log encryption DISABLED: sending plaintext because allow_plaintext is set")

    def close(self) -> None:
        self.client.close()
        self.v2_client.close()

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stamp(self) -> tuple[int, int] | None:
        if self.data_dir is None:
            return None
        try:
            st = credentials_path(self.data_dir).stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    def _reload_if_enrolled_again(self) -> None:
        """After a 401, pick up new credentials once ``atlas-agent enroll`` has written them."""
        stamp = self._stamp()
        if stamp == self._credentials_stamp or self.data_dir is None:
            return
        self._credentials_stamp = stamp
        try:
            enrollment = load_enrollment(self.data_dir)
        except EnrollError as exc:
            log.error("Cannot use the new device credentials: %s", exc)
            return
        if enrollment is not None and (self.enrollment is None or enrollment.device_id != self.enrollment.device_id):
            self.enrollment, self.halted = enrollment, None
            log.info("Enrolled again as device %s: sending resumes", enrollment.device_id)
            self._reseal_for_this_device()

    def _reseal_for_this_device(self) -> None:
        """Unseal pending v2 batches sealed for another device id (before the Mac enrolled again), which the
        server refuses, so their logs are sealed again for this one."""
        if self.enrollment is None:
            return
        stale = []
        for batch_id, body in self.store.pending_bodies():
            if body.startswith(_V2_PREFIX):
                try:
                    device_id = json.loads(body).get("device_id")
                except ValueError:
                    continue
                if device_id != self.enrollment.device_id:
                    stale.append(batch_id)
        if stale:
            count = self.store.unseal(stale)
            log.info("%d unsent widget logs sealed for the previous device are sealed again for this one", count)

    def _seal(self, logs: list[dict[str, Any]]) -> tuple[str, str, bytes]:
        batch_id = str(uuid.uuid4())
        created_at = format_timestamp(batch_time(logs, datetime.now(UTC)))
        content = {"machine": self.machine(), "logs": logs}
        if self.enrollment is not None:
            return batch_id, created_at, self._seal_v2(self.enrollment, content, batch_id, created_at)
        key = self.keyring.current
        if key is None:
            body: dict[str, Any] = {"v": 1, "batch_id": batch_id, "created_at": created_at, **content}
        else:
            plaintext = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            body = seal(plaintext, key, batch_id=batch_id, created_at=created_at, compression="gzip")
        return batch_id, created_at, json.dumps(body, separators=(",", ":")).encode("utf-8")

    @staticmethod
    def _seal_v2(enrollment: Enrollment, content: dict[str, Any], batch_id: str, created_at: str) -> bytes:
        """A v2 envelope; the machine's id and serial number are the enrolled ones, as the server requires."""
        public_key = enrollment.seal_key
        if public_key is None:
            raise EnrollError("the stored credentials hold no HPKE public key: enroll again")
        machine = {**content["machine"], "machine_id": enrollment.machine_id, "serial_number": enrollment.serial_number}
        plaintext = json.dumps({**content, "machine": machine}, ensure_ascii=False, separators=(",", ":"))
        body = seal_v2(
            public_key,
            plaintext.encode("utf-8"),
            device_id=enrollment.device_id,
            batch_id=batch_id,
            created_at=created_at,
        )
        return json.dumps(body, separators=(",", ":")).encode("utf-8")

    def _post(self, body: bytes) -> tuple[httpx.Response, bool]:
        """POST a sealed body where it belongs: a v2 envelope signed to the v2 path, a v1 one with the API key."""
        if body.startswith(_V2_PREFIX) and self.enrollment is not None:
            headers = sign_request(
                self.enrollment.key, self.enrollment.device_id, "POST", self.v2_path, body, timestamp=int(self.clock())
            )
            return self.v2_client.post(self.v2_url, content=body, headers=headers), True
        return self.client.post(self.url, content=body), False

    def _learn_keys(self, reply: Any) -> None:
        """Store the server's public keys an answer carries, when they changed."""
        if self.enrollment is None or not isinstance(reply, dict) or not isinstance(reply.get("hpke_keys"), list):
            return
        try:
            keys = tuple(HpkePublicKey.from_json(k) for k in reply["hpke_keys"])
        except ContractError as exc:
            log.warning("Ignoring the fleet server's HPKE keys: %s", exc)
            return
        if not keys or keys == self.enrollment.hpke_keys:
            return
        self.enrollment = with_hpke_keys(self.enrollment, keys)
        if self.data_dir is not None:
            save_credentials(self.data_dir, self.enrollment)
            self._credentials_stamp = self._stamp()
        log.info("Fleet server public keys updated (sealing to key %s)", keys[0].kid)

    def _reseal_to_new_key(self, batch_id: str, body: bytes) -> bool:
        """A batch sealed to a key the server no longer holds goes back to be sealed to its current key (learnt
        from the same answer), unless that is the key it was sealed to; True if it was unsealed."""
        key = self.enrollment.seal_key if self.enrollment else None
        try:
            sealed_to = json.loads(body).get("kid")
        except ValueError:
            return False
        if key is None or key.kid == sealed_to:
            return False
        count = self.store.unseal([batch_id])
        log.warning("Batch %s was sealed to a key the fleet server no longer holds; its %d logs are sealed again "
                    "to key %s", batch_id, count, key.kid)  # fmt: skip
        return True

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
        if self.halted is not None:
            return report
        for batch in self.store.due_batches(now):
            v2 = False
            try:
                response, v2 = self._post(batch.body)
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
                if v2:
                    self._learn_keys(reply)
            skewed = v2 and status == 401 and isinstance(reply, dict) and reply.get("field") == HEADER_TIMESTAMP
            if skewed:  # the credential is fine: the Mac's clock is not; retried once it is set right
                delay = backoff_delay(
                    batch.attempts, retry_after, self.rng, base_s=self.backoff_base_s, cap_s=self.backoff_cap_s
                )
                self.store.mark_retry(batch.batch_id, delay=delay, error=reason)
                report.retried += 1
                log.warning(
                    "Fleet server refused this Mac's clock (%s): set the clock right (System Settings > Date & Time);"
                    " next try in %.0f s",
                    reason,
                    delay,
                )
                break
            if v2 and status == 401:
                self.halted = reason
                log.error(
                    "Fleet server refused this Mac's device credential (%s): sending stopped; "
                    "the Mac must enroll again (%s)",
                    reason,
                    REENROLL,
                )
                break
            stale_key = v2 and status == 400 and isinstance(reply, dict) and reply.get("field") == "kid"
            if stale_key and self._reseal_to_new_key(batch.batch_id, batch.body):
                report.retried += 1
                break
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
        """One send cycle: enforce the store's limits, seal what is unsent, send what is due.

        While sending is stopped by a 401 nothing is sealed, so the logs are sealed for the next enrollment."""
        self.store.enforce_limits()
        if self.halted is not None:
            self._reload_if_enrolled_again()
            if self.halted is not None:
                return CycleReport()
        sealed = self.seal_pending()
        report = self.send_due(now)
        report.sealed_batches = sealed
        return report
