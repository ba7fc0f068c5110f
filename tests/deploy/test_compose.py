"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the file parses, every secret is
required and documented, every server service runs an `atlas-server` subcommand that this suite starts
natively, start-up waits on health, and only the TLS proxy is reachable from outside."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
import yaml

from atlas.core.config import settings_from_mapping
from atlas.server.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
SERVER_IMAGE = "atlas-server:latest"
LONG_RUNNING = ("postgres", "redis", "ingest", "worker", "exporter", "dashboard", "proxy")
WEB_PORTS = {"ingest": 8768, "exporter": 8769, "dashboard": 8770}


def subcommands() -> set[str]:
    return set(build_parser()._subparsers._group_actions[0].choices)


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def server_services() -> dict[str, dict]:
    """The services that run the server image."""
    return {name: s for name, s in compose()["services"].items() if s.get("image") == SERVER_IMAGE}


def test_server_services_run_real_subcommands():
    services = server_services()
    assert set(services) == {"migrate", "ingest", "worker", "exporter", "dashboard"}
    for name, service in services.items():
        command = service["command"]
        assert command[0] in subcommands(), (name, command)
        build_parser().parse_args(command)  # flags are real too
        assert service["build"] == ".", name  # one Dockerfile, one image


def test_web_services_listen_on_their_ports():
    for name, port in WEB_PORTS.items():
        args = build_parser().parse_args(compose()["services"][name]["command"])
        assert args.command == name
        assert args.port == port, name


def test_every_secret_is_required_and_documented():
    text = (ROOT / "docker-compose.yml").read_text()
    example = (ROOT / ".env.example").read_text()
    variables = set(re.findall(r"\$\{(\w+):\?", text))
    assert {"POSTGRES_PASSWORD", "FLEET_API_KEY", "FLEET_ENCRYPTION_KEY", "FLEET_DB_ENCRYPTION_KEY"} <= variables
    for var in variables:
        assert re.search(rf"^{var}=", example, re.MULTILINE), var
    assert not re.search(r"\$\{\w+\}", text), "every variable must be ${VAR:?message}"
    assert not re.search(r"\$\{\w+:?-", text), "no defaults: a missing secret must stop start-up"
    assert not re.search(r"\$(?!\{)\w", text), "no bare $VAR"


def test_env_example_documents_each_variable():
    lines = (ROOT / ".env.example").read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"\w+=", line):
            assert lines[index - 1].startswith("#"), f"{line.split('=')[0]} needs a comment above it"


