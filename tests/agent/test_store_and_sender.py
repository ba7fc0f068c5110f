"""The agent's store and sender against the real ingest service, worker and PostgreSQL."""

from __future__ import annotations

import random
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest

from atlas.agent.sender import Sender, SenderConfigError, backoff_delay, batch_time, classify
from atlas.agent.store import LocalStore, StoreKeyError
from atlas.contract import LOG_MAX_BEFORE_BATCH, Keyring, generate_encryption_key

from .. import batches
from ..fix_processes import free_port
from ..fix_services import API_KEY


def fill(store: LocalStore, count: int, *, start: datetime | None = None) -> list[dict]:
    start = start or datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    logs = []
    for log in batches.logs(count, start=start):
        store.add(**log)
        logs.append(log)
    assert len(logs) == count
    return logs


@pytest.fixture
def machine():
    info = batches.machine()
    return lambda: info


@pytest.fixture
def store(tmp_path, keys):
    return LocalStore(tmp_path / "atlas.db", Keyring.from_base64([keys["current"]]))


@pytest.fixture
def senders():
    """Every Sender a test makes, closed afterwards."""
    made: list[Sender] = []
    yield made
    for sender in made:
        sender.close()


def sender_for(store, url, keys, machine, made: list[Sender], **kw) -> Sender:
    sender = Sender(
        store,
        fleet_server=url,
        api_key=API_KEY,
        keyring=Keyring.from_base64([keys["current"]]),
        machine=machine,
        rng=random.Random(7),
        **kw,
    )
    made.append(sender)
    return sender


def rows_for_machine(db, machine_id: str) -> list[tuple]:
    return db.execute(
        "SELECT timestamp, level, widget_type, message, data FROM widget_logs WHERE machine_id = %s ORDER BY timestamp",
        (machine_id,),
    ).fetchall()


def test_logs_reach_postgresql_exactly_as_collected(store, ingest, keys, machine, drain, db, caplog, senders):
    caplog.set_level("INFO", logger="atlas.agent")
    sent = fill(store, 7)
    sender = sender_for(store, ingest.url, keys, machine, senders)
    report = sender.run_cycle()
    assert (report.sealed_batches, report.sent_batches, report.sent_logs) == (1, 1, 7)
    drain()
    rows = rows_for_machine(db, machine()["machine_id"])
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        (datetime.fromisoformat(s["timestamp"]), s["level"], s["widget_type"], s["message"], s["data"]) for s in sent
    ]
    messages = [r.getMessage() for r in caplog.records]
    assert f"Widget log collector initialized (sends every 5 minutes to {ingest.url})" in messages
    assert "Widget log encryption enabled (AES-256-GCM)" in messages
    assert "Sent 7 widget logs to fleet server" in messages
    assert store.status()["sent_batches"] == 1


def test_server_down_for_several_cycles_then_back(store, ingest, keys, machine, drain, db, senders):
    """Nothing lost, each batch delivered once, backoff growing while the server is away."""
    down = sender_for(store, f"http://127.0.0.1:{free_port()}", keys, machine, senders)
    collected = []
    for cycle in range(4):
        collected += fill(store, 3, start=datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20 - cycle))
        report = down.run_cycle(now=time.time() + 10**6)  # every pending batch is due
        assert report.sent_batches == 0
        assert report.retried == 1  # stops at the first failure: no hammering
    status = store.status()
    assert status["pending_batches"] == 4
    assert "ConnectError" in status["last_error"]

    up = sender_for(store, ingest.url, keys, machine, senders)
    report = up.run_cycle(now=time.time() + 10**6)
    assert (report.sent_batches, report.sent_logs) == (4, 12)
    drain()
    assert len(rows_for_machine(db, machine()["machine_id"])) == 12


