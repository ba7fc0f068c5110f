"""Where a generated password goes: a new mode-600 file, never a symlink's target, never stdout or a log."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from argon2 import PasswordHasher

from atlas.server.privatefile import PrivateFileError
from atlas.server.supervisor import write_admin_file

from ..fix_processes import BIN, service_env
from ..fix_services import own_database


def test_the_admin_file_is_new_and_mode_600(tmp_path: Path) -> None:
    path = tmp_path / "first-admin.txt"
    old = os.umask(0)
    try:
        write_admin_file(str(path), "http://127.0.0.1:8770/", "admin", "a-generated-password")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    assert "Password: a-generated-password" in path.read_text()


def test_a_symlink_at_the_admin_file_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    victim.chmod(0o644)
    link = tmp_path / "first-admin.txt"
    link.symlink_to(victim)
    with pytest.raises(PrivateFileError, match="exists already"):
        write_admin_file(str(link), "http://127.0.0.1:8770/", "admin", "a-generated-password")
    assert victim.read_text() == "untouched\n"
    assert victim.stat().st_mode & 0o777 == 0o644
    assert link.is_symlink()


def test_a_dangling_symlink_does_not_create_its_target(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.txt"
    link = tmp_path / "first-admin.txt"
    link.symlink_to(target)
    with pytest.raises(PrivateFileError):
        write_admin_file(str(link), "http://127.0.0.1:8770/", "admin", "a-generated-password")
    assert not target.exists()


def test_an_existing_admin_file_is_not_reused(tmp_path: Path) -> None:
    path = tmp_path / "first-admin.txt"
    path.write_text("someone else's\n")
    path.chmod(0o644)
    with pytest.raises(PrivateFileError, match="exists already"):
        write_admin_file(str(path), "http://127.0.0.1:8770/", "admin", "a-generated-password")
    assert path.read_text() == "someone else's\n"
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.fixture
def empty_config(tmp_path: Path, server_config: dict[str, Any]) -> Iterator[tuple[Path, str]]:
    """A config.yaml whose database is migrated and has no user yet, and that database's URL."""
    with own_database("_admins") as url:
        config = {name: dict(values) for name, values in server_config.items()}
        config["database"] = {"url": url}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        yield path, url


def atlas_server(cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "atlas-server", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=service_env(),
        timeout=60,
        check=False,
    )


def stored_hash(url: str, username: str) -> str | None:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT password_hash FROM users WHERE username = %s", (username,)).fetchone()
    return row[0] if row else None


def password_in(path: Path) -> str:
    lines = dict(line.split(": ", 1) for line in path.read_text().splitlines())
    return lines["Password"]


def test_create_admin_writes_the_generated_password_to_a_file_and_prints_only_its_path(
    tmp_path: Path, empty_config: tuple[Path, str]
) -> None:
    config, url = empty_config
    password_file = tmp_path / "admin-password.txt"
    result = atlas_server(
        tmp_path,
        "create-admin",
        "--config",
        config,
        "--username",
        "first",
        "--if-no-users",
        "--password-file",
        password_file,
    )
    assert result.returncode == 0, result.stderr
    password = password_in(password_file)
    assert password not in result.stdout + result.stderr
    assert str(password_file) in result.stdout
    assert password_file.stat().st_mode & 0o777 == 0o600
    stored = stored_hash(url, "first")
    assert stored is not None
    assert PasswordHasher().verify(stored, password)

    # The default file is in the current directory, named after the user; a reset writes a new one.
    result = atlas_server(tmp_path, "create-admin", "--config", config, "--username", "first", "--reset-password")
    assert result.returncode == 0, result.stderr
    default = tmp_path / "atlas-password-first.txt"
    new_password = password_in(default)
    assert new_password != password
    assert new_password not in result.stdout + result.stderr
    assert default.stat().st_mode & 0o777 == 0o600
    stored = stored_hash(url, "first")
    assert stored is not None
    assert PasswordHasher().verify(stored, new_password)


def test_create_user_changes_nothing_when_its_password_file_exists(
    tmp_path: Path, empty_config: tuple[Path, str]
) -> None:
    config, url = empty_config
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me\n")
    result = atlas_server(tmp_path, "create-user", "--config", config, "--username", "second", "--password-file", taken)
    assert result.returncode == 1
    assert "exists already" in result.stderr
    assert "nothing changed" in result.stderr
    assert taken.read_text() == "keep me\n"
    assert stored_hash(url, "second") is None


def test_run_creates_no_admin_when_its_admin_file_exists(tmp_path: Path, empty_config: tuple[Path, str]) -> None:
    config, url = empty_config
    admin_file = tmp_path / "first-admin.txt"
    admin_file.symlink_to(tmp_path / "elsewhere.txt")
    result = atlas_server(tmp_path, "run", "--config", config, "--admin-file", admin_file)
    assert result.returncode == 1
    assert "exists already" in result.stderr
    assert "no admin created" in result.stderr
    assert not (tmp_path / "elsewhere.txt").exists()
    assert stored_hash(url, "admin") is None
