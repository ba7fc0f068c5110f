"""Server settings: config.yaml, then environment variables on top.

``config.yaml`` keeps the shape users already write::

    server:
      port: 8768
      api_key: "..."            # or api_keys: [...] to rotate
      encryption_key: "..."     # current payload key
      encryption_keys: [...]    # older keys still accepted while agents move over
      db_encryption_key: "..."  # encrypts message and data at rest (a different key)
      db_encryption_keys: [...] # older database keys, still read until rotate-db-key is done
      rate_limit_per_key: 2000  # batches/s per API key per ingest process (burst: rate_limit_per_key_burst)
      rate_limit_per_address: 100  # requests/s per client address per ingest process (and _burst)
      header_timeout_seconds: 10    # a request's head must arrive within this (else 408, closed)
      body_timeout_seconds: 30      # and its body within this after the head
      keepalive_timeout_seconds: 5  # an idle kept-alive connection is closed after this
      max_connections: 1000         # per process; requests beyond it get 503
      forwarded_allow_ips: []   # proxies whose X-Forwarded-For/-Proto are believed; empty: none
      hpke_keyring: atlas-hpke-keyring.json  # contract v2 (enrolled devices) on; unset: v2 off
      accept_v1: true           # false: refuse v1 batches (shared keys) once every Mac sends v2
      rate_limit_per_device: 10 # v2 batches/s per enrolled device per ingest process (and _burst)
    database:
      url: postgresql://...
    redis:
      url: redis://...

    worker:
      metrics_port: 0           # serve the worker's /metrics on this port; 0: off
      metrics_host: 0.0.0.0     # address it binds (default: server.host)
    exporter:
      port: 8769
      max_exports_per_principal: 2  # running exports per user per exporter process; beyond: 429
      send_timeout_seconds: 60  # a client that reads nothing this long has its export cut off
    dashboard:
      port: 8770
      secret_key: "..."         # signs session cookies; default: one kept in the database
      session_max_age_seconds: 28800
      login_attempts_per_minute: 10  # failed sign-ins per client address per dashboard process
      lockout_failures: 5       # failures of one address at a name before it waits: 1 s, doubling
      lockout_seconds: 900      # the longest wait
      online_seconds: 900       # last seen within: online; within stale_seconds: stale
      stale_seconds: 86400

Environment variables override the file: FLEET_API_KEY, FLEET_ENCRYPTION_KEY,
FLEET_DB_ENCRYPTION_KEY, DATABASE_URL, REDIS_URL, ATLAS_REDIS_PREFIX, ATLAS_SECRET_KEY,
FORWARDED_ALLOW_IPS (comma-separated, for server.forwarded_allow_ips). A bad setting raises ConfigError
whose message is one line naming the setting and never showing a secret.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from atlas.contract import Key, KeyFormatError, Keyring

from .errors import ConfigError

DEFAULT_PORT = 8768
"""The port agents are pointed at: ``https://<host>:8768``."""

DEFAULT_EXPORTER_PORT = 8769
"""Port of ``atlas-server exporter`` when run on its own (the proxy serves it under /api/exports/)."""

DEFAULT_DASHBOARD_PORT = 8770
"""Port of ``atlas-server dashboard`` when run on its own (the proxy serves it under /)."""

MIN_SECRET_KEY_CHARS = 32
"""Shortest dashboard.secret_key accepted."""

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/atlas"
"""PostgreSQL used when neither config nor DATABASE_URL names one."""

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
"""Redis used when neither config nor REDIS_URL names one."""

DEFAULT_RATE_PER_KEY, DEFAULT_BURST_PER_KEY = 2000, 20000
"""Batches/s per API key per ingest process. Every Mac of a fleet shares one key, so this caps the
whole fleet as one process sees it: 200,000 Macs sending every 300 s make 667 batches/s in all, and
the limit is above what one process carries (docs/scaling.md), so a healthy fleet never reaches it; it
bounds a leaked key's flood when several keys are configured. The burst is 30 s of that whole fleet at once."""

DEFAULT_RATE_PER_ADDRESS, DEFAULT_BURST_PER_ADDRESS = 100, 1000
"""Requests/s per client address per ingest process: 30,000 Macs behind one NAT address at the
5-minute cadence (a corporate NAT holds thousands), with a burst of 1,000 for the 9:00 wake-up;
one runaway client looping on a connection is held to a fraction of what a process serves."""

