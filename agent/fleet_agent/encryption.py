"""``from fleet_agent.encryption import generate_encryption_key``, as the earlier agent's set-up guide runs it::

    python3 -c "from fleet_agent.encryption import generate_encryption_key; generate_encryption_key()"

A thin alias of ``atlas.contract.generate_encryption_key`` (the same key ``atlas-server keygen`` prints)
that also prints the key, since that snippet prints nothing else.
"""

from __future__ import annotations

from atlas.contract import generate_encryption_key as _new_key

__all__ = ["generate_encryption_key"]


def generate_encryption_key() -> str:
    """Print a new AES-256 key (standard base64, 44 characters) on its own line, and return it."""
    key = _new_key()
    print(key, flush=True)
    return key
