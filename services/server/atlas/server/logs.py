"""Logging of every ``atlas-server`` process: one line per event, as text or as JSON lines.

``configure_logging`` gives the root logger one handler (stderr, as before)
and everything logs through it: Atlas, rq, and uvicorn's ``uvicorn.error`` and
``uvicorn.access`` (``atlas-server`` hands the same configuration to uvicorn,
so ``--workers N`` processes log alike). ``text`` is the familiar
``time LEVEL logger: message``; ``json`` is one object per line with
``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, any ``extra``
fields, and ``exc_info`` holding a traceback as one string. In both, a record
never spans lines: newlines inside it are escaped, which also stops a forged
line being slipped in through logged input.

Services never log keys or log content by design; ``RedactSecrets`` is the
defence in depth: every configured secret (API keys, payload and database
keys, the dashboard's secret key, database and Redis passwords) is replaced
by ``[REDACTED]`` wherever it would appear in a record. ``RedactQueryTokens``
blanks the values of token-like query parameters (``token``, ``access_token``,
``api_key``, ``key``) in access log lines, since a token sent in a URL is not
one of the configured secrets.
"""

from __future__ import annotations

import base64
import json
import logging
import logging.config
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, unquote_plus, urlsplit

if TYPE_CHECKING:
    from atlas.core.config import Settings

LOG_FORMATS = ("text", "json")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

REDACTED = "[REDACTED]"

TOKEN_PARAMS = frozenset({"token", "access_token", "api_key", "key"})
"""Query parameters whose values are blanked in access logs (names matched decoded, in any case)."""

MIN_SECRET_CHARS = 12
"""Shorter strings are not redacted: they would blank out ordinary words (every real secret here is longer)."""

_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
    "taskName",
}
"""Attributes every LogRecord has; anything else on a record came from ``extra=``."""

_current: dict[str, Any] | None = None


def _one_line(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\\r").replace("\n", "\\n")


class TextFormatter(logging.Formatter):
    """``2026-11-28 16:00:00,123 INFO atlas.ingest: message``, a traceback folded into the same line."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return _one_line(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, extra fields, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _version, status = record.args
            entry.update(client=client, method=method, path=path, status=status)
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)  # ASCII only: no raw newline or U+2028 can split the line


class RedactSecrets(logging.Filter):
    """Replaces each configured secret by ``[REDACTED]`` in a record's message, extras and traceback."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        found = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_CHARS}
        self.secrets = sorted(found, key=len, reverse=True)  # longest first: one secret may contain another

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
            clean = self.redact(message)
            if clean != message:
                record.msg, record.args = clean, None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self.redact(record.exc_text)
            if record.stack_info:
                record.stack_info = self.redact(record.stack_info)
            for key, value in list(vars(record).items()):
                if key not in _RECORD_FIELDS and isinstance(value, str):
                    setattr(record, key, self.redact(value))
        except Exception:  # a record that cannot be formatted is the formatter's problem, not a crash here
            return True
        return True


def redact_query(path: str) -> str:
    """``path`` with the value of every token-like query parameter replaced by ``[REDACTED]``."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    parts = []
    for part in query.split("&"):
        name = part.partition("=")[0]
        if unquote_plus(name).strip().lower() in TOKEN_PARAMS:
            part = f"{name}={REDACTED}"
        parts.append(part)
    return f"{base}?{'&'.join(parts)}"


class RedactQueryTokens(logging.Filter):
    """Blanks token-like query parameters in the path of uvicorn's access log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            path = record.args[2]
            if isinstance(path, str) and "?" in path:
                record.args = (*record.args[:2], redact_query(path), *record.args[3:])
        return True


def _url_password(url: str) -> list[str]:
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password is None and "password=" in url:  # libpq's key=value form
        try:
            from psycopg.conninfo import conninfo_to_dict

            value = conninfo_to_dict(url).get("password")
            password = None if value is None else str(value)
        except Exception:
            password = None
    return [password, unquote(password)] if password else []


def secret_values(settings: Settings) -> list[str]:
    """Every secret a Settings holds, as it could appear in text."""
    values = list(settings.api_keys)
    for key in (*settings.keyring, *settings.db_keyring):
        values.append(base64.b64encode(key.raw).decode("ascii"))
    if settings.secret_key:
        values.append(settings.secret_key)
    values += _url_password(settings.database_url) + _url_password(settings.redis_url)
    from atlas.core.config import resolve_secret_files
    from atlas.core.errors import ConfigError

    try:
        admin_password = resolve_secret_files(os.environ).get("ATLAS_ADMIN_PASSWORD")
    except ConfigError:
        admin_password = os.environ.get("ATLAS_ADMIN_PASSWORD")
    if admin_password:
        values.append(admin_password)
    return values


def logging_config(fmt: str = "text", level: str | int = "INFO", secrets: Iterable[str] = ()) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` mapping for ``fmt``; uvicorn applies it in each of its processes too."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "tokens": {"()": RedactQueryTokens},
            "redact": {"()": RedactSecrets, "secrets": list(secrets)},
        },
        "formatters": {"atlas": {"()": JsonFormatter if fmt == "json" else TextFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "atlas",
                "filters": ["tokens", "redact"],
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        # uvicorn's loggers lose any handler of their own and pass records to ours
        "loggers": {
            name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure_logging(fmt: str = "text", level: str | int = "INFO", secrets: Iterable[str] = ()) -> dict[str, Any]:
    """Send every logger of this process through one handler in ``fmt``; returns the configuration applied."""
    global _current
    config = logging_config(fmt, level, secrets)
    logging.config.dictConfig(config)
    _current = config
    return config


def uvicorn_log_config() -> dict[str, Any]:
    """What ``uvicorn.run(log_config=...)`` gets: the configuration in force (text if none was set)."""
    return _current if _current is not None else logging_config()
