"""The TLS proxy (deploy/proxy/), checked without Docker: nginx.conf routes each prefix to the compose
service that serves it, on the port that service's command listens on; every route the apps really
serve reaches its own app through the proxy's location rules; /metrics stays inside; the entrypoint
generates a usable self-signed certificate, and keeps one that exists. Where an nginx binary is
installed, the configuration also runs for real in front of stub services."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from atlas.core.config import settings_from_mapping
from atlas.server.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / "deploy" / "proxy"
CONF = PROXY / "nginx.conf"
ENTRYPOINT = PROXY / "entrypoint.sh"
PUBLIC_PORT = 8768
HSTS = "max-age=31536000; includeSubDomains"
APPS = ("ingest", "exporter", "dashboard")
PREFIXES = {"/api/fleet/": "ingest", "/api/exports/": "exporter", "/": "dashboard"}
INTERNAL = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/metrics"}
"""Paths an app serves for probes, scrapers and developers, not through the public entry."""


# nginx.conf, read the way nginx matches locations -------------------------------------------------


def blocks(text: str, head: str) -> Iterator[tuple[str, str]]:
    """(header, body) of every `head ... { body }` block, braces matched."""
    for match in re.finditer(rf"(?m)^\s*({head}[^{{;]*)\{{", text):
        depth, index = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            index += 1
        yield match.group(1).strip(), text[match.end() : index - 1]


def public_server() -> str:
    text = re.sub(r"#[^\n]*", "", CONF.read_text())
    servers = [body for _, body in blocks(text, "server") if re.search(rf"listen\s+{PUBLIC_PORT}\s+ssl", body)]
    assert len(servers) == 1
    return servers[0]


def locations() -> dict[tuple[str, str], str]:
    """{(modifier, path): body}; modifier is '' (prefix), '^~' or '='."""
    found = {}
    for header, body in blocks(public_server(), "location"):
        parts = header.split()
        modifier, path = (parts[1], parts[2]) if len(parts) == 3 else ("", parts[1])
        assert modifier in ("", "^~", "="), f"no regex locations: {header}"
        found[modifier, path] = body
    return found


def target(body: str) -> tuple[str, int] | int:
    """(host, port) a location proxies to, or the status it returns."""
    returned = re.search(r"\breturn\s+(\d+)", body)
    if returned:
        return int(returned.group(1))
    passed = re.search(r"\bproxy_pass\s+(\S+);", body).group(1)
    if passed.startswith("$"):
        passed = re.search(rf"\bset\s+\{passed}\s+(\S+);", body).group(1)
    match = re.fullmatch(r"http://([\w.-]+):(\d+)", passed)
    assert match, f"proxy_pass {passed}: host:port without a URI, so the request URI goes through unchanged"
    return match.group(1), int(match.group(2))


def route(path: str) -> tuple[str, int] | int:
    """nginx's rule: an exact match wins; otherwise the longest prefix (regexes would come next: none)."""
    found = locations()
    if ("=", path) in found:
        return target(found["=", path])
    prefixes = [(p, body) for (modifier, p), body in found.items() if modifier != "=" and path.startswith(p)]
    assert prefixes, path
    return target(max(prefixes, key=lambda item: len(item[0]))[1])


# compose services and the apps' own routes ---------------------------------------------------------