DEFAULT_RATE_LIMIT_EXEMPT = ("127.0.0.0/8", "::1/128")
"""Addresses without a per-address limit: local tools and the benches, and a proxy on the same
host that sends no X-Forwarded-For (all clients would share its address). A request carrying
X-Forwarded-For is never exempt, whatever address it names."""

DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024
"""Largest request body read off the wire."""

DEFAULT_MAX_PLAINTEXT_BYTES = 2 * 1024 * 1024
"""Largest decompressed plaintext; bounds a gzip bomb. The Atlas agent seals at most
``atlas.agent.sender.MAX_BATCH_PLAINTEXT_BYTES`` (1 MiB) per batch; a typical batch is a few KiB."""

DEFAULT_DECODE_THREADS = 2
"""Threads that decode large bodies off the event loop."""

DEFAULT_DECODE_BACKLOG = 16
"""Large bodies that may wait for a decode thread; past it ingest answers 503 ``decode busy``."""

MIN_API_KEY_CHARS = 16
"""Shortest API key accepted; shorter ones are guessable."""

PLACEHOLDER_SECRETS = frozenset(
    {"your-api-key", "changeme", "change-me", "secret", "password", "api-key", "your_api_key"}
)
"""Example values from documentation that must never guard a real server."""


@dataclass(frozen=True)
class Settings:
    """Everything the server processes read from configuration."""

    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    keyring: Keyring = field(default_factory=Keyring)
    db_keyring: Keyring = field(default_factory=Keyring)
    allow_plaintext: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_plaintext_bytes: int = DEFAULT_MAX_PLAINTEXT_BYTES
    decode_threads: int = DEFAULT_DECODE_THREADS
    decode_backlog: int = DEFAULT_DECODE_BACKLOG
    max_logs_per_batch: int = 5000
    created_at_max_age: timedelta = timedelta(days=7)
    created_at_max_future: timedelta = timedelta(minutes=5)
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)
    redis_url: str = field(default=DEFAULT_REDIS_URL, repr=False)
    redis_prefix: str = "atlas"
    duplicate_window: timedelta = timedelta(hours=1)
    job_timeout: int = 30
    job_retries: int = 8
    job_retry_intervals: tuple[int, ...] = (2, 5, 15, 30, 60, 120, 300, 600)
    job_monitoring_interval: int = 10
    maintenance_interval: int = 30
    worker_metrics_port: int = 0
    worker_metrics_host: str = "0.0.0.0"
    exporter_port: int = DEFAULT_EXPORTER_PORT
    dashboard_port: int = DEFAULT_DASHBOARD_PORT
    secret_key: str | None = field(default=None, repr=False)
    session_max_age: timedelta = timedelta(hours=8)
    rate_per_key: int = DEFAULT_RATE_PER_KEY
    burst_per_key: int = DEFAULT_BURST_PER_KEY
    rate_per_address: int = DEFAULT_RATE_PER_ADDRESS
    burst_per_address: int = DEFAULT_BURST_PER_ADDRESS
    rate_limit_exempt: tuple[str, ...] = DEFAULT_RATE_LIMIT_EXEMPT
    rate_limit_max_addresses: int = 100_000
    forwarded_allow_ips: tuple[str, ...] = ()
    login_attempts_per_minute: int = 10
    lockout_failures: int = 5
    lockout_duration: timedelta = timedelta(minutes=15)
    online_within: timedelta = timedelta(minutes=15)
    stale_within: timedelta = timedelta(days=1)
    export_chunk_bytes: int = 256 * 1024
    max_exports_per_principal: int = 2
    export_send_timeout: float = 60.0
    retention_days: int = 0
    partitions_ahead_days: int = 14
    header_timeout_seconds: int = 10
    body_timeout_seconds: int = 30
    keepalive_timeout_seconds: int = 5
    max_connections: int = 1000
    hpke_keyring_path: str | None = None
    accept_v1: bool = True
    rate_per_device: int = 10
    burst_per_device: int = 100

    @property
    def queue_name(self) -> str:
        """The rq queue batches wait in."""
        return f"{self.redis_prefix}-batches"

    @property
    def accepts_plaintext(self) -> bool:
        """Plaintext bodies are taken only with no payload key, or when explicitly allowed."""
        return self.allow_plaintext or not self.keyring

    def require_api_keys(self) -> None:
        """Stop a service that authenticates agents from starting without an API key."""
        if not self.api_keys:
            raise ConfigError("server.api_key: no API key configured (set server.api_key or FLEET_API_KEY)")


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


