"""The agent commands of the earlier Atlas's set-up guide, run as that guide writes them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from atlas.contract import parse_key

from ..fix_processes import service_env

SEED_KEY_SNIPPET = (
    "import sys; sys.path.insert(0, '.'); "
    "from fleet_agent.encryption import generate_encryption_key; "
    "generate_encryption_key()"
)
"""Step 1 of the guide: ``cd fleet-agent; python3 -c "..."``, which prints the key to save."""


def run_seed_key_snippet(python: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-c", SEED_KEY_SNIPPET],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=service_env(),
    )


def test_the_guides_key_snippet_prints_a_new_key(tmp_path: Path) -> None:
    folder = tmp_path / "fleet-agent"
    folder.mkdir()
    first, second = (run_seed_key_snippet(sys.executable, folder) for _ in range(2))
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    key = first.stdout.strip()
    assert first.stdout == key + "\n"
    assert len(parse_key(key)) == 32
    assert second.stdout.strip() != key