def compose_ports() -> dict[str, int]:
    """Service name -> the port its `atlas-server` command listens on."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return {name: build_parser().parse_args(services[name]["command"]).port for name in APPS}


def build_app(name: str):
    settings = settings_from_mapping({"server": {"api_key": "x" * 24}}, {})
    module = __import__(f"atlas.{name}.app", fromlist=["create_app"])
    return module.create_app(settings)  # no connection yet: pools open in the lifespan


def route_paths(routes, prefix: str = "") -> Iterator[tuple[str, frozenset[str]]]:
    """(path, methods) of every route, included routers and mounts flattened."""
    for r in routes:
        if hasattr(r, "original_router"):  # FastAPI's included router
            yield from route_paths(r.original_router.routes, prefix + r.include_context.prefix)
        elif hasattr(r, "path"):
            yield prefix + r.path, frozenset(getattr(r, "methods", None) or {"*"})


def sample(path: str) -> str:
    """A concrete request path for a route template."""
    return re.sub(r"\{[^}]+\}", "sample-1", path)


@pytest.fixture(scope="module")
def app_routes() -> dict[str, set[tuple[str, frozenset[str]]]]:
    return {name: set(route_paths(build_app(name).routes)) for name in APPS}


def test_three_routes_to_the_compose_services():
    ports = compose_ports()
    assert ports == {"ingest": 8768, "exporter": 8769, "dashboard": 8770}
    for prefix, service in PREFIXES.items():
        assert ("", prefix) in locations(), prefix
        assert route(prefix) == (service, ports[service]), prefix
    proxied = {target(body) for body in locations().values()} - {404}
    assert proxied == {(name, ports[name]) for name in APPS}


def test_metrics_is_not_proxied():
    for path in ("/metrics", "/metrics/", "/metrics/anything"):
        assert route(path) == 404, path


def test_every_app_route_reaches_its_app(app_routes):
    ports = compose_ports()
    assert any(p == "/api/fleet/widget-logs" for p, _ in app_routes["ingest"])
    assert any(p == "/api/exports/logs" for p, _ in app_routes["exporter"])
    assert any(p == "/static" for p, _ in app_routes["dashboard"])
    for name, routes in app_routes.items():
        for path, methods in routes:
            if path in INTERNAL and (name != "dashboard" or path == "/metrics"):
                continue  # the dashboard's probes may go through the proxy; nobody's /metrics does
            request = sample(path) + ("/dashboard.css" if path == "/static" else "")
            reached = route(request)
            if reached == (name, ports[name]):
                continue
            # The dashboard serves the export API beside its pages; through the proxy the exporter answers it,
            # with the very same routes.
            assert isinstance(reached, tuple), (name, path, reached)
            other = reached[0]
            assert (path, methods) in app_routes[other], f"{name} serves {path}, the proxy sends it to {other}"


def test_no_app_route_is_captured_by_another_prefix(app_routes):
    for name, routes in app_routes.items():
        for prefix, owner in PREFIXES.items():
            if owner == name or prefix == "/":
                continue
            captured = {(p, m) for p, m in routes if p.startswith(prefix)}
            assert captured <= app_routes[owner], (name, prefix, captured - app_routes[owner])


def test_forwarded_headers_and_limits():
    server = public_server()
    assert re.search(r"proxy_set_header\s+Host\s+\$http_host;", server), "Host with the port, for the Origin check"
    assert re.search(r"proxy_set_header\s+X-Forwarded-Proto\s+https;", server)
    assert re.search(r"proxy_set_header\s+X-Forwarded-For\s+\$remote_addr;", server), "replace, never append"
    assert re.search(r"ssl_protocols\s+TLSv1\.2\s+TLSv1\.3;", server)
    assert re.search(rf'add_header\s+Strict-Transport-Security\s+"{re.escape(HSTS)}"\s+always;', server)
    assert all("add_header" not in body for body in locations().values()), "it would drop the HSTS header there"
    found = locations()
    body_limit = re.search(r"client_max_body_size\s+(\d+)m;", found["", "/api/fleet/"]).group(1)
    max_body = settings_from_mapping({"server": {"api_key": "x" * 24}}, {}).max_body_bytes
    assert max_body < int(body_limit) * 1024 * 1024 <= 2 * max_body
    assert re.search(r"proxy_buffering\s+off;", found["", "/api/exports/"])


# the entrypoint's certificate -------------------------------------------------------------------------


def require(tool: str) -> None:
    """scripts/services installs nginx and openssl; a machine without them fails here rather than skipping."""
    assert shutil.which(tool), f"{tool} is not installed: run scripts/services"


@pytest.fixture
def needs_openssl() -> None:
    require("openssl")


def generate(tls_dir: Path, host: str | None = None, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ATLAS_TLS_DIR": str(tls_dir), **env}
    env.pop("ATLAS_PUBLIC_HOST", None)
    if host:
        env["ATLAS_PUBLIC_HOST"] = host
    return subprocess.run(
        ["sh", str(ENTRYPOINT), "--generate-only"], env=env, capture_output=True, text=True, timeout=60
    )


def describe(cert: Path) -> str:
    return subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-subject", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def lifetime_days(cert: Path) -> float:
    """How long ``cert`` is valid, notBefore to notAfter, in days."""
    text = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-startdate", "-enddate"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    dates = dict(line.split("=", 1) for line in text.splitlines())
    parse = lambda value: ssl.cert_time_to_seconds(value.strip())  # noqa: E731
    return (parse(dates["notAfter"]) - parse(dates["notBefore"])) / 86400


def verifies(tls_dir: Path) -> bool:
    done = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-CAfile", str(tls_dir / "ca.crt"), str(tls_dir / "tls.crt")],
        capture_output=True,
        text=True,
    )
    return done.returncode == 0


@pytest.mark.usefixtures("needs_openssl")
@pytest.mark.parametrize(
    ("host", "names"),
    [
        ("fleet.example.com", ["DNS:fleet.example.com", "DNS:localhost", "IP Address:127.0.0.1"]),
        ("10.20.30.40", ["IP Address:10.20.30.40"]),
    ],
)
def test_entrypoint_generates_a_certificate_signed_by_a_local_authority(tmp_path, host, names):
    tls = tmp_path / "tls"
    done = generate(tls, host)
    assert done.returncode == 0, done.stderr
    assert "generated a local certificate authority" in done.stderr
    text = describe(tls / "tls.crt")
    assert re.search(rf"CN\s*=\s*{re.escape(host)}\b", text), text
    for name in names:
        assert name in text, text
    assert (tls / "tls.key").stat().st_mode & 0o077 == 0, "the key is readable by its owner only"
    assert (tls / "ca.key").stat().st_mode & 0o077 == 0
    assert verifies(tls)
    assert 365 <= lifetime_days(tls / "tls.crt") <= 366, "Apple's limit for a TLS server certificate"


@pytest.mark.usefixtures("needs_openssl")
def test_entrypoint_needs_the_public_host_name(tmp_path):
    """Without ATLAS_PUBLIC_HOST there is no name a remote Mac could check, so no certificate is made."""
    done = generate(tmp_path)
    assert done.returncode == 1
    assert "ATLAS_PUBLIC_HOST is not set" in done.stderr
    assert not (tmp_path / "tls.crt").exists()
    done = generate(tmp_path, "localhost")
    assert done.returncode == 0
    assert "accepted on this host only" in done.stderr


@pytest.mark.usefixtures("needs_openssl")
def test_entrypoint_refuses_a_certificate_longer_than_366_days(tmp_path):
    done = generate(tmp_path, "fleet.example.com", ATLAS_TLS_DAYS="825")
    assert done.returncode == 1
    assert "1 to 366 days" in done.stderr
    assert not (tmp_path / "tls.crt").exists()


@pytest.mark.usefixtures("needs_openssl")
def test_agents_can_pin_the_local_authority(tmp_path):
    """An agent with `ca_bundle:` pointing at ca.crt verifies the server, even with OpenSSL's strict checks."""
    assert generate(tmp_path, "fleet.example.com").returncode == 0
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve():
            conn, _ = listener.accept()
            with contextlib.suppress(OSError), server.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client.wrap_socket(raw, server_hostname="fleet.example.com") as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
        thread.join(10)


