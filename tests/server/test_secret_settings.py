"""Passwords reach PostgreSQL and Redis whole, whatever their characters, from a variable or a file:
DATABASE_PASSWORD and REDIS_PASSWORD (or NAME_FILE, as Compose secrets give them) are put into the URLs
percent-encoded, never pasted in raw. ``migrate --wait`` waits for a PostgreSQL that is not up yet, one
line per try, and ``check-config`` names the setting a service would refuse."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from redis import Redis

from atlas.core.accounts import authenticate, bootstrap_admin
from atlas.core.config import ConfigError, settings_from_mapping
from atlas.core.db import connect
from atlas.core.queue import redis_client
from atlas.server.cli import main

from ..faults.harness import PrivatePostgres, wait_for
from ..fix_processes import BIN, SCRUBBED_ENV, free_port, service_env
from ..fix_services import own_database

PASSWORD = "p/w@d:x%41?#&=+ 'q\"\\é"
"""Every character that breaks a URL pasted together by hand: / @ : % (with hex after it) ? # & = + and quotes."""


@pytest.fixture
def scram_postgres() -> Iterator[PrivatePostgres]:
    """A cluster of the test's own where the role ``atlas`` needs its password (scram), with PASSWORD."""
    cluster = PrivatePostgres()
    (cluster.data / "pg_hba.conf").write_text(
        "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
    )
    try:
        cluster.start()
        with psycopg.connect(cluster.url.replace("/atlas_faults", "/postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE atlas LOGIN CREATEDB PASSWORD {}").format(sql.Literal(PASSWORD)))
        yield cluster
    finally:
        cluster.close()


def atlas_url(cluster: PrivatePostgres) -> str:
    return f"postgresql://atlas@127.0.0.1:{cluster.port}/atlas_secrets"


