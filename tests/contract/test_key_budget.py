"""The GCM budget: a key of its own for every batch and every agent store record, weak keys and nonces refused.

A shared payload key would otherwise seal every batch and every stored log of the fleet and pass the 2^32
random-nonce limit of NIST SP 800-38D within days (docs/protocol.md, section 15). Against the real ingest
service, worker, PostgreSQL and the agent's SQLite store.
"""

from __future__ import annotations

import base64
import json
import os
import random
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from atlas.agent.config import AgentConfigError, load_agent_config
from atlas.agent.sender import Sender
from atlas.agent.store import STORE_AAD_LABEL, LocalStore, StoreKeyError
from atlas.contract import (
    BATCH_KEY_INFO,
    STORE_RECORD_KEY_INFO,
    EnvelopeError,
    Key,
    Keyring,
    WeakKeyError,
    generate_encryption_key,
    parse_envelope,
    parse_key,
    seal,
    weak_key_reason,
)
from atlas.contract import keys as contract_keys
from atlas.core.config import ConfigError, settings_from_mapping

from .. import batches
from ..core.test_metrics import scrape, value
from ..fix_services import API_KEY

DOC_EXAMPLE_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
WEAK_KEYS = {
    "all zero": base64.b64encode(bytes(32)).decode(),
    "the documentation's example": DOC_EXAMPLE_KEY,
    "one repeated byte": base64.b64encode(b"\xff" * 32).decode(),
    "counting down": base64.b64encode(bytes(range(32, 0, -1))).decode(),
    "counting in steps": base64.b64encode(bytes(range(0, 96, 3))).decode(),
}
LEGACY_METRIC = "atlas_batches_legacy_key_total"


# --- weak keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", WEAK_KEYS.values(), ids=WEAK_KEYS.keys())
def test_weak_keys_are_refused(text: str) -> None:
    with pytest.raises(WeakKeyError) as raised:
        parse_key(text)
    assert text not in str(raised.value)
    with pytest.raises(WeakKeyError):
        Keyring.from_base64([generate_encryption_key(), text])


def test_random_keys_are_not_weak() -> None:
    for _ in range(1000):
        assert weak_key_reason(os.urandom(32)) is None


@pytest.mark.parametrize(
    ("server", "env", "setting"),
    [
        ({"encryption_key": DOC_EXAMPLE_KEY}, {}, "server.encryption_key"),
        ({"encryption_keys": [WEAK_KEYS["all zero"]]}, {}, "server.encryption_keys"),
        ({}, {"FLEET_ENCRYPTION_KEY": DOC_EXAMPLE_KEY}, "FLEET_ENCRYPTION_KEY"),
        ({"db_encryption_key": WEAK_KEYS["all zero"]}, {}, "server.db_encryption_key"),
    ],
)
def test_server_config_refuses_weak_keys(server: dict, env: dict, setting: str) -> None:
    config = {"server": {"api_key": API_KEY, "encryption_key": generate_encryption_key(), **server}}
    with pytest.raises(ConfigError) as raised:
        settings_from_mapping(config, env=env)
    message = str(raised.value)
    assert message.startswith(f"{setting}: key is "), message
    assert "atlas-server keygen" in message
    assert DOC_EXAMPLE_KEY not in message


def test_documented_weak_key_message(make_settings) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        make_settings(server={"encryption_key": DOC_EXAMPLE_KEY})
    assert f"`` {raised.value} ``" in " ".join(doc.split())


def test_agent_config_refuses_weak_keys(tmp_path: Path) -> None:
    for text in (DOC_EXAMPLE_KEY, WEAK_KEYS["all zero"]):
        path = tmp_path / "agent.yaml"
        path.write_text(yaml.safe_dump({"fleet_server": "https://fleet.example.com:8768", "encryption_key": text}))
        with pytest.raises(AgentConfigError, match=r"^encryption_key: key is ") as raised:
            load_agent_config(path)
        assert text not in str(raised.value)


def test_keygen_refuses_a_weak_random_output(monkeypatch) -> None:
    monkeypatch.setattr(contract_keys.os, "urandom", lambda n: bytes(n))  # a broken random source
    with pytest.raises(WeakKeyError):
        generate_encryption_key()


# --- nonces and salts --------------------------------------------------------------------------


