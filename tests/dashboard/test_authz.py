"""Who may do what, over every route the apps serve (read from their route tables, so none can be forgotten).

* A viewer gets 403 on every admin route, page or action, even with a valid CSRF token, and nothing changes.
* API tokens are for scripted exports: they open no page, and a viewer's token no admin API.
* Without a session (none, forged, or a token on a page), no route answers with a machine's data: pages
  redirect to the sign-in form, APIs answer 401, and the machine's marker text appears in no answer.
* Each export, however it is asked for, writes exactly one audit row naming who asked, how, and what.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from atlas.contract import DeviceKey
from atlas.core.accounts import authenticate, create_token, create_user
from atlas.core.config import Settings
from atlas.core.devices import create_enroll_secret, enroll_device
from atlas.core.web import SESSION_COOKIE
from atlas.dashboard.app import create_app as create_dashboard
from atlas.dashboard.auth import require_admin, require_admin_form
from atlas.exporter.app import create_app as create_exporter

from ..fix_dashboard import PASSWORD, Browserless, Machine, every_widget_logs, insert_machine, unique
from ..fix_processes import ServerProcess

PUBLIC = {("GET", "/login"), ("POST", "/login"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
"""Routes anyone may call; they are still checked to show no machine's data."""

ADMIN_API = {("GET", "/api/exports/audit")}
"""Admin-only routes that check the role themselves (JSON 403) instead of through require_admin."""

REDIRECTS = {("GET", "/admin"): "/admin/users"}
"""Routes that only send the browser on, to a route checked here; they show nothing themselves."""


def routes(app) -> list[tuple[str, str, APIRoute]]:
    """(method, path template, route) of every API route, including those of included routers."""
    found = []
    for context in iter_route_contexts(app.routes):
        if isinstance(context.route, APIRoute):
            found.extend((method, context.path, context.route) for method in sorted(context.methods or ()))
    return found


def depends_on(route: APIRoute, *functions: Callable) -> bool:
    """Whether one of ``functions`` is anywhere in the route's dependency tree."""
    stack = list(route.dependant.dependencies)
    while stack:
        dependant = stack.pop()
        if dependant.call in functions:
            return True
        stack.extend(dependant.dependencies)
    return False


def is_admin(route: APIRoute) -> bool:
    return depends_on(route, require_admin, require_admin_form)


@pytest.fixture(scope="module")
def dashboard_routes(settings: Settings) -> list[tuple[str, str, APIRoute]]:
    return routes(create_dashboard(settings))


