"""The ingest service served by uvicorn on loopback, and the worker run for real."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from atlas.core.config import Settings
from atlas.worker.runner import build_worker

from .fix_services import API_KEY

BIN = Path(sys.executable).parent
SCRUBBED_ENV = (
    "FLEET_API_KEY",
    "FLEET_ENCRYPTION_KEY",
    "DATABASE_URL",
    "REDIS_URL",
    "ATLAS_CONFIG",
    "ATLAS_SECRET_KEY",
    "ATLAS_ADMIN_USERNAME",
    "ATLAS_ADMIN_PASSWORD",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(**extra: str) -> dict[str, str]:
    """The environment for a server subprocess: this run's rq prefix, no stray settings."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(extra)
    return env


class ServerProcess:
    """``atlas-server <command>`` (ingest, exporter, dashboard) in a subprocess, its log captured to a file."""

    def __init__(
        self,
        command: str,
        config: dict[str, Any],
        workdir: Path,
        tls: tuple[Path, Path] | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.command = command
        self.port = port or free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.verify: Any = ssl.create_default_context(cafile=tls[0].parent / "ca.pem") if tls else True
        self.config_path = workdir / f"{command}-{self.port}-{time.monotonic_ns()}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = self.config_path.with_suffix(".log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                BIN / "atlas-server",
                command,
                "--config",
                self.config_path,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *(["--ssl-certfile", tls[0], "--ssl-keyfile", tls[1]] if tls else []),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=service_env(**(env or {})),
        )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()  # never leave a server behind
            raise

    def _wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.command} exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1, verify=self.verify).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.command} did not become healthy:\n{self.logs()}")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class IngestServer(ServerProcess):
    """``atlas-server ingest`` with a helper to post batches."""

    def __init__(self, config: dict[str, Any], workdir: Path, tls: tuple[Path, Path] | None = None) -> None:
        super().__init__("ingest", config, workdir, tls)

    def post(self, body: Any, *, api_key: str | None = API_KEY, headers: dict | None = None, **kw: Any):
        hdrs = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        hdrs.update(headers or {})
        if isinstance(body, bytes):
            hdrs.setdefault("Content-Type", "application/json")
            return httpx.post(f"{self.url}/api/fleet/widget-logs", content=body, headers=hdrs, timeout=30, **kw)
        return httpx.post(f"{self.url}/api/fleet/widget-logs", json=body, headers=hdrs, timeout=30, **kw)


@pytest.fixture(scope="session")
def start_ingest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., IngestServer]]:
    """Start an ingest server with the given config mapping; all are stopped at the end."""
    started: list[IngestServer] = []
    workdir = tmp_path_factory.mktemp("ingest")

    def start(config: dict[str, Any], tls: tuple[Path, Path] | None = None) -> IngestServer:
        server = IngestServer(config, workdir, tls)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``atlas-server <command>`` with a config mapping (and extra environment); stopped at the end."""
    started: list[ServerProcess] = []
    workdir = tmp_path_factory.mktemp("servers")

    def start(
        command: str, config: dict[str, Any], env: dict[str, str] | None = None, port: int | None = None
    ) -> ServerProcess:
        server = ServerProcess(command, config, workdir, env=env, port=port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def ingest(start_ingest: Callable[..., IngestServer], server_config: dict[str, Any]) -> IngestServer:
    """The default server: current and previous payload keys, plaintext refused."""
    return start_ingest(server_config)


@pytest.fixture
def drain(settings: Settings) -> Callable[..., bool]:
    """Run the real worker in this process until the queue is empty."""

    def run(with_settings: Settings | None = None) -> bool:
        worker = build_worker(with_settings or settings)
        try:
            return worker.work(burst=True, logging_level="WARNING")
        finally:
            worker.context.close()
            worker.connection.close()

    return run
