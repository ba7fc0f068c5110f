"""The agent speaks contract v2: ``atlas-agent enroll`` against a real v2 ingest, then the real sender.

A real ``atlas-server ingest`` with an HPKE keyring, the real worker, PostgreSQL and Redis (the fixtures of
tests/ingest/test_v2_devices.py); the agent's own CLI and Sender, as on a Mac.
"""

from __future__ import annotations

import json
import random
import stat
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from atlas.agent.cli import main
from atlas.agent.enroll import credentials_path, key_path, load_enrollment
from atlas.agent.sender import Sender
from atlas.agent.store import LocalStore
from atlas.contract import DeviceKey, HpkeKeyring, HpkePrivateKey, Keyring
from atlas.core.devices import create_enroll_secret, revoke_device

from .. import batches
from ..fix_processes import free_port

REENROLL_LINE = (
    "Fleet server refused this Mac's device credential (HTTP 401: Atlas-Device: device revoked; enroll again): "
    "sending stopped; the Mac must enroll again (atlas-agent enroll --server URL --secret SECRET)"
)


@pytest.fixture
def agent_yaml(tmp_path: Path) -> Path:
    """An agent.yaml with its own state directory and a machine_id of its own (the hardware is this host)."""
    path = tmp_path / "agent.yaml"
    config = {"data_dir": str(tmp_path / "state"), "machine_id": f"mac-{uuid.uuid4().hex[:12]}"}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def state(agent_yaml: Path) -> Path:
    return Path(yaml.safe_load(agent_yaml.read_text())["data_dir"])


def enroll(agent_yaml: Path, server: str, secret: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["enroll", "--config", str(agent_yaml), "--server", server, "--secret", secret])
    out, err = capsys.readouterr()
    return status, out, err


def sender(data_dir: Path, server: str, keys: dict[str, str]) -> Sender:
    store = LocalStore(data_dir / "atlas-agent.db", Keyring.from_base64([keys["current"]]))
    machine = batches.machine(machine_id="what-the-collector-says", serial_number="C02COLLECTOR")
    return Sender(
        store, fleet_server=server, api_key="", keyring=Keyring(), machine=lambda: machine, data_dir=data_dir,
        rng=random.Random(7),
    )  # fmt: skip


def fill(store: LocalStore, count: int) -> None:
    for log in batches.logs(count, start=datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)):
        store.add(**log)


def rows(db, machine_id: str) -> list[tuple]:
    return db.execute(
        "SELECT machine_id, serial_number, message FROM widget_logs WHERE machine_id = %s ORDER BY id",
        (machine_id,),
    ).fetchall()


