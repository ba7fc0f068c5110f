"""Agent settings: a YAML file (``agent.yaml``) and command-line flags on top.

fleet_server: https://fleet.example.com:8768
api_key: "..."
encryption_key: "..."          # the same key as the server's; encryption_keys: [...] to read older data
machine_id: my-mac-01          # optional; default: the serial number, lowercased
allow_plaintext: false
ca_bundle: /path/to/ca.pem     # optional, for a private CA
send_interval_seconds: 300
collect_interval_seconds: 60
speedtest_interval_seconds: 3600
ping_targets: []               # default: the gateway, 1.1.1.1, the fleet server's host
network_interval_seconds: 300  # layered checks (Wi-Fi link, gateway, DNS, HTTP) on their own thread; 0: off
network_timeout_seconds: 5     # bound on each check (a ping, a DNS query, an HTTP request)
dns_resolvers: []              # host or host:port; default: the system's (scutil --dns, /etc/resolv.conf)
dns_names: [apple.com]         # names each resolver is timed on
http_targets: []               # http(s) URLs to time (DNS, connect, TLS, first byte, total); default: none
data_dir: ...                  # default: /Library/Application Support/Atlas, or $XDG_DATA_HOME/atlas
store_max_age_days: 7
store_max_mb: 200
live_port: 8767                # the live widget page on 127.0.0.1; 0 turns it off
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from atlas.contract import KeyFormatError, Keyring


class AgentConfigError(ValueError):
    """A setting is missing or invalid; the message names it and never shows a secret."""


def default_data_dir() -> Path:
    if sys.platform == "darwin":
        return Path("/Library/Application Support/Atlas")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "atlas"


@dataclass(frozen=True)
class AgentConfig:
    fleet_server: str | None = None
    api_key: str | None = field(default=None, repr=False)
    encryption_keys: tuple[str, ...] = field(default=(), repr=False)
    machine_id: str | None = None
    allow_plaintext: bool = False
    ca_bundle: str | None = None
    send_interval_seconds: int = 300
    collect_interval_seconds: int = 60
    speedtest_interval_seconds: int = 3600
    ping_targets: tuple[str, ...] = ()
    network_interval_seconds: int = 300
    network_timeout_seconds: int = 5
    dns_resolvers: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ("apple.com",)
    http_targets: tuple[str, ...] = ()
    data_dir: Path = field(default_factory=default_data_dir)
    store_max_age_days: int = 7
    store_max_mb: int = 200
    live_host: str = "127.0.0.1"
    live_port: int = 8767

    @property
    def store_path(self) -> Path:
        return self.data_dir / "atlas-agent.db"

    def keyring(self) -> Keyring:
        try:
            return Keyring.from_base64(self.encryption_keys)
        except KeyFormatError as exc:
            raise AgentConfigError(f"encryption_key: {exc}") from None

    def with_overrides(self, **values: Any) -> AgentConfig:
        """Apply command-line values that were given (None means not given)."""
        given = {k: v for k, v in values.items() if v is not None}
        if "encryption_key" in given:
            key = given.pop("encryption_key")
            given["encryption_keys"] = (key, *[k for k in self.encryption_keys if k != key])
        return replace(self, **given)


SERVER_CONFIG = (
    "--config: {path} has a server: section, so it is the fleet server's config.yaml (atlas-server), "
    "not the agent's. The agent reads these settings at the top level of its own file: "
    "fleet_server (the server's address, https://HOST:8768), "
    "api_key (one of the server's server.api_key; make one on the server with `atlas-server keygen --api-key`) "
    "and encryption_key (the same key as the server's server.encryption_key, made with `atlas-server keygen`)"
)
"""The message for the set-up guide's server config (``server: {encryption_key: ...}``) given to the agent."""

_INT_KEYS = (
    "send_interval_seconds",
    "collect_interval_seconds",
    "speedtest_interval_seconds",
    "network_interval_seconds",
    "network_timeout_seconds",
    "store_max_age_days",
    "store_max_mb",
    "live_port",
)


def load_agent_config(path: str | os.PathLike[str] | None) -> AgentConfig:
    """Read ``path`` (None: all defaults). Raises AgentConfigError naming a bad setting."""
    if path is None:
        return AgentConfig()
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise AgentConfigError(f"--config: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError:
        raise AgentConfigError(f"--config: {path} is not valid YAML") from None
    if not isinstance(data, dict):
        raise AgentConfigError(f"--config: {path} must hold a mapping")
    if isinstance(data.get("server"), dict):
        raise AgentConfigError(SERVER_CONFIG.format(path=path))
    values: dict[str, Any] = {}
    for key in ("fleet_server", "api_key", "machine_id", "ca_bundle", "live_host"):
        if data.get(key) is not None:
            values[key] = str(data[key])
    keys = [data["encryption_key"]] if data.get("encryption_key") else []
    keys += list(data.get("encryption_keys") or [])
    values["encryption_keys"] = tuple(str(k) for k in keys)
    if "allow_plaintext" in data:
        if not isinstance(data["allow_plaintext"], bool):
            raise AgentConfigError("allow_plaintext: must be true or false")
        values["allow_plaintext"] = data["allow_plaintext"]
    for key in _INT_KEYS:
        if key in data:
            if isinstance(data[key], bool) or not isinstance(data[key], int) or data[key] < 0:
                raise AgentConfigError(f"{key}: must be a whole number >= 0")
            values[key] = data[key]
    if data.get("ping_targets"):
        values["ping_targets"] = tuple(str(t) for t in data["ping_targets"])
    for key in ("dns_resolvers", "dns_names", "http_targets"):
        if key in data:
            items = data[key] if data[key] is not None else []
            if not isinstance(items, list) or not all(isinstance(t, str) and t.strip() for t in items):
                raise AgentConfigError(f"{key}: must be a list of non-empty strings")
            values[key] = tuple(t.strip() for t in items)
    for url in values.get("http_targets", ()):
        if not url.startswith(("http://", "https://")):
            raise AgentConfigError(f"http_targets: {url!r} is not an http:// or https:// URL")
    if values.get("network_timeout_seconds") == 0:
        raise AgentConfigError("network_timeout_seconds: must be at least 1")
    if data.get("data_dir"):
        values["data_dir"] = Path(str(data["data_dir"]))
    config = AgentConfig(**values)
    config.keyring()  # validate keys now, with a clear message
    return config
