"""``atlas-server run``: the whole server stack as local processes, until Ctrl-C.

It migrates the database, creates the first dashboard admin when there is no
user yet (its generated password is written to a new mode-600 ``--admin-file``,
never printed: output may end up in journald or docker logs), then starts ``atlas-server ingest``, ``worker``,
``exporter`` and ``dashboard`` as child processes with the same configuration
and environment, waits for each one's ``/readyz`` (the worker: alive for
``WORKER_SETTLE`` seconds) and prints the URLs. Their output is printed line
by line, prefixed with the service's name.

Each child runs in a process group of its own, so a Ctrl-C in the terminal
reaches only this supervisor, which then stops them all: SIGTERM to the
agent's group, then to every service's, up to ``STOP_TIMEOUT`` seconds in all,
then SIGKILL (a second Ctrl-C kills at once).

``--demo`` also runs a local agent (``atlas-agent run``) that reports this
machine to the local ingest, with the server's API key and payload key, so the
dashboard shows real data within a minute.

Exit status: 0 after Ctrl-C (or SIGTERM, SIGHUP) once everything has stopped;
1 when a service exits on its own (the others are stopped; the line names the
service and its exit code) or is not ready within ``READY_TIMEOUT`` seconds.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import IO, Any

import yaml

from atlas.core.config import Settings

from .privatefile import PrivateFileError, create_private_file

SERVICES = ("ingest", "worker", "exporter", "dashboard")
"""Started in this order; the demo agent comes after all of them are ready."""

READY_TIMEOUT = 60.0
"""Seconds a service may take to answer 200 on /readyz."""

WORKER_SETTLE = 2.0
"""The worker has no HTTP endpoint: it counts as ready once alive this long."""

STOP_TIMEOUT = 10.0
"""Seconds between SIGTERM and SIGKILL when stopping."""

POLL = 0.2

ADMIN_USERNAME = "admin"
"""The first admin's name when ATLAS_ADMIN_USERNAME/ATLAS_ADMIN_PASSWORD are not set."""

DEMO_COLLECT_SECONDS = 10
DEMO_SEND_SECONDS = 15


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Probes go straight to our own services, whatever http_proxy says."""


class StartupFailed(RuntimeError):
    """A service exited or never became ready; the message names it."""


def _url_host(host: str) -> str:
    """The host to reach a server bound to ``host`` at, as written in a URL."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _command(script: str, module: str) -> list[str]:
    """``script`` from this interpreter's bin directory, else ``python -m module``."""
    path = Path(sys.executable).parent / script
    return [str(path)] if os.access(path, os.X_OK) else [sys.executable, "-m", module]


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    ready_url: str | None
    started: float = field(default_factory=time.monotonic)
    reader: threading.Thread | None = None
    ready: bool = False
    stop_first: bool = False


class Supervisor:
    """Child processes, their prefixed output, readiness, and stopping them all."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self.children: list[Child] = []
        self.stop_requested = threading.Event()
        self.signals = 0
        self._lock = threading.Lock()
        self._width = max(len(n) for n in (*SERVICES, "agent")) + 2

    # --- output ----------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        with self._lock:
            self.out.write(text + "\n")
            self.out.flush()

    def _pump(self, child: Child) -> None:
        prefix = f"[{child.name}]".ljust(self._width) + " "
        assert child.proc.stdout is not None
        for raw in child.proc.stdout:
            self.say(prefix + raw.decode("utf-8", "replace").rstrip("\r\n"))

    # --- signals ---------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        self.stop_requested.set()

    def install_signal_handlers(self) -> Callable[[], None]:
        """SIGINT, SIGTERM and SIGHUP ask to stop; returns a function that restores the previous handlers.

        SIGHUP too: the children are not in our process group, so a closed terminal would not reach them.
        """
        stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in stops}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    # --- children --------------------------------------------------------------------

    def start(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        ready_url: str | None = None,
        *,
        stop_first: bool = False,
    ) -> Child:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            process_group=0,  # Ctrl-C in the terminal reaches only us; we stop the children in order
        )
        child = Child(name, proc, ready_url, stop_first=stop_first)
        child.reader = threading.Thread(target=self._pump, args=(child,), name=f"output-{name}", daemon=True)
        child.reader.start()
        self.children.append(child)
        return child

    def exited(self) -> Child | None:
        """The first child that has exited, if any."""
        return next((c for c in self.children if c.proc.poll() is not None), None)

    def _probe(self, child: Child) -> bool:
        if child.ready_url is None:
            return time.monotonic() - child.started >= WORKER_SETTLE
        try:
            with _NO_PROXY.open(child.ready_url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> bool:
        """Until every child is ready (True), or a stop is requested (False); StartupFailed otherwise."""
        deadline = time.monotonic() + timeout
        while not self.stop_requested.is_set():
            gone = self.exited()
            if gone is not None:
                raise StartupFailed(f"{gone.name} exited with {describe_exit(gone.proc.returncode)} while starting")
            for child in self.children:
                if not child.ready and self._probe(child):
                    child.ready = True
            waiting = [c for c in self.children if not c.ready]
            if not waiting:
                return True
            if time.monotonic() > deadline:
                names = ", ".join(f"{c.name} ({c.ready_url or 'alive'})" for c in waiting)
                raise StartupFailed(f"not ready after {timeout:g} s: {names}")
            self.stop_requested.wait(POLL)
        return False

    def watch(self) -> Child | None:
        """Block until a stop is requested (None) or a child exits (that child)."""
        while not self.stop_requested.wait(POLL):
            gone = self.exited()
            if gone is not None:
                return gone
        return None

    def stop_all(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every child's process group, wait up to ``timeout`` s, then SIGKILL what is left."""
        running = sorted((c for c in self.children if c.proc.poll() is None), key=lambda c: not c.stop_first)
        if running:
            self.say(f"Stopping {', '.join(c.name for c in running)}")
        signals_before = self.signals
        deadline = time.monotonic() + timeout
        first = [c for c in self.children if c.stop_first]  # the agent: its last batch still reaches ingest
        for phase in (first, [c for c in self.children if not c.stop_first]):
            for child in phase:
                _killpg(child.proc.pid, signal.SIGTERM)
            while time.monotonic() < deadline and self.signals == signals_before:  # a second Ctrl-C: kill now
                if all(c.proc.poll() is not None for c in phase):
                    break
                time.sleep(0.1)
        forced = self.signals != signals_before
        for child in self.children:
            if child.proc.poll() is None:
                self.say(
                    f"Killing {child.name}" if forced else f"{child.name} did not stop within {timeout:g} s: killing it"
                )
            _killpg(child.proc.pid, signal.SIGKILL)  # also anything it left in its group
            child.proc.wait()
        for child in self.children:
            if child.reader is not None:
                child.reader.join(timeout=2)
            if child.proc.stdout is not None and not (child.reader and child.reader.is_alive()):
                child.proc.stdout.close()


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