def test_logs_spooled_for_days_before_sealing_are_all_accepted(store, ingest, keys, machine, drain, db, senders):
    """The longest legitimate gap between a log and its batch's sealing: logs the store kept unsealed for days
    (the Mac slept before a send cycle, or the fleet server was configured later) up to the store's age limit.
    Each batch spans at most a day of logs and is dated within a day of its oldest, so none is refused."""
    now = datetime.now(UTC).replace(microsecond=0)
    collected = []
    for hours in (6 * 24 + 20, 5 * 24, 3 * 24 + 1, 50, 26, 2, 0.1):  # the oldest almost at the 7-day limit
        collected += fill(store, 2, start=now - timedelta(hours=hours))
    sender = sender_for(store, ingest.url, keys, machine, senders)
    report = sender.run_cycle()
    assert report.quarantined == 0
    assert report.sent_logs == len(collected)
    assert report.sealed_batches == 5  # 164 h, 120 h, 73 + 50 h, 26 h, 2 + 0.1 h: none spans more than a day
    drain()
    stored = rows_for_machine(db, machine()["machine_id"])
    assert sorted(r[0] for r in stored) == sorted(datetime.fromisoformat(log["timestamp"]) for log in collected)
    for oldest, newest, created_at in db.execute(
        'SELECT min(l."timestamp"), max(l."timestamp"), b.created_at FROM widget_logs l JOIN batches b USING (batch_id)'
        " WHERE l.machine_id = %s GROUP BY b.batch_id, b.created_at",
        (machine()["machine_id"],),
    ):
        assert created_at - LOG_MAX_BEFORE_BATCH <= oldest <= newest <= created_at


def test_a_batch_is_dated_now_or_a_day_after_its_oldest_log():
    now = datetime(2026, 11, 28, 16, 0, tzinfo=UTC)
    at = lambda when: {"timestamp": when.isoformat().replace("+00:00", "Z")}  # noqa: E731
    assert batch_time([at(now - timedelta(hours=3)), at(now - timedelta(minutes=1))], now) == now
    old = now - timedelta(days=3, microseconds=250_000)
    assert batch_time([at(now - timedelta(days=2)), at(old)], now) == old + LOG_MAX_BEFORE_BATCH


def test_a_lost_answer_is_resent_and_stored_once(store, ingest, keys, machine, drain, db, senders):
    """The server took the batch but the agent never saw the 202 (killed mid-send): same bytes again."""
    fill(store, 4)
    sender = sender_for(store, ingest.url, keys, machine, senders)
    sender.seal_pending()
    [batch] = store.due_batches()
    first = sender.client.post(sender.url, content=batch.body)
    assert first.status_code == 202  # ... and the agent dies before recording it
    report = sender.send_due()
    assert report.sent_batches == 1  # 200 duplicate counts as sent
    drain()
    assert len(rows_for_machine(db, machine()["machine_id"])) == 4


def test_refused_batch_is_quarantined_not_looped(store, ingest, keys, machine, senders):
    fill(store, 2)
    sender = Sender(
        store,
        fleet_server=ingest.url,
        api_key="not-the-right-api-key-000",
        machine=machine,
        keyring=Keyring.from_base64([keys["current"]]),
    )
    senders.append(sender)
    report = sender.run_cycle()
    assert report.quarantined == 1
    status = store.status()
    assert status["quarantined_batches"] == 1
    assert sender.run_cycle(now=time.time() + 10**6).quarantined == 0  # never retried

    # The operator fixes the API key and requeues: the batch is delivered.
    assert store.requeue_quarantined() == 1
    fixed = sender_for(store, ingest.url, keys, machine, senders)
    assert fixed.run_cycle().sent_logs == 2


def test_no_key_refuses_to_send_unless_plaintext_allowed(tmp_path, machine):
    store = LocalStore(tmp_path / "plain.db", Keyring())
    with pytest.raises(SenderConfigError, match="encryption_key"):
        Sender(store, fleet_server="http://127.0.0.1:1", api_key=API_KEY, keyring=Keyring(), machine=machine)
    Sender(
        store,
        fleet_server="http://127.0.0.1:1",
        api_key=API_KEY,
        keyring=Keyring(),
        machine=machine,
        allow_plaintext=True,
    )


