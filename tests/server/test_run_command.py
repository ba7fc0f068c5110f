"""``atlas-server run --demo``: the whole stack and a local agent as real processes, stopped by Ctrl-C.

The run gets a database of its own (created by ``run`` itself, dropped at the end), so it migrates from
nothing and creates the first admin whatever other tests have put in the shared database.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import psutil
import psycopg
import pytest
import yaml
from redis import Redis
from redis import exceptions as redis_exceptions

from atlas.contract import generate_encryption_key

from ..fix_dashboard import Browserless
from ..fix_processes import BIN, ServerProcess, free_port, service_env
from ..fix_services import REDIS_URL, own_database

START_TIMEOUT = 90
DATA_TIMEOUT = 90
STOP_TIMEOUT = 20
SUMMARY_END = "Ctrl-C stops everything."
CREDENTIALS = re.compile(r"Dashboard admin created: user (\S+); its password is in (\S+)")


@pytest.fixture
def run_database() -> Iterator[str]:
    """The URL of a database that does not exist yet; dropped at the end."""
    with own_database("_run", create=False) as url:
        yield url


def distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(what: str, check: Any, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> Any:
    """Poll ``check()`` until it returns something truthy; fail early if the run process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if proc.poll() is not None:
            pytest.fail(f"atlas-server run exited with {proc.returncode} before {what}:\n{log.read_text()}")
        time.sleep(0.5)
    pytest.fail(f"no {what} within {timeout} s:\n{log.read_text()}")


def test_run_demo_serves_this_machine_and_stops_everything_on_ctrl_c(
    tmp_path: Path, server_config: dict[str, Any], run_database: str
):
    ingest_port, exporter_port, dashboard_port = distinct_free_ports(3)
    config = {name: dict(values) for name, values in server_config.items()}
    config["server"].update(port=ingest_port, db_encryption_key=generate_encryption_key())
    config["exporter"] = {"port": exporter_port}
    config["dashboard"] = {"port": dashboard_port}
    config["database"] = {"url": run_database}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    admin_file = tmp_path / "first-admin.txt"
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [BIN / "atlas-server", "run", "--demo", "--config", config_path, "--admin-file", admin_file],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=service_env(),
        )
    seen: dict[int, psutil.Process] = {}
    try:
        wait_for("summary", lambda: SUMMARY_END in log_path.read_text(), START_TIMEOUT, proc, log_path)
        urls = {
            "ingest": f"http://127.0.0.1:{ingest_port}",
            "exporter": f"http://127.0.0.1:{exporter_port}",
            "dashboard": f"http://127.0.0.1:{dashboard_port}",
        }
        for name, url in urls.items():
            assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200, name
        output = log_path.read_text()
        for url in urls.values():
            assert url in output
        found = CREDENTIALS.search(output)
        assert found, output
        username, named = found.groups()
        assert named == str(admin_file)
        assert admin_file.stat().st_mode & 0o777 == 0o600
        kept = dict(line.split(": ", 1) for line in admin_file.read_text().splitlines())
        assert kept["Username"] == username
        password = kept["Password"]
        assert password not in output  # the output may end up in journald or docker logs

        children = descendants(proc.pid)
        seen.update({p.pid: p for p in children})
        direct = psutil.Process(proc.pid).children()
        assert len(direct) == 5, [p.cmdline() for p in direct]  # ingest, worker, exporter, dashboard, agent
        assert all(os.getpgid(p.pid) == p.pid for p in direct)  # each in its own process group

        def demo_machine() -> str | None:
            with psycopg.connect(run_database, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT m.machine_id FROM machines m WHERE m.machine_id LIKE 'demo-%'"
                    " AND EXISTS (SELECT 1 FROM widget_logs l WHERE l.machine_id = m.machine_id)"
                ).fetchone()
            return row[0] if row else None

        machine_id = wait_for("demo machine with logs", demo_machine, DATA_TIMEOUT, proc, log_path)

        browser = Browserless(cast(ServerProcess, SimpleNamespace(url=urls["dashboard"])))
        try:
            assert browser.login(username, password).status_code == 303
            fleet = browser.get("/")
            assert fleet.status_code == 200
            assert f'data-machine-id="{machine_id}"' in fleet.text
        finally:
            browser.close()

        output = log_path.read_text()
        for name in ("ingest", "worker", "exporter", "dashboard", "agent"):
            assert f"[{name}]" in output, name
        seen.update({p.pid: p for p in descendants(proc.pid)})

        proc.send_signal(signal.SIGINT)
        assert proc.wait(STOP_TIMEOUT) == 0, log_path.read_text()
        left = [p for p in seen.values() if alive(p)]
        assert not left, [p.cmdline() for p in left]
        assert log_path.read_text().rstrip().endswith("Stopped")
    finally:
        if proc.poll() is None:  # a failure above: never leave the stack running
            seen.update({p.pid: p for p in descendants(proc.pid)})
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for p in seen.values():
            if alive(p):
                p.kill()


REDIS_LOCAL = Path(__file__).resolve().parents[2] / "scripts" / "redis-local"


def test_scripts_run_uses_a_redis_of_its_own(tmp_path: Path):
    """scripts/run never reconfigures the machine's shared Redis: it starts one of its own (own port, data
    directory and password, in a mode-600 config file), with the append-only file synced on every write."""
    script = (REDIS_LOCAL.parent / "run").read_text()
    assert "REDIS_URL=$(scripts/redis-local .atlas/redis" in script
    assert script.index("export REDIS_URL") < script.index("exec .venv/bin/atlas-server run")
    assert "config set" not in script
    shared = Redis.from_url(REDIS_URL)
    shared_before = (
        shared.config_get("requirepass") | shared.config_get("appendfsync") | shared.config_get("appendonly")
    )
    data, port = tmp_path / "redis", free_port()

    def redis_local() -> subprocess.CompletedProcess[str]:
        return subprocess.run([REDIS_LOCAL, str(data), str(port)], capture_output=True, text=True, timeout=30)

    first = redis_local()
    assert first.returncode == 0, first.stderr
    url = first.stdout.strip()
    own = Redis.from_url(url)
    try:
        conf = data / "redis.conf"
        assert conf.stat().st_mode & 0o777 == 0o600
        password = re.search(r"^requirepass ([0-9a-f]{64})$", conf.read_text(), re.M).group(1)  # type: ignore[union-attr]
        assert url == f"redis://:{password}@127.0.0.1:{port}/0"
        assert password not in first.stderr
        with pytest.raises(redis_exceptions.AuthenticationError):
            Redis(host="127.0.0.1", port=port).ping()
        assert own.ping()
        assert own.config_get("appendonly") == {"appendonly": "yes"}
        assert own.config_get("appendfsync") == {"appendfsync": "always"}
        pid = own.info("server")["process_id"]
        again = redis_local()  # the next scripts/run: same Redis, same password, nothing restarted
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == url
        assert own.info("server")["process_id"] == pid
        shared_after = (
            shared.config_get("requirepass") | shared.config_get("appendfsync") | shared.config_get("appendonly")
        )
        assert shared_after == shared_before
    finally:
        with contextlib.suppress(redis_exceptions.ConnectionError):  # shut down: the connection drops
            own.shutdown(nosave=True)
        shared.close()
