"""The agent process SIGKILLed while it writes its store and while it sends, restarted on the same store.

The agent runs as a process (``python -m tests.faults.agent_harness``: the real
daemon loop, store and sender, writing ROUND_LOGS numbered logs a round, one
transaction each, as the daemon stores what it collects). It talks to ingest
through a FaultProxy. Two kinds of kill alternate:

- store: at a random moment within a round's writes (timed from the previous rounds);
- send: the proxy holds back ingest's 202 for a batch ingest has just queued, and the
  agent is killed while it waits for it, so the store still has the batch pending.

On the agent side a batch is "sent" only once the store marks it so, which it does
after a 202 ("queued") or a 200 ("duplicate") answer; a batch in flight at a kill is
still pending and is re-sent, byte for byte with the same batch_id, on restart.
"""

from __future__ import annotations

import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from atlas.agent.config import load_agent_config
from atlas.agent.store import LocalStore

from ..fix_processes import service_env
from ..fix_services import API_KEY
from .agent_harness import (
    FaultProxy,
    NumberedAgent,
    agent_config,
    numbered,
    outcome,
    store_batches,
    tally,
    write_config,
)
from .report import record

ROOT = Path(__file__).resolve().parents[2]
ROUND_LOGS = 60
KILLS = ("send", "store", "send", "store", "send", "store")


class AgentProcess:
    """The agent driver as a process; its ``round N begin/end`` lines are read into a queue."""

    def __init__(self, config: Path, log: Path) -> None:
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.faults.agent_harness",
                    "--config",
                    config,
                    "--per-round",
                    str(ROUND_LOGS),
                ],
                cwd=ROOT,
                env=service_env(),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line.strip()))

    def next_line(self, prefix: str, timeout: float = 20) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while True:
            at, line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line.startswith(prefix):
                return at, line

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def round_durations(proc: AgentProcess) -> list[float]:
    """Seconds between the ``begin`` and ``end`` lines of the rounds read so far (drains the queue)."""
    began: dict[str, float] = {}
    out = []
    while not proc.lines.empty():
        at, line = proc.lines.get()
        words = line.split()
        if len(words) == 3 and words[2] == "begin":
            began[words[1]] = at
        elif len(words) == 3 and words[2] == "end" and words[1] in began:
            out.append(at - began[words[1]])
    return out


@pytest.mark.slow
def test_agent_killed_while_storing_and_sending_loses_and_duplicates_nothing(
    tmp_path, start_ingest, server_config, keys, drain, db
):
    rng = random.Random(20261128)
    ingest = start_ingest(server_config)
    proxy = FaultProxy(ingest.port)
    machine_id = f"fault-kill-{tmp_path.name[-10:]}"
    config = write_config(
        tmp_path / "agent.yaml",
        agent_config(
            tmp_path / "data",
            fleet_server=proxy.url,
            api_key=API_KEY,
            key=keys["current"],
            machine_id=machine_id,
        ),
    )
    store_path, keyring = load_agent_config(config).store_path, load_agent_config(config).keyring()
    held: list[str] = []
    partial_rounds: list[tuple[int, int]] = []
    durations: list[float] = []
    try:
        for mode in KILLS:
            proc = AgentProcess(config, tmp_path / "agent.log")
            try:
                if mode == "send":
                    proxy.holding.clear()
                    proxy.hold_next.set()
                    assert proxy.holding.wait(20), "no request reached the proxy"
                    proc.kill()  # while it waits for an answer ingest gave and the proxy holds back
                    held.append(proxy.held[-1])
                    durations += round_durations(proc)
                else:
                    _, line = proc.next_line("round ")
                    killed_round = int(line.split()[1])
                    time.sleep(rng.uniform(0.1, 0.9) * (sorted(durations)[len(durations) // 2]))
                    proc.kill()
                    stored = [
                        seq for r, seq in numbered(LocalStore(store_path, keyring).iter_logs()) if r == killed_round
                    ]
                    partial_rounds.append((killed_round, len(stored)))
            finally:
                if proc.proc.poll() is None:
                    proc.kill()
        # A last, clean run on the same store delivers what is left.
        final = NumberedAgent(load_agent_config(config))
        final.collecting.clear()
        try:
            for _ in range(3):
                final.send()
                if final.store.status()["pending_batches"] == 0:
                    break
        finally:
            assert final.sender is not None
            final.sender.close()
    finally:
        proxy.close()
    drain()

    status = final.store.status()
    committed = numbered(final.store.iter_logs())
    result_outcome = outcome(machine_id, store_path, committed, db)
    result = record(
        tally(
            "agent: SIGKILL while storing / sending (x6)",
            [result_outcome],
            note=f"{len(committed)} logs committed; {len(held)} kills with ingest's 202 in flight, "
            f"each batch re-sent with its batch_id and answered "
            f"{sorted({st for b, st in proxy.answers if b in {h[0] for h in held}})}; "
            f"{sum(1 for _, n in partial_rounds if 0 < n < ROUND_LOGS)}/{len(partial_rounds)} kills mid-write",
        )
    )

    assert (status["pending_batches"], status["unbatched_logs"], status["quarantined_batches"]) == (0, 0, 0)
    assert (result.duplicated, result.lost) == (0, 0)
    assert sorted(result_outcome.stored.numbered) == sorted(committed), "PostgreSQL must hold each committed log once"
    assert result.stored == result.sent == len(store_batches(store_path))
    # The kills landed where they were meant to.
    assert len(held) == KILLS.count("send")
    assert any(0 < n < ROUND_LOGS for _, n in partial_rounds), f"no kill landed mid-write: {partial_rounds}"
    stored_ids = [b[0] for b in result_outcome.stored.batches]
    assert len({b for b, _ in held}) == len(held), "each send kill must catch a batch of its own"
    for batch_id, status in held:
        assert status == 202, f"{batch_id}: ingest had not queued the batch whose answer was held"
        assert proxy.requests.count(batch_id) >= 2, f"{batch_id} was not re-sent with the same batch_id"
        assert (batch_id, 200) in proxy.answers, f"{batch_id}: the re-send was not answered 200 duplicate"
        assert stored_ids.count(batch_id) == 1
        assert batch_id in result_outcome.sent_ids
