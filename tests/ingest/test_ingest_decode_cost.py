"""A small body must not buy a large decode: bombs are capped by their plaintext, decoded off the event loop in
a bounded pool, and a batch already accepted is answered before it is decrypted."""

from __future__ import annotations

import base64
import gzip
import json
import os
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from atlas.contract import Key, seal

from .. import batches
from ..fix_services import API_KEY

pytestmark = pytest.mark.slow

ZEROS_MIB = 20
"""The bomb's plaintext: a JSON list of this many MiB of ``0,``, the slowest kind of JSON to parse."""


def bomb_envelope(key_b64: str) -> dict[str, Any]:
    """An envelope of a few KiB whose gzip inflates to ZEROS_MIB MiB of JSON."""
    plaintext = b'{"machine":{},"logs":[' + b"0," * (ZEROS_MIB << 19) + b"0]}"
    envelope = seal(
        plaintext,
        Key.from_base64(key_b64),
        batch_id=str(uuid.uuid4()),
        created_at=batches.now_stamp(),
        compression="gzip",
    )
    assert len(json.dumps(envelope)) < 64 * 1024  # under the inline bound: only its plaintext is large
    return envelope


def recent_content(count: int) -> dict[str, Any]:
    """A batch of ``count`` logs ten seconds apart, the newest a minute old."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=10 * count + 60)
    return {"machine": batches.machine(), "logs": batches.logs(count, start=start)}


def large_batch(count: int = 200) -> dict[str, Any]:
    """A real batch whose envelope is over 64 KiB even gzipped (random, incompressible messages)."""
    body = recent_content(count)
    for log in body["logs"]:
        log["message"] = base64.b64encode(os.urandom(300)).decode()
    return body


def flood(url: str, envelope: dict[str, Any], stop: threading.Event, statuses: list[int]) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            response = client.post(
                f"{url}/api/fleet/widget-logs", json=envelope, headers={"Authorization": f"Bearer {API_KEY}"}
            )
            statuses.append(response.status_code)


def test_small_bomb_is_413_at_the_plaintext_cap(ingest, keys):
    started = time.perf_counter()
    response = ingest.post(bomb_envelope(keys["current"]))
    elapsed = time.perf_counter() - started
    assert response.status_code == 413, response.text
    assert response.json() == {
        "detail": "ciphertext: decompressed plaintext exceeds 2097152 bytes",
        "field": "ciphertext",
    }
    assert elapsed < 1.0


def _answer_times(server, key: str, rounds: int = 20) -> tuple[list[float], list[float]]:
    """Seconds for ``rounds`` /healthz answers and ``rounds`` real agent batches, one after the other."""
    health, posts = [], []
    with httpx.Client(timeout=30) as client:
        for _ in range(rounds):
            started = time.perf_counter()
            assert client.get(f"{server.url}/healthz").status_code == 200
            health.append(time.perf_counter() - started)
            started = time.perf_counter()
            response = server.post(batches.sealed(batches.content(3), key))
            posts.append(time.perf_counter() - started)
            assert response.status_code == 202, response.text
            time.sleep(0.05)
    return health, posts


def test_bombs_do_not_stall_other_requests(start_ingest, server_config, keys):
    """Four connections re-sending bombs: /healthz and a real agent's batch still answer at once.

    "At once" is against the same answers measured just before, without bombs, since the machine is shared: a
    bomb decoded in the event loop holds every other request for its whole decode.
    """
    server = start_ingest(server_config)
    assert server.post(batches.sealed(batches.content(3), keys["current"])).status_code == 202  # warm up
    quiet_health, quiet_posts = _answer_times(server, keys["current"])
    stop, statuses = threading.Event(), []
    envelope = bomb_envelope(keys["current"])
    senders = [threading.Thread(target=flood, args=(server.url, envelope, stop, statuses)) for _ in range(4)]
    for sender in senders:
        sender.start()
    try:
        time.sleep(0.5)
        health, posts = _answer_times(server, keys["current"])
    finally:
        stop.set()
        for sender in senders:
            sender.join()
    assert statuses
    assert set(statuses) <= {413, 503}, set(statuses)
    median = statistics.median
    print(
        f"without bombs: /healthz median {median(quiet_health) * 1000:.1f} ms, batch median"
        f" {median(quiet_posts) * 1000:.1f} ms; under {len(statuses)} bombs: /healthz median"
        f" {median(health) * 1000:.1f} ms, max {max(health) * 1000:.1f} ms; batch median {median(posts) * 1000:.1f} ms"
    )
    assert median(health) < max(0.1, 5 * median(quiet_health))
    assert median(posts) < max(0.2, 5 * median(quiet_posts))
    assert max(health) < max(0.5, 5 * max(quiet_health))


def test_a_full_decode_pool_answers_503_with_retry_after(start_ingest, server_config, keys):
    """One decode thread, no backlog, bombs allowed up to 32 MiB: concurrent bombs find the pool taken."""
    config = {**server_config, "server": {**server_config["server"]}}
    config["server"].update(max_plaintext_bytes=32 << 20, decode_threads=1, decode_backlog=0)
    server = start_ingest(config)
    envelope = bomb_envelope(keys["current"])
    answers: list[httpx.Response] = []

    def send() -> None:
        answers.append(server.post(envelope))

    senders = [threading.Thread(target=send) for _ in range(6)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    busy = [a for a in answers if a.status_code == 503]
    assert busy, [a.status_code for a in answers]
    assert busy[0].json() == {"detail": "decoder busy, retry later", "field": None}
    assert busy[0].headers["Retry-After"] == "5"
    assert {a.status_code for a in answers} <= {503, 400, 422}


def test_an_accepted_large_batch_is_answered_duplicate_before_decryption(ingest, keys):
    """Re-sent with a broken tag, a large batch already accepted is not decrypted (that would answer 400)."""
    envelope = batches.sealed(large_batch(), keys["current"])
    assert len(json.dumps(envelope)) > 64 * 1024
    first = ingest.post(envelope)
    assert first.status_code == 202, first.text
    ciphertext = bytearray(base64.b64decode(envelope["ciphertext"]))
    ciphertext[-1] ^= 1
    broken = {**envelope, "ciphertext": base64.b64encode(bytes(ciphertext)).decode()}
    again = ingest.post(broken)
    assert again.status_code == 200, again.text
    assert again.json()["batch_id"] == envelope["batch_id"]


def test_a_fresh_large_batch_is_still_authenticated(ingest, keys):
    envelope = batches.sealed(large_batch(), keys["current"])
    ciphertext = bytearray(base64.b64decode(envelope["ciphertext"]))
    ciphertext[-1] ^= 1
    broken = {**envelope, "ciphertext": base64.b64encode(bytes(ciphertext)).decode()}
    response = ingest.post(broken)
    assert response.status_code == 400
    assert "authentication failed" in response.json()["detail"]


def test_gzip_of_a_real_batch_inflating_past_64_kib_is_accepted(ingest, keys):
    """Small on the wire, over the inline bound once inflated: finished in the pool, not refused."""
    body = recent_content(400)
    envelope = batches.sealed(body, keys["current"])
    assert len(json.dumps(envelope)) < 64 * 1024 < len(json.dumps(body))
    assert len(gzip.compress(json.dumps(body).encode())) < 64 * 1024
    assert ingest.post(envelope).status_code == 202
