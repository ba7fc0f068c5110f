"""Contract v2 over real HTTP: enrollment, signed batches, identity from the credential, revocation.

A real ``atlas-server ingest`` with an HPKE keyring, the real worker, PostgreSQL and Redis. Requests are
signed with the contract's own ``sign_request``, as an agent signs them.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from atlas.contract import (
    SUITE_X25519,
    DeviceKey,
    HpkePublicKey,
    seal_v2,
    select_public_key,
    sign_request,
)
from atlas.core.devices import create_enroll_secret, revoke_device

from .. import batches
from ..fix_processes import BIN, IngestServer, service_env

V2_PATH = "/api/fleet/v2/widget-logs"


@dataclass
class Mac:
    """A Mac as a v2 agent is: its hardware, its machine identity, its own key; a device id once enrolled."""

    hardware_uuid: str = field(default_factory=lambda: str(uuid.uuid4()).upper())
    machine_id: str = field(default_factory=lambda: f"mac-{uuid.uuid4().hex[:12]}")
    serial_number: str = field(default_factory=lambda: "C02" + uuid.uuid4().hex[:9].upper())
    key: DeviceKey = field(default_factory=DeviceKey.generate)
    device_id: str | None = None
    server_keys: list[HpkePublicKey] = field(default_factory=list)

    def enroll(self, server: IngestServer, secret: str, **changes: Any) -> httpx.Response:
        body = {
            "enroll_secret": secret,
            "hardware_uuid": self.hardware_uuid,
            "serial_number": self.serial_number,
            "machine_id": self.machine_id,
            "hostname": "studio-mac.local",
            "public_key": self.key.public_b64,
            **changes,
        }
        response = httpx.post(f"{server.url}/api/fleet/enroll", json=body, timeout=30)
        if response.status_code == 201:
            self.device_id = response.json()["device_id"]
            self.server_keys = [HpkePublicKey.from_json(k) for k in response.json()["hpke_keys"]]
        return response

    def batch(self, count: int = 3, *, suite: str = SUITE_X25519, **machine: str) -> dict[str, Any]:
        """A sealed v2 envelope of ``count`` logs from this Mac (or one claiming ``machine`` fields)."""
        content = {
            "machine": batches.machine(
                **{"machine_id": self.machine_id, "serial_number": self.serial_number, **machine}
            ),
            "logs": batches.logs(count),
        }
        assert self.device_id is not None
        return seal_v2(
            select_public_key(self.server_keys, suite),
            json.dumps(content).encode(),
            device_id=self.device_id,
            batch_id=str(uuid.uuid4()),
            created_at=batches.now_stamp(),
        )

    def signed(self, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
        assert self.device_id is not None
        headers = sign_request(self.key, self.device_id, "POST", V2_PATH, body, timestamp=timestamp)
        return {**headers, "Content-Type": "application/json"}

    def send(self, server: IngestServer, envelope: dict[str, Any] | bytes, **kw: Any) -> httpx.Response:
        body = envelope if isinstance(envelope, bytes) else json.dumps(envelope).encode()
        return httpx.post(f"{server.url}{V2_PATH}", content=body, headers=self.signed(body, **kw), timeout=30)


@pytest.fixture
def mac(v2_ingest: IngestServer, secret: str) -> Mac:
    mac = Mac()
    assert mac.enroll(v2_ingest, secret).status_code == 201
    return mac


def stored(db: psycopg.Connection, batch_id: str) -> list[tuple]:
    return db.execute(
        "SELECT machine_id, serial_number, message FROM widget_logs WHERE batch_id = %s ORDER BY id", (batch_id,)
    ).fetchall()


def test_enrollment_round_trip(v2_ingest, secret, db, hpke_keyring, drain) -> None:
    mac = Mac()
    response = mac.enroll(v2_ingest, secret)
    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["machine_id"] == mac.machine_id
    assert answer["replaced_device_id"] is None
    assert answer["hpke_keys"] == [key.to_json() for key in hpke_keyring[1].public_keys()]
    row = db.execute(
        "SELECT machine_id, hardware_uuid, serial_number, public_key FROM devices WHERE device_id = %s",
        (answer["device_id"],),
    ).fetchone()
    assert row == (mac.machine_id, mac.hardware_uuid, mac.serial_number, mac.key.public_raw)

    for suite in ("mlkem768-x25519", SUITE_X25519):
        envelope = mac.batch(4, suite=suite)
        sent = mac.send(v2_ingest, envelope)
        assert sent.status_code == 202, sent.text
        assert sent.json()["status"] == "queued"
        assert sent.json()["accepted"] == 4
        assert sent.json()["hpke_keys"] == answer["hpke_keys"]
        drain()
        rows = stored(db, envelope["batch_id"])
        assert len(rows) == 4
        assert {r[:2] for r in rows} == {(mac.machine_id, mac.serial_number)}
    seen = db.execute("SELECT last_seen_at IS NOT NULL FROM devices WHERE device_id = %s", (mac.device_id,))
    assert seen.fetchone() == (True,)


def test_re_enrollment_replaces_the_old_credential(v2_ingest, secret, mac, drain, db) -> None:
    old_id, old_key = mac.device_id, mac.key
    assert mac.send(v2_ingest, mac.batch()).status_code == 202  # cached in ingest now
    mac.key = DeviceKey.generate()  # the Mac was reinstalled: a new key
    again = mac.enroll(v2_ingest, secret)
    assert again.status_code == 201, again.text
    assert again.json()["replaced_device_id"] == old_id
    assert again.json()["machine_id"] == mac.machine_id
    assert mac.send(v2_ingest, mac.batch()).status_code == 202

    stale = Mac(mac.hardware_uuid, mac.machine_id, mac.serial_number, old_key, old_id, mac.server_keys)
    refused = stale.send(v2_ingest, stale.batch())
    assert refused.status_code == 401
    assert "replaced" in refused.json()["detail"]


def test_other_hardware_cannot_take_an_enrolled_machine_id(v2_ingest, secret, mac) -> None:
    thief = Mac(machine_id=mac.machine_id)
    response = thief.enroll(v2_ingest, secret)
    assert response.status_code == 409
    assert response.json()["field"] == "machine_id"


@pytest.mark.parametrize("why", ["expired", "used up", "revoked", "unknown"])
def test_an_unusable_secret_is_refused_alike(v2_ingest, db, why: str) -> None:
    secret, row = create_enroll_secret(db, max_uses=1)
    if why == "expired":
        db.execute("UPDATE enroll_secrets SET expires_at = now() - interval '1 s' WHERE id = %s", (row.id,))
    elif why == "used up":
        assert Mac().enroll(v2_ingest, secret).status_code == 201
    elif why == "revoked":
        db.execute("UPDATE enroll_secrets SET revoked_at = now() WHERE id = %s", (row.id,))
    else:
        secret = secret[:-4] + "AAAA"
    mac = Mac()
    response = mac.enroll(v2_ingest, secret)
    assert response.status_code == 401
    assert response.json()["detail"] == "enroll_secret: not valid (unknown, expired, used up or revoked)"
    assert db.execute("SELECT count(*) FROM devices WHERE hardware_uuid = %s", (mac.hardware_uuid,)).fetchone() == (0,)


@pytest.mark.parametrize(
    "change",
    [{"public_key": "A" * 44}, {"public_key": "not base64"}, {"hardware_uuid": ""}, {"extra": "x"}],
)
def test_a_malformed_enrollment_is_a_400(v2_ingest, secret, change) -> None:
    response = Mac().enroll(v2_ingest, secret, **change)
    assert response.status_code == 400, response.text


def test_a_revoked_device_gets_401_and_nothing_is_stored(v2_ingest, mac, db, drain) -> None:
    assert mac.send(v2_ingest, mac.batch()).status_code == 202  # its row is cached in ingest now
    other = Mac()
    assert other.enroll(v2_ingest, create_enroll_secret(db)[0]).status_code == 201
    assert revoke_device(db, mac.device_id) is not None
    envelope = mac.batch()
    deadline = time.monotonic() + 0.5  # the NOTIFY reaches ingest within milliseconds; well before the cache TTL
    while (response := mac.send(v2_ingest, envelope)).status_code == 202 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert response.status_code == 401
    assert response.json()["detail"] == "Atlas-Device: device revoked; enroll again"
    assert mac.send(v2_ingest, mac.batch()).status_code == 401
    drain()
    assert stored(db, envelope["batch_id"]) == []
    assert other.send(v2_ingest, other.batch()).status_code == 202  # nothing else is affected


@pytest.mark.parametrize(
    ("claim", "field"),
    [
        ({"machine_id": "someone-else"}, "machine.machine_id"),
        ({"serial_number": "C02OTHER0001"}, "machine.serial_number"),
    ],
)
def test_a_device_cannot_store_under_another_identity(v2_ingest, mac, db, drain, claim, field) -> None:
    victim = Mac()
    assert victim.enroll(v2_ingest, create_enroll_secret(db)[0]).status_code == 201
    if claim.get("machine_id"):
        claim = {"machine_id": victim.machine_id}
    envelope = mac.batch(**claim)
    response = mac.send(v2_ingest, envelope)
    assert response.status_code == 403, response.text
    assert response.json()["field"] == field
    drain()
    assert stored(db, envelope["batch_id"]) == []


def test_an_envelope_sealed_for_another_device_is_refused(v2_ingest, mac, db) -> None:
    victim = Mac()
    assert victim.enroll(v2_ingest, create_enroll_secret(db)[0]).status_code == 201
    captured = victim.batch()
    response = mac.send(v2_ingest, captured)  # re-signed by another device
    assert response.status_code == 403
    assert response.json()["field"] == "device_id"


def test_a_replayed_signed_request_is_idempotent(v2_ingest, mac, db, drain) -> None:
    envelope = mac.batch(5)
    body = json.dumps(envelope).encode()
    headers = mac.signed(body)
    first = httpx.post(f"{v2_ingest.url}{V2_PATH}", content=body, headers=headers, timeout=30)
    replay = httpx.post(f"{v2_ingest.url}{V2_PATH}", content=body, headers=headers, timeout=30)
    assert first.status_code == 202
    assert replay.status_code == 200
    assert replay.json()["status"] == "duplicate"
    drain()
    assert len(stored(db, envelope["batch_id"])) == 5


@pytest.mark.parametrize("skew", [-310, 310])
def test_clock_skew_is_refused(v2_ingest, mac, skew: int) -> None:
    response = mac.send(v2_ingest, mac.batch(), timestamp=int(time.time()) + skew)
    assert response.status_code == 401
    assert "clock skew" in response.json()["detail"]


def test_a_tampered_body_or_wrong_key_is_refused(v2_ingest, mac) -> None:
    body = json.dumps(mac.batch()).encode()
    headers = mac.signed(body)
    tampered = httpx.post(f"{v2_ingest.url}{V2_PATH}", content=body + b" ", headers=headers, timeout=30)
    assert tampered.status_code == 401
    assert tampered.json()["field"] == "Atlas-Signature"
    impostor = Mac(device_id=mac.device_id, server_keys=mac.server_keys)  # knows the id, not the key
    assert impostor.send(v2_ingest, mac.batch()).status_code == 401
    unsigned = httpx.post(f"{v2_ingest.url}{V2_PATH}", content=body, headers={"Content-Type": "application/json"})
    assert unsigned.status_code == 401
    assert unsigned.json()["field"] == "Atlas-Device"
    unknown = Mac(device_id=str(uuid.uuid4()), server_keys=mac.server_keys)
    response = unknown.send(v2_ingest, mac.batch())
    assert response.status_code == 401
    assert response.json()["detail"] == "Atlas-Device: unknown device; enroll again"


def test_v1_and_v2_side_by_side(v2_ingest, mac, keys, db, drain) -> None:
    v1_batch = batches.sealed(batches.content(2), keys["current"])
    assert v2_ingest.post(v1_batch).status_code == 202
    envelope = mac.batch(2)
    assert mac.send(v2_ingest, envelope).status_code == 202
    drain()
    assert len(stored(db, v1_batch["batch_id"])) == 2
    assert len(stored(db, envelope["batch_id"])) == 2


def test_each_machine_records_the_protocol_it_last_spoke(v2_ingest, secret, keys, db, drain) -> None:
    mac = Mac()
    v1_batch = batches.sealed(
        {"machine": batches.machine(mac.machine_id, serial_number=mac.serial_number), "logs": batches.logs(1)},
        keys["current"],
    )
    assert v2_ingest.post(v1_batch).status_code == 202
    other = batches.content(1)
    assert v2_ingest.post(batches.sealed(other, keys["current"])).status_code == 202
    drain()
    protocol = "SELECT protocol FROM machines WHERE machine_id = %s"
    assert db.execute(protocol, (mac.machine_id,)).fetchone() == (1,)
    assert mac.enroll(v2_ingest, secret).status_code == 201  # the Mac moves to v2
    assert mac.send(v2_ingest, mac.batch(1)).status_code == 202
    drain()
    assert db.execute(protocol, (mac.machine_id,)).fetchone() == (2,)
    assert db.execute(protocol, (other["machine"]["machine_id"],)).fetchone() == (1,)


def test_accept_v1_false_refuses_v1_with_a_reason(start_ingest, v2_config, keys, db, drain) -> None:
    config = {name: dict(values) for name, values in v2_config.items()}
    config["server"]["accept_v1"] = False
    server = start_ingest(config)
    v1_batch = batches.sealed(batches.content(2), keys["current"])
    response = server.post(v1_batch)
    assert response.status_code == 403
    assert "server.accept_v1: false" in response.json()["detail"]
    mac = Mac()
    assert mac.enroll(server, create_enroll_secret(db)[0]).status_code == 201
    assert mac.send(server, mac.batch()).status_code == 202
    drain()
    assert stored(db, v1_batch["batch_id"]) == []


def test_v2_is_off_without_a_keyring(ingest, secret) -> None:
    response = Mac().enroll(ingest, secret)
    assert response.status_code == 404
    assert "server.hpke_keyring" in response.json()["detail"]
    assert "Contract v2 (enrolled devices) is off" in ingest.logs()


def test_rate_limits_are_per_device(start_ingest, v2_config, db) -> None:
    config = {name: dict(values) for name, values in v2_config.items()}
    config["server"].update(rate_limit_per_device=1, rate_limit_per_device_burst=2)
    server = start_ingest(config)
    secret = create_enroll_secret(db)[0]
    noisy, quiet = Mac(), Mac()
    assert noisy.enroll(server, secret).status_code == 201
    assert quiet.enroll(server, secret).status_code == 201
    codes = [noisy.send(server, noisy.batch()).status_code for _ in range(4)]
    assert codes[:2] == [202, 202]
    assert 429 in codes[2:]
    assert quiet.send(server, quiet.batch()).status_code == 202


def test_an_admin_sees_re_enrollment_and_revokes_a_device_on_the_dashboard(v2_ingest, secret, admin, viewer) -> None:
    mac = Mac()
    assert mac.enroll(v2_ingest, secret).status_code == 201
    old_id = mac.device_id
    mac.key = DeviceKey.generate()
    assert mac.enroll(v2_ingest, secret).status_code == 201  # reinstalled
    assert mac.send(v2_ingest, mac.batch()).status_code == 202  # cached in ingest now
    assert viewer.get("/admin/devices").status_code == 403
    listed = admin.get("/admin/devices")
    assert listed.status_code == 200, listed.text[-2000:]
    page = listed.text
    rows = dict(re.findall(r'data-device-id="([^"]+)".*?<td class="state">(.*?)</td>', page, re.DOTALL))
    assert rows[mac.device_id] == "live"
    assert rows[old_id].startswith("replaced by re-enrollment")
    assert mac.device_id in rows[old_id]
    token = admin.csrf("/admin/devices")
    done = admin.post(f"/admin/devices/{mac.device_id}/revoke", {"csrf_token": token})
    assert done.status_code == 303
    assert done.headers["location"].endswith("done=device-revoked")
    deadline = time.monotonic() + 0.5
    while (response := mac.send(v2_ingest, mac.batch())).status_code == 202 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert response.status_code == 401
    again = admin.post(f"/admin/devices/{mac.device_id}/revoke", {"csrf_token": token})
    assert again.headers["location"].endswith("done=device-not-revoked")


def test_an_unreadable_keyring_stops_ingest_with_one_line(v2_config, tmp_path) -> None:
    config = {name: dict(values) for name, values in v2_config.items()}
    config["server"]["hpke_keyring"] = str(tmp_path / "missing.json")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [BIN / "atlas-server", "ingest", "--config", path, "--host", "127.0.0.1", "--port", "1"],
        capture_output=True,
        text=True,
        env=service_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"atlas-server: configuration error: server.hpke_keyring: {tmp_path / 'missing.json'}: cannot read the"
        " keyring: No such file or directory"
    ]