@pytest.fixture(scope="module")
def exporter_server(tmp_path_factory: pytest.TempPathFactory, server_config: dict[str, Any]) -> Iterator[ServerProcess]:
    """Stopped with the module, so its pooled connections (last query: COPY) are gone before other modules."""
    server = ServerProcess("exporter", server_config, tmp_path_factory.mktemp("exporter"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def marked_machine(database_url: str) -> tuple[Machine, str]:
    """A machine whose hostname, serial and logs all carry one marker string no answer may show unauthenticated."""
    marker = f"LEAKMARK{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        machine = insert_machine(
            conn,
            machine_id=f"mac-{marker.lower()}",
            serial_number=f"SER{marker}",
            hostname=f"{marker}.local",
            logs=every_widget_logs(datetime.now(UTC), hours=2, hostile=marker),
        )
    return machine, marker


@pytest.fixture(scope="module")
def target(database_url: str) -> dict[str, Any]:
    """An admin with a live token, and a live enrolled device: what the viewer's attempts aim at."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        user = create_user(conn, unique("target-admin"), PASSWORD, "admin")
        create_token(conn, user, "target")
        token_id = conn.execute("SELECT id FROM api_tokens WHERE user_id = %s", (user.id,)).fetchone()[0]
        device, _ = enroll_device(
            conn,
            create_enroll_secret(conn)[0],
            hardware_uuid=unique("hw"),
            serial_number=unique("SER"),
            machine_id=unique("mac"),
            hostname="",
            public_key=DeviceKey.generate().public_raw,
        )
    return {"user": user, "token_id": token_id, "device_id": device.device_id}


def fill(path: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", value).replace("{" + name + ":path}", value)
    assert "{" not in path, f"no value for a parameter of {path}: add it to the test"
    return path


# --------------------------------------------------------------------------- viewers cannot administer


def test_every_admin_route_needs_the_admin_role(dashboard_routes) -> None:
    """Statically: each route under /admin depends on require_admin(_form), but for the bare redirect."""
    admin_routes = [(m, p) for m, p, r in dashboard_routes if is_admin(r)]
    assert len(admin_routes) >= 9, admin_routes
    for method, path, route in dashboard_routes:
        if path.startswith("/admin") and (method, path) not in REDIRECTS:
            assert is_admin(route), f"{method} {path} does not require an admin"


def test_a_viewer_gets_403_on_every_admin_route_and_nothing_changes(
    dashboard_routes, viewer: Browserless, target: dict[str, Any], db: psycopg.Connection
) -> None:
    user = target["user"]
    values = {"user_id": str(user.id), "token_id": str(target["token_id"]), "device_id": target["device_id"]}
    form = {
        "csrf_token": viewer.csrf(),
        "username": unique("sneaky"),
        "password": PASSWORD,
        "new_password": PASSWORD + "x",
        "role": "viewer",
        "name": "sneaky",
    }
    users_before = db.execute("SELECT count(*) FROM users").fetchone()[0]
    tokens_before = db.execute("SELECT count(*) FROM api_tokens").fetchone()[0]
    checked = []
    for method, path, route in dashboard_routes:
        if not (is_admin(route) or (method, path) in ADMIN_API):
            continue
        url = fill(path, values)
        answer = viewer.get(url) if method == "GET" else viewer.post(url, form)
        assert answer.status_code == 403, f"{method} {url}: {answer.status_code}"
        # refused for the role, not for a bad form: the CSRF token and origin were fine
        assert "admins only" in answer.text if path.startswith("/api/") else "administrators" in answer.text
        checked.append(f"{method} {path}")
    assert len(checked) >= 10, checked
    assert db.execute("SELECT count(*) FROM users").fetchone()[0] == users_before
    assert db.execute("SELECT count(*) FROM api_tokens").fetchone()[0] == tokens_before
    assert db.execute("SELECT role FROM users WHERE id = %s", (user.id,)).fetchone() == ("admin",)
    assert authenticate(db, user.username, PASSWORD) is not None  # password unchanged
    revoked = db.execute("SELECT revoked_at FROM api_tokens WHERE id = %s", (target["token_id"],)).fetchone()
    assert revoked == (None,)
    device = db.execute("SELECT revoked_at FROM devices WHERE device_id = %s", (target["device_id"],)).fetchone()
    assert device == (None,)


def test_api_tokens_open_no_page_and_a_viewer_token_no_admin_api(
    dashboard_routes, dashboard: ServerProcess, database_url: str, marked_machine, target: dict[str, Any]
) -> None:
    machine, marker = marked_machine
    with psycopg.connect(database_url, autocommit=True) as conn:
        viewer = create_user(conn, unique("token-viewer"), PASSWORD, "viewer")
        admin = create_user(conn, unique("token-admin"), PASSWORD, "admin")
        tokens = {"viewer": create_token(conn, viewer, "t"), "admin": create_token(conn, admin, "t")}
    values = {
        "user_id": str(target["user"].id),
        "token_id": str(target["token_id"]),
        "device_id": target["device_id"],
        "machine_id": machine.machine_id,
    }
    for role, token in tokens.items():
        headers = {"Authorization": f"Bearer {token}"}
        for method, path, _ in dashboard_routes:
            if (method, path) in PUBLIC or path.startswith("/api/"):
                continue
            answer = httpx.request(method, dashboard.url + fill(path, values), headers=headers, timeout=10)
            assert marker not in answer.text
            if (method, path) in REDIRECTS:
                assert answer.headers["location"] == REDIRECTS[method, path]
                continue
            assert answer.status_code == 303, f"{role} token, {method} {path}: {answer.status_code}"
            assert answer.headers["location"].startswith("/login")
            assert marker not in answer.text
    audit = f"{dashboard.url}/api/exports/audit"
    assert httpx.get(audit, headers={"Authorization": f"Bearer {tokens['viewer']}"}, timeout=10).status_code == 403
    assert httpx.get(audit, headers={"Authorization": f"Bearer {tokens['admin']}"}, timeout=10).status_code == 200


# --------------------------------------------------------------------------- nothing without a session

WITHOUT_SESSION = {
    "no credentials": {},
    "forged cookie": {"Cookie": f"{SESSION_COOKIE}=forged.signature"},
    "unknown token": {"Authorization": "Bearer atlas_" + "x" * 43},
}


@pytest.mark.parametrize("credentials", WITHOUT_SESSION.values(), ids=WITHOUT_SESSION.keys())
def test_no_dashboard_route_shows_data_without_a_session(
    dashboard_routes, dashboard: ServerProcess, marked_machine, target: dict[str, Any], credentials: dict[str, str]
) -> None:
    machine, marker = marked_machine
    values = {
        "user_id": str(target["user"].id),
        "token_id": str(target["token_id"]),
        "device_id": target["device_id"],
        "machine_id": machine.machine_id,
    }
    params = {"machine_id": machine.machine_id, "q": marker}
    for method, path, _ in dashboard_routes:
        answer = httpx.request(
            method, dashboard.url + fill(path, values), params=params, headers=credentials, timeout=10
        )
        assert marker not in answer.text, f"{method} {path} shows the machine's data"
        if (method, path) in PUBLIC:
            continue
        if (method, path) in REDIRECTS:
            assert answer.headers["location"] == REDIRECTS[method, path]
        elif path.startswith("/api/"):
            assert answer.status_code == 401, f"{method} {path}: {answer.status_code}"
        else:
            assert answer.status_code == 303, f"{method} {path}: {answer.status_code}"
            assert answer.headers["location"].startswith("/login")


@pytest.mark.parametrize("credentials", WITHOUT_SESSION.values(), ids=WITHOUT_SESSION.keys())
def test_no_exporter_route_shows_data_without_credentials(
    settings: Settings, exporter_server: ServerProcess, marked_machine, credentials: dict[str, str]
) -> None:
    machine, marker = marked_machine
    checked = 0
    for method, path, _ in routes(create_exporter(settings)):
        answer = httpx.request(
            method, exporter_server.url + path, params={"machine_id": machine.machine_id}, headers=credentials
        )
        assert marker not in answer.text, f"{method} {path} shows the machine's data"
        if (method, path) not in PUBLIC:
            assert answer.status_code == 401, f"{method} {path}: {answer.status_code}"
            checked += 1
    assert checked >= 2


# --------------------------------------------------------------------------- every export is audited


def test_each_export_writes_one_audit_row(
    viewer: Browserless, exporter_server: ServerProcess, database_url: str, marked_machine, db: psycopg.Connection
) -> None:
    machine, marker = marked_machine
    with psycopg.connect(database_url, autocommit=True) as conn:
        scripted = create_user(conn, unique("scripted"), PASSWORD, "viewer")
        token = create_token(conn, scripted, "nightly")
    exports: list[tuple[httpx.Response, str, str, str]] = []  # answer, username, auth, format
    for fmt in ("csv", "json", "ndjson"):
        answer = viewer.get("/api/exports/logs", params={"machine_id": machine.machine_id, "format": fmt})
        exports.append((answer, viewer.username, "session", fmt))
        answer = httpx.get(
            f"{exporter_server.url}/api/exports/logs",
            params={"machine_id": machine.machine_id, "format": fmt},
            headers={"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"},
            timeout=30,
        )
        exports.append((answer, scripted.username, "token:nightly", fmt))
    expected_rows = len(machine.logs)
    for answer, username, auth, fmt in exports:
        assert answer.status_code == 200, answer.text
        assert marker in answer.text  # the signed-in export does carry the data
        row = db.execute(
            "SELECT username, auth, format, filters, status, row_count FROM export_audit WHERE id = %s",
            (int(answer.headers["x-atlas-export-id"]),),
        ).fetchone()
        assert row == (username, auth, fmt, {"machine_id": machine.machine_id}, "complete", expected_rows)
    for username, count in ((viewer.username, 3), (scripted.username, 3)):
        assert db.execute("SELECT count(*) FROM export_audit WHERE username = %s", (username,)).fetchone() == (count,)
    refused = httpx.get(f"{exporter_server.url}/api/exports/logs", params={"machine_id": machine.machine_id})
    assert refused.status_code == 401
    assert "x-atlas-export-id" not in refused.headers
