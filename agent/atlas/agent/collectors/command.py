"""Running the OS commands collectors read: the one place that calls subprocess."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence

Runner = Callable[[Sequence[str]], str]
"""``run(argv) -> stdout``; raises OSError, CalledProcessError or TimeoutExpired."""

DEFAULT_TIMEOUT_S = 20.0
"""Long enough for system_profiler, which can take several seconds."""


def run_command(
    argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT_S, merge_stderr: bool = False, check: bool = True
) -> str:
    """Run ``argv`` in the C locale with no stdin and a hard timeout; return its output as text.

    With ``check`` a non-zero exit raises CalledProcessError; ``merge_stderr``
    returns stderr interleaved with stdout (ping prints its errors there).
    """
    done = subprocess.run(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        check=check,
        env={**os.environ, "LC_ALL": "C"},
    )
    return done.stdout or ""
