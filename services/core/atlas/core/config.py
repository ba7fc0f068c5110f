"""Server settings: config.yaml, then environment variables on top.

Every setting is one field of `Settings`, declared once with its ``section.name`` key in config.yaml,
its default (in config.yaml's terms: seconds, not a timedelta), its bounds, the environment variable
that overrides it if any, and its line of documentation. ``settings_from_mapping`` reads them all
through that table, the dataclass defaults are what an empty config.yaml gives, and ``reference()``
renders the table as the README's config.yaml block (a test keeps the two the same).

An environment variable that is set overrides the file; an empty one counts only for a list setting
(``FORWARDED_ALLOW_IPS=`` trusts no proxy). A key's variable (FLEET_API_KEY, ...) adds its key in front
of the file's instead. DATABASE_PASSWORD and REDIS_PASSWORD go into those URLs percent-encoded, so any
character works. Each secret can come from a file instead (``NAME_FILE=/run/secrets/...``, e.g. a Compose or
Kubernetes secret; see SECRET_FILE_VARIABLES). A bad setting raises ConfigError whose message is one line
naming the setting (the variable, when the value came from one) and never showing a secret.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import yaml
from psycopg.conninfo import make_conninfo

from atlas.contract import Key, KeyFormatError, Keyring

from .errors import ConfigError

PLACEHOLDER_SECRETS = frozenset(
    {"your-api-key", "changeme", "change-me", "secret", "password", "api-key", "your_api_key"}
)
"""Example values from documentation that must never guard a real server."""


SECRET_FILE_VARIABLES = (
    "FLEET_API_KEY",
    "FLEET_ENCRYPTION_KEY",
    "FLEET_DB_ENCRYPTION_KEY",
    "ATLAS_SECRET_KEY",
    "DATABASE_PASSWORD",
    "REDIS_PASSWORD",
    "ATLAS_ADMIN_PASSWORD",
)
"""Secrets that may be read from the file named by ``NAME_FILE`` instead of the variable ``NAME``."""

URL_PASSWORDS = (("database_url", "DATABASE_PASSWORD"), ("redis_url", "REDIS_PASSWORD"))
"""Passwords put into a URL setting percent-encoded, so that any character works in them."""


def resolve_secret_files(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with each ``NAME_FILE`` of SECRET_FILE_VARIABLES read into ``NAME`` (one trailing newline dropped)."""
    resolved = dict(env)
    for name in SECRET_FILE_VARIABLES:
        path = env.get(f"{name}_FILE")
        if not path:
            continue
        if env.get(name):
            raise ConfigError(f"{name}_FILE: {name} is set too; set only one of the two")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{name}_FILE: {path} is not UTF-8 text") from None
        value = text[:-1] if text.endswith("\n") else text
        value = value[:-1] if value.endswith("\r") else value
        if not value:
            raise ConfigError(f"{name}_FILE: {path} is empty")
        resolved[name] = value
    return resolved


def with_password(url: str, password: str | None, setting: str) -> str:
    """``url`` with ``password`` put in percent-encoded, so ``/ @ : %`` and the like stay part of it."""
    if not password:
        return url
    if "://" not in url:  # libpq's key=value form
        return make_conninfo(url, password=password)
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    if ":" in userinfo:
        raise ConfigError(f"{setting}: the URL it goes into has a password already; keep only one of the two")
    netloc = f"{userinfo}:{quote(password, safe='')}@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc))


class _Invalid(ValueError):
    """What is wrong with a value; the caller puts the setting's name in front."""


Reader = Callable[["Spec", Any, Mapping[str, Any]], Any]
"""Turns a value from config.yaml or the environment into the attribute's value, given the values of
the settings declared before it (by key); raises _Invalid, or ConfigError for a list of named values."""


