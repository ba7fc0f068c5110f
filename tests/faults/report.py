"""The fault suite's tally: each scenario records what its agents sent and what PostgreSQL holds.

``pytest tests/faults`` prints the table at the end of the run (see conftest),
and writes it as JSON lines to ``$ATLAS_FAULT_REPORT`` when that is set.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Tally:
    scenario: str
    sent: int
    """Batches the agents consider delivered (answered 202, or 200 duplicate)."""
    stored: int
    """Distinct batches found in PostgreSQL."""
    duplicated: int
    """Batches or logs stored more than once (0 is the pass)."""
    lost: int
    """Batches considered sent but not stored, or logs missing from a stored batch."""
    budget: str = ""
    """What the scenario is allowed to drop, and why (e.g. the agent's own size cap)."""
    note: str = ""


TALLIES: list[Tally] = []


def record(tally: Tally) -> Tally:
    TALLIES.append(tally)
    path = os.environ.get("ATLAS_FAULT_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(asdict(tally)) + "\n")
    return tally


def table(tallies: list[Tally]) -> list[str]:
    head = f"{'scenario':<48} {'sent':>7} {'stored':>7} {'dup':>5} {'lost':>5}  budget / note"
    lines = [head, "-" * len(head)]
    for t in tallies:
        extra = "; ".join(x for x in (t.budget, t.note) if x)
        lines.append(f"{t.scenario:<48} {t.sent:>7} {t.stored:>7} {t.duplicated:>5} {t.lost:>5}  {extra}")
    return lines
