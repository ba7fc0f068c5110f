"""The live widget page: the agent's latest readings on 127.0.0.1, as HTML and JSON.

    GET /                      the page: five widgets refreshing every few seconds
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

log = logging.getLogger("atlas.agent")

WIDGETS = ("wifi", "speedtest", "ping", "health", "processes", "network", "roam")

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
"""The only ``Host`` names answered, with or without a port."""

MISDIRECTED = "This page answers only to http://localhost, http://127.0.0.1 or http://[::1]."

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Atlas live widgets</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px -apple-system,system-ui,sans-serif;margin:1.5rem;background:#f5f5f7;color:#1d1d1f}
h1{font-size:1.3rem}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:1rem}
section{background:#fff;border-radius:10px;padding:1rem;box-shadow:0 1px 3px #0002}
h2{font-size:1rem;margin:0 0 .5rem}pre{white-space:pre-wrap;font-size:12px;max-height:14rem;overflow:auto}
.ERROR{color:#c00}.WARNING{color:#b60}#status{margin-bottom:1rem}
</style></head><body>
<h1>Atlas live widgets</h1><div id="status">Loading…</div><div class="grid" id="grid"></div>
<script>
const names = {wifi: "📡 WiFi", speedtest: "⚡ Speed test", ping: "🏓 Ping", health: "❤️ Health",
               processes: "⚙️ Processes"};
function card(title, entries) {
  const s = document.createElement("section");
  const h = document.createElement("h2"); h.textContent = title; s.appendChild(h);
  if (!entries.length) { const p = document.createElement("p"); p.textContent = "No reading yet"; s.appendChild(p); }
  for (const e of entries) {
    const p = document.createElement("p"); p.className = e.level; p.textContent = e.message; s.appendChild(p);
    const pre = document.createElement("pre"); pre.textContent = JSON.stringify(e.data, null, 1); s.appendChild(pre);
  }
  return s;
}
async function refresh() {
  try {
    const r = await fetch("/api/widgets"); const d = await r.json();
    document.getElementById("status").textContent =
      (d.encryption ? "Encryption on (AES-256-GCM)" : "Encryption OFF") +
      (d.fleet_server ? " · sending to " + d.fleet_server + " · last send: " + (d.last_sent_at || "not yet") +
       " · pending batches: " + d.pending_batches : " · live only (no fleet server)");
    const grid = document.getElementById("grid"); grid.replaceChildren();
    for (const [type, title] of Object.entries(names)) {
      const entries = Object.entries(d.widgets)
        .filter(([k]) => k === type || k.startsWith(type + ":")).map(([, v]) => v);
      grid.appendChild(card(title, entries));
    }
  } catch (e) { document.getElementById("status").textContent = "Agent not answering: " + e; }
}
refresh(); setInterval(refresh, 5000);
</script></body></html>
"""


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
                "Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"
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
                self._send(200, PAGE.encode("utf-8"), "text/html; charset=utf-8")
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
