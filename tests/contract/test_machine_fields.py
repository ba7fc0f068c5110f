"""The plain-JSON machine (job payloads, fleet rows) is the contract's machine, key for key."""

from __future__ import annotations

from atlas.contract import MACHINE_FIELDS, MachineFields


def test_machine_fields_are_the_contract_machine_keys_in_order() -> None:
    assert tuple(MachineFields.__annotations__) == MACHINE_FIELDS