def test_store_is_encrypted_at_rest_and_exports_decrypted(store, keys):
    fill(store, 3)
    raw = sqlite3.connect(store.path).execute("SELECT body FROM logs").fetchall()
    assert all(b"WiFi status" not in bytes(r[0]) and b"SomeSSID" not in bytes(r[0]) for r in raw)
    exported = list(store.iter_logs(widget_type="wifi"))
    assert [e.message for e in exported] == ["WiFi status checked #0"]
    assert exported[0].data["ssid"] == "SomeSSID-5"


def test_wrong_key_gives_a_clear_error(store, tmp_path):
    fill(store, 1)
    other = LocalStore(store.path, Keyring.from_base64([generate_encryption_key()]))
    with pytest.raises(StoreKeyError, match="not configured"):
        list(other.iter_logs())


def test_moved_ciphertext_does_not_decrypt(store):
    fill(store, 2)
    conn = sqlite3.connect(store.path)
    conn.execute("UPDATE logs SET level = 'ERROR' WHERE id = 1")
    conn.commit()
    with pytest.raises(StoreKeyError, match="altered"):
        list(store.iter_logs())


def test_size_cap_drops_oldest_and_counts_them(tmp_path, keys):
    store = LocalStore(tmp_path / "small.db", Keyring.from_base64([keys["current"]]), max_bytes=2000)
    fill(store, 20)
    dropped = store.enforce_limits()
    assert dropped["dropped_unsent"] > 0
    remaining = list(store.iter_logs())
    assert remaining[-1].message.endswith("#19")  # the newest survive
    assert len(remaining) == 20 - dropped["dropped_unsent"]
    assert store.status()["counters"]["dropped_unsent"] == dropped["dropped_unsent"]


def test_age_cap_drops_old_logs(store):
    fill(store, 2, start=datetime.now(UTC) - timedelta(days=8))
    fill(store, 1)
    assert store.enforce_limits()["dropped_unsent"] == 2
    assert len(list(store.iter_logs())) == 1


@pytest.mark.parametrize(
    ("status", "reply", "outcome"),
    [
        (202, {"status": "queued"}, "sent"),
        (200, {"status": "duplicate"}, "sent"),
        (200, {"status": "ok"}, "retry"),  # a proxy or captive portal, not the fleet server
        (None, None, "retry"),
        (503, None, "retry"),
        (429, None, "retry"),
        (408, None, "retry"),
        (400, {"detail": "kid: ..."}, "quarantine"),
        (401, None, "quarantine"),
        (413, None, "quarantine"),
        (422, {"detail": []}, "quarantine"),
    ],
)
def test_classify(status, reply, outcome):
    assert classify(status, reply) == outcome


def test_backoff_is_jittered_bounded_and_honours_retry_after():
    rng = random.Random(1)
    delays = [backoff_delay(n, None, rng) for n in range(12)]
    assert all(0 <= d <= min(900, 5 * 2**n) for n, d in enumerate(delays))
    assert len(set(delays)) == len(delays)
    assert backoff_delay(0, 60, rng) >= 60


def test_https_with_a_custom_ca_bundle(
    store, start_ingest, server_config, keys, machine, drain, db, senders, tmp_path_factory
):
    """The sender speaks HTTPS; a private CA works through ca_bundle, and an unknown CA is refused."""
    from ..tls import make_ca_and_server_cert

    folder = tmp_path_factory.mktemp("tls")
    server = start_ingest(server_config, tls=make_ca_and_server_cert(folder))
    assert server.url.startswith("https://")
    fill(store, 3)
    untrusted = sender_for(store, server.url, keys, machine, senders)
    report = untrusted.run_cycle()
    assert (report.sent_batches, report.retried) == (0, 1)
    assert "CERTIFICATE_VERIFY_FAILED" in store.status()["last_error"]
    trusted = sender_for(store, server.url, keys, machine, senders, ca_bundle=str(folder / "ca.pem"))
    assert trusted.run_cycle(now=time.time() + 10**6).sent_logs == 3
    drain()
    assert len(rows_for_machine(db, machine()["machine_id"])) == 3
