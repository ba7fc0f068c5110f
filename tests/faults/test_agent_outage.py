"""The fleet server unreachable for several send intervals, then back: spools drain in order, once, jittered.

Eight agents (the real daemon loop, store and sender; numbered logs) start at the
same instant, so their send ticks are aligned: the worst case for a thundering herd.
Ingest is stopped for OUTAGE_S (six send intervals) and started again on the same
port. Time is scaled down: sends every second instead of every 300 s, and a backoff
base of 1/60 of that, as in production (5 s against 300 s), so that a backoff alone
is shorter than a send interval for the first attempts; the cap is 4 s.
"""

from __future__ import annotations

import pytest

from ..fix_processes import free_port
from ..fix_services import API_KEY
from .agent_harness import (
    ROUND_KEY,
    missing_logs,
    outcome,
    run_through_outage,
    sim_agents,
    tally,
)
from .report import record

AGENTS = 8
SEND_INTERVAL_S = 1
OUTAGE_S = 6.0
BACKOFF_BASE_S, BACKOFF_CAP_S = SEND_INTERVAL_S / 60, 4.0
MIN_SPREAD_S = 1.0
"""First arrivals after recovery must span at least one send interval. With full jitter, once the
ceiling has reached the cap each agent retries at a uniform moment in the 4 s after its last failure,
and 8 such draws fall within 1 s of each other with probability 8*(1/4)**7 - 7*(1/4)**8, about 4e-4
(the scatter of the last failures only widens the spread)."""
CLUSTER_S, MAX_CLUSTER = 0.05, 3
"""Nor may more than 3 of the 8 arrive within any 50 ms: agents retrying on their aligned send
ticks arrive together; 4 of 8 uniform draws over 4 s land within 50 ms with probability about
70 * 4 * (0.05/4)**3, 5e-4."""


def largest_cluster(times: list[float], width: float) -> int:
    """The most of ``times`` (sorted) that fall within any window of ``width`` seconds."""
    return max(sum(1 for u in times[i:] if u - t <= width) for i, t in enumerate(times))


@pytest.mark.slow
def test_outage_spools_drain_in_order_exactly_once_and_jittered(tmp_path, start_server, server_config, keys, drain, db):
    port = free_port()
    server = start_server("ingest", server_config, port=port)
    runs = sim_agents(
        tmp_path,
        AGENTS,
        fleet_server=server.url,
        api_key=API_KEY,
        key=keys["current"],
        name="outage",
        backoff=(BACKOFF_BASE_S, BACKOFF_CAP_S),
        send_interval_seconds=SEND_INTERVAL_S,
    )
    agents = [r.agent for r in runs]
    run = run_through_outage(
        runs,
        server.stop,  # connections to the port are refused from now on
        lambda: start_server("ingest", server_config, port=port),
        outage_s=OUTAGE_S,
        settle_s=2 * SEND_INTERVAL_S,
        drain_timeout_s=BACKOFF_CAP_S + 20,
    )
    spooled = run.spooled
    drain()

    outcomes = [outcome(a.identity.machine_id, a.store.path, a.written, db) for a in agents]
    # Each agent's first arrival after the outage began (nothing can arrive during it), from ingest's received_at.
    first_after = sorted(
        min(b[1].timestamp() for b in o.stored.batches if b[1].timestamp() > run.down_at) - run.up_at for o in outcomes
    )
    spread = first_after[-1] - first_after[0]
    result = record(
        tally(
            "agent: fleet server down 6 send intervals",
            outcomes,
            note=f"{AGENTS} agents, spools {min(spooled)}-{max(spooled)} batches at recovery; "
            f"first arrivals after it spread over {spread:.2f} s, at most "
            f"{largest_cluster(first_after, CLUSTER_S)} within {CLUSTER_S * 1000:.0f} ms",
        )
    )

    assert min(spooled) >= 3, "the outage must leave several batches spooled on every agent"
    assert (result.duplicated, result.lost, missing_logs(outcomes)) == (0, 0, 0)
    assert result.stored == result.sent
    for o in outcomes:
        assert sorted(o.stored.numbered) == sorted(o.written)
        rounds: dict[str, int] = {}
        for batch_id, data in o.stored.logs:
            rounds[batch_id] = min(rounds.get(batch_id, data[ROUND_KEY]), data[ROUND_KEY])
        arrival = [rounds[b[0]] for b in o.stored.batches]
        assert arrival == sorted(arrival), f"{o.machine_id} delivered out of order (first round per batch): {arrival}"
    assert spread >= MIN_SPREAD_S, f"retries after recovery not spread out: {first_after}"
    assert largest_cluster(first_after, CLUSTER_S) <= MAX_CLUSTER, f"agents came back together: {first_after}"
    assert first_after[-1] <= BACKOFF_CAP_S + 2 * SEND_INTERVAL_S + 2, f"an agent waited too long: {first_after}"