# --- what happens before the services start ----------------------------------------------


def prepare_database(settings: Settings, say: Callable[[str], None]) -> None:
    """``atlas-server migrate``, in this process."""
    from atlas.core.db import connect, ensure_database, migrate

    if ensure_database(settings.database_url):
        say("Created database")
    with connect(settings.database_url) as conn:
        applied = migrate(conn, progress=lambda m: say(f"Applying migration {m.version}: {m.name}"))
    say(f"Schema up to date ({len(applied)} migration(s) applied)")


def check_redis(settings: Settings) -> None:
    """Raise redis's ConnectionError now rather than have ingest wait on it."""
    from atlas.core.queue import redis_client

    client = redis_client(settings.redis_url)
    try:
        client.ping()
    finally:
        client.close()


def ensure_first_admin(
    settings: Settings, env: Mapping[str, str], admin_file: str, url: str
) -> tuple[str, bool] | None:
    """Create the first dashboard admin if there is no user: (name, True if its password is in admin_file), else None.

    ATLAS_ADMIN_USERNAME/ATLAS_ADMIN_PASSWORD name that admin when set; otherwise it is ``admin`` with a
    generated password, written to ``admin_file`` in the same transaction: if that file cannot be created
    (PrivateFileError), no admin is.
    """
    from atlas.core.accounts import (
        BOOTSTRAP_LOCK_ID,
        admin_credentials,
        bootstrap_admin,
        count_users,
        create_user,
        generate_password,
    )
    from atlas.core.db import connect

    with connect(settings.database_url, autocommit=True) as conn:
        if all(admin_credentials(env)):
            user = bootstrap_admin(conn, env)
            return (user.username, False) if user else None
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (BOOTSTRAP_LOCK_ID,))
            if count_users(conn):
                return None
            password = generate_password()
            user = create_user(conn, ADMIN_USERNAME, password, "admin")
            write_admin_file(admin_file, url, user.username, password)
        return user.username, True


def write_admin_file(path: str, url: str, username: str, password: str) -> None:
    """The first admin's credentials in a new file, readable by this user only (PrivateFileError if it exists)."""
    create_private_file(path, f"Atlas dashboard: {url}\nUsername: {username}\nPassword: {password}\n")


def demo_machine_id() -> str:
    host = socket.gethostname().split(".")[0].strip().lower() or "localhost"
    return f"demo-{host}"[:128]


def demo_agent_config(settings: Settings, ingest_url: str, data_dir: Path) -> dict[str, Any]:
    """An agent.yaml for this server: its first API key, its current payload key (or plaintext if none)."""
    config: dict[str, Any] = {
        "fleet_server": ingest_url,
        "api_key": settings.api_keys[0],
        "machine_id": demo_machine_id(),
        "data_dir": str(data_dir),
        "collect_interval_seconds": DEMO_COLLECT_SECONDS,
        "send_interval_seconds": DEMO_SEND_SECONDS,
        "speedtest_interval_seconds": 0,
        "live_port": 0,
        "ping_targets": ["127.0.0.1"],
    }
    current = settings.keyring.current
    if current is not None:
        config["encryption_key"] = base64.b64encode(current.raw).decode("ascii")
    else:
        config["allow_plaintext"] = True
    return config


