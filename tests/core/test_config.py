"""config.yaml as users write it, the environment on top, and one-line errors naming the setting."""

from __future__ import annotations

import base64
import dataclasses
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from atlas.contract import generate_encryption_key, key_id, parse_key
from atlas.core.config import SETTINGS, ConfigError, Settings, load_settings, reference, settings_from_mapping

from ..fix_processes import BIN, free_port, service_env

API_KEY = "an-api-key-of-enough-length"
ROOT = Path(__file__).resolve().parents[2]


def atlas_server(*args: object, **env: str) -> subprocess.CompletedProcess:
    """Run the real ``atlas-server`` command with this run's environment (plus ``env``)."""
    return subprocess.run(
        [BIN / "atlas-server", *args],
        env=service_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_users_config_shape(tmp_path):
    key = generate_encryption_key()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"server": {"port": 8768, "api_key": API_KEY, "encryption_key": key}}))
    settings = load_settings(path, env={})
    assert settings.port == 8768
    assert settings.api_keys == (API_KEY,)
    assert [k.kid for k in settings.keyring] == [key_id(parse_key(key))]
    assert not settings.accepts_plaintext


def test_environment_overrides_and_rotation_lists():
    old, new, env_key = (generate_encryption_key() for _ in range(3))
    settings = settings_from_mapping(
        {
            "server": {
                "api_key": API_KEY,
                "api_keys": ["second-api-key-0123456"],
                "encryption_key": new,
                "encryption_keys": [old],
            },
            "database": {"url": "postgresql://file/db"},
        },
        env={
            "FLEET_ENCRYPTION_KEY": env_key,
            "FLEET_API_KEY": "env-api-key-0123456789",
            "DATABASE_URL": "postgresql://env/db",
            "REDIS_URL": "redis://env:6379/1",
        },
    )
    assert settings.api_keys == ("env-api-key-0123456789", API_KEY, "second-api-key-0123456")
    assert [k.kid for k in settings.keyring] == [key_id(parse_key(k)) for k in (env_key, new, old)]
    assert settings.database_url == "postgresql://env/db"
    assert settings.redis_url == "redis://env:6379/1"


def test_connection_settings_default_and_read():
    defaults = settings_from_mapping({"server": {"api_key": API_KEY}}, env={})
    assert (defaults.header_timeout_seconds, defaults.body_timeout_seconds) == (10, 30)
    assert (defaults.keepalive_timeout_seconds, defaults.max_connections) == (5, 1000)
    server = {
        "api_key": API_KEY,
        "header_timeout_seconds": 3,
        "body_timeout_seconds": 60,
        "keepalive_timeout_seconds": 2,
        "max_connections": 50,
    }
    settings = settings_from_mapping({"server": server}, env={})
    assert (settings.header_timeout_seconds, settings.body_timeout_seconds) == (3, 60)
    assert (settings.keepalive_timeout_seconds, settings.max_connections) == (2, 50)


def test_no_key_means_plaintext_accepted():
    assert settings_from_mapping({"server": {"api_key": API_KEY}}, env={}).accepts_plaintext