@pytest.mark.usefixtures("needs_openssl")
def test_entrypoint_renews_its_certificate_near_the_end(tmp_path):
    """A certificate it issued that ends within ATLAS_TLS_RENEW_DAYS (30) is issued anew from the same
    authority, for the same name, so agents that trust ca.crt need nothing."""
    assert generate(tmp_path, "fleet.example.com", ATLAS_TLS_DAYS="10").returncode == 0
    authority = (tmp_path / "ca.crt").read_bytes()
    short = (tmp_path / "tls.crt").read_bytes()
    done = generate(tmp_path)  # a restart; the name comes from the certificate
    assert done.returncode == 0, done.stderr
    assert "issued a certificate for fleet.example.com" in done.stderr
    assert (tmp_path / "tls.crt").read_bytes() != short
    assert (tmp_path / "ca.crt").read_bytes() == authority
    assert verifies(tmp_path)
    assert "DNS:fleet.example.com" in describe(tmp_path / "tls.crt")
    assert lifetime_days(tmp_path / "tls.crt") >= 365
    renewed = (tmp_path / "tls.crt").read_bytes()
    done = generate(tmp_path, "fleet.example.com")
    assert "using the certificate" in done.stderr
    assert (tmp_path / "tls.crt").read_bytes() == renewed, "not renewed again while it has long to run"


