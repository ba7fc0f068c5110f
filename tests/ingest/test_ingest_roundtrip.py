"""An encrypted batch posted over HTTP ends as rows holding exactly the data sent."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from .. import batches
from ..fix_services import API_KEY


def stored_rows(db, batch_id: str) -> list[tuple]:
    return db.execute(
        "SELECT machine_id, serial_number, timestamp, level, widget_type, message, data, received_at"
        " FROM widget_logs WHERE batch_id = %s ORDER BY id",
        (batch_id,),
    ).fetchall()


def test_encrypted_batch_round_trip(ingest, keys, drain, db):
    body = batches.content(15)
    envelope = batches.sealed(body, keys["current"])
    response = ingest.post(envelope)
    assert response.status_code == 202, response.text
    assert response.json() == {"status": "queued", "batch_id": envelope["batch_id"], "accepted": 15}

    drain()
    rows = stored_rows(db, envelope["batch_id"])
    assert len(rows) == 15
    for row, sent in zip(rows, body["logs"], strict=True):
        machine_id, serial, timestamp, level, widget_type, message, data, _ = row
        assert machine_id == body["machine"]["machine_id"]
        assert serial == body["machine"]["serial_number"]
        assert timestamp == datetime.fromisoformat(sent["timestamp"])
        assert (level, widget_type, message, data) == (
            sent["level"],
            sent["widget_type"],
            sent["message"],
            sent["data"],
        )
    machine = db.execute(
        "SELECT serial_number, hostname, model, os_version, agent_version FROM machines WHERE machine_id = %s",
        (body["machine"]["machine_id"],),
    ).fetchone()
    m = body["machine"]
    assert machine == (m["serial_number"], m["hostname"], m["model"], m["os_version"], m["agent_version"])
    batch = db.execute(
        "SELECT machine_id, log_count, kid FROM batches WHERE batch_id = %s", (envelope["batch_id"],)
    ).fetchone()
    assert batch == (m["machine_id"], 15, envelope["kid"])

    log = ingest.logs()
    assert f"Successfully decrypted widget logs payload (batch_id={envelope['batch_id']}, logs=15" in log
    assert keys["current"] not in log
    assert keys["previous"] not in log
    assert "SomeSSID-5" not in log  # decrypted contents are never logged


def test_uncompressed_and_unicode_round_trip(ingest, keys, drain, db):
    body = batches.content(2)
    body["logs"][0]["message"] = "Café ☕ network « Büro » 📡"
    body["logs"][1]["data"] = {"ssid": "東京-WiFi", "nested": {"list": [1, 2.5, None, True, "x"]}}
    envelope = batches.sealed(body, keys["current"], compression="none")
    assert ingest.post(envelope).status_code == 202
    drain()
    rows = stored_rows(db, envelope["batch_id"])
    assert rows[0][5] == "Café ☕ network « Büro » 📡"
    assert rows[1][6] == body["logs"][1]["data"]


def test_previous_key_still_decrypts(ingest, keys, drain, db):
    envelope = batches.sealed(batches.content(2), keys["previous"])
    assert ingest.post(envelope).status_code == 202
    drain()
    assert len(stored_rows(db, envelope["batch_id"])) == 2


def test_both_auth_headers_accepted(ingest, keys):
    for headers in ({"Authorization": f"Bearer {API_KEY}"}, {"X-API-Key": API_KEY}):
        envelope = batches.sealed(batches.content(1), keys["current"])
        response = ingest.post(envelope, api_key=None, headers=headers)
        assert response.status_code == 202, (headers, response.text)


def test_replay_is_answered_duplicate_and_stored_once(ingest, keys, drain, db):
    envelope = batches.sealed(batches.content(4), keys["current"])
    assert ingest.post(envelope).status_code == 202
    again = ingest.post(envelope)
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "batch_id": envelope["batch_id"]}
    drain()
    assert ingest.post(envelope).json()["status"] == "duplicate"
    assert len(stored_rows(db, envelope["batch_id"])) == 4


def test_concurrent_replays_queue_once(ingest, keys, drain, db):
    envelope = batches.sealed(batches.content(3), keys["current"])
    with ThreadPoolExecutor(16) as pool:
        statuses = sorted(pool.map(lambda _: ingest.post(envelope).status_code, range(32)))
    assert statuses.count(202) == 1
    assert statuses.count(200) == 31
    drain()
    assert len(stored_rows(db, envelope["batch_id"])) == 3


def test_replay_after_marker_expired_still_stores_once(ingest, keys, drain, db, redis, settings):
    """Past the duplicate window the batch is queued again; the worker writes nothing twice."""
    from atlas.core.queue import accepted_marker

    envelope = batches.sealed(batches.content(3), keys["current"])
    assert ingest.post(envelope).status_code == 202
    drain()
    redis.delete(accepted_marker(settings, envelope["batch_id"]))
    assert ingest.post(envelope).status_code == 202
    drain()
    assert len(stored_rows(db, envelope["batch_id"])) == 3
    assert db.execute("SELECT count(*) FROM batches WHERE batch_id = %s", (envelope["batch_id"],)).fetchone() == (1,)


def test_re_sealed_batch_with_same_id_is_a_duplicate(ingest, keys, drain, db):
    """An agent that re-seals a spooled batch (new nonce) keeps its batch_id: still stored once."""
    body = batches.content(2)
    batch_id = str(uuid.uuid4())
    first = batches.sealed(body, keys["current"], batch_id=batch_id)
    second = batches.sealed(body, keys["previous"], batch_id=batch_id.upper())
    assert first["ciphertext"] != second["ciphertext"]
    assert ingest.post(first).status_code == 202
    assert ingest.post(second).status_code == 200
    drain()
    assert len(stored_rows(db, batch_id)) == 2


def test_plaintext_refused_when_a_key_is_configured(ingest, db):
    body = batches.plaintext_body(batches.content(1))
    response = ingest.post(body)
    assert response.status_code == 400
    assert "encryption required" in response.json()["detail"]
    assert db.execute("SELECT count(*) FROM batches WHERE batch_id = %s", (body["batch_id"],)).fetchone() == (0,)


def test_plaintext_accepted_when_allowed(start_ingest, server_config, keys, drain, db):
    config = json.loads(json.dumps(server_config))
    config["server"]["allow_plaintext"] = True
    server = start_ingest(config)
    body = batches.plaintext_body(batches.content(2))
    assert server.post(body).status_code == 202
    assert server.post(batches.sealed(batches.content(1), keys["current"])).status_code == 202
    assert "allow_plaintext is on" in server.logs()
    drain()
    assert len(stored_rows(db, body["batch_id"])) == 2


def test_no_key_configured_accepts_plaintext_and_warns(start_ingest, server_config, keys, drain, db):
    config = json.loads(json.dumps(server_config))
    del config["server"]["encryption_key"], config["server"]["encryption_keys"]
    server = start_ingest(config)
    assert "No encryption key configured" in server.logs()
    body = batches.plaintext_body(batches.content(1))
    assert server.post(body).status_code == 202
    envelope = batches.sealed(batches.content(1), keys["current"])
    response = server.post(envelope)
    assert response.status_code == 400
    assert response.json()["field"] == "kid"
    drain()
    assert len(stored_rows(db, body["batch_id"])) == 1


def test_health_readiness_and_openapi(ingest):
    import httpx

    assert httpx.get(f"{ingest.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{ingest.url}/readyz").json() == {"status": "ready"}
    schema = httpx.get(f"{ingest.url}/openapi.json").json()
    op = schema["paths"]["/api/fleet/widget-logs"]["post"]
    assert {"200", "202", "400", "401", "413", "415", "422", "503"} <= set(op["responses"])
    assert "EncryptedBody" in schema["components"]["schemas"]


def test_concurrent_distinct_batches_each_stored_once(ingest, keys, drain, db):
    """Many agents at once: every batch answered 202 and stored exactly once, however ingest grouped them."""
    envelopes = [batches.sealed(batches.content(3), keys["current"]) for _ in range(64)]
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda e: ingest.post(e), envelopes))
    assert [a.status_code for a in answers] == [202] * 64
    assert [a.json()["batch_id"] for a in answers] == [e["batch_id"] for e in envelopes]
    drain()
    ids = [e["batch_id"] for e in envelopes]
    stored = db.execute(
        "SELECT batch_id::text, count(*) FROM widget_logs WHERE batch_id::text = ANY(%s) GROUP BY 1", (ids,)
    ).fetchall()
    assert sorted(stored) == sorted((i, 3) for i in ids)