# --- the command -------------------------------------------------------------------------


def run(
    settings: Settings,
    *,
    config: str | None,
    host: str,
    demo: bool = False,
    admin_file: str,
    out: IO[str] | None = None,
) -> int:
    """``atlas-server run``; see the module docstring."""
    from atlas.core.errors import AccountError

    settings.require_api_keys()  # ingest would refuse to start anyway: say it before anything runs
    if demo and find_spec("atlas.agent") is None:
        print("atlas-server: --demo needs the agent: pip install ./contract ./agent", file=sys.stderr)
        return 1
    sup = Supervisor(out)
    say = sup.say
    prepare_database(settings, say)
    check_redis(settings)

    web = _url_host(host)
    ingest_url = f"http://{web}:{settings.port}"
    exporter_url = f"http://{web}:{settings.exporter_port}"
    dashboard_url = f"http://{web}:{settings.dashboard_port}"
    try:
        admin = ensure_first_admin(settings, os.environ, admin_file, f"{dashboard_url}/")
    except AccountError as exc:
        print(f"atlas-server: {exc}", file=sys.stderr)
        return 1
    except PrivateFileError as exc:
        print(f"atlas-server: --admin-file {exc}; no admin created", file=sys.stderr)
        return 1

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    config_args = ["--config", os.path.abspath(config)] if config else []
    server = _command("atlas-server", "atlas.server.cli")
    ports = {"ingest": settings.port, "exporter": settings.exporter_port, "dashboard": settings.dashboard_port}
    urls = {"ingest": ingest_url, "exporter": exporter_url, "dashboard": dashboard_url}
    demo_dir: str | None = None
    restore = sup.install_signal_handlers()
    code = 0
    try:
        for name in SERVICES:
            argv = [*server, name, *config_args]
            if name in ports:
                argv += ["--host", host, "--port", str(ports[name])]
            sup.start(name, argv, env, f"{urls[name]}/readyz" if name in urls else None)
        if sup.wait_ready() and demo:
            demo_dir = tempfile.mkdtemp(prefix="atlas-demo-")
            agent_config = Path(demo_dir) / "agent.yaml"
            with os.fdopen(os.open(agent_config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
                yaml.safe_dump(demo_agent_config(settings, ingest_url, Path(demo_dir) / "data"), fh)
            agent = _command("atlas-agent", "atlas.agent.cli")
            sup.start("agent", [*agent, "run", "--config", str(agent_config)], env, stop_first=True)
        if not sup.stop_requested.is_set():
            say(summary(settings, urls, admin, admin_file, demo))
            gone = sup.watch()
            if gone is not None:
                print(
                    f"atlas-server: {gone.name} exited with {describe_exit(gone.proc.returncode)}; stopping the others",
                    file=sys.stderr,
                    flush=True,
                )
                code = 1
    except StartupFailed as exc:
        print(f"atlas-server: {exc}; stopping the others", file=sys.stderr, flush=True)
        code = 1
    finally:
        sup.stop_all()
        restore()
        if demo_dir:
            shutil.rmtree(demo_dir, ignore_errors=True)
    if code == 0:
        say("Stopped")
    return code


def summary(
    settings: Settings,
    urls: Mapping[str, str],
    admin: tuple[str, bool] | None,
    admin_file: str,
    demo: bool,
) -> str:
    lines = [
        "",
        "Atlas is running:",
        f"  ingest     {urls['ingest']}/api/fleet/widget-logs   (agents: fleet_server {urls['ingest']})",
        f"  dashboard  {urls['dashboard']}/",
        f"  exports    {urls['exporter']}/api/exports/logs?format=csv   (dashboard session or API token)",
        f"  worker     persists batches from the Redis queue {settings.queue_name}",
    ]
    if demo:
        lines.append(
            f"  agent      {demo_machine_id()}: this machine, collected every {DEMO_COLLECT_SECONDS} s,"
            f" sent every {DEMO_SEND_SECONDS} s"
        )
    if admin is None:
        lines.append("Dashboard: sign in with an existing user")
    elif not admin[1]:
        lines.append(f"Dashboard: created the admin {admin[0]!r} from ATLAS_ADMIN_USERNAME/ATLAS_ADMIN_PASSWORD")
    else:
        lines.append(f"Dashboard admin created: user {admin[0]}; its password is in {os.path.abspath(admin_file)}")
        lines.append("  (mode 600, shown nowhere else: delete that file once you have changed the password)")
    lines += ["Each service serves /healthz and /readyz. Ctrl-C stops everything.", ""]
    return "\n".join(lines)
