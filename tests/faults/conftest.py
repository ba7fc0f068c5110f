"""Fault-injection suite: shared reporting. Fixtures that start faultable services live beside it."""

from __future__ import annotations

from .report import TALLIES, table


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not TALLIES:
        return
    terminalreporter.section("fault scenarios: batches sent, stored, duplicated, lost")
    for line in table(TALLIES):
        terminalreporter.write_line(line)
