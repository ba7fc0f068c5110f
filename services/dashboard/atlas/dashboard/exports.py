"""The export page: what an export will hold, counted before the download starts.

``GET /exports`` takes the export's own parameters (the menu's and the machine
page's export forms send them here with "Count first") and shows the number
of logs, about how large the file is, the file name, and, when the serial
number is held by more than one machine, those machines. The download links
go to the export API with the same parameters. Server-rendered, no script.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import QueryParams

from atlas.contract import WIDGET_TYPES
from atlas.exporter.preview import Scope, content_bytes, count_rows, estimated_bytes, scope_of
from atlas.exporter.query import (
    ColumnSet,
    ExportFilters,
    ExportFormat,
    FilterError,
    export_filename,
    parse_columns,
    parse_filters,
)

from .auth import SessionUser, web_state
from .render import EXPORT_PATH, render
from .views import machine_url

router = APIRouter()

FILTER_PARAMS = ("widget_type", "machine_id", "serial_number", "level", "since", "until")
"""The export API's filter parameters, passed through unchanged."""

EXTENDED_ROW_BYTES = 50
"""About what the extended CSV columns (machine id, hostname) add to a row."""


@dataclass(frozen=True)
class Download:
    """One way to download the export: its label, the export API URL, the file name, about how large."""

    label: str
    format: str
    columns: str
    url: str
    filename: str
    size: int | None


@dataclass(frozen=True)
class ExportPreview:
    filters: ExportFilters
    scope: Scope
    rows: int | None
    downloads: list[Download]


def _downloads(
    params: dict[str, str], filters: ExportFilters, scope: Scope, rows: int | None, content: float | None, today: date
) -> list[Download]:
    choices: tuple[tuple[str, ExportFormat, ColumnSet], ...] = (
        ("CSV", "csv", "default"),
        ("CSV with machine id and hostname", "csv", "extended"),
        ("JSON", "json", "default"),
        ("NDJSON", "ndjson", "default"),
    )
    found = []
    for label, fmt, columns in choices:
        query = {**params, "format": fmt, **({"columns": columns} if columns != "default" else {})}
        name = export_filename(fmt, filters, today, scope.serial_number, len(scope.machines))
        size = None if rows is None else estimated_bytes(fmt, rows, content)
        if size and rows and columns == "extended":
            size += rows * EXTENDED_ROW_BYTES
        found.append(Download(label, fmt, columns, f"{EXPORT_PATH}?{urlencode(query)}", name, size))
    return found


def _given(query: QueryParams) -> dict[str, str]:
    """The filter parameters given (empty form fields left out)."""
    return {name: query[name] for name in FILTER_PARAMS if query.get(name)}


@router.get("/exports")
def export_page(request: Request, principal: SessionUser) -> Response:
    query = request.query_params
    params = _given(query)
    try:
        fmt, filters = parse_filters(format=query.get("format"), **params)
        columns = parse_columns(query.get("columns"))
    except FilterError as exc:
        return render(
            "export.html",
            principal=principal,
            status=422,
            error=f"This export cannot be made: {exc}",
            preview=None,
            params=params,
            widget_types=WIDGET_TYPES,
            chosen=("csv", "default"),
            local=_local,
            machine_url=machine_url,
        )
    with web_state(request).pool.connection() as conn:
        scope = scope_of(conn, filters)
        rows = count_rows(conn, filters)
        content = content_bytes(conn, filters) if rows else None
    today = datetime.now(UTC).date()
    preview = ExportPreview(filters, scope, rows, _downloads(params, filters, scope, rows, content, today))
    return render(
        "export.html",
        principal=principal,
        error="",
        preview=preview,
        params=params,
        widget_types=WIDGET_TYPES,
        chosen=(fmt, columns),
        local=_local,
        machine_url=machine_url,
    )


def _local(moment: datetime | None) -> str:
    """A bound as a ``datetime-local`` input's value, in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M") if moment else ""
