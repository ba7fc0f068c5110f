"""The agent's store reaches its size cap while the fleet server is down: the oldest are dropped,
counted (the store's ``dropped_unsent``), reported to the server, and everything else arrives once.

Three agents with a store capped at CAP_BYTES write incompressible numbered logs
(about 1.3 kB each on disk, counting the sealed batch that carries it) while ingest
is down for OUTAGE_S, so each store overflows several times over.
"""

from __future__ import annotations

import pytest

from ..fix_processes import free_port
from ..fix_services import API_KEY
from .agent_harness import missing_logs, outcome, run_through_outage, sim_agents, tally
from .report import record

AGENTS = 3
CAP_BYTES = 9_000
OUTAGE_S = 6.0
PER_ROUND, PAD = 4, 400


@pytest.mark.slow
def test_size_cap_drops_the_oldest_counts_and_reports_them(tmp_path, start_server, server_config, keys, drain, db):
    port = free_port()
    server = start_server("ingest", server_config, port=port)
    runs = sim_agents(
        tmp_path,
        AGENTS,
        fleet_server=server.url,
        api_key=API_KEY,
        key=keys["current"],
        name="diskcap",
        backoff=(1.0, 4.0),
        per_round=PER_ROUND,
        pad=PAD,
    )
    agents = [r.agent for r in runs]
    for a in agents:
        a.store.max_bytes = CAP_BYTES
    run_through_outage(
        runs,
        server.stop,
        lambda: start_server("ingest", server_config, port=port),
        outage_s=OUTAGE_S,
        settle_s=2.0,
        drain_timeout_s=25,
    )
    drain()

    outcomes = [outcome(a.identity.machine_id, a.store.path, a.written, db) for a in agents]
    counters = [a.store.status()["counters"].get("dropped_unsent", 0) for a in agents]
    written = sum(len(a.written) for a in agents)
    missing_reports = [a.reports_written - len(o.stored.reports()) for a, o in zip(agents, outcomes, strict=True)]
    result = record(
        tally(
            "agent: store size cap reached while server down",
            outcomes,
            budget_logs=sum(counters) - sum(missing_reports),  # the numbered logs among those counted
            budget=f"dropped by the agent's {CAP_BYTES} B cap: {sum(counters)} logs (store dropped_unsent)",
            note=f"{written} numbered logs written by {AGENTS} agents, "
            f"{written - missing_logs(outcomes)} stored; {sum(missing_reports)} drop reports dropped too",
        )
    )

    assert all(c > 0 for c in counters), f"the cap must be reached on every agent: {counters}"
    assert (result.duplicated, result.lost) == (0, 0)
    assert result.stored == result.sent
    for a, o, counter, lost_reports in zip(agents, outcomes, counters, missing_reports, strict=True):
        missing = sorted(set(o.written) - set(o.stored.numbered))
        # Counted: exactly the logs PostgreSQL lacks (numbered ones, and any drop warning dropped in turn).
        assert counter == len(missing) + lost_reports, (a.identity.machine_id, counter, len(missing), lost_reports)
        # The oldest: what is missing is one run of consecutive logs, and the newest round arrived.
        order = {n: i for i, n in enumerate(o.written)}
        positions = [order[n] for n in missing]
        assert positions == list(range(positions[0], positions[0] + len(positions)))
        assert o.written[-1] not in missing
        # Reported: the server has the agent's warning, and the latest one gives the whole count.
        reports = o.stored.reports()
        assert reports, f"{a.identity.machine_id} reported no drop"
        assert max(r["dropped_unsent_total"] for r in reports) == counter