@pytest.mark.usefixtures("needs_openssl")
def test_the_certificate_is_renewed_while_nginx_runs(tmp_path):
    """The entrypoint's check every ATLAS_TLS_CHECK_SECONDS (here 1) renews a certificate that came near its
    end while nginx ran, and has nginx reload (a stand-in nginx records the signal)."""
    tls = tmp_path / "tls"
    assert generate(tls, "fleet.example.com").returncode == 0
    bin_dir, signals = tmp_path / "bin", tmp_path / "signals"
    bin_dir.mkdir()
    (bin_dir / "nginx").write_text(
        f'#!/bin/sh\nif [ "$1" = -s ]; then echo "$2" >>{signals}; exit 0; fi\nexec sleep 60\n'
    )
    (bin_dir / "nginx").chmod(0o755)
    env = {
        **os.environ,
        "ATLAS_TLS_DIR": str(tls),
        "ATLAS_TLS_CHECK_SECONDS": "1",
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    env.pop("ATLAS_PUBLIC_HOST", None)
    running = subprocess.Popen(["sh", str(ENTRYPOINT)], env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        assert not signals.exists(), "nothing to renew yet"
        # A certificate from the same authority that ends in 10 days, as one would after 356 days.
        assert generate(tls, ATLAS_TLS_DAYS="10", ATLAS_TLS_RENEW_DAYS="400").returncode == 0
        assert lifetime_days(tls / "tls.crt") < 11
        deadline = time.monotonic() + 15
        while not signals.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert signals.read_text() == "reload\n"
        assert lifetime_days(tls / "tls.crt") >= 365
        assert verifies(tls)
    finally:
        os.killpg(running.pid, signal.SIGTERM)
        running.wait(10)


@pytest.mark.usefixtures("needs_openssl")
def test_entrypoint_keeps_an_existing_certificate(tmp_path):
    assert generate(tmp_path, "first.example.com").returncode == 0
    before = {name: (tmp_path / name).read_bytes() for name in ("tls.crt", "tls.key")}
    done = generate(tmp_path, "second.example.com")
    assert done.returncode == 0, done.stderr
    assert "using the certificate" in done.stderr
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


@pytest.mark.usefixtures("needs_openssl")
def test_entrypoint_never_replaces_a_certificate_you_provided(tmp_path):
    """Yours ends soon: a warning, and the pair stays (even where the local authority exists)."""
    assert generate(tmp_path, "fleet.example.com").returncode == 0  # the local authority is there too
    key, cert = str(tmp_path / "tls.key"), str(tmp_path / "tls.crt")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-days", "5", "-subj", "/CN=fleet.example.com", "-keyout", key, "-out", cert),
        ],
        capture_output=True,
        check=True,
    )
    provided = (tmp_path / "tls.crt").read_bytes()
    done = generate(tmp_path, "fleet.example.com")
    assert done.returncode == 0, done.stderr
    assert "is yours: replace it" in done.stderr
    assert (tmp_path / "tls.crt").read_bytes() == provided


@pytest.mark.usefixtures("needs_openssl")
def test_entrypoint_refuses_half_a_pair(tmp_path):
    (tmp_path / "tls.crt").write_text("provided\n")
    done = generate(tmp_path, "fleet.example.com")
    assert done.returncode == 1
    assert "only one of" in done.stderr
    assert (tmp_path / "tls.crt").read_text() == "provided\n"
    assert not (tmp_path / "tls.key").exists()