def _int(section: Mapping[str, Any], key: str, default: int, setting: str, minimum: int = 1) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{setting}: must be an integer >= {minimum}")
    return value


def _port(section: Mapping[str, Any], default: int, setting: str) -> int:
    port = _int(section, "port", default, setting)
    if port > 65535:
        raise ConfigError(f"{setting}: must be at most 65535")
    return port


def _metrics_port(worker: Mapping[str, Any]) -> int:
    port = _int(worker, "metrics_port", 0, "worker.metrics_port", 0)
    if port > 65535:
        raise ConfigError("worker.metrics_port: must be at most 65535")
    return port


def _networks(server: Mapping[str, Any]) -> tuple[str, ...]:
    """``server.rate_limit_exempt``: addresses or networks, checked here so a typo stops start-up."""
    if "rate_limit_exempt" not in server:
        return DEFAULT_RATE_LIMIT_EXEMPT
    networks = _str_list(server["rate_limit_exempt"], "server.rate_limit_exempt")
    for net in networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"server.rate_limit_exempt: {net!r} is not an address or network") from None
    return tuple(networks)


def _forwarded_allow_ips(server: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str, ...]:
    """The proxies whose X-Forwarded-For and X-Forwarded-Proto uvicorn believes; none by default.

    ``*`` (or a /0) is refused: with it any client names its own address, and so dodges the
    per-address limits or poses as an exempt one.
    """
    if env.get("FORWARDED_ALLOW_IPS") is not None:
        setting = "FORWARDED_ALLOW_IPS"
        entries = [e.strip() for e in env["FORWARDED_ALLOW_IPS"].split(",") if e.strip()]
    else:
        setting = "server.forwarded_allow_ips"
        entries = [e.strip() for e in _str_list(server.get("forwarded_allow_ips"), setting)]
    trusted = []
    for entry in entries:
        if entry == "*":
            raise ConfigError(
                f"{setting}: '*' trusts X-Forwarded-For from any peer, so any client could choose its address;"
                " list the proxy's addresses or network instead"
            )
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"{setting}: {entry!r} is not an address or network") from None
        if network.prefixlen == 0:
            raise ConfigError(f"{setting}: {entry!r} trusts every peer, as '*' would; list the proxy's network")
        trusted.append(entry if "/" not in entry else str(network))
    return tuple(dict.fromkeys(trusted))


def _secret_key(dashboard: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """The key that signs dashboard session cookies; None means one kept in the database."""
    setting, value = "ATLAS_SECRET_KEY", env.get("ATLAS_SECRET_KEY")
    if not value:
        setting, value = "dashboard.secret_key", dashboard.get("secret_key")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) < MIN_SECRET_KEY_CHARS:
        raise ConfigError(f"{setting}: must be a string of at least {MIN_SECRET_KEY_CHARS} characters")
    if value.strip().lower() in PLACEHOLDER_SECRETS:
        raise ConfigError(f"{setting}: is a documentation placeholder; generate one with `atlas-server keygen`")
    return value


def _api_keys(server: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str, ...]:
    keys = _str_list(server.get("api_key"), "server.api_key") + _str_list(server.get("api_keys"), "server.api_keys")
    if env.get("FLEET_API_KEY"):
        keys.insert(0, env["FLEET_API_KEY"])
    for key in keys:
        setting = "FLEET_API_KEY" if key == env.get("FLEET_API_KEY") else "server.api_key"
        if key.strip().lower() in PLACEHOLDER_SECRETS:
            raise ConfigError(
                f"{setting}: is a documentation placeholder; generate one with `atlas-server keygen --api-key`"
            )
        if len(key) < MIN_API_KEY_CHARS:
            raise ConfigError(f"{setting}: must be at least {MIN_API_KEY_CHARS} characters")
    return tuple(dict.fromkeys(keys))


def _keyring(server: Mapping[str, Any], env: Mapping[str, str]) -> Keyring:
    named: list[tuple[str, str]] = []
    if env.get("FLEET_ENCRYPTION_KEY"):
        named.append(("FLEET_ENCRYPTION_KEY", env["FLEET_ENCRYPTION_KEY"]))
    named += [("server.encryption_key", k) for k in _str_list(server.get("encryption_key"), "server.encryption_key")]
    named += [("server.encryption_keys", k) for k in _str_list(server.get("encryption_keys"), "server.encryption_keys")]
    keys = []
    for setting, text in named:
        try:
            keys.append(Key.from_base64(text))
        except KeyFormatError as exc:
            raise ConfigError(f"{setting}: {exc}") from None
    return Keyring(keys)


