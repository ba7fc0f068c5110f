"""``atlas-server keygen``: v1 keys unchanged, and ``--hpke`` adding a key pair to a keyring file (mode 600)."""

from __future__ import annotations

import base64
import json
import os
import stat
import uuid
from pathlib import Path

import pytest

from atlas.contract import SUITE_HYBRID, SUITE_X25519, HpkeKeyring, Key, open_v2, seal_v2
from atlas.server import cli


def test_keygen_still_prints_an_aes_key(capsys) -> None:
    assert cli.main(["keygen"]) == 0
    printed = capsys.readouterr().out.strip()
    assert len(base64.b64decode(printed)) == 32
    Key.from_base64(printed)


def test_keygen_api_key_is_unchanged(capsys) -> None:
    assert cli.main(["keygen", "--api-key"]) == 0
    assert len(capsys.readouterr().out.strip()) == 43


def test_keygen_hpke_creates_then_extends_the_keyring(tmp_path: Path, capsys) -> None:
    path = tmp_path / "keyring.json"
    old_umask = os.umask(0o022)
    try:
        assert cli.main(["keygen", "--hpke", "--keyring", str(path)]) == 0
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = HpkeKeyring.load(path).current
    assert first is not None
    assert first.suite == SUITE_HYBRID
    out = capsys.readouterr().out
    assert f"Added HPKE key {first.kid} (mlkem768-x25519)" in out
    assert first.to_json()["private_key"] not in out, "the private key is never printed"

    spooled = seal_v2(
        first.public, b"{}", device_id="dev-1", batch_id=str(uuid.uuid4()), created_at="2026-11-28T16:00:00Z"
    )
    assert cli.main(["keygen", "--hpke", "--suite", "x25519", "--keyring", str(path)]) == 0
    ring = HpkeKeyring.load(path)
    assert [(k.suite, k.kid) for k in ring] == [(SUITE_X25519, ring.current.kid), (SUITE_HYBRID, first.kid)]
    assert "1 older key(s) kept" in capsys.readouterr().out
    assert open_v2(ring, spooled, device_id="dev-1") == b"{}", "the old key still opens what was sealed to it"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_keygen_hpke_leaves_a_malformed_keyring_alone(tmp_path: Path, capsys) -> None:
    path = tmp_path / "keyring.json"
    path.write_text(json.dumps({"format": "something else"}))
    assert cli.main(["keygen", "--hpke", "--keyring", str(path)]) == 2
    assert str(path) in capsys.readouterr().err
    assert json.loads(path.read_text()) == {"format": "something else"}


def test_keygen_hpke_reports_an_unwritable_place(tmp_path: Path, capsys) -> None:
    assert cli.main(["keygen", "--hpke", "--keyring", str(tmp_path / "missing" / "keyring.json")]) == 1
    assert "cannot write the keyring" in capsys.readouterr().err


def test_keygen_hpke_and_api_key_exclude_each_other() -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["keygen", "--hpke", "--api-key"])
