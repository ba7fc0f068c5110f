"""Templates and the formatting helpers they use (pure, apart from reading the template files).

Autoescaping is on for every template, so agent-sent text (hostnames, SSIDs,
process names) is always shown as text. Times are shown in UTC, labelled.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from fastapi.responses import HTMLResponse

from atlas.contract import LEVELS
from atlas.core.web import Principal

from .macmodels import product_name

TEMPLATES = Path(__file__).parent / "templates"

EXPORT_TYPES = (
    ("wifi", "WiFi Logs"),
    ("speedtest", "Speedtest Logs"),
    ("ping", "Ping Logs"),
    ("health", "Health Logs"),
    ("processes", "Process Logs"),
)
"""The per-type export buttons of the user menu: widget type (also its icon, ``_icons.html``) and label."""

EXPORT_PATH = "/api/exports/logs"
DASH = "—"


def utc(when: datetime | None, seconds: bool = False) -> str:
    """``2026-11-28 10:04 UTC`` (with seconds if asked); a dash for None."""
    if when is None:
        return DASH
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def ago(when: datetime | None, now: datetime) -> str:
    """How long before ``now``: ``just now``, ``5 min ago``, ``3 h ago``, ``2 days ago``."""
    if when is None:
        return "never"
    seconds = (now - when).total_seconds()
    if seconds < 0:
        return "in the future"
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400 * 2:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} days ago"


def num(value: float | None, digits: int = 1, unit: str = "") -> str:
    """A number with ``digits`` decimals (and a unit); a dash for None."""
    if value is None:
        return DASH
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}" if unit else text


def size(value: float | None) -> str:
    """Bytes as ``12.3 GB``; a dash for None."""
    if value is None:
        return DASH
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return DASH  # pragma: no cover - the loop always returns


def duration(seconds: float | None) -> str:
    """``3 d 4 h`` or ``5 h 12 min``; a dash for None."""
    if seconds is None:
        return DASH
    minutes = int(seconds // 60)
    days, hours, mins = minutes // 1440, minutes % 1440 // 60, minutes % 60
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {mins} min" if hours else f"{mins} min"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(utc=utc, num=num, size=size, duration=duration)
    env.globals.update(ago=ago, EXPORT_TYPES=EXPORT_TYPES, EXPORT_PATH=EXPORT_PATH, LEVELS=LEVELS, DASH=DASH)
    env.globals.update(product_name=product_name)
    env.globals["icon"] = env.get_template("_icons.html").module.icon  # type: ignore[attr-defined]
    return env


ENV = _environment()


def render(
    name: str,
    *,
    principal: Principal | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """A page from ``templates/<name>`` for ``principal`` (None on the login and error pages).

    A signed-in page's principal carries the pipeline's status: ``base.html`` shows its banner.
    """
    now = datetime.now(UTC)
    html = ENV.get_template(name).render(
        user=principal.user if principal else None,
        pipeline=getattr(principal, "pipeline", None),  # a page's user carries it (pipeline.PageUser)
        csrf_token=principal.session.csrf_token if principal and principal.session else "",
        now=now,
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=headers)