@pytest.mark.parametrize(
    ("server", "env", "message"),
    [
        ({"encryption_key": "not base64!"}, {}, "server.encryption_key: key is not valid standard base64"),
        ({"encryption_key": base64.b64encode(b"x" * 16).decode()}, {}, "server.encryption_key: key decodes to 16"),
        ({"encryption_keys": ["AAAA"]}, {}, "server.encryption_keys: key decodes to 3 bytes"),
        ({}, {"FLEET_ENCRYPTION_KEY": "short"}, "FLEET_ENCRYPTION_KEY: key is not valid"),
        ({"api_key": "short"}, {}, "server.api_key: must be at least 16 characters"),
        ({"api_key": "your-api-key"}, {}, "server.api_key: is a documentation placeholder"),
        ({"port": "eighty"}, {}, "server.port: must be an integer"),
        ({"allow_plaintext": "yes"}, {}, "server.allow_plaintext: must be true or false"),
        ({"decode_threads": 0}, {}, "server.decode_threads: must be an integer >= 1"),
        ({"decode_backlog": -1}, {}, "server.decode_backlog: must be an integer >= 0"),
        ({"header_timeout_seconds": 0}, {}, "server.header_timeout_seconds: must be an integer >= 1"),
        ({"body_timeout_seconds": 2.5}, {}, "server.body_timeout_seconds: must be an integer >= 1"),
        ({"keepalive_timeout_seconds": "5"}, {}, "server.keepalive_timeout_seconds: must be an integer >= 1"),
        ({"max_connections": -1}, {}, "server.max_connections: must be an integer >= 1"),
        ({"port": 65536}, {}, "server.port: must be at most 65535"),
        ({"host": ""}, {}, "server.host: must be an address such as 0.0.0.0 or 127.0.0.1"),
        ({"api_keys": ["short"]}, {}, "server.api_keys: must be at least 16 characters"),
        ({}, {"ATLAS_REDIS_PREFIX": "a b"}, "ATLAS_REDIS_PREFIX: letters, digits, - and _ only"),
        ({}, {"ATLAS_SECRET_KEY": "short"}, "ATLAS_SECRET_KEY: must be a string of at least 32 characters"),
    ],
)
def test_invalid_settings_name_the_setting(server, env, message):
    with pytest.raises(ConfigError) as exc:
        settings_from_mapping({"server": server}, env=env)
    assert str(exc.value).startswith(message)
    assert "\n" not in str(exc.value)


def test_decode_settings_default_and_read():
    defaults = settings_from_mapping({"server": {}}, env={})
    assert (defaults.max_plaintext_bytes, defaults.decode_threads, defaults.decode_backlog) == (2 * 2**20, 2, 16)
    server = {"max_plaintext_bytes": 4096, "decode_threads": 3, "decode_backlog": 0}
    chosen = settings_from_mapping({"server": server}, env={})
    assert (chosen.max_plaintext_bytes, chosen.decode_threads, chosen.decode_backlog) == (4096, 3, 0)


def test_missing_api_key_stops_ingest_with_one_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"server": {"encryption_key": generate_encryption_key()}}))
    result = atlas_server("ingest", "--config", path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "atlas-server: configuration error: server.api_key: no API key configured (make one with"
        " `atlas-server keygen --api-key`, then set server.api_key or FLEET_API_KEY)"
    ]


def test_bad_key_error_never_shows_the_key(tmp_path):
    secret = base64.b64encode(b"s" * 31).decode()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"server": {"api_key": API_KEY, "encryption_key": secret}}))
    result = atlas_server("worker", "--config", path)
    assert result.returncode == 2
    assert "server.encryption_key" in result.stderr
    assert secret not in result.stderr


def test_keygen_prints_a_usable_key():
    out = subprocess.run([BIN / "atlas-server", "keygen"], capture_output=True, text=True, check=True).stdout.strip()
    assert len(out) == 44
    assert len(parse_key(out)) == 32
    api = subprocess.run([BIN / "atlas-server", "keygen", "--api-key"], capture_output=True, text=True, check=True)
    assert len(api.stdout.strip()) >= 40


def test_migrate_is_idempotent(database_url):
    for _ in range(2):
        result = atlas_server("migrate", DATABASE_URL=database_url)
        assert result.returncode == 0, result.stderr
        assert "Schema up to date (0 migration(s) applied)" in result.stdout


def test_unreachable_database_is_one_line(tmp_path):
    port = free_port()
    result = atlas_server("migrate", DATABASE_URL=f"postgresql://u:sekrit-pw-123@127.0.0.1:{port}/x")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("atlas-server: cannot reach PostgreSQL:")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "sekrit-pw-123" not in result.stderr


