"""The live widget server, as existing scripts start it.

    python3 -m atlas.live_widgets --port 8767 --fleet-server URL --machine-id ID \\
        --api-key KEY --encryption-key KEY [--config FILE]

    from atlas.live_widgets import start_live_widget_server
    start_live_widget_server(port=8767, fleet_server=..., machine_id=..., api_key=..., encryption_key=...)

With a fleet server it also collects into the local store and sends batches;
without one it only shows live data. Its start-up lines (the page's address,
"Widget log encryption enabled (AES-256-GCM)", ...) go to standard error even
when the caller configured no logging.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer

from atlas.agent.config import AgentConfigError, load_agent_config
from atlas.agent.daemon import Agent
from atlas.agent.live import serve
from atlas.agent.sender import SenderConfigError

__all__ = ["LiveWidgetServer", "main", "start_live_widget_server"]

log = logging.getLogger("atlas.agent")


@dataclass
class LiveWidgetServer:
    """A running live widget server; ``stop()`` ends collection, sending and the page."""

    agent: Agent
    url: str
    _stop: threading.Event
    _thread: threading.Thread
    _http: ThreadingHTTPServer
    _restore_logging: Callable[[], None] = field(default=lambda: None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._http.shutdown()
        self._http.server_close()
        self._restore_logging()


def _print_logs_unless_configured() -> Callable[[], None]:
    """If no handler would show the agent's INFO lines, print them on stderr; returns what undoes that.

    Python's logging shows nothing below WARNING until someone configures it, so a script that only
    calls ``start_live_widget_server()`` would never see the lines the set-up guide tells it to check.
    """
    logger = logging.getLogger("atlas")
    if logger.hasHandlers():  # the caller (or main()) configured logging: leave it as it is
        return lambda: None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(level)

    return restore


def start_live_widget_server(
    port: int = 8767,
    fleet_server: str | None = None,
    machine_id: str | None = None,
    api_key: str | None = None,
    encryption_key: str | None = None,
    *,
    config: str | None = None,
    host: str | None = None,
    block: bool = True,
) -> LiveWidgetServer:
    """Start the page (and, with ``fleet_server``, the collector and sender).

    Blocks until interrupted unless ``block=False``, which returns the running server.
    """
    settings = load_agent_config(config).with_overrides(
        live_port=port,
        fleet_server=fleet_server,
        machine_id=machine_id,
        api_key=api_key,
        encryption_key=encryption_key,
        live_host=host,
    )
    restore_logging = _print_logs_unless_configured()
    try:
        agent = Agent(settings)
        if agent.sender is None:
            log.info(
                "No fleet server set: showing live data only, nothing is sent "
                "(to send, pass --fleet-server https://HOST:8768 and --api-key)"
            )
        http = serve(agent, settings.live_host, settings.live_port)
    except BaseException:
        restore_logging()
        raise
    stop = threading.Event()
    url = f"http://{settings.live_host}:{http.server_address[1]}/"
    thread = threading.Thread(target=agent.run, args=(stop,), name="atlas-agent", daemon=True)
    thread.start()
    server = LiveWidgetServer(agent, url, stop, thread, http, restore_logging)
    if block:
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m atlas.live_widgets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--fleet-server", help="https://fleet-server:8768; without it, live data only")
    parser.add_argument("--machine-id")
    parser.add_argument("--api-key")
    parser.add_argument("--encryption-key", help="base64 AES-256 key, the same as the server's")
    parser.add_argument("--config", help="agent.yaml; flags override it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        start_live_widget_server(
            port=args.port,
            fleet_server=args.fleet_server,
            machine_id=args.machine_id,
            api_key=args.api_key,
            encryption_key=args.encryption_key,
            config=args.config,
            host=args.host,
        )
    except (AgentConfigError, SenderConfigError) as exc:
        print(f"atlas.live_widgets: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
