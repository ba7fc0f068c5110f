"""Agent footprint: CPU time and peak memory of ``atlas-agent run`` over a fixed time.

Runs the real agent with default schedules (collect every 60 s, send every 300 s)
against a real ingest server, pinging loopback only and with the speed test off
(it is measured apart: it downloads and uploads for tens of seconds by design).
The baseline is an idle Python interpreter started the same way, so the figure
is the agent's own cost.

    .venv/bin/python -m bench.agent --seconds 600 --fleet-server http://127.0.0.1:8768 \\
        --api-key KEY --encryption-key KEY
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

BIN = Path(sys.executable).parent


def measure(argv: list[str], seconds: float) -> tuple[float, int]:
    """CPU seconds (user + system, children included) and peak resident bytes of a process tree."""
    proc = psutil.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak, cpu = 0, 0.0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                tree = [proc, *proc.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
                cpu = sum(sum(p.cpu_times()[:4]) for p in tree)  # user, system, and reaped children (ping)
            except psutil.NoSuchProcess:
                pass
            time.sleep(1)
    finally:
        proc.terminate()
        proc.wait(30)
    return cpu, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--fleet-server", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--encryption-key", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "agent.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "fleet_server": args.fleet_server,
                    "api_key": args.api_key,
                    "encryption_key": args.encryption_key,
                    "data_dir": str(Path(tmp) / "data"),
                    "ping_targets": ["127.0.0.1"],
                    "speedtest_interval_seconds": 0,
                    "live_port": 0,
                }
            )
        )
        idle_cpu, idle_peak = measure([sys.executable, "-c", "import time; time.sleep(10**6)"], min(args.seconds, 30))
        cpu, peak = measure([str(BIN / "atlas-agent"), "run", "--config", str(config)], args.seconds)
    share = cpu / args.seconds * 100
    print(
        f"agent: {cpu:.1f} s CPU over {args.seconds:.0f} s = {share:.2f} % of one core on average; "
        f"peak RSS {peak / 2**20:.1f} MiB (idle interpreter: {idle_cpu:.2f} s CPU, {idle_peak / 2**20:.1f} MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