def atlas_server(*args: str, cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "atlas-server"), *args],
        env=service_env(**env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def secret_file(tmp_path: Path, name: str, value: str) -> str:
    path = tmp_path / name
    path.write_text(value + "\n")  # as editors and `echo` leave it: one trailing newline, not part of it
    return str(path)


def test_the_password_is_encoded_into_the_url_and_parses_back_whole() -> None:
    settings = settings_from_mapping(
        {}, {"DATABASE_URL": "postgresql://atlas@db:5432/atlas", "DATABASE_PASSWORD": PASSWORD}
    )
    assert conninfo_to_dict(settings.database_url) == {
        "user": "atlas",
        "password": PASSWORD,
        "host": "db",
        "port": "5432",
        "dbname": "atlas",
    }
    conninfo = settings_from_mapping({"database": {"url": "host=db dbname=atlas"}}, {"DATABASE_PASSWORD": PASSWORD})
    assert conninfo_to_dict(conninfo.database_url)["password"] == PASSWORD
    with pytest.raises(ConfigError, match=r"^DATABASE_PASSWORD: .*password already"):
        settings_from_mapping({}, {"DATABASE_URL": "postgresql://atlas:old@db/atlas", "DATABASE_PASSWORD": "new"})


def test_migrate_signs_in_with_a_password_file(scram_postgres: PrivatePostgres, tmp_path: Path) -> None:
    done = atlas_server(
        "migrate",
        cwd=tmp_path,
        DATABASE_URL=atlas_url(scram_postgres),
        DATABASE_PASSWORD_FILE=secret_file(tmp_path, "postgres_password", PASSWORD),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Schema up to date" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr


def test_the_password_from_the_environment_signs_in_too(scram_postgres: PrivatePostgres) -> None:
    settings = settings_from_mapping({}, {"DATABASE_URL": atlas_url(scram_postgres), "DATABASE_PASSWORD": PASSWORD})
    url = settings.database_url.replace("/atlas_secrets", "/postgres")
    with connect(url) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("atlas",)


def test_a_wrong_password_stops_migrate_at_once_even_when_waiting(
    scram_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    started = time.monotonic()
    done = atlas_server(
        "migrate", "--wait", "60", cwd=tmp_path, DATABASE_URL=atlas_url(scram_postgres), DATABASE_PASSWORD="wrong"
    )
    assert done.returncode == 1
    assert time.monotonic() - started < 20
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line
    assert "cannot reach PostgreSQL" in done.stderr
    assert "password authentication failed" in done.stderr


@pytest.mark.slow
def test_migrate_waits_for_postgres_to_come_up(tmp_path: Path) -> None:
    cluster = PrivatePostgres()
    try:
        url = cluster.url
        once = atlas_server("migrate", cwd=tmp_path, DATABASE_URL=url)
        assert once.returncode == 1
        assert once.stderr.startswith("atlas-server: cannot reach PostgreSQL: ")
        assert len(once.stderr.strip().splitlines()) == 1
        waiting = subprocess.Popen(
            [str(BIN / "atlas-server"), "migrate", "--wait", "60"],
            env=service_env(DATABASE_URL=url),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        assert waiting.poll() is None, "gave up before --wait ran out"
        cluster.start()
        out, err = waiting.communicate(timeout=60)
    finally:
        cluster.close()
    assert waiting.returncode == 0, out + err
    tries = [line for line in out.splitlines() if line.startswith("Waiting for PostgreSQL: ")]
    assert tries, out
    assert all("retrying for" in line for line in tries)
    assert "Schema up to date" in out


def test_the_redis_password_is_encoded_into_the_url(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--requirepass", PASSWORD],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    try:
        settings = settings_from_mapping(
            {},
            {
                "REDIS_URL": f"redis://127.0.0.1:{port}/0",
                "REDIS_PASSWORD_FILE": secret_file(tmp_path, "redis_password", PASSWORD),
            },
        )
        client = redis_client(settings.redis_url)
        assert wait_for(lambda: _pings(client), timeout=15)
        assert not _pings(Redis(port=port, password="wrong"))
    finally:
        server.terminate()
        server.wait(10)


def _pings(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def test_secret_files(tmp_path: Path) -> None:
    key = "k" * 20
    settings = settings_from_mapping({}, {"FLEET_API_KEY_FILE": secret_file(tmp_path, "api", key)})
    assert settings.api_keys == (key,)
    with pytest.raises(ConfigError, match=r"^FLEET_API_KEY_FILE: FLEET_API_KEY is set too"):
        settings_from_mapping({}, {"FLEET_API_KEY_FILE": str(tmp_path / "api"), "FLEET_API_KEY": key})
    with pytest.raises(ConfigError, match=r"^FLEET_API_KEY_FILE: cannot read .*missing"):
        settings_from_mapping({}, {"FLEET_API_KEY_FILE": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match=r"^ATLAS_SECRET_KEY_FILE: .* is empty"):
        settings_from_mapping({}, {"ATLAS_SECRET_KEY_FILE": secret_file(tmp_path, "empty", "")})


def test_check_config_names_a_short_admin_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in SCRUBBED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ATLAS_ADMIN_USERNAME", "admin")
    monkeypatch.setenv("ATLAS_ADMIN_PASSWORD_FILE", secret_file(tmp_path, "admin", "short"))
    assert main(["check-config"]) == 2, "no API key"
    assert capsys.readouterr().err.startswith("atlas-server: configuration error: server.api_key: no API key")
    monkeypatch.setenv("FLEET_API_KEY", "k" * 20)
    assert main(["check-config"]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == (
        "",
        "atlas-server: configuration error: ATLAS_ADMIN_PASSWORD: must be at least 12 characters\n",
    )
    # ingest's own settings are fine: checking them alone passes
    assert main(["check-config", "--service", "ingest", "--service", "worker"]) == 0
    assert capsys.readouterr().out == "Configuration OK for ingest, worker\n"
    monkeypatch.setenv("ATLAS_ADMIN_PASSWORD_FILE", secret_file(tmp_path, "admin", "long-enough-password"))
    assert main(["check-config"]) == 0
    assert capsys.readouterr().out == "Configuration OK for migrate, ingest, worker, exporter, dashboard\n"
    monkeypatch.delenv("ATLAS_ADMIN_USERNAME")
    assert main(["check-config"]) == 2
    assert "ATLAS_ADMIN_USERNAME: not set" in capsys.readouterr().err


def test_check_config_runs_as_a_command(tmp_path: Path) -> None:
    done = atlas_server(
        "check-config", cwd=tmp_path, FLEET_API_KEY="k" * 20, ATLAS_ADMIN_USERNAME="a", ATLAS_ADMIN_PASSWORD="x"
    )
    assert done.returncode == 2
    assert done.stderr == "atlas-server: configuration error: ATLAS_ADMIN_PASSWORD: must be at least 12 characters\n"


def test_the_first_admin_password_comes_from_its_file(tmp_path: Path) -> None:
    """The compose dashboard gets ATLAS_ADMIN_PASSWORD_FILE (a secret), never the password itself."""
    env = {"ATLAS_ADMIN_USERNAME": "first", "ATLAS_ADMIN_PASSWORD_FILE": secret_file(tmp_path, "admin", PASSWORD)}
    with own_database("_admin_file") as url, connect(url, autocommit=True) as conn:
        user = bootstrap_admin(conn, env)
        assert user is not None
        assert user.username == "first"
        assert authenticate(conn, "first", PASSWORD) == user