def test_all_zero_nonce_and_salt_are_refused(keys: dict[str, str]) -> None:
    key = Key.from_base64(keys["current"])
    envelope = batches.sealed(batches.content(1), keys["current"])
    for field, size in (("nonce", 12), ("salt", 32)):
        with pytest.raises(EnvelopeError, match=rf"^{field}: must not be all zero bytes"):
            parse_envelope(dict(envelope, **{field: base64.b64encode(bytes(size)).decode()}))
    with pytest.raises(EnvelopeError, match=r"^nonce: must not be all zero bytes"):
        parse_envelope(dict(batches.sealed(batches.content(1), keys["current"], legacy=True), nonce="A" * 16))
    stamp = batches.now_stamp()
    with pytest.raises(ValueError, match="nonce"):
        seal(b"{}", key, batch_id=str(uuid.uuid4()), created_at=stamp, nonce=bytes(12))
    with pytest.raises(ValueError, match="salt"):
        seal(b"{}", key, batch_id=str(uuid.uuid4()), created_at=stamp, salt=bytes(32))


# --- batches through the real ingest service ---------------------------------------------------


def _rows(db, machine_id: str) -> list[tuple]:
    return db.execute(
        "SELECT timestamp, widget_type, message FROM widget_logs WHERE machine_id = %s ORDER BY timestamp",
        (machine_id,),
    ).fetchall()


def test_agent_batches_carry_a_salt_and_reach_postgresql(tmp_path, ingest, keys, drain, db) -> None:
    """The agent seals every batch under its own key; ingest derives it and the worker stores the logs."""
    store = LocalStore(tmp_path / "atlas.db", Keyring.from_base64([keys["current"]]))
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    for log in batches.logs(4, start=start):
        store.add(**log)
    info = batches.machine()
    with Sender(
        store,
        fleet_server=ingest.url,
        api_key=API_KEY,
        keyring=Keyring.from_base64([keys["current"]]),
        machine=lambda: info,
        rng=random.Random(3),
    ) as sender:
        sender.seal_pending()
        for log in batches.logs(2, start=start + timedelta(minutes=1)):
            store.add(**log)
        sender.seal_pending()
        bodies = [json.loads(b.body) for b in store.due_batches()]
        before = scrape(ingest.url)
        report = sender.run_cycle()
    assert (report.sent_batches, report.sent_logs, report.quarantined) == (2, 6, 0)
    assert value(scrape(ingest.url), LEGACY_METRIC) == value(before, LEGACY_METRIC), "no legacy batch"
    salts = [base64.b64decode(body["salt"]) for body in bodies]
    assert [len(s) for s in salts] == [32, 32]
    assert salts[0] != salts[1]
    key = Key.from_base64(keys["current"])
    envelope = parse_envelope(bodies[0])
    with pytest.raises(InvalidTag):  # not sealed under the shared key itself
        key.aead().decrypt(envelope.nonce, envelope.ciphertext, envelope.associated_data())
    key.derive_aead(envelope.salt, BATCH_KEY_INFO).decrypt(
        envelope.nonce, envelope.ciphertext, envelope.associated_data()
    )
    drain()
    assert len(_rows(db, info["machine_id"])) == 6


def test_legacy_envelope_without_salt_is_accepted_and_counted(ingest, keys, drain, db) -> None:
    content = batches.content(3)
    legacy = batches.sealed(content, keys["previous"], legacy=True)
    assert "salt" not in legacy
    before = scrape(ingest.url)
    reply = ingest.post(legacy)
    assert reply.status_code == 202, reply.text
    salted = ingest.post(batches.sealed(batches.content(1), keys["current"]))
    assert salted.status_code == 202, salted.text
    assert value(scrape(ingest.url), LEGACY_METRIC) - value(before, LEGACY_METRIC) == 1
    assert ingest.post(legacy).status_code == 200
    drain()
    assert [r[2] for r in _rows(db, content["machine"]["machine_id"])] == [log["message"] for log in content["logs"]]


def test_batch_with_changed_salt_fails_authentication(ingest, keys) -> None:
    envelope = batches.sealed(batches.content(1), keys["current"])
    salt = bytearray(base64.b64decode(envelope["salt"]))
    salt[5] ^= 0x01
    for changed in (
        dict(envelope, salt=base64.b64encode(bytes(salt)).decode()),
        {k: v for k, v in envelope.items() if k != "salt"},
    ):
        reply = ingest.post(changed)
        assert reply.status_code == 400
        assert reply.json() == {
            "detail": "ciphertext: authentication failed: wrong key, or the envelope was altered",
            "field": "ciphertext",
        }
    assert ingest.post(envelope).status_code == 202


def test_zero_nonce_is_refused_over_http(ingest, keys) -> None:
    envelope = dict(batches.sealed(batches.content(1), keys["current"]), nonce="AAAAAAAAAAAAAAAA")
    reply = ingest.post(envelope)
    assert reply.status_code == 400
    assert reply.json()["field"] == "nonce"