@dataclass(frozen=True)
class Spec:
    """One setting of the table: where it is written, its default and bounds, and how it is read."""

    key: str
    """``section.name`` in config.yaml."""
    default: Any
    """The value when neither config.yaml nor the environment gives one, as config.yaml would write it."""
    doc: str
    """Its comment in the reference."""
    read: Reader
    minimum: int = 1
    """The smallest integer accepted (for keys and secrets: the fewest characters)."""
    maximum: int | None = None
    env: str | None = None
    """The environment variable that overrides the file."""
    also: str | None = None
    """A second key of the same section whose keys are read after ``key``'s (a rotation list)."""
    also_doc: str = ""
    fallback: str | None = None
    """The setting whose value this one takes when config.yaml leaves it out."""
    example: str | None = None
    """What the reference shows instead of the default (for a secret)."""

    @property
    def section(self) -> str:
        return self.key.partition(".")[0]

    @property
    def name(self) -> str:
        return self.key.partition(".")[2]


def _section(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: must be a mapping")
    return value


def _str_list(value: Any, setting: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{setting}: must be a string or a list of strings")


def _value(spec: Spec, data: Mapping[str, Any], env: Mapping[str, str], earlier: Mapping[str, Any]) -> Any:
    """The setting's value: from the environment, else config.yaml, else its fallback or default."""
    section = _section(data, spec.section)
    if spec.also is not None:
        named = [(spec.env, env[spec.env])] if spec.env and env.get(spec.env) else []
        for key in (spec.key, spec.also):
            named += [(key, text) for text in _str_list(section.get(key.partition(".")[2]), key)]
        return spec.read(spec, named, earlier)
    variable = env.get(spec.env) if spec.env else None
    if spec.env and variable is not None and (variable or isinstance(spec.default, tuple)):
        setting, value = spec.env, variable
    elif spec.fallback is not None and section.get(spec.name) is None:
        setting, value = spec.key, earlier[spec.fallback]
    else:
        setting, value = spec.key, section.get(spec.name, spec.default)
    try:
        return spec.read(spec, value, earlier)
    except _Invalid as exc:
        raise ConfigError(f"{setting}: {exc}") from None


def _integer(spec: Spec, value: Any, earlier: Mapping[str, Any]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < spec.minimum:
        raise _Invalid(f"must be an integer >= {spec.minimum}")
    if spec.maximum is not None and value > spec.maximum:
        raise _Invalid(f"must be at most {spec.maximum}")
    return value


def _seconds(spec: Spec, value: Any, earlier: Mapping[str, Any]) -> timedelta:
    return timedelta(seconds=_integer(spec, value, earlier))


def _float_seconds(spec: Spec, value: Any, earlier: Mapping[str, Any]) -> float:
    return float(_integer(spec, value, earlier))


def _stale_seconds(spec: Spec, value: Any, earlier: Mapping[str, Any]) -> timedelta:
    stale = _seconds(spec, value, earlier)
    if stale <= earlier["dashboard.online_seconds"]:
        raise _Invalid("must be more than dashboard.online_seconds")
    return stale


def _boolean(spec: Spec, value: Any, earlier: Mapping[str, Any]) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("must be true or false")
    return value


def _text(spec: Spec, value: Any, earlier: Mapping[str, Any]) -> str:
    return str(value)


def _keyring_path(spec: Spec, value: Any, earlier: Mapping[str, Any]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _Invalid("must be the path of a keyring file (atlas-server keygen --hpke)")
    return value


def _address(spec: Spec, value: Any, earlier: Mapping[str, Any]) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid("must be an address such as 0.0.0.0 or 127.0.0.1")
    return value


def _key_prefix(spec: Spec, value: Any, earlier: Mapping[str, Any]) -> str:
    if not isinstance(value, str) or not value.replace("-", "").replace("_", "").isalnum():
        raise _Invalid("letters, digits, - and _ only")
    return value


def _strings(value: Any) -> list[str]:
    """A list setting: a list of strings, or one string of comma-separated entries."""
    if value is None:
        return []
    if isinstance(value, str):
        return [entry.strip() for entry in value.split(",") if entry.strip()]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return [entry.strip() for entry in value]
    raise _Invalid("must be a string or a list of strings")


def _networks(spec: Spec, value: Any, earlier: Mapping[str, Any]) -> tuple[str, ...]:
    """Addresses or networks, checked here so a typo stops start-up."""
    networks = _strings(value)
    for net in networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise _Invalid(f"{net!r} is not an address or network") from None
    return tuple(networks)


def _proxies(spec: Spec, value: Any, earlier: Mapping[str, Any]) -> tuple[str, ...]:
    """The proxies whose X-Forwarded-For and X-Forwarded-Proto uvicorn believes.

    ``*`` (or a /0) is refused: with it any client names its own address, and so dodges the
    per-address limits or poses as an exempt one.
    """
    trusted = []
    for entry in _strings(value):
        if entry == "*":
            raise _Invalid(
                "'*' trusts X-Forwarded-For from any peer, so any client could choose its address;"
                " list the proxy's addresses or network instead"
            )
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise _Invalid(f"{entry!r} is not an address or network") from None
        if network.prefixlen == 0:
            raise _Invalid(f"{entry!r} trusts every peer, as '*' would; list the proxy's network")
        trusted.append(entry if "/" not in entry else str(network))
    return tuple(dict.fromkeys(trusted))


def _secret_key(spec: Spec, value: Any, earlier: Mapping[str, Any]) -> str | None:
    """The key that signs dashboard session cookies; None means one kept in the database."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) < spec.minimum:
        raise _Invalid(f"must be a string of at least {spec.minimum} characters")
    if value.strip().lower() in PLACEHOLDER_SECRETS:
        raise _Invalid("is a documentation placeholder; generate one with `atlas-server keygen`")
    return value


def _api_keys(spec: Spec, named: list[tuple[str, str]], earlier: Mapping[str, Any]) -> tuple[str, ...]:
    for setting, key in named:
        if key.strip().lower() in PLACEHOLDER_SECRETS:
            raise ConfigError(
                f"{setting}: is a documentation placeholder; generate one with `atlas-server keygen --api-key`"
            )
        if len(key) < spec.minimum:
            raise ConfigError(f"{setting}: must be at least {spec.minimum} characters")
    return tuple(dict.fromkeys(key for _, key in named))


def _keys(named: list[tuple[str, str]]) -> list[tuple[str, Key]]:
    keys = []
    for setting, text in named:
        try:
            keys.append((setting, Key.from_base64(text)))
        except KeyFormatError as exc:
            raise ConfigError(f"{setting}: {exc}") from None
    return keys


def _payload_keys(spec: Spec, named: list[tuple[str, str]], earlier: Mapping[str, Any]) -> Keyring:
    return Keyring(key for _, key in _keys(named))


def _db_keys(spec: Spec, named: list[tuple[str, str]], earlier: Mapping[str, Any]) -> Keyring:
    """The database keys: the current one first (it encrypts), then older ones still read."""
    keys = _keys(named)
    for setting, key in keys:
        if key.kid in earlier["server.encryption_key"]:
            raise ConfigError(f"{setting}: must differ from the payload key (make one: atlas-server keygen)")
    return Keyring(key for _, key in keys)


_DEFAULTS: dict[str, Any] = {}
"""The default of every setting declared so far, by key: what later ones read while `Settings` is built."""


def _setting(key: str, default: Any, doc: str, read: Reader = _integer, *, hidden: bool = False, **options: Any) -> Any:
    """A `Settings` field read from ``key``; its default is what an empty config.yaml gives.

    ``hidden`` keeps a secret out of the repr.
    """
    spec = Spec(key, default, doc, read, **options)
    _DEFAULTS[key] = value = _value(spec, {}, {}, _DEFAULTS)
    return field(default=value, repr=not hidden, metadata={"setting": spec})


def _key_list(key: str, env: str, read: Reader, doc: str, older_doc: str, **options: Any) -> Any:
    """A field of keys read from the environment's ``env``, then ``key``, then the list ``key`` + s."""
    return _setting(
        key, (), doc, read, hidden=True, env=env, also=f"{key}s", also_doc=older_doc, example='"..."', **options
    )


@dataclass(frozen=True)
class Settings:
    """Everything the server processes read from configuration: the table of settings, in README order."""

    host: str = _setting("server.host", "0.0.0.0", "address the services listen on", _address)
    port: int = _setting("server.port", 8768, "ingest; agents are pointed at https://<host>:8768", maximum=65535)
    api_keys: tuple[str, ...] = _key_list(
        "server.api_key",
        "FLEET_API_KEY",
        _api_keys,
        "atlas-server keygen --api-key",
        "more API keys, to rotate",
        minimum=16,
    )
    keyring: Keyring = _key_list(
        "server.encryption_key",
        "FLEET_ENCRYPTION_KEY",
        _payload_keys,
        "atlas-server keygen; the same key goes to the agents",
        "older payload keys still accepted while agents move over",
    )
    db_keyring: Keyring = _key_list(
        "server.db_encryption_key",
        "FLEET_DB_ENCRYPTION_KEY",
        _db_keys,
        "encrypts message and data at rest (a different key; see Encryption at rest)",
        "older database keys, read until rotate-db-key has moved everything",
    )
    allow_plaintext: bool = _setting(
        "server.allow_plaintext", False, "accept unencrypted batches even though a key is set", _boolean
    )
    max_body_bytes: int = _setting(
        "server.max_body_bytes", 5 * 1024 * 1024, "413 above this, before anything is decrypted"
    )
    max_plaintext_bytes: int = _setting(
        "server.max_plaintext_bytes",
        2 * 1024 * 1024,
        "413 when gunzip would produce more (gzip bombs); agents seal <= 1 MiB",
    )
    decode_threads: int = _setting("server.decode_threads", 2, "threads decoding large bodies off the event loop ...")
    decode_backlog: int = _setting(
        "server.decode_backlog", 16, '... and bodies that may wait for one; past it 503 "decoder busy"', minimum=0
    )
    max_logs_per_batch: int = _setting("server.max_logs_per_batch", 5000, "422 above this")
    created_at_max_age: timedelta = _setting(
        "server.created_at_max_age_seconds", 7 * 86400, "400 for a batch created longer ago", _seconds
    )
    created_at_max_future: timedelta = _setting(
        "server.created_at_max_future_seconds", 300, "400 for a batch created further ahead", _seconds, minimum=0
    )
    duplicate_window: timedelta = _setting(
        "server.duplicate_window_seconds",
        3600,
        'ingest answers "duplicate" for a batch_id accepted this recently (stored once anyway)',
        _seconds,
    )
    rate_limit_per_key: int = _setting(
        "server.rate_limit_per_key", 2000, "batches/s per API key, per ingest process (0: off) ...", minimum=0
    )
    rate_limit_per_key_burst: int = _setting("server.rate_limit_per_key_burst", 20000, "... taken at once")
    rate_limit_per_address: int = _setting(
        "server.rate_limit_per_address",
        100,
        "... and per client address, checked before the key and the body",
        minimum=0,
    )
    rate_limit_per_address_burst: int = _setting("server.rate_limit_per_address_burst", 1000, "... taken at once")
    rate_limit_per_device: int = _setting(
        "server.rate_limit_per_device", 10, "v2 batches/s per enrolled device per ingest process", minimum=0
    )
    rate_limit_per_device_burst: int = _setting("server.rate_limit_per_device_burst", 100, "... taken at once")
    hpke_keyring_path: str | None = _setting(
        "server.hpke_keyring",
        None,
        "contract v2 (enrolled devices) on with this keyring (atlas-server keygen --hpke); unset: v2 off",
        _keyring_path,
    )
    accept_v1: bool = _setting(
        "server.accept_v1", True, "false: refuse v1 batches (shared keys) once every Mac sends v2", _boolean
    )
    rate_limit_exempt: tuple[str, ...] = _setting(
        "server.rate_limit_exempt", ("127.0.0.0/8", "::1/128"), "addresses without a per-address limit", _networks
    )
    rate_limit_max_addresses: int = _setting(
        "server.rate_limit_max_addresses",
        100_000,
        "buckets kept per process, ~250 B each (least recently used go first)",
        minimum=100,
    )
    header_timeout_seconds: int = _setting(
        "server.header_timeout_seconds", 10, "a request's head must arrive within this, else 408 and it is closed"
    )
    body_timeout_seconds: int = _setting(
        "server.body_timeout_seconds", 30, "... and its whole body within this after the head"
    )
    keepalive_timeout_seconds: int = _setting(
        "server.keepalive_timeout_seconds", 5, "an idle kept-alive connection is closed after this"
    )
    max_connections: int = _setting(
        "server.max_connections", 1000, "open connections per process; requests beyond it get 503"
    )
    forwarded_allow_ips: tuple[str, ...] = _setting(
        "server.forwarded_allow_ips",
        (),
        "proxies whose X-Forwarded-For/-Proto are believed (none; `*` is refused)",
        _proxies,
        env="FORWARDED_ALLOW_IPS",
    )
    pipeline_report_seconds: int = _setting(
        "server.pipeline_report_seconds",
        5,
        "ingest's and each worker's report of the pipeline (queue, workers) for the dashboard",
        maximum=300,
    )
    database_url: str = _setting(
        "database.url", "postgresql://postgres@127.0.0.1:5432/atlas", "", _text, hidden=True, env="DATABASE_URL"
    )
    retention_days: int = _setting(
        "database.retention_days", 0, "drop whole days of widget_logs older than this (0: keep everything)", minimum=0
    )
    partitions_ahead_days: int = _setting(
        "database.partitions_ahead_days", 14, "daily partitions kept ready ahead of today"
    )
    redis_url: str = _setting(
        "redis.url",
        "redis://127.0.0.1:6379/0",
        'give Redis a password: redis://:PASSWORD@host:6379/0 (see "The queue")',
        _text,
        hidden=True,
        env="REDIS_URL",
    )
    redis_key_prefix: str = _setting(
        "redis.key_prefix",
        "atlas",
        "Redis keys and the queue name (atlas-batches)",
        _key_prefix,
        env="ATLAS_REDIS_PREFIX",
    )
    worker_retries: int = _setting("worker.retries", 8, "then the batch waits in the failed registry")
    worker_job_timeout: int = _setting("worker.job_timeout", 30, "seconds one job may take")
    worker_monitoring_interval: int = _setting(
        "worker.monitoring_interval", 10, "seconds between the worker's heartbeats and checks of its job"
    )
    worker_maintenance_interval: int = _setting(
        "worker.maintenance_interval", 30, "seconds between the worker's rounds of queue upkeep"
    )
    worker_metrics_port: int = _setting(
        "worker.metrics_port", 0, "serve the worker's /metrics on this port (0: off)", minimum=0, maximum=65535
    )
    worker_metrics_host: str = _setting(
        "worker.metrics_host", None, "the address it binds (null: server.host)", _address, fallback="server.host"
    )
    job_retry_intervals: tuple[int, ...] = (2, 5, 15, 30, 60, 120, 300, 600)
    exporter_port: int = _setting(
        "exporter.port", 8769, "run on its own (the proxy serves it under /api/exports/)", maximum=65535
    )
    exporter_chunk_bytes: int = _setting(
        "exporter.chunk_bytes", 256 * 1024, "bytes per write to the client", minimum=1024
    )
    max_exports_per_principal: int = _setting(
        "exporter.max_exports_per_principal",
        2,
        "running exports per user (token or session), per process; beyond: 429",
    )
    exporter_send_timeout: float = _setting(
        "exporter.send_timeout_seconds",
        60,
        "a client that reads nothing this long has its export cut off (aborted)",
        _float_seconds,
    )
    dashboard_port: int = _setting(
        "dashboard.port", 8770, "run on its own (the proxy serves it under /)", maximum=65535
    )
    secret_key: str | None = _setting(
        "dashboard.secret_key",
        None,
        "signs session cookies; default: a random key kept in the database",
        _secret_key,
        hidden=True,
        minimum=32,
        env="ATLAS_SECRET_KEY",
        example='"..."',
    )
    session_max_age: timedelta = _setting(
        "dashboard.session_max_age_seconds", 8 * 3600, "sign in again after 8 hours", _seconds, minimum=60
    )
    login_attempts_per_minute: int = _setting(
        "dashboard.login_attempts_per_minute",
        10,
        "failed sign-ins per client address, per dashboard process (0: off)",
        minimum=0,
    )
    lockout_failures: int = _setting(
        "dashboard.lockout_failures",
        5,
        "consecutive failures of one address at a name before it waits (0: never) ...",
        minimum=0,
    )
    lockout_duration: timedelta = _setting(
        "dashboard.lockout_seconds",
        900,
        "... 1 s, doubling with each further failure up to this (or unlock-user NAME)",
        _seconds,
    )
    online_within: timedelta = _setting(
        "dashboard.online_seconds", 900, "last seen within 15 min: online; within stale_seconds: stale", _seconds
    )
    stale_within: timedelta = _setting("dashboard.stale_seconds", 86400, "... else offline", _stale_seconds)
    pipeline_behind: timedelta = _setting(
        "dashboard.pipeline_behind_seconds",
        120,
        "a batch queued this long and not stored: the server is behind (a banner on every page)",
        _seconds,
    )

    @property
    def queue_name(self) -> str:
        """The rq queue batches wait in."""
        return f"{self.redis_key_prefix}-batches"

    @property
    def accepts_plaintext(self) -> bool:
        """Plaintext bodies are taken only with no payload key, or when explicitly allowed."""
        return self.allow_plaintext or not self.keyring

    def require_api_keys(self) -> None:
        """Stop a service that authenticates agents from starting without an API key."""
        if not self.api_keys:
            raise ConfigError(
                "server.api_key: no API key configured (make one with `atlas-server keygen --api-key`, then set"
                " server.api_key or FLEET_API_KEY)"
            )


SETTINGS: tuple[tuple[str, Spec], ...] = tuple(
    (f.name, f.metadata["setting"]) for f in fields(Settings) if "setting" in f.metadata
)
"""The table: each attribute of `Settings` read from configuration, with its `Spec`, in order."""


def settings_from_mapping(data: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """Build Settings from a parsed config file and an environment (``NAME_FILE`` secrets read here)."""
    env = resolve_secret_files(env)
    if not isinstance(data, Mapping):
        raise ConfigError("config: the file must hold a mapping with a `server:` section")
    values: dict[str, Any] = {}
    chosen = {}
    for name, spec in SETTINGS:
        values[spec.key] = chosen[name] = _value(spec, data, env, values)
    for name, variable in URL_PASSWORDS:
        chosen[name] = with_password(chosen[name], env.get(variable), variable)
    return Settings(**chosen)


def _yaml(value: Any) -> str:
    """``value`` as config.yaml writes it, on one line."""
    if isinstance(value, str) and yaml.safe_load(value) == value:
        return value
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def _line(name: str, value: str, doc: str) -> str:
    entry = f"  {name}: {value}"
    return f"{entry:<32} # {doc}" if doc else entry


def reference() -> str:
    """The config.yaml block of the README: every setting with its default (or an example) and its comment."""
    lines: list[str] = []
    section = ""
    for _, spec in SETTINGS:
        if spec.section != section:
            section = spec.section
            lines.append(f"{section}:")
        lines.append(_line(spec.name, spec.example or _yaml(spec.default), spec.doc))
        if spec.also is not None:
            lines.append(_line(spec.also.partition(".")[2], f"[{spec.example}]", spec.also_doc))
    return "\n".join(lines) + "\n"


def load_settings(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (or $ATLAS_CONFIG, or ./config.yaml if present), then the environment."""
    env = os.environ if env is None else env
    chosen = path or env.get("ATLAS_CONFIG")
    data: Any = {}
    if chosen is None and Path("config.yaml").is_file():
        chosen = "config.yaml"
    if chosen is not None:
        try:
            with open(chosen, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except OSError as exc:
            raise ConfigError(f"--config: cannot read {chosen}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"--config: {chosen}{where} is not valid YAML") from None
    return settings_from_mapping(data, env)


@functools.cache
def get_settings() -> Settings:
    """Settings of this process, read once; services call this, tests build their own."""
    return load_settings()