def _db_keyring(server: Mapping[str, Any], env: Mapping[str, str], payload: Keyring) -> Keyring:
    """The database keys: the current one first (it encrypts), then older ones still read."""
    named: list[tuple[str, str]] = []
    if env.get("FLEET_DB_ENCRYPTION_KEY"):
        named.append(("FLEET_DB_ENCRYPTION_KEY", env["FLEET_DB_ENCRYPTION_KEY"]))
    named += [
        ("server.db_encryption_key", k) for k in _str_list(server.get("db_encryption_key"), "server.db_encryption_key")
    ]
    named += [
        ("server.db_encryption_keys", k)
        for k in _str_list(server.get("db_encryption_keys"), "server.db_encryption_keys")
    ]
    keys = []
    for setting, text in named:
        try:
            key = Key.from_base64(text)
        except KeyFormatError as exc:
            raise ConfigError(f"{setting}: {exc}") from None
        if key.kid in payload:
            raise ConfigError(f"{setting}: must differ from the payload key (make one: atlas-server keygen)")
        keys.append(key)
    return Keyring(keys)


def settings_from_mapping(data: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """Build Settings from a parsed config file and an environment."""
    if not isinstance(data, Mapping):
        raise ConfigError("config: the file must hold a mapping with a `server:` section")
    server = _section(data, "server")
    database = _section(data, "database")
    redis = _section(data, "redis")
    worker = _section(data, "worker")
    exporter = _section(data, "exporter")
    dashboard = _section(data, "dashboard")
    allow_plaintext = server.get("allow_plaintext", False)
    if not isinstance(allow_plaintext, bool):
        raise ConfigError("server.allow_plaintext: must be true or false")
    accept_v1 = server.get("accept_v1", True)
    if not isinstance(accept_v1, bool):
        raise ConfigError("server.accept_v1: must be true or false")
    hpke_keyring = server.get("hpke_keyring")
    if hpke_keyring is not None and (not isinstance(hpke_keyring, str) or not hpke_keyring):
        raise ConfigError("server.hpke_keyring: must be the path of a keyring file (atlas-server keygen --hpke)")
    port = _port(server, DEFAULT_PORT, "server.port")
    metrics_host = worker.get("metrics_host", str(server.get("host", "0.0.0.0")))
    if not isinstance(metrics_host, str) or not metrics_host:
        raise ConfigError("worker.metrics_host: must be an address such as 0.0.0.0 or 127.0.0.1")
    prefix = env.get("ATLAS_REDIS_PREFIX") or redis.get("key_prefix", "atlas")
    if not isinstance(prefix, str) or not prefix.replace("-", "").replace("_", "").isalnum():
        raise ConfigError("redis.key_prefix: letters, digits, - and _ only")
    keyring = _keyring(server, env)
    online = _int(dashboard, "online_seconds", 900, "dashboard.online_seconds")
    stale = _int(dashboard, "stale_seconds", 86400, "dashboard.stale_seconds")
    if stale <= online:
        raise ConfigError("dashboard.stale_seconds: must be more than dashboard.online_seconds")
    return Settings(
        host=str(server.get("host", "0.0.0.0")),
        port=port,
        api_keys=_api_keys(server, env),
        keyring=keyring,
        db_keyring=_db_keyring(server, env, keyring),
        allow_plaintext=allow_plaintext,
        max_body_bytes=_int(server, "max_body_bytes", DEFAULT_MAX_BODY_BYTES, "server.max_body_bytes"),
        max_plaintext_bytes=_int(
            server, "max_plaintext_bytes", DEFAULT_MAX_PLAINTEXT_BYTES, "server.max_plaintext_bytes"
        ),
        decode_threads=_int(server, "decode_threads", DEFAULT_DECODE_THREADS, "server.decode_threads"),
        decode_backlog=_int(server, "decode_backlog", DEFAULT_DECODE_BACKLOG, "server.decode_backlog", 0),
        max_logs_per_batch=_int(server, "max_logs_per_batch", 5000, "server.max_logs_per_batch"),
        created_at_max_age=timedelta(
            seconds=_int(server, "created_at_max_age_seconds", 7 * 86400, "server.created_at_max_age_seconds")
        ),
        created_at_max_future=timedelta(
            seconds=_int(server, "created_at_max_future_seconds", 300, "server.created_at_max_future_seconds", 0)
        ),
        database_url=env.get("DATABASE_URL") or str(database.get("url", DEFAULT_DATABASE_URL)),
        retention_days=_int(database, "retention_days", 0, "database.retention_days", 0),
        partitions_ahead_days=_int(database, "partitions_ahead_days", 14, "database.partitions_ahead_days"),
        redis_url=env.get("REDIS_URL") or str(redis.get("url", DEFAULT_REDIS_URL)),
        redis_prefix=prefix,
        duplicate_window=timedelta(
            seconds=_int(server, "duplicate_window_seconds", 3600, "server.duplicate_window_seconds")
        ),
        job_timeout=_int(worker, "job_timeout", 30, "worker.job_timeout"),
        job_retries=_int(worker, "retries", 8, "worker.retries"),
        job_monitoring_interval=_int(worker, "monitoring_interval", 10, "worker.monitoring_interval"),
        maintenance_interval=_int(worker, "maintenance_interval", 30, "worker.maintenance_interval"),
        worker_metrics_port=_metrics_port(worker),
        worker_metrics_host=metrics_host,
        exporter_port=_port(exporter, DEFAULT_EXPORTER_PORT, "exporter.port"),
        export_chunk_bytes=_int(exporter, "chunk_bytes", 256 * 1024, "exporter.chunk_bytes", 1024),
        max_exports_per_principal=_int(exporter, "max_exports_per_principal", 2, "exporter.max_exports_per_principal"),
        export_send_timeout=float(_int(exporter, "send_timeout_seconds", 60, "exporter.send_timeout_seconds")),
        dashboard_port=_port(dashboard, DEFAULT_DASHBOARD_PORT, "dashboard.port"),
        secret_key=_secret_key(dashboard, env),
        session_max_age=timedelta(
            seconds=_int(dashboard, "session_max_age_seconds", 8 * 3600, "dashboard.session_max_age_seconds", 60)
        ),
        rate_per_key=_int(server, "rate_limit_per_key", DEFAULT_RATE_PER_KEY, "server.rate_limit_per_key", 0),
        burst_per_key=_int(
            server, "rate_limit_per_key_burst", DEFAULT_BURST_PER_KEY, "server.rate_limit_per_key_burst"
        ),
        rate_per_address=_int(
            server, "rate_limit_per_address", DEFAULT_RATE_PER_ADDRESS, "server.rate_limit_per_address", 0
        ),
        burst_per_address=_int(
            server, "rate_limit_per_address_burst", DEFAULT_BURST_PER_ADDRESS, "server.rate_limit_per_address_burst"
        ),
        rate_limit_exempt=_networks(server),
        forwarded_allow_ips=_forwarded_allow_ips(server, env),
        rate_limit_max_addresses=_int(
            server, "rate_limit_max_addresses", 100_000, "server.rate_limit_max_addresses", 100
        ),
        login_attempts_per_minute=_int(
            dashboard, "login_attempts_per_minute", 10, "dashboard.login_attempts_per_minute", 0
        ),
        lockout_failures=_int(dashboard, "lockout_failures", 5, "dashboard.lockout_failures", 0),
        lockout_duration=timedelta(seconds=_int(dashboard, "lockout_seconds", 900, "dashboard.lockout_seconds")),
        online_within=timedelta(seconds=online),
        stale_within=timedelta(seconds=stale),
        header_timeout_seconds=_int(server, "header_timeout_seconds", 10, "server.header_timeout_seconds"),
        body_timeout_seconds=_int(server, "body_timeout_seconds", 30, "server.body_timeout_seconds"),
        keepalive_timeout_seconds=_int(server, "keepalive_timeout_seconds", 5, "server.keepalive_timeout_seconds"),
        max_connections=_int(server, "max_connections", 1000, "server.max_connections"),
        hpke_keyring_path=hpke_keyring,
        accept_v1=accept_v1,
        rate_per_device=_int(server, "rate_limit_per_device", 10, "server.rate_limit_per_device", 0),
        burst_per_device=_int(server, "rate_limit_per_device_burst", 100, "server.rate_limit_per_device_burst"),
    )


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
