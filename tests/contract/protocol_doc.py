"""docs/protocol.md as the known-answer tests read it: its path, its marked blocks, and the shared example batch."""

from __future__ import annotations

import re
from pathlib import Path

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

BATCH_ID = "6f1c2a4e-8b3d-4f5a-9c7e-2d1b0a9f8e7d"
CREATED_AT = "2026-11-28T16:00:00Z"
PLAINTEXT = (
    b'{"machine":{"machine_id":"7D3F9A2E-5B1C-4E8A-9F60-2C4D8B1A3E57","serial_number":"C02ZK1ABMD6T",'
    b'"hostname":"studio-12.example.com","model":"Mac14,13","os_version":"15.1","agent_version":"1.0.0"},'
    b'"logs":[{"timestamp":"2026-11-28T15:59:30Z","level":"INFO","widget_type":"ping",'
    b'"message":"1.1.1.1: 4/4 replies","data":{"host":"1.1.1.1","received":4,"rtt_ms":12.5,"sent":4}},'
    b'{"timestamp":"2026-11-28T15:59:45.250Z","level":"WARNING","widget_type":"wifi",'
    b'"message":"signal weak","data":{"rssi_dbm":-78,"ssid":"office"}}]}'
)
"""The plaintext of the worked examples (section 14.1), sealed by v1 and v2 alike."""

_BLOCK_RE = re.compile(r"^<!-- (vector|example):([\w-]+) -->\n```[\w-]*\n(.*?)\n```$", re.MULTILINE | re.DOTALL)


def marked_blocks(doc: str) -> dict[str, str]:
    """Every marked fenced block (``<!-- vector:NAME -->`` or ``<!-- example:NAME -->``), by ``kind:NAME``."""
    found: dict[str, str] = {}
    for kind, name, body in _BLOCK_RE.findall(doc):
        label = f"{kind}:{name}"
        assert label not in found, f"{label} is marked twice in {DOC_PATH.name}"
        found[label] = body
    return found