def test_postgres_and_redis_keep_their_data():
    services = compose()
    volumes = set(services["volumes"])
    postgres, redis = services["services"]["postgres"], services["services"]["redis"]
    assert any(v.split(":")[0] in volumes and v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert any(v.split(":")[0] in volumes and v.endswith(":/data") for v in redis["volumes"])
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "ping" in redis["healthcheck"]["test"]


def test_redis_requires_the_password_the_services_use():
    """Whoever can write to the queue decides what the workers store: Redis takes only the services' password."""
    services = compose()
    redis = services["services"]["redis"]
    password = "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}"
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == password
    assert redis["environment"]["REDISCLI_AUTH"] == password, "the healthcheck's redis-cli authenticates"
    for name, service in server_services().items():
        assert service["environment"]["REDIS_URL"] == f"redis://:{password}@redis:6379/0", name
    assert "ports" not in redis


def test_every_long_running_service_has_a_healthcheck():
    services = compose()["services"]
    assert set(services) == {*LONG_RUNNING, "migrate"}
    for name in LONG_RUNNING:
        test = services[name].get("healthcheck", {}).get("test")
        assert test, name
        assert test[0] in ("CMD", "CMD-SHELL"), name
    for name, port in WEB_PORTS.items():
        assert f"http://127.0.0.1:{port}/readyz" in " ".join(services[name]["healthcheck"]["test"]), name
    assert "restart" in services["migrate"]
    assert services["migrate"]["restart"] == "no"


def test_worker_healthcheck_compiles():
    test = compose()["services"]["worker"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    compile(test[3], "healthcheck", "exec")


def test_dependencies_wait_for_health():
    services = compose()["services"]
    expected = {
        "migrate": {"postgres": "service_healthy"},
        "ingest": {"redis": "service_healthy", "migrate": "service_completed_successfully"},
        "worker": {
            "postgres": "service_healthy",
            "redis": "service_healthy",
            "migrate": "service_completed_successfully",
        },
        "exporter": {"postgres": "service_healthy", "migrate": "service_completed_successfully"},
        "dashboard": {"postgres": "service_healthy", "migrate": "service_completed_successfully"},
        "proxy": {"ingest": "service_healthy", "exporter": "service_healthy", "dashboard": "service_healthy"},
    }
    for name, wanted in expected.items():
        depends = services[name]["depends_on"]
        assert {dep: cond["condition"] for dep, cond in depends.items()} == wanted, name


def test_only_the_proxy_publishes_a_port():
    services = compose()["services"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert published == {"proxy": ["8768:8768"]}
    assert "8768" in services["proxy"]["ports"][0]
    for name in ("ingest", "exporter", "dashboard", "proxy"):
        assert "network_mode" not in services[name], name


def test_worker_scales():
    """`docker compose up --scale worker=4` needs a worker without a fixed name or host port."""
    worker = compose()["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "deploy" not in worker or "replicas" not in worker["deploy"]


def test_web_services_trust_the_proxy_headers_from_the_proxy_alone():
    """FORWARDED_ALLOW_IPS is server.forwarded_allow_ips: the dashboard needs X-Forwarded-Proto for Secure
    cookies, the export audit and the rate limits X-Forwarded-For; only the proxy's fixed address is trusted."""
    config = compose()
    services = config["services"]
    proxy_address = services["proxy"]["networks"]["default"]["ipv4_address"]
    assert proxy_address == "172.30.87.10"
    (pool,) = config["networks"]["default"]["ipam"]["config"]
    assert pool["subnet"] == "172.30.87.0/24"
    assert ipaddress.ip_address(proxy_address) in ipaddress.ip_network(pool["subnet"])
    assert ipaddress.ip_address(proxy_address) not in ipaddress.ip_network(pool["ip_range"])  # never handed out
    for name in WEB_PORTS:
        trusted = services[name]["environment"]["FORWARDED_ALLOW_IPS"]
        assert trusted == proxy_address, name
        settings = settings_from_mapping({"server": {"api_key": "x" * 24}}, {"FORWARDED_ALLOW_IPS": trusted})
        assert settings.forwarded_allow_ips == (proxy_address,)
    for name in ("migrate", "worker"):
        assert "FORWARDED_ALLOW_IPS" not in services[name]["environment"], name


def test_proxy_generates_or_keeps_its_certificate():
    services = compose()
    proxy = services["services"]["proxy"]
    assert proxy["build"] == "deploy/proxy"
    volume, target = proxy["volumes"][0].split(":")[:2]
    assert volume in services["volumes"]
    assert target == "/etc/atlas/tls"
    assert "ATLAS_PUBLIC_HOST" in proxy["environment"]
    dockerfile = (ROOT / "deploy/proxy/Dockerfile").read_text()
    assert re.search(r"^FROM nginx:\d+\.\d+\.\d+-alpine$", dockerfile, re.MULTILINE)
    assert "openssl" in dockerfile
    assert "entrypoint.sh" in dockerfile
    assert "nginx.conf" in dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [
        (m.group(1).upper(), m.group(2).strip())
        for m in re.finditer(r"^(\w+)\s+(.*)$", text, re.MULTILINE)
        if not m.group(0).startswith("#")
    ]


def test_dockerfile_slim_pinned_non_root():
    instructions = dockerfile_instructions()
    args = dict(value.split("=", 1) for kind, value in instructions if kind == "ARG" and "=" in value)
    bases = [value.split()[0] for kind, value in instructions if kind == "FROM"]
    assert len(bases) == 2  # build stage and a runtime stage without pip's leftovers
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", image), image
    users = [value for kind, value in instructions if kind == "USER"]
    assert users
    assert re.fullmatch(r"[1-9]\d{3,}(:\d+)?", users[-1]), "numeric non-root uid (runAsNonRoot)"
    assert ("ENTRYPOINT", '["atlas-server"]') in instructions


def test_dockerfile_installs_the_pinned_server_only():
    installs = [value for kind, value in dockerfile_instructions() if kind == "RUN" and "pip install" in value]
    assert len(installs) == 1
    install = installs[0]
    assert "-c constraints.txt" in install
    assert "./contract" in install
    assert "./services" in install
    assert "agent" not in install
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[\w.\-]+==[\w.\-+]+", line), line


@pytest.mark.parametrize("folder", ["contract", "services"])
def test_image_gets_what_it_installs(folder):
    text = (ROOT / "Dockerfile").read_text()
    assert f"COPY {folder}/ {folder}/" in text
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if not line.startswith("#")]
    assert folder + "/" not in ignored
    assert ".venv/" in ignored
