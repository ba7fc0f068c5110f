"""Simulated agents for the agent-side fault scenarios: the real daemon loop, store and sender.

A ``NumberedAgent`` is the real ``atlas.agent.daemon.Agent`` (its ``run`` loop,
``LocalStore`` and ``Sender``) whose collect step writes numbered logs
(``data.fault_round``, ``data.fault_seq``) instead of reading the Mac, so a
scenario can tell which logs reached PostgreSQL, how often and in what order.
``python -m tests.faults.agent_harness --config agent.yaml`` runs one as a
process, the way ``atlas-agent run`` does, for the SIGKILL scenario; it prints
``round N begin`` / ``round N end`` around each store write.

``FaultProxy`` is a TCP relay put between an agent and ingest: it records the
batch_id of each request and each answer's status, and when armed holds back the
next 202 answer: ingest has queued the batch, the agent waits for the answer, and is
killed there.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import signal
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import closing, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from atlas.agent.config import AgentConfig, load_agent_config
from atlas.agent.daemon import Agent
from atlas.agent.widgets import LogEntry
from atlas.contract import format_timestamp

from .report import Tally

ROUND_KEY, SEQ_KEY = "fault_round", "fault_seq"


class NumberedAgent(Agent):
    """The real daemon, collecting ``per_round`` numbered logs a round instead of Wi-Fi, ping, etc."""

    def __init__(self, config: AgentConfig, *, per_round: int = 3, pad: int = 0, announce: bool = False) -> None:
        """``pad``: characters of random hex in each log's data (incompressible, to fill a store)."""
        super().__init__(config)
        self.per_round = per_round
        self.pad = pad
        self.announce = announce
        self.collecting = threading.Event()
        self.collecting.set()
        self.written: list[tuple[int, int]] = []
        """(round, seq) of every numbered log this object committed to the store."""
        self.reports_written = 0
        """Agent logs (the store-limit warnings) the daemon recorded."""
        self.next_round = 1 + max((r for r, _ in numbered(self.store.iter_logs())), default=0)

    def collect(self, *, store: bool = True) -> list[LogEntry]:
        if not self.collecting.is_set():
            return []
        n = self.next_round
        self.next_round += 1
        if self.announce:
            print(f"round {n} begin", flush=True)
        entries = []
        for seq in range(self.per_round):
            entry = {
                "timestamp": format_timestamp(datetime.now(UTC)),
                "level": "INFO",
                "widget_type": "health",
                "message": f"round {n} log {seq}",
                "data": {ROUND_KEY: n, SEQ_KEY: seq, "pad": secrets.token_hex(self.pad // 2)},
            }
            self.store.add(**entry)  # one transaction per log, as the daemon's _record does
            self.written.append((n, seq))
            entries.append(entry)
        if self.announce:
            print(f"round {n} end", flush=True)
        return entries

    def _record(self, entries: list[LogEntry], store: bool) -> None:
        self.reports_written += sum(1 for e in entries if e["widget_type"] == "agent")
        super()._record(entries, store)


def agent_config(data_dir: Path, *, fleet_server: str, api_key: str, key: str, machine_id: str, **kw: Any) -> dict:
    """The agent.yaml mapping of a simulated agent: fast schedules, no live page, no speed test, no network checks."""
    return {
        "fleet_server": fleet_server,
        "api_key": api_key,
        "encryption_key": key,
        "machine_id": machine_id,
        "data_dir": str(data_dir),
        "send_interval_seconds": 1,
        "collect_interval_seconds": 1,
        "speedtest_interval_seconds": 0,
        "network_interval_seconds": 0,
        "live_port": 0,
        **kw,
    }


def write_config(path: Path, mapping: dict) -> Path:
    path.write_text(yaml.safe_dump(mapping))
    return path


@dataclass
class AgentThread:
    """A NumberedAgent running its daemon loop in a thread of this process."""

    agent: NumberedAgent
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.agent.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join(30)
            assert not self.thread.is_alive(), "agent loop did not stop"


def sim_agents(
    workdir: Path,
    count: int,
    *,
    fleet_server: str,
    api_key: str,
    key: str,
    name: str,
    backoff: tuple[float, float],
    per_round: int = 3,
    pad: int = 0,
    **config: Any,
) -> list[AgentThread]:
    """``count`` agents with stores and machine ids of their own, backoff (base, cap) scaled to the test."""
    run = uuid.uuid4().hex[:8]
    runs = []
    for i in range(count):
        mapping = agent_config(
            workdir / f"{name}{i}",
            fleet_server=fleet_server,
            api_key=api_key,
            key=key,
            machine_id=f"fault-{name}-{run}-{i}",
            **config,
        )
        path = write_config(workdir / f"{name}{i}.yaml", mapping)
        agent = NumberedAgent(load_agent_config(path), per_round=per_round, pad=pad)
        assert agent.sender is not None
        agent.sender.backoff_base_s, agent.sender.backoff_cap_s = backoff
        runs.append(AgentThread(agent))
    return runs


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@dataclass
class OutageRun:
    spooled: list[int]
    """Pending batches on each agent when the server came back."""
    down_at: float
    """time.time() when the server was stopped."""
    up_at: float
    """time.time() when the restarted server answered its health check."""


def run_through_outage(
    runs: list[AgentThread],
    server_down: Callable[[], None],
    server_up: Callable[[], None],
    *,
    outage_s: float,
    settle_s: float = 2.0,
    drain_timeout_s: float = 30.0,
) -> OutageRun:
    """Start the agents, let each send twice, take the server down for ``outage_s``, bring it back;
    ``settle_s`` later the agents stop collecting, and this returns once every spool is empty."""
    agents = [r.agent for r in runs]
    try:
        for r in runs:
            r.start()
        wait_for(lambda: all(a.store.status()["sent_batches"] >= 2 for a in agents), 15, "sends before the outage")
        server_down()
        down_at = time.time()
        time.sleep(outage_s)
        spooled = [a.store.status()["pending_batches"] for a in agents]
        server_up()
        up_at = time.time()
        time.sleep(settle_s)
        for a in agents:
            a.collecting.clear()
        wait_for(
            lambda: all((s := a.store.status())["pending_batches"] == 0 and s["unbatched_logs"] == 0 for a in agents),
            drain_timeout_s,
            "every spool to drain",
        )
    finally:
        for r in runs:
            r.join()
    return OutageRun(spooled, down_at, up_at)


def numbered(logs: Iterable[Any]) -> list[tuple[int, int]]:
    """(round, seq) of the numbered logs among ``logs`` (StoredLog objects or data dicts)."""
    out = []
    for log in logs:
        data = log if isinstance(log, dict) else log.data
        if ROUND_KEY in data:
            out.append((int(data[ROUND_KEY]), int(data[SEQ_KEY])))
    return out


def store_batches(store_path: Path) -> list[tuple[str, str, int, str]]:
    """(batch_id, created_at, log_count, state) of every batch in an agent's store, oldest first."""
    with closing(sqlite3.connect(store_path)) as conn:
        return conn.execute(
            "SELECT batch_id, created_at, log_count, state FROM batches ORDER BY created_at, rowid"
        ).fetchall()


@dataclass
class Stored:
    """What PostgreSQL holds for one machine."""

    batches: list[tuple[str, Any, int]]
    """(batch_id, received_at, log_count), in arrival order."""
    logs: list[tuple[str, dict]]
    """(batch_id, data) of each stored log row."""

    @property
    def numbered(self) -> list[tuple[int, int]]:
        return numbered(d for _, d in self.logs)

    def reports(self) -> list[dict]:
        return [d for _, d in self.logs if "dropped_unsent" in d]


def stored_for(db: Any, machine_id: str) -> Stored:
    batches = db.execute(
        "SELECT batch_id::text, received_at, log_count FROM batches WHERE machine_id = %s ORDER BY received_at",
        (machine_id,),
    ).fetchall()
    logs = db.execute(
        "SELECT batch_id::text, data FROM widget_logs WHERE machine_id = %s ORDER BY id", (machine_id,)
    ).fetchall()
    return Stored(batches, logs)


def duplicates(items: Iterable[Any]) -> int:
    """How many items occur more than once (each extra copy counts one)."""
    return sum(n - 1 for n in Counter(items).values() if n > 1)


@dataclass
class AgentOutcome:
    """One agent's side and PostgreSQL's side of a scenario."""

    machine_id: str
    sent_ids: list[str]
    """Batches the agent's store marked sent (after a 202, or a 200 duplicate)."""
    written: list[tuple[int, int]]
    """(round, seq) of every numbered log the agent committed to its store."""
    stored: Stored


def outcome(machine_id: str, store_path: Path, written: list[tuple[int, int]], db: Any) -> AgentOutcome:
    sent = [b[0] for b in store_batches(store_path) if b[3] == "sent"]
    return AgentOutcome(machine_id, sent, written, stored_for(db, machine_id))


def missing_logs(outcomes: list[AgentOutcome]) -> int:
    """Numbered logs committed to a store and absent from PostgreSQL."""
    return sum(len(set(o.written) - set(o.stored.numbered)) for o in outcomes)


def tally(
    scenario: str, outcomes: list[AgentOutcome], *, budget_logs: int = 0, budget: str = "", note: str = ""
) -> Tally:
    """The scenario's Tally over its agents.

    ``lost`` counts batches marked sent but missing from PostgreSQL, plus numbered logs
    committed to a store but missing, beyond ``budget_logs`` (what the scenario may drop,
    e.g. the agent's size cap). ``duplicated`` counts extra copies of batches and of numbered logs.
    """
    stored_ids = [b[0] for o in outcomes for b in o.stored.batches]
    sent = [i for o in outcomes for i in o.sent_ids]
    missing_batches = len(set(sent) - set(stored_ids))
    return Tally(
        scenario=scenario,
        sent=len(sent),
        stored=len(set(stored_ids)),
        duplicated=duplicates(stored_ids) + sum(duplicates(o.stored.numbered) for o in outcomes),
        lost=missing_batches + max(0, missing_logs(outcomes) - budget_logs),
        budget=budget,
        note=note,
    )


# --- a relay between agent and ingest -----------------------------------------------------------

BATCH_ID_RE = re.compile(rb'"batch_id":"([0-9a-f-]{36})"')
STATUS_RE = re.compile(rb"HTTP/1\.1 (\d{3}) ")


class FaultProxy:
    """A loopback TCP relay to ``upstream_port``; see the module docstring."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[str] = []
        """batch_id of each request, in order."""
        self.answers: list[tuple[str, int]] = []
        """(batch_id, HTTP status) of each answer relayed to the agent."""
        self.held: list[tuple[str, int]] = []
        """(batch_id, HTTP status 202) of each answer held back: ingest gave it, the agent never saw it."""
        self.hold_next = threading.Event()
        self.holding = threading.Event()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            client.close()
            return
        last: list[str] = [""]
        threading.Thread(target=self._requests, args=(client, upstream, last), daemon=True).start()
        with closing(client), closing(upstream):
            while True:
                try:
                    chunk = upstream.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                status = STATUS_RE.search(chunk)
                if status and status.group(1) == b"202" and self.hold_next.is_set():
                    self.hold_next.clear()
                    self.held.append((last[0], int(status.group(1))))
                    self.holding.set()
                    try:  # the answer stays here until the agent goes away
                        while client.recv(65536):
                            pass
                    except OSError:
                        pass
                    return
                if status:
                    self.answers.append((last[0], int(status.group(1))))
                try:
                    client.sendall(chunk)
                except OSError:
                    return

    def _requests(self, client: socket.socket, upstream: socket.socket, last: list[str]) -> None:
        buffer = b""
        while True:
            try:
                chunk = client.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                with suppress(OSError):
                    upstream.shutdown(socket.SHUT_WR)
                return
            buffer = (buffer + chunk)[-65536:]
            found = BATCH_ID_RE.search(buffer)
            if found:
                last[0] = found.group(1).decode()
                self.requests.append(last[0])
                buffer = buffer[found.end() :]
            try:
                upstream.sendall(chunk)
            except OSError:
                return


# --- the agent as a process ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run a NumberedAgent until SIGTERM/SIGINT, like ``atlas-agent run``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--per-round", type=int, default=3)
    args = parser.parse_args(argv)
    agent = NumberedAgent(load_agent_config(args.config), per_round=args.per_round, announce=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    agent.run(stop)
    print(json.dumps({"stopped": True, "store": agent.store.status()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
