"""Loopback targets for the layered network checks: a DNS responder on UDP and an HTTP(S) server."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..tls import make_ca_and_server_cert

__all__ = ["DnsResponder", "dns_responder", "http_server"]


class DnsResponder:
    """Answers A questions on 127.0.0.1: ``known`` names with one record, others NXDOMAIN; ``silent`` never answers.

    Written from RFC 1035 section 4 without Atlas's code, so a test of the agent's query does not check
    the agent against itself.
    """

    def __init__(self, known: dict[str, str], *, silent: bool = False, delay_s: float = 0.0) -> None:
        self.known = known
        self.silent = silent
        self.delay_s = delay_s
        self.questions: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                packet, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            ident, _flags, qdcount = struct.unpack("!HHH", packet[:6])
            labels, at = [], 12
            while packet[at]:
                size = packet[at]
                labels.append(packet[at + 1 : at + 1 + size].decode("ascii"))
                at += 1 + size
            question = packet[12 : at + 5]
            name = ".".join(labels).lower()
            self.questions.append(name)
            if self.silent:
                continue
            time.sleep(self.delay_s)
            if name in self.known:
                header = struct.pack("!HHHHHH", ident, 0x8180, qdcount, 1, 0, 0)
                record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(self.known[name])
                self.sock.sendto(header + question + record, peer)
            else:
                self.sock.sendto(struct.pack("!HHHHHH", ident, 0x8183, qdcount, 0, 0, 0) + question, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@contextmanager
def dns_responder(known: dict[str, str], **options: object) -> Iterator[DnsResponder]:
    server = DnsResponder(known, **options)  # type: ignore[arg-type]
    server._thread.start()
    try:
        yield server
    finally:
        server.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        status = {"/ok": 200, "/fail": 500, "/missing": 404}.get(self.path, 404)
        body = f"status {status}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def http_server(tls_folder: Path | None = None) -> Iterator[tuple[str, Path | None]]:
    """(base URL, CA file or None): plain HTTP, or HTTPS with a throwaway CA when ``tls_folder`` is given."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ca: Path | None = None
    scheme = "http"
    if tls_folder is not None:
        cert, key = make_ca_and_server_cert(tls_folder)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        ca, scheme = tls_folder / "ca.pem", "https"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}", ca
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
