"""The dashboard's HTTP edge with PostgreSQL down: alive, not ready, and 503 with Retry-After everywhere else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.fix_processes import ServerProcess, free_port

DOWN = {"detail": "database unavailable, retry later", "field": None}


def test_database_down(start_server: Callable[..., ServerProcess], server_config: dict[str, Any]) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/atlas?connect_timeout=1"
    server = start_server("dashboard", {**server_config, "database": {"url": url}})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert (ready.status_code, ready.headers["retry-after"]) == (503, "5")
        assert ready.headers["content-type"] == "application/json"
        assert ready.json() == {"detail": "database unavailable", "field": None}

        api = client.get("/api/exports/audit", headers={"Authorization": "Bearer atlas_nope"})
        assert (api.status_code, api.headers["retry-after"]) == (503, "5")
        assert api.json() == DOWN

        page = client.get("/login", headers={"Accept": "text/html"})
        assert (page.status_code, page.headers["retry-after"]) == (503, "5")
        assert "Atlas cannot reach its database right now" in page.text
    assert "Traceback" not in server.logs()
