"""Where the first admin's generated password goes: a new mode-600 file, never a symlink's target."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from atlas.server.privatefile import PrivateFileError
from atlas.server.supervisor import write_admin_file


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
