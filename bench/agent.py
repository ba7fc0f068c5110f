"""Agent footprint: CPU time and peak memory of ``atlas-agent run`` over a fixed time.

Runs the real agent with default schedules (collect every 60 s, send every 300 s)
against a real ingest server, pinging loopback only and with the speed test off
(it is measured apart: it downloads and uploads for tens of seconds by design).
The baseline is an idle Python interpreter started the same way, so the figure
is the agent's own cost.

    .venv/bin/python -m bench.agent [--seconds 600]

Without ``--fleet-server`` it starts its own ``atlas-server ingest`` on loopback, with
the run's own database and Redis prefixes (as ``bench.ingest`` does); with it (and
``--api-key``, ``--encryption-key``), the agent sends to that server instead.
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

from .common import BenchError, add_common_arguments, isolated_env, machine_info, say
from .ingest import HOST, served

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600, help="measured seconds (default 600)")
    parser.add_argument("--fleet-server", help="send to this server instead of a local ingest started here")
    parser.add_argument("--api-key")
    parser.add_argument("--encryption-key")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.fleet_server:
        if not (args.api_key and args.encryption_key):
            parser.error("--fleet-server needs --api-key and --encryption-key")
        return footprint(args)
    try:
        with isolated_env(args.postgres, args.redis) as env, served("real", env, "/readyz") as server:
            args.fleet_server = f"http://{HOST}:{server.port}"
            args.api_key, args.encryption_key = env.api_key, env.encryption_key
            say(f"agent bench | {machine_info(env)}")
            say(f"  {args.seconds:.0f} s of atlas-agent run with default schedules, sending to {args.fleet_server}")
            status = footprint(args)
            accepted = server.log.read_text(encoding="utf-8", errors="replace").count("Successfully decrypted")
            if not accepted:
                raise BenchError("the server accepted no batch from the agent: the footprint measured no sending")
            say(f"  the server accepted {accepted} batch(es) from the agent during the run")
            return status
    except BenchError as exc:
        print(f"agent bench FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("agent bench interrupted; cleaned up", file=sys.stderr)
        return 130


def footprint(args: argparse.Namespace) -> int:
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