def _config_block(text: str) -> str:
    """The config.yaml block of the README's Configuration section."""
    section = text[text.index("## Configuration") :]
    return section[section.index("```yaml\n") + len("```yaml\n") : section.index("```\n", section.index("```yaml"))]


def _comparable(settings: Settings) -> dict[str, object]:
    """Every field, keyrings by their kids (a Keyring has no equality of its own)."""
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    return {name: [k.kid for k in v] if name.endswith("keyring") else v for name, v in values.items()}


def test_readme_config_block_is_the_settings_table():
    """Each setting is documented once, in the table: the README shows what reference() renders."""
    assert _config_block((ROOT / "README.md").read_text(encoding="utf-8")) == reference(), (
        "README.md's config.yaml block differs from the settings table; paste the output of "
        '`.venv/bin/python -c "from atlas.core.config import reference; print(reference(), end=str())"`'
    )


def test_the_reference_reads_back_as_the_defaults():
    """Read as a config.yaml, the reference (its secret placeholders aside) gives every default."""
    shown = yaml.safe_load(reference())
    placeholders = {
        f"{section}.{name}" for section, keys in shown.items() for name, v in keys.items() if v in ("...", ["..."])
    }
    assert placeholders == {key for _, spec in SETTINGS if spec.example for key in (spec.key, spec.also) if key}
    documented = {
        section: {name: v for name, v in keys.items() if f"{section}.{name}" not in placeholders}
        for section, keys in shown.items()
    }
    assert _comparable(settings_from_mapping(documented, env={})) == _comparable(Settings())


def test_dataclass_defaults_are_an_empty_config():
    assert _comparable(settings_from_mapping({}, env={})) == _comparable(Settings())
    keys = [spec.key for _, spec in SETTINGS] + [spec.also for _, spec in SETTINGS if spec.also]
    assert len(keys) == len(set(keys))


def test_environment_variables_in_the_readme_name_their_setting():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for _, spec in SETTINGS:
        if spec.env is not None:
            row = re.search(rf"^\| `{spec.env}` *\|(.*)$", text, re.MULTILINE)
            assert row is not None, spec.env
            assert f"`{spec.key}`" in row.group(1), spec.env


def test_protocol_doc_defaults_are_the_table_defaults():
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z]+\.[a-z_]+)` \| `([^`]+)`", text, re.MULTILINE))
    defaults = {spec.key: spec.default for _, spec in SETTINGS}
    assert rows
    for key, shown in rows.items():
        assert yaml.safe_load(shown) == defaults[key], key


def test_metrics_host_defaults_to_the_server_host():
    server = {"host": "127.0.0.1"}
    assert settings_from_mapping({"server": server}, env={}).worker_metrics_host == "127.0.0.1"
    chosen = settings_from_mapping({"server": server, "worker": {"metrics_host": "10.0.0.2"}}, env={})
    assert chosen.worker_metrics_host == "10.0.0.2"


def test_stale_must_follow_online():
    with pytest.raises(ConfigError, match=r"^dashboard\.stale_seconds: must be more than dashboard\.online_seconds$"):
        settings_from_mapping({"dashboard": {"online_seconds": 600, "stale_seconds": 600}}, env={})


INTEGER_SETTINGS = [spec for _, spec in SETTINGS if type(spec.default) is int]


@pytest.mark.parametrize("spec", INTEGER_SETTINGS, ids=[spec.key for spec in INTEGER_SETTINGS])
def test_every_integer_bound_is_enforced_and_named(spec):
    with pytest.raises(ConfigError) as exc:
        settings_from_mapping({spec.section: {spec.name: spec.minimum - 1}}, env={})
    assert str(exc.value) == f"{spec.key}: must be an integer >= {spec.minimum}"
    if spec.maximum is not None:
        with pytest.raises(ConfigError, match=rf"^{re.escape(spec.key)}: must be at most {spec.maximum}$"):
            settings_from_mapping({spec.section: {spec.name: spec.maximum + 1}}, env={})
