"""The queued machine object is the contract's machine, key for key."""

from __future__ import annotations

from atlas.contract import MACHINE_FIELDS
from atlas.core.queue import QueuedMachine


def test_the_queued_machine_has_the_contract_machine_fields_in_order() -> None:
    assert tuple(QueuedMachine.__annotations__) == MACHINE_FIELDS