# --- the agent's local store -------------------------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE logs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp    TEXT NOT NULL,
    level        TEXT NOT NULL,
    widget_type  TEXT NOT NULL,
    kid          TEXT,
    body         BLOB NOT NULL,
    size         INTEGER NOT NULL,
    batch_id     TEXT
);
"""


def _aad(log: dict) -> bytes:
    return "\n".join((STORE_AAD_LABEL, log["timestamp"], log["level"], log["widget_type"])).encode()


def _write_old_store(path: Path, key: Key, logs: list[dict]) -> None:
    """A store as agents before per-record keys left it: every row sealed under the configured key itself."""
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
        for log in logs:
            plain = json.dumps({"message": log["message"], "data": log["data"]}).encode()
            nonce = os.urandom(12)
            body = nonce + key.aead().encrypt(nonce, plain, _aad(log))
            conn.execute(
                "INSERT INTO logs (timestamp, level, widget_type, kid, body, size) VALUES (?, ?, ?, ?, ?, ?)",
                (log["timestamp"], log["level"], log["widget_type"], key.kid, body, len(body)),
            )
    conn.close()


def test_store_records_get_their_own_keys_and_old_rows_stay_readable(tmp_path, keys) -> None:
    key = Key.from_base64(keys["current"])
    path = tmp_path / "old.db"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    old_logs, new_logs = batches.logs(3, start=start), batches.logs(3, start=start + timedelta(minutes=1))
    _write_old_store(path, key, old_logs)

    store = LocalStore(path, Keyring([key]))  # migrates: adds the salt column
    for log in new_logs:
        store.add(**log)
    LocalStore(path, Keyring([key]))  # opening a migrated store again changes nothing
    assert [(lg.message, lg.data) for lg in store.iter_logs()] == [
        (lg["message"], lg["data"]) for lg in old_logs + new_logs
    ]

    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT timestamp, level, widget_type, body, salt FROM logs ORDER BY id").fetchall()
    conn.close()
    assert [salt is None for *_, salt in rows] == [True] * 3 + [False] * 3
    new_salts = [bytes(salt) for *_, salt in rows[3:]]
    assert len(set(new_salts)) == 3
    assert {len(s) for s in new_salts} == {32}
    for timestamp, level, widget_type, body, salt in rows[3:]:
        log = {"timestamp": timestamp, "level": level, "widget_type": widget_type}
        with pytest.raises(InvalidTag):  # not under the configured key itself
            key.aead().decrypt(body[:12], body[12:], _aad(log))
        with pytest.raises(InvalidTag):  # nor under the key a batch with this salt would get
            key.derive_aead(bytes(salt), BATCH_KEY_INFO).decrypt(body[:12], body[12:], _aad(log))
        key.derive_aead(bytes(salt), STORE_RECORD_KEY_INFO).decrypt(body[:12], body[12:], _aad(log))


def test_store_refuses_an_altered_salt_or_a_zero_nonce(tmp_path, keys) -> None:
    store = LocalStore(tmp_path / "atlas.db", Keyring.from_base64([keys["current"]]))
    for log in batches.logs(3):
        store.add(**log)
    with sqlite3.connect(store.path) as conn:
        first, second, _ = (r[0] for r in conn.execute("SELECT id FROM logs ORDER BY id"))
        conn.execute("UPDATE logs SET salt = ? WHERE id = ?", (os.urandom(32), first))
    conn.close()
    with pytest.raises(StoreKeyError, match=f"log {first} does not decrypt"):
        list(store.iter_logs())

    # an all-zero nonce is refused even when the row decrypts: a correct writer never makes one
    key = Key.from_base64(keys["current"])
    with sqlite3.connect(store.path) as conn:
        conn.execute("DELETE FROM logs WHERE id = ?", (first,))
        timestamp, level, widget_type, salt = conn.execute(
            "SELECT timestamp, level, widget_type, salt FROM logs WHERE id = ?", (second,)
        ).fetchone()
        log = {"timestamp": timestamp, "level": level, "widget_type": widget_type}
        aead: AESGCM = key.derive_aead(bytes(salt), STORE_RECORD_KEY_INFO)
        body = bytes(12) + aead.encrypt(bytes(12), b'{"message":"x","data":{}}', _aad(log))
        conn.execute("UPDATE logs SET body = ? WHERE id = ?", (body, second))
    conn.close()
    with pytest.raises(StoreKeyError, match=f"log {second} has an all-zero nonce"):
        list(store.iter_logs())
