"""The live widget page: the agent's latest readings on 127.0.0.1, as HTML and JSON.

    GET /                      the page: a card per widget (live_page), reloading every few seconds
    GET /api/widgets           every widget's latest log, and the agent's status
    GET /api/widgets/<type>    one widget (wifi, speedtest, ping, health, processes, network, roam)
    GET /api/status            encryption on or off, fleet server, last successful send

It binds to loopback by default: the readings (SSIDs, process names) are for
the person at this Mac, not the network. It also answers only requests whose
``Host`` is a loopback name (localhost, 127.0.0.1 or [::1], any port), else 421:
a web page whose own hostname an attacker has pointed at 127.0.0.1 (DNS
rebinding) cannot read it.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .daemon import Agent
from .live_page import render_page

log = logging.getLogger("atlas.agent")

WIDGETS = ("wifi", "speedtest", "ping", "health", "processes", "network", "roam")

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
"""The only ``Host`` names answered, with or without a port."""

MISDIRECTED = "This page answers only to http://localhost, http://127.0.0.1 or http://[::1]."


def loopback_host(host: str | None) -> bool:
    """True if a ``Host`` header names this Mac's loopback, with an optional numeric port."""
    value = (host or "").strip().lower()
    if value in LOOPBACK_HOSTS:
        return True
    name, _, port = value.rpartition(":")
    return name in LOOPBACK_HOSTS and port.isascii() and port.isdigit()


def _handler(agent: Agent) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "AtlasAgent"

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header(
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'",
            )
            self.end_headers()
            self.wfile.write(body)

        def _json(self, value: Any, status: int = 200) -> None:
            self._send(status, json.dumps(value, ensure_ascii=False).encode("utf-8"), "application/json")

        def do_GET(self) -> None:
            if not loopback_host(self.headers.get("Host")):
                self._json({"detail": MISDIRECTED}, HTTPStatus.MISDIRECTED_REQUEST)
                return
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            snapshot = agent.snapshot()
            if path == "/":
                self._send(200, render_page(snapshot).encode("utf-8"), "text/html; charset=utf-8")
            elif path == "/api/widgets":
                self._json(snapshot)
            elif path == "/api/status":
                self._json({k: v for k, v in snapshot.items() if k != "widgets"})
            elif path.startswith("/api/widgets/") and path.rsplit("/", 1)[1] in WIDGETS:
                widget = path.rsplit("/", 1)[1]
                self._json([v for k, v in snapshot["widgets"].items() if k == widget or k.startswith(widget + ":")])
            else:
                self._json({"detail": "not found"}, HTTPStatus.NOT_FOUND)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("live widgets: " + format, *args)

    return Handler


def serve(agent: Agent, host: str, port: int) -> ThreadingHTTPServer:
    """Start the live page in a background thread; the caller shuts it down."""
    server = ThreadingHTTPServer((host, port), _handler(agent))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="live-widgets", daemon=True).start()
    log.info("Live widgets on http://%s:%d/", host, server.server_address[1])
    return server
