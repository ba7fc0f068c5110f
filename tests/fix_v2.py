"""Contract v2 fixtures: an ingest server with an HPKE keyring (v2 on), and an enroll secret."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from atlas.contract import SUITE_X25519, HpkeKeyring, HpkePrivateKey
from atlas.core.devices import create_enroll_secret

from .fix_processes import IngestServer


@pytest.fixture(scope="session")
def hpke_keyring(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, HpkeKeyring]:
    keyring = HpkeKeyring([HpkePrivateKey.generate(), HpkePrivateKey.generate(SUITE_X25519)])
    path = tmp_path_factory.mktemp("hpke") / "keyring.json"
    keyring.save(path)
    return path, keyring


@pytest.fixture(scope="session")
def v2_config(server_config: dict[str, Any], hpke_keyring: tuple[Path, HpkeKeyring]) -> dict[str, Any]:
    config = {name: dict(values) for name, values in server_config.items()}
    config["server"]["hpke_keyring"] = str(hpke_keyring[0])
    return config


@pytest.fixture(scope="session")
def v2_ingest(start_ingest: Callable[..., IngestServer], v2_config: dict[str, Any]) -> IngestServer:
    return start_ingest(v2_config)


@pytest.fixture
def secret(db: psycopg.Connection) -> str:
    return create_enroll_secret(db)[0]
