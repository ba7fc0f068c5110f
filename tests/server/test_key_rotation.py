"""The payload key rotation procedure of docs/keys.md, run while agents keep sending.

Three agents (the real LocalStore and Sender) send all the time, each in its
own thread, while the fleet server goes through the documented steps:

1. the server accepts the new key beside the old one (ingest restarted);
2. the agents move to the new key (each restarted with the new key first and
   the old one kept to read its store);
3. once no agent holds an unsent batch sealed with the old key, the server
   drops it (ingest restarted again).

Pass: no batch quarantined, every batch the agents sent is stored exactly once,
with every log.
"""

from __future__ import annotations

import random
import re
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from atlas.agent.sender import Sender
from atlas.agent.store import LocalStore
from atlas.contract import Key, Keyring, format_timestamp, generate_encryption_key

from .. import batches
from ..fix_processes import BIN, ServerProcess, free_port, service_env
from ..fix_services import API_KEY

AGENTS = 3


class SimulatedAgent:
    """One Mac's agent: its store, and a sender it can be restarted with under other keys."""

    def __init__(self, path: Path, url: str, keys: list[str]) -> None:
        self.path = path
        self.url = url
        self.info = batches.machine()
        self.lock = threading.Lock()
        self.added = 0
        self.restart(keys)

    def restart(self, keys: list[str]) -> None:
        """As after editing agent.yaml and restarting the daemon: the first key seals, all of them read."""
        with self.lock:
            if getattr(self, "sender", None):
                self.sender.close()
            keyring = Keyring.from_base64(keys)
            self.store = LocalStore(self.path, keyring)
            self.sender = Sender(
                self.store,
                fleet_server=self.url,
                api_key=API_KEY,
                keyring=keyring,
                machine=lambda: self.info,
                rng=random.Random(1),
                timeout_s=5,
            )

    def cycle(self) -> None:
        with self.lock:
            for _ in range(3):
                self.added += 1
                self.store.add(
                    timestamp=format_timestamp(datetime.now(UTC)),
                    level="INFO",
                    widget_type="wifi",
                    message=f"log {self.added}",
                    data={"seq": self.added},
                )
            self.sender.run_cycle(now=time.time() + 3600)  # retry at once: the test is about keys, not pacing

    def unsent_with(self, kid: str) -> int:
        with sqlite3.connect(self.path) as conn:
            return conn.execute(
                "SELECT count(*) FROM batches WHERE state != 'sent' AND instr(body, ?) > 0",
                (f'"kid":"{kid}"'.encode(),),
            ).fetchone()[0]

    def batches(self) -> dict[str, str]:
        with sqlite3.connect(self.path) as conn:
            return dict(conn.execute("SELECT batch_id, state FROM batches"))


def test_payload_key_rotation_while_agents_send(
    start_server: Callable[..., ServerProcess], server_config: dict[str, Any], tmp_path: Path, drain, db
) -> None:
    old, new = generate_encryption_key(), generate_encryption_key()
    old_kid = Key.from_base64(old).kid
    port = free_port()

    def ingest(*keys: str) -> ServerProcess:
        server = {**server_config["server"], "encryption_key": keys[0], "encryption_keys": list(keys[1:])}
        return start_server("ingest", {**server_config, "server": server}, port=port)

    server = ingest(old)
    agents = [SimulatedAgent(tmp_path / f"agent{i}.db", server.url, [old]) for i in range(AGENTS)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def keep_sending(agent: SimulatedAgent) -> None:
        try:
            while not stop.is_set():
                agent.cycle()
                time.sleep(0.05)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=keep_sending, args=(a,), daemon=True) for a in agents]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        server.stop()  # step 1: the server accepts the new key beside the old one
        server = ingest(old, new)
        time.sleep(1)
        server.stop()  # an outage just before the agents move over: they spool batches sealed with the old key
        time.sleep(1)
        spooled = sum(agent.unsent_with(old_kid) for agent in agents)
        assert spooled > 0
        for agent in agents:  # step 2: agents move over, one by one
            agent.restart([new, old])
            time.sleep(0.3)
        server = ingest(old, new)
        deadline = time.monotonic() + 60  # step 3: wait until no agent holds an unsent old-key batch
        while any(agent.unsent_with(old_kid) for agent in agents) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(agent.unsent_with(old_kid) for agent in agents)
        server.stop()
        server = ingest(new)
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not errors, errors
    for agent in agents:  # the last logs go out
        agent.sender.run_cycle(now=time.time() + 3600)
    drain()

    sent: dict[str, int] = {}
    for agent in agents:
        states = agent.batches()
        assert set(states.values()) == {"sent"}, states  # nothing quarantined, nothing left behind
        stored = db.execute(
            "SELECT batch_id::text, kid FROM batches WHERE machine_id = %s", (agent.info["machine_id"],)
        ).fetchall()
        assert {b for b, _ in stored} == set(states), "every sent batch stored once, and nothing else"
        kids = {kid for _, kid in stored}
        assert kids == {old_kid, Key.from_base64(new).kid}, "both keys were really used"
        logs = db.execute(
            "SELECT count(*), count(DISTINCT message) FROM widget_logs WHERE machine_id = %s",
            (agent.info["machine_id"],),
        ).fetchone()
        assert logs == (agent.added, agent.added)
        sent[agent.info["machine_id"]] = len(states)
        agent.sender.close()
    assert all(count >= 5 for count in sent.values()), sent

    shown = subprocess.run(
        [BIN / "atlas-server", "keys", "--config", server.config_path],
        capture_output=True,
        text=True,
        env=service_env(),
        check=True,
    ).stdout
    new_kid = Key.from_base64(new).kid
    assert re.search(rf"{new_kid}  current .* latest batch of [1-9]\d* machine", shown), shown
    assert re.search(rf"{old_kid}  retired .* latest batch of 0 machine", shown), shown