def test_enroll_then_send_v2_then_revoked(v2_ingest, secret, agent_yaml, capsys, db, drain, keys, caplog) -> None:
    status, out, err = enroll(agent_yaml, v2_ingest.url, secret, capsys)
    assert status == 0, err
    data_dir = state(agent_yaml)
    enrollment = load_enrollment(data_dir)
    assert enrollment is not None
    machine_id = yaml.safe_load(agent_yaml.read_text())["machine_id"]
    assert enrollment.machine_id == machine_id
    assert out.splitlines() == [
        f"Enrolled with {v2_ingest.url} as device {enrollment.device_id} (machine_id {machine_id}, "
        f"serial {enrollment.serial_number}); key and credentials in {data_dir} (mode 600); the agent now sends "
        "contract v2"
    ]
    for path in (key_path(data_dir), credentials_path(data_dir)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key_text = key_path(data_dir).read_text().strip()
    assert key_text not in out + err
    assert key_text not in credentials_path(data_dir).read_text()
    assert [p.name for p in data_dir.iterdir() if p.name.endswith(".part")] == []
    device = db.execute("SELECT machine_id FROM devices WHERE device_id = %s", (enrollment.device_id,)).fetchone()
    assert device == (machine_id,)

    assert main(["status", "--config", str(agent_yaml)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["device_id"], shown["fleet_server"]) == (enrollment.device_id, v2_ingest.url)

    caplog.set_level("INFO", logger="atlas.agent")
    with sender(data_dir, v2_ingest.url, keys) as agent:
        fill(agent.store, 5)
        report = agent.run_cycle()
        assert (report.sealed_batches, report.sent_batches, report.sent_logs) == (1, 1, 5)
        body = json.loads(agent.store._connect().execute("SELECT body FROM batches").fetchone()[0])
        assert (body["v"], body["device_id"], body["suite"]) == (2, enrollment.device_id, "mlkem768-x25519")
        drain()
        stored = rows(db, machine_id)
        assert len(stored) == 5
        assert {r[:2] for r in stored} == {(machine_id, enrollment.serial_number)}

        revoke_device(db, enrollment.device_id)
        fill(agent.store, 3)
        deadline, late = time.monotonic() + 2, 0
        while (report := agent.run_cycle()).sent_batches and time.monotonic() < deadline:
            late += report.sent_logs  # sent before the NOTIFY reached ingest (within milliseconds)
            fill(agent.store, 3)
            time.sleep(0.05)
        assert report.sent_batches == 0
        assert agent.halted is not None
        assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [REENROLL_LINE]
        before = agent.store.status()
        for _ in range(3):  # no tight retry loop: nothing is sealed, posted or logged again
            assert agent.run_cycle().sent_batches == 0
        assert agent.store.status() == before
        assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [REENROLL_LINE]
        drain()
        assert len(rows(db, machine_id)) == len(stored) + late  # the refused batch stored nothing
        assert (agent.store.status()["pending_batches"], agent.store.status()["quarantined_batches"]) == (1, 0)

        status, out, err = enroll(agent_yaml, v2_ingest.url, create_enroll_secret(db)[0], capsys)
        assert status == 0, err
        again = load_enrollment(data_dir)
        assert again is not None
        assert again.device_id != enrollment.device_id
        report = agent.run_cycle()  # the running sender picks up the new credentials
        assert agent.halted is None
        assert (report.sealed_batches, report.sent_batches, report.sent_logs) == (1, 1, 3)
        assert agent.store.status()["quarantined_batches"] == 0
        drain()
        assert len(rows(db, machine_id)) == len(stored) + late + 3  # the logs held back are delivered


def test_enroll_refusals_are_one_line(v2_ingest, agent_yaml, capsys, db) -> None:
    status, out, err = enroll(agent_yaml, v2_ingest.url, "atlas_enroll_wrong", capsys)
    assert (status, out) == (1, "")
    assert err.splitlines() == [
        f"atlas-agent: enrollment refused by {v2_ingest.url}: "
        "HTTP 401: enroll_secret: not valid (unknown, expired, used up or revoked)"
    ]
    assert not state(agent_yaml).exists() or list(state(agent_yaml).iterdir()) == []

    taken = yaml.safe_load(agent_yaml.read_text())["machine_id"]
    other = {"enroll_secret": create_enroll_secret(db)[0], "hardware_uuid": str(uuid.uuid4()).upper()}
    answer = httpx.post(
        f"{v2_ingest.url}/api/fleet/enroll",
        json={**other, "serial_number": "C02OTHER", "machine_id": taken, "public_key": DeviceKey.generate().public_b64},
    )
    assert answer.status_code == 201
    status, out, err = enroll(agent_yaml, v2_ingest.url, create_enroll_secret(db)[0], capsys)
    assert status == 1
    assert len(err.splitlines()) == 1
    assert err.startswith(f"atlas-agent: enrollment refused by {v2_ingest.url}: HTTP 409: machine_id: ")

    gone = f"http://127.0.0.1:{free_port()}"
    status, out, err = enroll(agent_yaml, gone, "atlas_enroll_x", capsys)
    assert status == 1
    assert len(err.splitlines()) == 1
    assert err.startswith(f"atlas-agent: cannot reach {gone}: ConnectError: ")


def test_the_sender_learns_the_servers_new_public_keys(
    v2_ingest, v2_config, hpke_keyring, start_ingest, secret, agent_yaml, capsys, db, drain, keys, tmp_path
) -> None:
    assert enroll(agent_yaml, v2_ingest.url, secret, capsys)[0] == 0
    data_dir = state(agent_yaml)
    first = load_enrollment(data_dir)
    assert first is not None
    assert first.seal_key is not None
    rotated = hpke_keyring[1].with_new_key(HpkePrivateKey.generate())  # keygen --hpke: the new key comes first
    path = tmp_path / "rotated.json"
    rotated.save(path)
    new_kid = rotated.public_keys()[0].kid
    assert new_kid != first.seal_key.kid
    server = start_ingest({**v2_config, "server": {**v2_config["server"], "hpke_keyring": str(path)}})
    with sender(data_dir, server.url, keys) as agent:
        fill(agent.store, 2)
        assert agent.run_cycle().sent_batches == 1  # sealed to the old key, which the server still holds
        assert agent.enrollment is not None
        assert agent.enrollment.seal_key is not None
        assert agent.enrollment.seal_key.kid == new_kid
        stored = load_enrollment(data_dir)
        assert stored is not None
        assert stored.seal_key is not None
        assert stored.seal_key.kid == new_kid
        assert stat.S_IMODE(credentials_path(data_dir).stat().st_mode) == 0o600
        fill(agent.store, 2)
        assert agent.run_cycle().sent_batches == 1
        bodies = [json.loads(b) for _, b in agent.store._connect().execute("SELECT batch_id, body FROM batches")]
        assert [b["kid"] for b in bodies] == [first.seal_key.kid, new_kid]
    drain()
    assert len(rows(db, first.machine_id)) == 4


def test_a_batch_sealed_to_a_retired_key_is_sealed_again_to_the_current_one(
    v2_config, start_ingest, secret, agent_yaml, capsys, db, drain, keys, tmp_path, caplog
) -> None:
    old = HpkeKeyring([HpkePrivateKey.generate()])
    old_path, new_path = tmp_path / "old.json", tmp_path / "new.json"
    old.save(old_path)
    new = HpkeKeyring([HpkePrivateKey.generate()])  # the old key already removed from the keyring
    new.save(new_path)
    before = start_ingest({**v2_config, "server": {**v2_config["server"], "hpke_keyring": str(old_path)}})
    after = start_ingest({**v2_config, "server": {**v2_config["server"], "hpke_keyring": str(new_path)}})
    assert enroll(agent_yaml, before.url, secret, capsys)[0] == 0
    data_dir = state(agent_yaml)
    caplog.set_level("INFO", logger="atlas.agent")
    with sender(data_dir, after.url, keys) as agent:
        fill(agent.store, 4)
        report = agent.run_cycle()
        assert (report.sealed_batches, report.sent_batches, report.quarantined) == (1, 0, 0)
        report = agent.run_cycle()
        assert (report.sealed_batches, report.sent_batches, report.sent_logs) == (1, 1, 4)
        assert agent.store.status()["quarantined_batches"] == 0
    assert any("sealed again to key " + new.public_keys()[0].kid in r.getMessage() for r in caplog.records)
    drain()
    enrolled = load_enrollment(data_dir)
    assert enrolled is not None
    assert len(rows(db, enrolled.machine_id)) == 4


def test_a_mac_with_a_wrong_clock_retries_and_delivers_once_it_is_set_right(
    v2_ingest, secret, agent_yaml, capsys, db, drain, keys, caplog
) -> None:
    status, _, err = enroll(agent_yaml, v2_ingest.url, secret, capsys)
    assert status == 0, err
    data_dir = state(agent_yaml)
    enrollment = load_enrollment(data_dir)
    assert enrollment is not None
    caplog.set_level("INFO", logger="atlas.agent")
    with sender(data_dir, v2_ingest.url, keys) as agent:
        agent.backoff_base_s = agent.backoff_cap_s = 0.0
        agent.clock = lambda: time.time() - 3600  # an hour slow
        fill(agent.store, 4)
        report = agent.run_cycle()
        assert (report.sent_batches, report.retried) == (0, 1)
        assert agent.halted is None  # the credential is fine: nothing says enroll again
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any("refused this Mac's clock" in w and "Atlas-Timestamp" in w for w in warnings), warnings
        assert agent.store.status()["quarantined_batches"] == 0
        agent.clock = time.time  # the clock set right
        report = agent.run_cycle()
        assert (report.sent_batches, report.sent_logs) == (1, 4)
        drain()
        assert len(rows(db, enrollment.machine_id)) == 4