# nginx itself, where installed --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Echo(BaseHTTPRequestHandler):
    """A stub service: answers what it received, as JSON."""

    def answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        received = 0
        while received < length:
            received += len(self.rfile.read(min(65536, length - received)))
        body = json.dumps(
            {
                "service": self.server.name,  # type: ignore[attr-defined]
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_bytes": received,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def live_proxy(tmp_path_factory):
    require("nginx")
    require("openssl")
    tmp = tmp_path_factory.mktemp("proxy")
    assert generate(tmp / "tls", "localhost").returncode == 0
    stubs = {}
    for name in APPS:
        stub = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
        stub.name = name  # type: ignore[attr-defined]
        threading.Thread(target=stub.serve_forever, daemon=True).start()
        stubs[name] = stub
    port, health = free_port(), free_port()
    conf = CONF.read_text()
    for name, port_in_compose in compose_ports().items():
        conf = conf.replace(f"http://{name}:{port_in_compose}", f"http://127.0.0.1:{stubs[name].server_port}")
    conf = re.sub(r"\n\s*resolver[^;]*;", "", conf)
    conf = conf.replace("/etc/atlas/tls", str(tmp / "tls")).replace("/tmp/nginx.pid", str(tmp / "nginx.pid"))
    conf = conf.replace(f"listen {PUBLIC_PORT} ssl", f"listen 127.0.0.1:{port} ssl")
    conf = conf.replace("listen 127.0.0.1:8080", f"listen 127.0.0.1:{health}")
    temp = f"\n    client_body_temp_path {tmp}/body;\n    proxy_temp_path {tmp}/proxy;"
    conf = conf.replace("http {", "http {" + temp, 1)
    if os.geteuid() == 0:  # workers would run as nobody, who cannot enter pytest's private tmp directory
        conf = "user root;\n" + conf
    (tmp / "nginx.conf").write_text(conf)
    errors = open(tmp / "error.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        ["nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", "stderr", "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=errors,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert process.poll() is None, (tmp / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.1)
        context = ssl.create_default_context(cafile=str(tmp / "tls" / "ca.crt"))
        yield {"port": port, "health": health, "context": context}
    finally:
        process.terminate()
        process.wait(10)
        errors.close()
        for stub in stubs.values():
            stub.shutdown()
            stub.server_close()


def fetch_response(proxy, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """The status, the answer's headers, and its JSON (None if it is not JSON)."""
    conn = http.client.HTTPSConnection("localhost", proxy["port"], context=proxy["context"], timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        answer = json.loads(data) if response.getheader("content-type") == "application/json" else None
        return response.status, response.headers, answer
    finally:
        conn.close()


def fetch(proxy, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    status, _, answer = fetch_response(proxy, method, path, body, headers)
    return status, answer


@pytest.mark.parametrize(
    ("method", "path", "service"),
    [
        ("POST", "/api/fleet/widget-logs", "ingest"),
        ("GET", "/api/exports/logs?format=csv&since=2026-01-01T00:00:00%2B02:00", "exporter"),
        ("GET", "/api/exports/audit", "exporter"),
        ("GET", "/", "dashboard"),
        ("GET", "/machines/C02X%2FY1", "dashboard"),
        ("GET", "/static/dashboard.css", "dashboard"),
        ("POST", "/login", "dashboard"),
    ],
)
def test_live_proxy_routes(live_proxy, method, path, service):
    status, answer = fetch(live_proxy, method, path, body=b"{}" if method == "POST" else None)
    assert status == 200
    assert answer["service"] == service
    assert answer["path"] == path, "the request URI reaches the service unchanged"


def test_live_proxy_forwarded_headers(live_proxy):
    status, answer = fetch(live_proxy, "GET", "/account", headers={"X-Forwarded-For": "203.0.113.9"})
    assert status == 200
    headers = answer["headers"]
    assert headers["host"] == f"localhost:{live_proxy['port']}"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-for"] == "127.0.0.1", "a client's own X-Forwarded-For is dropped"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/"), ("GET", "/api/exports/logs"), ("POST", "/api/fleet/widget-logs"), ("GET", "/metrics")],
)
def test_live_proxy_sends_hsts(live_proxy, method, path):
    """Every answer of the public entry, errors included, tells browsers to keep to https."""
    _, headers, _ = fetch_response(live_proxy, method, path, body=b"{}" if method == "POST" else None)
    assert headers.get_all("Strict-Transport-Security") == [HSTS]


@pytest.mark.parametrize("path", ["/metrics", "/metrics/", "/%6Detrics", "/static/../metrics"])
def test_live_proxy_hides_metrics(live_proxy, path):
    status, answer = fetch(live_proxy, "GET", path)
    assert status == 404
    assert answer is None


def test_live_proxy_body_limits(live_proxy):
    status, answer = fetch(live_proxy, "POST", "/api/fleet/widget-logs", body=b"x" * (5 * 1024 * 1024 + 100))
    assert (status, answer["body_bytes"]) == (200, 5 * 1024 * 1024 + 100), "ingest answers its own 413"
    status, _ = fetch(live_proxy, "POST", "/api/fleet/widget-logs", body=b"x" * (7 * 1024 * 1024))
    assert status == 413
    status, _ = fetch(live_proxy, "POST", "/login", body=b"x" * (2 * 1024 * 1024))
    assert status == 413


def test_live_proxy_healthcheck(live_proxy):
    conn = http.client.HTTPConnection("127.0.0.1", live_proxy["health"], timeout=10)
    conn.request("GET", "/proxy-healthz")
    assert conn.getresponse().status == 200
    conn.close()


def test_entrypoint_passes_shellcheck_as_posix_sh():
    """The proxy image runs it with busybox sh: POSIX only."""
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    done = subprocess.run([shellcheck, "--shell=sh", str(ENTRYPOINT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
