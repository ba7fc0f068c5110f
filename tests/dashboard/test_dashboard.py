"""The dashboard over HTTP: a real ``atlas-server dashboard`` process, httpx, and PostgreSQL.

Sign-in, sessions, CSRF and redirects; roles; the fleet list (search, sort,
status, 10,000 machines); the machine page; escaping of hostile agent text;
security headers; and no resource from another origin.
"""

from __future__ import annotations

import html
import math
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from atlas.contract import Keyring
from atlas.core.accounts import User, create_token
from atlas.core.db import connect
from atlas.core.web import SESSION_COOKIE
from atlas.dashboard import extract, fleet, presession, render, security
from atlas.dashboard.machine import LogContent, levels_from, load_buckets, load_machine
from atlas.dashboard.presession import PRESESSION_COOKIE

from ..fix_dashboard import (
    PASSWORD,
    Browserless,
    chart_points,
    every_widget_logs,
    health_data,
    insert_machine,
    off_the_mark_week,
    ping_data,
    processes_data,
    speed_data,
    unique,
    wifi_data,
)
from ..fix_processes import ServerProcess
from ..fix_services import own_database

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
INVALID = "Invalid username or password"


def rows_of(page: str) -> list[str]:
    """The machine ids of the fleet table's rows, in order."""
    return [html.unescape(m) for m in re.findall(r'<tr data-machine-id="([^"]*)"', page)]


# --- health ------------------------------------------------------------------------------


def test_health_and_readiness(dashboard: ServerProcess):
    assert httpx.get(f"{dashboard.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{dashboard.url}/readyz").status_code == 200


# --- signing in and out ------------------------------------------------------------------


def test_pages_redirect_to_login_with_the_path_to_come_back_to(browserless: Callable[[], Browserless]):
    client = browserless()
    assert client.get("/").headers["location"] == "/login"
    found = client.get("/machines/abc", params={"range": "week"})
    assert found.status_code == 303
    assert found.headers["location"] == "/login?next=" + quote("/machines/abc?range=week", safe="/")
    assert client.get("/admin/users").headers["location"].startswith("/login?next=/admin/users")


def test_login_sets_a_hardened_session_cookie_and_goes_to_next(
    browserless: Callable[[], Browserless], make_user: Callable[..., str]
):
    client = browserless()
    answer = client.login(make_user(), next_path="/account")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/account"
    cookie = next(v for k, v in answer.headers.multi_items() if k == "set-cookie" and v.startswith(SESSION_COOKIE))
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "path", "max-age", "samesite"} <= attributes
    assert "samesite=lax" in cookie.lower()
    assert "max-age=115200" in cookie.lower()  # the 8-hour session, and a day to say that it expired
    assert "secure" not in attributes  # plain HTTP here; Secure is set when the request is HTTPS
    page = client.get("/")
    assert page.status_code == 200
    assert client.username in page.text

    behind_tls = browserless()  # a TLS proxy in front (the test config trusts X-Forwarded-Proto from loopback)
    token = behind_tls.login_form_token()
    answer = behind_tls.post(
        "/login",
        {"username": client.username, "password": PASSWORD, "csrf_token": token},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert answer.status_code == 303
    cookie = next(v for k, v in answer.headers.multi_items() if k == "set-cookie" and v.startswith(SESSION_COOKIE))
    assert "secure" in {part.strip().lower() for part in cookie.split(";")}


def test_failed_login_is_401_with_one_generic_message(
    browserless: Callable[[], Browserless], make_user: Callable[..., str]
):
    name = make_user()
    wrong_password = browserless().login(name, "not-the-password-at-all")
    unknown_user = browserless().login(unique("nobody"), PASSWORD)
    for answer in (wrong_password, unknown_user):
        assert answer.status_code == 401
        assert INVALID in answer.text
        assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")
        assert "unknown" not in answer.text.lower()
        assert "wrong password" not in answer.text.lower()


def presession_cookie(answer: httpx.Response) -> str:
    """The Set-Cookie header of the login form's pre-session cookie."""
    return next(v for k, v in answer.headers.multi_items() if k == "set-cookie" and v.startswith(PRESESSION_COOKIE))


def test_login_form_needs_its_csrf_token(browserless: Callable[[], Browserless], make_user: Callable[..., str]):
    name = make_user()
    client = browserless()
    token = client.login_form_token()
    form = {"username": name, "password": PASSWORD}
    no_token = client.post("/login", form)
    assert no_token.status_code == 403
    assert presession.FOREIGN_FORM in html.unescape(no_token.text)
    assert client.post("/login", {**form, "csrf_token": "x" + token}).status_code == 403  # wrong token
    other = browserless()  # the right token but no pre-session cookie
    no_cookie = other.post("/login", {**form, "csrf_token": token})
    assert no_cookie.status_code == 403
    assert presession.NO_PRESESSION in html.unescape(no_cookie.text)
    evil = client.post("/login", {**form, "csrf_token": token}, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403
    assert "expired" in evil.text
    fresh = client.login_form_token()
    answer = client.post("/login", {**form, "csrf_token": fresh})
    assert answer.status_code == 303
    assert 'atlas_login=""' in presession_cookie(answer)  # the pre-session ends with the sign-in


def test_the_login_token_is_bound_to_its_own_signed_presession_cookie(
    browserless: Callable[[], Browserless], make_user: Callable[..., str]
):
    name = make_user()
    form = {"username": name, "password": PASSWORD}
    first, second = browserless(), browserless()
    first_token, second_token = first.login_form_token(), second.login_form_token()
    assert first_token != second_token
    # Each browser's token fails with the other one's cookie.
    for client, token in ((first, second_token), (second, first_token)):
        answer = client.post("/login", {**form, "csrf_token": token})
        assert answer.status_code == 403
        assert presession.FOREIGN_FORM in html.unescape(answer.text)
        assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")
    # A value chosen for both the cookie and the field (what a double-submit check accepts), the cookie's own
    # value as the token, or a cookie whose signature was tampered with: all refused.
    cookie = first.client.cookies[PRESESSION_COOKIE]
    forged = "attacker-chosen-value-0123456789"
    for value, token in ((forged, forged), (cookie, cookie), (cookie[:-2] + "xx", first_token)):
        answer = browserless().post(
            "/login", {**form, "csrf_token": token}, headers={"Cookie": f"{PRESESSION_COOKIE}={value}"}
        )
        assert answer.status_code == 403, (value, token)
        assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")
    # The cookie: HttpOnly, SameSite=Strict, only sent to /login, Secure when served over HTTPS.
    page = browserless().get("/login")
    attributes = {part.strip().lower() for part in presession_cookie(page).split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/login"} <= attributes
    assert "secure" not in attributes
    behind_tls = browserless().get("/login", headers={"X-Forwarded-Proto": "https"})
    assert "secure" in {part.strip().lower() for part in presession_cookie(behind_tls).split(";")[1:]}
    # Both tokens still work with their own cookies.
    assert first.post("/login", {**form, "csrf_token": first_token}).status_code == 303
    assert second.post("/login", {**form, "csrf_token": second_token}).status_code == 303


def test_forms_need_the_session_csrf_token_and_this_origin(viewer: Browserless):
    token = viewer.csrf()
    assert viewer.post("/logout").status_code == 403
    assert viewer.post("/logout", {"csrf_token": "forged"}).status_code == 403
    cross = viewer.post("/logout", {"csrf_token": token}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert viewer.post("/logout", {"csrf_token": token}, headers={"Origin": "null"}).status_code == 403
    assert viewer.get("/").status_code == 200  # none of those signed the user out
    same = viewer.post("/logout", {"csrf_token": token}, headers={"Origin": viewer.server.url})
    assert same.status_code == 303


def test_logout_ends_the_session_in_the_database(viewer: Browserless, browserless: Callable[[], Browserless]):
    cookie = viewer.client.cookies[SESSION_COOKIE]
    answer = viewer.post("/logout", {"csrf_token": viewer.csrf()})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login"
    assert viewer.get("/").headers["location"] == "/login"
    replay = browserless()
    replay.client.cookies.set(SESSION_COOKIE, cookie)
    assert replay.get("/").status_code == 303  # the old cookie is worthless now


def test_forged_or_tampered_cookies_are_refused(viewer: Browserless, browserless: Callable[[], Browserless]):
    good = viewer.client.cookies[SESSION_COOKIE]
    session_id, _, signature = good.rpartition(".")
    for forged in (
        session_id,  # unsigned
        f"{session_id}.{signature[::-1]}",  # bad signature
        f"{session_id[:-1]}{'A' if session_id[-1] != 'A' else 'B'}.{signature}",  # tampered id
        "x" * 300,
    ):
        client = browserless()
        client.client.cookies.set(SESSION_COOKIE, forged)
        assert client.get("/").headers.get("location") == "/login", forged


def test_an_expired_session_goes_back_to_login(viewer: Browserless, db: psycopg.Connection):
    assert viewer.get("/").status_code == 200
    db.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second'"
        " WHERE user_id = (SELECT id FROM users WHERE username = %s)",
        (viewer.username,),
    )
    assert viewer.get("/").headers["location"] == "/login"


BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
"""What a browser sends when a link is followed or a form is submitted."""

SESSION_EXPIRED = "Your session expired; sign in again."
REVERSED = {"since": "2026-11-28T10:00", "until": "2026-11-28T09:00", "format": "csv"}


def expire_sessions(db: psycopg.Connection, username: str) -> None:
    db.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second'"
        " WHERE user_id = (SELECT id FROM users WHERE username = %s)",
        (username,),
    )


def test_a_browser_export_that_cannot_be_made_gets_a_page_and_api_clients_keep_json(
    viewer: Browserless, db: psycopg.Connection
):
    page = viewer.get("/api/exports/logs", params=REVERSED, headers={"Accept": BROWSER_ACCEPT})
    assert page.status_code == 422
    assert page.headers["content-type"].startswith("text/html")
    assert "<h1>This export cannot be made</h1>" in page.text
    assert "until: must be later than since" in page.text
    assert viewer.username in page.text  # the dashboard's page, with its user menu
    assert '<link rel="stylesheet" href="/static/dashboard.css">' in page.text
    assert '"detail"' not in page.text

    problem = {"detail": "until: must be later than since", "field": "until"}
    for accept in ("application/json", "*/*", "application/json, text/html;q=0.9", None):
        answer = viewer.get("/api/exports/logs", params=REVERSED, headers={"Accept": accept} if accept else {})
        assert answer.status_code == 422, accept
        assert answer.headers["content-type"] == "application/json", accept
        assert answer.json() == problem, accept
    user = db.execute("SELECT id, username, role FROM users WHERE username = %s", (viewer.username,)).fetchone()
    token = create_token(db, User(*user), unique("browser-token"))
    headers = {"Accept": BROWSER_ACCEPT, "Authorization": f"Bearer {token}"}
    by_token = httpx.get(f"{viewer.server.url}/api/exports/logs", params=REVERSED, headers=headers)
    assert by_token.status_code == 422
    assert by_token.json() == problem
    headers["Authorization"] = "Bearer atlas_" + "x" * 43
    refused = httpx.get(f"{viewer.server.url}/api/exports/logs", headers=headers, follow_redirects=False)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert refused.json()["field"] is None

    audit = viewer.get("/api/exports/audit", headers={"Accept": BROWSER_ACCEPT})
    assert audit.status_code == 403
    assert "<h1>Forbidden</h1>" in audit.text
    assert viewer.get("/api/exports/audit").json() == {"detail": "admins only", "field": None}


def test_an_export_clicked_after_the_session_expired_signs_in_again_and_downloads(
    viewer: Browserless, db: psycopg.Connection
):
    export = {"format": "csv", "machine_id": unique("none"), "widget_type": "wifi"}
    assert viewer.get("/api/exports/logs", params=export, headers={"Accept": BROWSER_ACCEPT}).status_code == 200
    expire_sessions(db, viewer.username)

    api = viewer.get("/api/exports/logs", params=export, headers={"Accept": "application/json"})
    assert api.status_code == 401
    assert api.headers["www-authenticate"] == "Bearer"
    assert api.json() == {
        "detail": "authentication required: a dashboard session or 'Authorization: Bearer <API token>'",
        "field": None,
    }

    clicked = viewer.get("/api/exports/logs", params=export, headers={"Accept": BROWSER_ACCEPT})
    assert clicked.status_code == 303
    location = clicked.headers["location"]
    assert location.startswith("/login?next=")
    target = parse_qs(urlsplit(location).query)["next"][0]
    assert urlsplit(target).path == "/api/exports/logs"
    assert parse_qs(urlsplit(target).query) == {k: [v] for k, v in export.items()}

    login = viewer.get(location, headers={"Accept": BROWSER_ACCEPT})
    assert login.status_code == 200
    assert SESSION_EXPIRED in login.text
    assert f'name="next" value="{html.escape(target)}"' in login.text
    cleared = [v for k, v in login.headers.multi_items() if k == "set-cookie" and v.startswith(SESSION_COOKIE)]
    assert cleared
    assert "max-age=0" in cleared[0].lower()  # the stale cookie goes: the notice is shown once
    assert SESSION_EXPIRED not in viewer.get("/login").text

    signed_in = viewer.login(viewer.username, next_path=target)
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == target
    download = viewer.get(target, headers={"Accept": BROWSER_ACCEPT})
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")


def test_a_form_posted_after_the_session_expired_comes_back_to_its_page(viewer: Browserless, db: psycopg.Connection):
    token = viewer.csrf("/account")
    expire_sessions(db, viewer.username)
    form = {"csrf_token": token, "current_password": PASSWORD, "new_password": "x" * 20, "confirm_password": "x" * 20}
    here = viewer.server.url + "/account?tab=password"
    posted = viewer.post("/account/password", form, headers={"Accept": BROWSER_ACCEPT, "Referer": here})
    assert posted.status_code == 303
    assert posted.headers["location"] == "/login?next=" + quote("/account?tab=password", safe="/")
    login = viewer.get(posted.headers["location"])
    assert SESSION_EXPIRED in login.text
    assert 'name="next" value="/account?tab=password"' in login.text
    assert viewer.login(viewer.username, next_path="/account?tab=password").headers["location"] == (
        "/account?tab=password"
    )

    for elsewhere in ("https://evil.example/account", "//evil.example/", "not a url", ""):
        expire_sessions(db, viewer.username)
        posted = viewer.post("/account/password", form, headers={"Referer": elsewhere})
        assert posted.status_code == 303, elsewhere
        assert posted.headers["location"] == "/login", elsewhere
        viewer.login(viewer.username)


@pytest.mark.parametrize(
    "target",
    ["//evil.example", "https://evil.example/", "/\\evil.example", "http:/evil.example", "/%0d%0aSet-Cookie:x", ""],
)
def test_next_never_leaves_the_site(browserless: Callable[[], Browserless], make_user: Callable[..., str], target: str):
    client = browserless()
    answer = client.login(make_user(), next_path=target)
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith("/")
    assert not location.startswith("//")
    assert "\\" not in location
    if target in ("//evil.example", "https://evil.example/", "/\\evil.example", "http:/evil.example", ""):
        assert location == "/"
    form = browserless().get("/login", params={"next": "//evil.example"}).text
    assert 'name="next" value=""' in form


def test_next_keeps_a_local_path(browserless: Callable[[], Browserless], make_user: Callable[..., str]):
    answer = browserless().login(make_user(), next_path="/machines/abc?range=week")
    assert answer.headers["location"] == "/machines/abc?range=week"


# --- roles and administration ------------------------------------------------------------


def test_a_viewer_gets_403_on_admin_pages_and_actions(viewer: Browserless):
    for path in ("/admin/users", "/admin/tokens", "/admin/audit"):
        answer = viewer.get(path)
        assert answer.status_code == 403, path
        assert "administrators" in answer.text
    token = viewer.csrf()
    made = viewer.post("/admin/users", {"csrf_token": token, "username": unique("sneaky"), "password": PASSWORD})
    assert made.status_code == 403
    assert viewer.post("/admin/tokens", {"csrf_token": token, "name": "mine"}).status_code == 403
    assert 'href="/admin/users"' not in viewer.get("/").text


def test_an_admin_creates_users_changes_them_and_deletes_them(
    admin: Browserless, browserless: Callable[[], Browserless], db: psycopg.Connection
):
    token = admin.csrf("/admin/users")
    name = unique("new-viewer")
    made = admin.post("/admin/users", {"csrf_token": token, "username": name, "role": "viewer", "password": PASSWORD})
    assert made.status_code == 200
    assert f"Created viewer {name}" in made.text
    assert browserless().login(name).status_code == 303

    short = admin.post("/admin/users", {"csrf_token": token, "username": unique("short"), "password": "tiny"})
    assert short.status_code == 400
    assert "at least 12 characters" in short.text

    generated_name = unique("generated")
    shown = admin.post("/admin/users", {"csrf_token": token, "username": generated_name, "role": "admin"})
    secret = re.search(r'<code class="secret">([^<]+)</code>', shown.text)
    assert secret, "a generated password is shown once"
    assert browserless().login(generated_name, html.unescape(secret.group(1))).status_code == 303
    assert "secret" not in admin.get("/admin/users").text.split("<main>")[1]  # not shown again

    user_id = db.execute("SELECT id FROM users WHERE username = %s", (name,)).fetchone()[0]
    assert admin.post(f"/admin/users/{user_id}/role", {"csrf_token": token, "role": "admin"}).status_code == 303
    assert db.execute("SELECT role FROM users WHERE id = %s", (user_id,)).fetchone()[0] == "admin"
    new_password = "another-long-password-42"
    reset = admin.post(f"/admin/users/{user_id}/password", {"csrf_token": token, "password": new_password})
    assert reset.status_code == 303
    assert browserless().login(name, new_password).status_code == 303
    assert admin.post(f"/admin/users/{user_id}/delete", {"csrf_token": token}).status_code == 303
    assert db.execute("SELECT count(*) FROM users WHERE id = %s", (user_id,)).fetchone()[0] == 0


def test_an_admin_cannot_delete_or_demote_themselves(admin: Browserless, db: psycopg.Connection):
    token = admin.csrf("/admin/users")
    own_id = db.execute("SELECT id FROM users WHERE username = %s", (admin.username,)).fetchone()[0]
    deleted = admin.post(f"/admin/users/{own_id}/delete", {"csrf_token": token})
    assert deleted.status_code == 400
    assert "yourself" in deleted.text
    demoted = admin.post(f"/admin/users/{own_id}/role", {"csrf_token": token, "role": "viewer"})
    assert demoted.status_code == 400
    assert db.execute("SELECT role FROM users WHERE id = %s", (own_id,)).fetchone()[0] == "admin"


def test_an_admin_creates_and_revokes_an_api_token(admin: Browserless, db: psycopg.Connection):
    token = admin.csrf("/admin/tokens")
    name = unique("nightly")
    made = admin.post("/admin/tokens", {"csrf_token": token, "name": name})
    assert made.status_code == 200
    secret = re.search(r'<code class="secret">(atlas_[^<]+)</code>', made.text)
    assert secret, "the token is shown once"
    api_token = html.unescape(secret.group(1))
    listed = admin.get("/admin/tokens").text
    assert name in listed
    assert api_token not in listed
    export = httpx.get(
        f"{admin.server.url}/api/exports/logs",
        params={"machine_id": unique("none"), "format": "json"},
        headers={"Authorization": f"Bearer {api_token}"},
    )
    assert export.status_code == 200
    token_id = db.execute("SELECT id FROM api_tokens WHERE name = %s", (name,)).fetchone()[0]
    done = admin.post(f"/admin/tokens/{token_id}/revoke", {"csrf_token": token})
    assert done.status_code == 303
    assert done.headers["location"].endswith("done=revoked")
    revoked = httpx.get(f"{admin.server.url}/api/exports/logs", headers={"Authorization": f"Bearer {api_token}"})
    assert revoked.status_code == 401
    again = admin.post(f"/admin/tokens/{token_id}/revoke", {"csrf_token": token})
    assert again.headers["location"].endswith("done=not-revoked")
    assert "No such live token" in admin.get(again.headers["location"]).text


def test_the_audit_page_lists_exports(admin: Browserless):
    machine_id = unique("audited")
    assert admin.get("/api/exports/logs", params={"machine_id": machine_id}).status_code == 200
    page = admin.get("/admin/audit")
    assert page.status_code == 200
    assert machine_id in page.text
    assert admin.username in page.text


def test_a_user_changes_their_own_password(viewer: Browserless, browserless: Callable[[], Browserless]):
    token = viewer.csrf("/account")
    new = "a-brand-new-password-77"
    wrong = viewer.post(
        "/account/password",
        {"csrf_token": token, "current_password": "nope-nope-nope", "new_password": new, "confirm_password": new},
    )
    assert wrong.status_code == 400
    changed = viewer.post(
        "/account/password",
        {"csrf_token": token, "current_password": PASSWORD, "new_password": new, "confirm_password": new},
    )
    assert changed.status_code == 303
    assert viewer.get("/account?done=1").status_code == 200  # the new session cookie replaced the old one
    assert browserless().login(viewer.username, PASSWORD).status_code == 401
    assert browserless().login(viewer.username, new).status_code == 303


def test_the_first_admin_comes_from_the_environment(server_config: dict[str, Any], tmp_path: Path):
    servers: list[ServerProcess] = []
    with own_database("_boot") as url:
        config = {**server_config, "database": {"url": url}}
        try:
            env = {"ATLAS_ADMIN_USERNAME": "first-admin", "ATLAS_ADMIN_PASSWORD": "bootstrap-password-123"}
            servers.append(ServerProcess("dashboard", config, tmp_path, env=env))
            client = Browserless(servers[-1])
            assert client.login("first-admin", "bootstrap-password-123").status_code == 303
            assert client.get("/admin/users").status_code == 200
            client.close()
            servers[-1].stop()
            # Once a user exists, the variables change nothing.
            env = {"ATLAS_ADMIN_USERNAME": "second-admin", "ATLAS_ADMIN_PASSWORD": "another-password-456"}
            servers.append(ServerProcess("dashboard", config, tmp_path, env=env))
            with connect(url) as conn:
                assert conn.execute("SELECT username, role FROM users").fetchall() == [("first-admin", "admin")]
        finally:
            for server in servers:
                if server.proc.poll() is None:
                    server.stop()


# --- the fleet list ----------------------------------------------------------------------


def test_the_fleet_list_shows_each_machine_with_its_latest_readings(viewer: Browserless, db: psycopg.Connection):
    now = datetime.now(UTC)
    machine = insert_machine(
        db,
        machine_id=f"mac/{uuid.uuid4().hex[:8]} #1?",
        logs=[
            (now - timedelta(hours=2), "INFO", "wifi", "old", wifi_data(-80, "Old-SSID")),
            (now - timedelta(minutes=1), "INFO", "wifi", "new", wifi_data(-61, "New-SSID")),
            (now - timedelta(hours=3), "INFO", "speedtest", "old", speed_data(10.0, 1.0)),
            (now - timedelta(minutes=30), "INFO", "speedtest", "new", speed_data(412.5, 38.5)),
        ],
    )
    page = viewer.get("/", params={"q": machine.serial_number})
    assert page.status_code == 200
    assert rows_of(page.text) == [machine.machine_id]
    row = page.text.split(f'data-machine-id="{html.escape(machine.machine_id)}"')[1].split("</tr>")[0]
    for shown in (machine.hostname, "MacBookPro18,3", "macOS 15.5 (24F74)", "-61 dBm", "New-SSID", "412.5 Mbps"):
        assert shown in row, shown
    assert "38.5 Mbps" in page.text
    assert "Old-SSID" not in row
    assert "online" in row
    assert "just now" in row or "min ago" in row
    assert f'href="/machines/{quote(machine.machine_id, safe="")}"' in row
    detail = viewer.get(f"/machines/{quote(machine.machine_id, safe='')}")
    assert detail.status_code == 200
    assert html.escape(machine.machine_id) in detail.text


def test_search_matches_any_identity_field_and_treats_wildcards_literally(viewer: Browserless, db: psycopg.Connection):
    tag = unique("srch")
    plain = insert_machine(db, hostname=f"{tag}-axb.local", model=f"Model-{tag}")
    underscored = insert_machine(db, hostname=f"{tag}-a_b.local")
    percent = insert_machine(db, hostname=f"{tag}-100%.local")
    assert set(rows_of(viewer.get("/", params={"q": tag}).text)) == {
        plain.machine_id,
        underscored.machine_id,
        percent.machine_id,
    }
    assert rows_of(viewer.get("/", params={"q": f"{tag}-a_b"}).text) == [underscored.machine_id]
    assert rows_of(viewer.get("/", params={"q": f"{tag}-100%"}).text) == [percent.machine_id]
    assert rows_of(viewer.get("/", params={"q": f"model-{tag.upper()}"}).text) == [plain.machine_id]  # any case
    assert rows_of(viewer.get("/", params={"q": plain.machine_id}).text) == [plain.machine_id]
    assert rows_of(viewer.get("/", params={"q": plain.serial_number.lower()}).text) == [plain.machine_id]
    nothing = viewer.get("/", params={"q": f"{tag}-nothing"})
    assert rows_of(nothing.text) == []
    assert "No machine matches" in nothing.text


def test_sorting_by_each_column_both_ways(viewer: Browserless, db: psycopg.Connection):
    tag = unique("sort")
    now = datetime.now(UTC)
    machines = [
        insert_machine(
            db,
            hostname=f"{tag}-{name}",
            serial_number=f"{tag}-S{serial}".upper(),
            model=model,
            os_version=os_version,
            last_seen=now - timedelta(minutes=minutes),
        )
        for name, serial, model, os_version, minutes in (
            ("bravo", 3, "Mac14,2", "macOS 14.1", 5),
            ("alpha", 2, "Mac15,3", "macOS 15.1", 50),
            ("Charlie", 1, "Mac13,1", "macOS 13.6", 500),
        )
    ]
    bravo, alpha, charlie = (m.machine_id for m in machines)
    expected = {
        "hostname": [alpha, bravo, charlie],  # case-insensitive
        "serial": [charlie, alpha, bravo],
        "model": [charlie, bravo, alpha],
        "os": [charlie, bravo, alpha],
        "last_seen": [charlie, alpha, bravo],
    }
    for sort, order in expected.items():
        assert rows_of(viewer.get("/", params={"q": tag, "sort": sort}).text) == order, sort
        assert rows_of(viewer.get("/", params={"q": tag, "sort": sort, "dir": "desc"}).text) == order[::-1], sort
    hostile = viewer.get("/", params={"q": tag, "sort": "hostname; DROP TABLE machines", "dir": "sideways"})
    assert rows_of(hostile.text) == expected["hostname"]


def test_status_badges_counts_and_filter(viewer: Browserless, db: psycopg.Connection):
    tag = unique("status")
    now = datetime.now(UTC)
    online = insert_machine(db, hostname=f"{tag}-on", last_seen=now - timedelta(minutes=3))
    stale = insert_machine(db, hostname=f"{tag}-stale", last_seen=now - timedelta(hours=5))
    offline = insert_machine(db, hostname=f"{tag}-off", last_seen=now - timedelta(days=3))
    page = viewer.get("/", params={"q": tag}).text
    for status, machine in (("online", online), ("stale", stale), ("offline", offline)):
        row = page.split(f'data-machine-id="{machine.machine_id}"')[1].split("</tr>")[0]
        assert f'class="badge status-{status}"' in row
        assert re.search(rf'class="count-{status}">1<', page), status
    assert "3 days ago" in page
    assert rows_of(viewer.get("/", params={"q": tag, "status": "stale"}).text) == [stale.machine_id]
    assert rows_of(viewer.get("/", params={"q": tag, "status": "offline"}).text) == [offline.machine_id]


def test_pages_of_fifty(viewer: Browserless, db: psycopg.Connection):
    tag = unique("pages")
    ids = [insert_machine(db, hostname=f"{tag}-{i:03d}").machine_id for i in range(53)]
    first = viewer.get("/", params={"q": tag}).text
    assert rows_of(first) == ids[:50]
    assert "Page 1 of 2" in first
    second = viewer.get("/", params={"q": tag, "page": "2"}).text
    assert rows_of(second) == ids[50:]
    assert rows_of(viewer.get("/", params={"q": tag, "page": "999"}).text) == ids[50:]  # clamped to the last
    assert rows_of(viewer.get("/", params={"q": tag, "page": "-3x"}).text) == ids[:50]


def test_the_fleet_list_stays_fast_with_10000_machines(viewer: Browserless, db: psycopg.Connection):
    tag = f"bulk{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    started = time.perf_counter()
    with db.cursor() as cur:
        with cur.copy(
            "COPY machines (machine_id, serial_number, hostname, model, os_version, agent_version,"
            " first_seen, last_seen, identity_at) FROM STDIN"
        ) as copy:
            for i in range(10_000):
                seen = now - timedelta(minutes=i % 3000)
                copy.write_row(
                    (
                        f"{tag}-{i:05d}",
                        f"{tag}S{i:05d}".upper(),
                        f"{tag}-host-{i:05d}.local",
                        "Mac14,2",
                        "macOS 15.5",
                        "0.1.0",
                        seen - timedelta(days=9),
                        seen,
                        seen,
                    )
                )
        with cur.copy(
            'COPY widget_logs (machine_id, serial_number, "timestamp", level, widget_type, message, data, batch_id,'
            " received_at) FROM STDIN"
        ) as copy:
            batch = uuid.uuid4()
            for i in range(0, 10_000, 5):  # 2,000 machines with a day of hourly Wi-Fi and speed tests
                for hour in range(24):
                    at = now - timedelta(hours=hour, minutes=i % 60)
                    for kind, data in (("wifi", wifi_data(-40 - hour)), ("speedtest", speed_data(100.0 + hour, 9.5))):
                        copy.write_row(
                            (
                                f"{tag}-{i:05d}",
                                f"{tag}S{i:05d}".upper(),
                                at,
                                "INFO",
                                kind,
                                "bulk",
                                Jsonb(data),
                                batch,
                                now,
                            )
                        )
    db.execute("ANALYZE machines")
    db.execute("ANALYZE widget_logs")
    seeded = time.perf_counter() - started
    try:
        timings: dict[str, float] = {}
        for label, params in (
            ("search", {"q": tag}),
            ("search, last page", {"q": tag, "page": "200"}),
            ("search, sort by last seen", {"q": tag, "sort": "last_seen", "dir": "desc"}),
            ("whole fleet", {}),
            ("whole fleet, sort by serial", {"sort": "serial", "dir": "desc"}),
            ("whole fleet, offline only", {"status": "offline"}),
        ):
            viewer.get("/", params=params)  # warm up
            began = time.perf_counter()
            page = viewer.get("/", params=params)
            timings[label] = time.perf_counter() - began
            assert page.status_code == 200
        print(f"\n10,000 machines, 48,000 logs seeded in {seeded:.1f} s; fleet page:")
        for label, seconds in timings.items():
            print(f"  {label:30} {seconds * 1000:7.0f} ms")
        first = viewer.get("/", params={"q": tag}).text
        assert len(rows_of(first)) == 50
        assert re.search(r'class="count-all">10000<', first)
        assert "Page 1 of 200" in first
        assert "-40 dBm" in first  # the latest Wi-Fi of the first machine (its logs are an hour apart)
        assert "100.0 Mbps" in first
        assert max(timings.values()) < 2.0, timings
    finally:
        db.execute("DELETE FROM widget_logs WHERE machine_id LIKE %s", (f"{tag}-%",))
        db.execute("DELETE FROM machines WHERE machine_id LIKE %s", (f"{tag}-%",))


# --- the machine page --------------------------------------------------------------------


def test_the_machine_page_shows_identity_latest_values_charts_and_logs(viewer: Browserless, db: psycopg.Connection):
    now = datetime.now(UTC)
    machine = insert_machine(db, logs=every_widget_logs(now))
    url = f"/machines/{quote(machine.machine_id, safe='')}"
    page = viewer.get(url)
    assert page.status_code == 200
    text = page.text
    for shown in (
        machine.serial_number,
        machine.hostname,
        "MacBookPro18,3",
        "macOS 15.5 (24F74)",
        machine.machine_id,
        # Wi-Fi
        "Office-5G",
        "WPA3 Personal",
        "fe:dc:ba:09:87:65",
        "5GHz",
        "80 MHz",
        "-94 dBm",
        # speed test
        "Example Fibre",
        "Example Hosting",
        "11.2 ms",
        # ping per target
        "1.1.1.1",
        "8.8.8.8",
        # health
        "Disk /",
        "50.3 %",
        "CPU die",
        "48.5 °C",
        "1,850 rpm",
        "Battery charge",
        # processes
        "WindowServer",
        "kernel_task",
        "_windowserver",
        "431 processes",
    ):
        assert shown in text, shown
    latest = (now - timedelta(seconds=30)).astimezone(UTC)
    assert latest.strftime("%Y-%m-%d %H:%M UTC") in text or "just now" in text
    assert "proc0" in text  # top 5 by CPU only
    assert "proc1" not in text
    assert text.count('<figure class="chart">') == 4
    assert len(re.findall(r'<svg[^>]*role="img"', text)) == 4
    for title in ("download and upload", "RSSI and noise", "latency", "CPU and memory"):
        assert title in text
    assert text.count("<polyline") >= 8  # two lines in each chart
    assert "No data in this period" not in text
    assert 'name="machine_id" value="' + html.escape(machine.machine_id) in text
    assert "Export Device Logs" in text

    week = viewer.get(url, params={"range": "week"})
    assert week.status_code == 200
    assert week.text.count('<figure class="chart">') == 4


def test_network_and_roam_logs_show_in_the_machine_logs_and_break_no_page(viewer: Browserless, db: psycopg.Connection):
    """The layered checks' and roams' logs are newer widget types: listed with the others, no page fails on them."""
    now = datetime.now(UTC)
    network = {"layer": "dns", "target": "192.0.2.53", "status": "ok", "dns_ms": 12.5, "query_name": "apple.com"}
    roam = {"changed": ["bssid"], "from_bssid": "aa:bb:cc:00:00:01", "to_bssid": "aa:bb:cc:00:00:02"}
    machine = insert_machine(
        db,
        logs=[
            (now - timedelta(minutes=3), "INFO", "wifi", "WiFi status", wifi_data(-61, "Office-5G")),
            (now - timedelta(minutes=2), "INFO", "network", "DNS 192.0.2.53: apple.com answered in 12.5 ms", network),
            (now - timedelta(minutes=1), "INFO", "roam", "Roamed from aa:bb:cc:00:00:01 to aa:bb:cc:00:00:02", roam),
        ],
    )
    url = f"/machines/{quote(machine.machine_id, safe='')}"
    for params in ({}, {"range": "week"}):
        page = viewer.get(url, params=params)
        assert page.status_code == 200
        assert "DNS 192.0.2.53: apple.com answered in 12.5 ms" in page.text
        assert "Roamed from aa:bb:cc:00:00:01 to aa:bb:cc:00:00:02" in page.text
        assert "<td>network</td>" in page.text
        assert "<td>roam</td>" in page.text
        assert "Office-5G" in page.text
    fleet_page = viewer.get("/", params={"q": machine.serial_number})
    assert fleet_page.status_code == 200
    assert rows_of(fleet_page.text) == [machine.machine_id]


def test_the_machine_page_stays_fast_with_a_week_of_per_minute_logs(viewer: Browserless, db: psycopg.Connection):
    """What an agent sends in a week (collecting every minute, three ping targets): about 60,000 logs."""
    now = datetime.now(UTC)
    logs: list[tuple] = []
    for minute in range(7 * 1440):
        at = now - timedelta(minutes=minute, seconds=20)
        logs.append((at, "INFO", "wifi", "WiFi status", wifi_data(-50 - minute % 20)))
        logs.extend(
            (at, "INFO", "ping", "Ping", ping_data(t, 10 + minute % 7)) for t in ("1.1.1.1", "8.8.8.8", "9.9.9.9")
        )
        logs.append((at, "INFO", "health", "Health", health_data(10 + minute % 50)))
        logs.append((at, "DEBUG", "processes", "Top processes", processes_data()))
        if minute % 60 == 0:
            logs.append((at, "INFO", "speedtest", "Speed test", speed_data()))
    machine = insert_machine(db, logs=logs)
    try:
        db.execute("ANALYZE widget_logs")
        url = f"/machines/{quote(machine.machine_id, safe='')}"
        timings = {}
        for range_ in ("day", "week"):
            viewer.get(url, params={"range": range_})  # warm up
            began = time.perf_counter()
            page = viewer.get(url, params={"range": range_})
            timings[range_] = time.perf_counter() - began
            assert page.status_code == 200
            assert page.text.count("<polyline") >= 8
            assert "No data in this period" not in page.text
        print(
            f"\nmachine page with {len(logs):,} logs over a week: "
            + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items())
        )
        assert max(timings.values()) < 2.0, timings
    finally:  # 60,000 logs would weigh on every later "all logs" export of this run
        db.execute("DELETE FROM widget_logs WHERE machine_id = %s", (machine.machine_id,))


WEEK_BUCKETS = 7 * 288
"""A week's charts: one point per 5 minutes."""


def test_week_charts_average_every_reading_whatever_its_minute(viewer: Browserless, db: psycopg.Connection):
    """Readings at :03, :08, :13 ... (never on a multiple of 5 minutes) fill every 5-minute bucket of a week."""
    now = datetime.now(UTC)
    logs = off_the_mark_week(now)
    machine = insert_machine(db, logs=logs)
    try:
        view = load_machine(db, machine.machine_id, now=now, chart_range="week", level="")
        assert view is not None
        drawn = chart_points("".join(view.charts))
        speed_tests = sum(1 for at, _, kind, _, _ in logs if kind == "speedtest" and at >= now - timedelta(days=7))
        assert list(drawn.values()) == [2 * speed_tests] + [2 * WEEK_BUCKETS] * 3, drawn

        start = now - timedelta(days=7)
        buckets = load_buckets(db, LogContent(db, Keyring()), machine.machine_id, start, now, WEEK_BUCKETS)
        width = timedelta(minutes=5)
        rssi = next(i for i, line in enumerate(buckets.lines) if line == ("wifi", extract.wifi_rssi))
        readings = sorted((at, data["rssi_dbm"]) for at, _, kind, _, data in logs if kind == "wifi" and at >= start)
        assert buckets.points(rssi) == [
            (start + width * ((at - start) // width) + width / 2, float(value)) for at, value in readings
        ]
        latency = next(i for i, line in enumerate(buckets.lines) if line == ("ping", extract.ping_latency))
        by_bucket: dict[int, list[float]] = {}
        for at, _, kind, _, data in logs:
            if kind == "ping" and at >= start:
                by_bucket.setdefault((at - start) // width, []).append(data["rtt_avg_ms"])
        assert [value for _, value in buckets.points(latency)] == [
            pytest.approx(sum(v) / len(v)) for _, v in sorted(by_bucket.items())
        ]

        page = viewer.get(f"/machines/{quote(machine.machine_id, safe='')}", params={"range": "week"})
        assert page.status_code == 200
        assert "No data in this period" not in page.text
        over_http = chart_points(page.text)
        assert all(count >= 2 * (WEEK_BUCKETS - 1) for count in list(over_http.values())[1:]), over_http
    finally:
        db.execute("DELETE FROM widget_logs WHERE machine_id = %s", (machine.machine_id,))


def test_week_charts_read_hostile_numbers_in_sql_as_missing(db: psycopg.Connection):
    """The SQL reading of a number refuses what ``extract.number`` refuses, without a cast error."""
    now = datetime.now(UTC)
    hostile: list[Any] = ["-50", True, None, [1], {"x": 1}, 10**400, -1000, 1e300, "NaN"]
    logs = []
    for k, value in enumerate(hostile):
        at = now - timedelta(minutes=5 * k + 1)
        logs.append((at, "INFO", "wifi", "w", {"rssi_dbm": value, "noise_dbm": value}))
        logs.append((at, "INFO", "ping", "p", {"rtt_avg_ms": value, "rtt_ms": {"avg": value}, "loss_pct": value}))
        logs.append((at, "INFO", "health", "h", {"psutil": value, "cpu_percent": value, "memory_percent": value}))
        logs.append((at, "INFO", "speedtest", "s", {"download_mbps": value, "upload_mbps": value}))
    logs.append((now - timedelta(hours=2), "INFO", "health", "h", {"psutil": {"cpu_percent": "9"}, "cpu_percent": 7}))
    logs.append((now - timedelta(hours=2), "INFO", "ping", "p", {"rtt_avg_ms": "x", "rtt_ms": {"avg": 12}}))
    machine = insert_machine(db, logs=logs)
    start = now - timedelta(days=7)
    buckets = load_buckets(db, LogContent(db, Keyring()), machine.machine_id, start, now, WEEK_BUCKETS)
    found = {line: buckets.points(i) for i, line in enumerate(buckets.lines) if buckets.points(i)}
    assert {(kind, number.paths[0][-1]): [v for _, v in points] for (kind, number), points in found.items()} == {
        ("health", "cpu_percent"): [7.0],
        ("ping", "rtt_avg_ms"): [12.0],
    }


def test_the_log_list_filters_by_level_and_above(viewer: Browserless, db: psycopg.Connection):
    now = datetime.now(UTC)
    machine = insert_machine(
        db,
        logs=[
            (now - timedelta(minutes=4), "DEBUG", "agent", "debug-line", {}),
            (now - timedelta(minutes=3), "INFO", "agent", "info-line", {}),
            (now - timedelta(minutes=2), "WARNING", "agent", "warning-line", {}),
            (now - timedelta(minutes=1), "ERROR", "agent", "error-line", {}),
        ],
    )
    url = f"/machines/{quote(machine.machine_id, safe='')}"

    def messages(level: str) -> list[str]:
        page = viewer.get(url, params={"level": level} if level else None).text
        return re.findall(r'<td class="message">([^<]*)</td>', page)

    assert messages("") == ["error-line", "warning-line", "info-line", "debug-line"]
    assert messages("WARNING") == ["error-line", "warning-line"]
    assert messages("error") == ["error-line"]
    assert messages("bogus") == ["error-line", "warning-line", "info-line", "debug-line"]


def test_an_unknown_machine_is_a_404_page(viewer: Browserless):
    answer = viewer.get(f"/machines/{unique('missing')}")
    assert answer.status_code == 404
    assert "Not found" in answer.text
    assert answer.headers["content-type"].startswith("text/html")


def test_missing_and_odd_data_does_not_break_the_pages(viewer: Browserless, db: psycopg.Connection):
    now = datetime.now(UTC)
    odd: list[dict[str, Any]] = [
        {},
        {"rssi_dbm": "strong", "noise_dbm": True, "ssid": ["a"], "channel": 1e308},
        {"psutil": "nope", "smc": {"fans_rpm": "fast"}, "battery": [1]},
        {
            "psutil": {
                "memory": {"percent": None},
                "disks": {"/": "full"},
                "temperatures": {"x": [{"current_c": "hot"}]},
            }
        },
        {"top_cpu": [None, 3, {"name": 5, "pid": "x", "cpu_percent": False}], "process_count": "many"},
        {"target": None, "rtt_avg_ms": [], "loss_pct": {}},
        {"download_mbps": "fast", "upload_mbps": -0.0, "status": 7},
    ]
    logs = [
        (now - timedelta(minutes=i + 1), "INFO", kind, "odd", data)
        for i, (kind, data) in enumerate(
            zip(["wifi", "wifi", "health", "health", "processes", "ping", "speedtest"], odd, strict=True)
        )
    ]
    machine = insert_machine(db, logs=logs)
    assert viewer.get("/", params={"q": machine.serial_number}).status_code == 200
    for range_ in ("day", "week"):
        page = viewer.get(f"/machines/{quote(machine.machine_id, safe='')}", params={"range": range_})
        assert page.status_code == 200
        assert page.text.count('<figure class="chart">') == 4


def test_hostile_agent_text_is_escaped_everywhere(viewer: Browserless, db: psycopg.Connection):
    now = datetime.now(UTC)
    machine = insert_machine(
        db,
        hostname=HOSTILE,
        model=HOSTILE,
        os_version=HOSTILE,
        machine_id=f'{unique("evil")}"><script>alert(2)</script>',
        logs=[
            (now - timedelta(minutes=1), "ERROR", "wifi", HOSTILE, wifi_data(ssid=HOSTILE)),
            (
                now - timedelta(minutes=1),
                "INFO",
                "processes",
                "top",
                {"top_cpu": [{"name": HOSTILE, "cpu_percent": 9}]},
            ),
            (now - timedelta(minutes=1), "INFO", "ping", "ping", {"target": HOSTILE, "rtt_avg_ms": 5}),
        ],
    )
    fleet = viewer.get("/", params={"q": machine.serial_number}).text
    detail = viewer.get(f"/machines/{quote(machine.machine_id, safe='')}").text
    for page in (fleet, detail):
        assert "<script>" not in page
        assert ESCAPED in page
    assert detail.count(ESCAPED) >= 6  # hostname, model, OS, SSID, process, ping target, log message


EXTREMES = (10**400, -(10**400), 1e308, -1e308, 2**64, -(2**63), "NaN", "Infinity", "-1e999")
"""Numbers no Mac reports, as a compromised one can send them (the contract refuses NaN and Infinity as
numbers, not as strings, and keeps integers of any length)."""


def _every_number(value: Any, extreme: Any) -> Any:
    """``value`` with every number in it (not the booleans) replaced by ``extreme``."""
    if isinstance(value, dict):
        return {k: _every_number(v, extreme) for k, v in value.items()}
    if isinstance(value, list):
        return [_every_number(v, extreme) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return extreme
    return value


@pytest.mark.parametrize("extreme", EXTREMES, ids=lambda v: repr(v)[:12])
def test_extreme_numbers_in_every_widget_are_shown_as_missing(
    viewer: Browserless, db: psycopg.Connection, extreme: Any
):
    """The fleet page and the machine page answer 200, with a dash where each hostile number was."""
    now = datetime.now(UTC)
    logs = [
        (now - timedelta(minutes=m), level, widget_type, message, _every_number(data, extreme))
        for m in (1, 20, 40)
        for level, widget_type, message, data in (
            ("INFO", "wifi", "wifi", wifi_data()),
            ("INFO", "speedtest", "speed", speed_data()),
            ("INFO", "ping", "ping", ping_data()),
            ("INFO", "health", "health", health_data()),
            ("INFO", "processes", "top", processes_data()),
        )
    ]
    machine = insert_machine(db, logs=logs)
    fleet_page = viewer.get("/", params={"q": machine.serial_number})
    assert fleet_page.status_code == 200, fleet_page.text[-2000:]
    assert rows_of(fleet_page.text) == [machine.machine_id]
    row = fleet_page.text.split(f'data-machine-id="{machine.machine_id}"', 1)[1].split("</tr>", 1)[0]
    for unit in ("dBm", "Mbps"):  # RSSI, download and upload: missing
        assert unit not in row
    for chart_range in ("day", "week"):
        page = viewer.get(f"/machines/{quote(machine.machine_id, safe='')}", params={"range": chart_range})
        assert page.status_code == 200, page.text[-2000:]
        text = page.text
        for cell in ("rssi", "download", "upload", "cpu", "memory"):
            assert re.search(rf'class="{cell}">{render.DASH}<', text), cell
        for shown in ("°C", "rpm", "processes;"):  # temperatures, fans, process count: missing
            assert shown not in text
        assert text.count("No data in this period") == 4  # no chart draws a hostile number


# --- what every page carries -------------------------------------------------------------


def test_the_user_menu_offers_every_export(viewer: Browserless):
    page = viewer.get("/").text
    assert viewer.username in page
    assert 'action="/api/exports/logs"' in page
    for label, widget_type in (
        ("WiFi Logs", "wifi"),
        ("Speedtest Logs", "speedtest"),
        ("Ping Logs", "ping"),
        ("Health Logs", "health"),
        ("Process Logs", "processes"),
    ):
        icon = rf'<svg class="icon icon-{widget_type}"[^>]*>.*?</svg>'
        button = rf'name="widget_type" value="{widget_type}">{icon} {label}</button>'
        assert re.search(button, page), label
    assert "Export All Logs" in page
    assert 'type="datetime-local" name="since"' in page
    assert 'value="csv" checked' in page
    assert 'value="json"' in page
    assert 'action="/logout"' in page


def test_security_headers_on_every_response(viewer: Browserless, browserless: Callable[[], Browserless]):
    anonymous = browserless()
    for client, path, private in (
        (anonymous, "/login", True),
        (viewer, "/", True),
        (viewer, "/account", True),
        (viewer, f"/machines/{unique('x')}", True),
        (anonymous, "/static/dashboard.css", False),
    ):
        answer = client.get(path)
        headers = answer.headers
        csp = headers["content-security-policy"]
        for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"):
            assert directive in csp, (path, directive)
        assert "form-action 'self'" in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "same-origin"
        if private:
            assert headers["cache-control"] == "no-store", path


EXTERNAL = re.compile(r"""(?:https?:)?//[^\s"'<>)]+""", re.IGNORECASE)
ALLOWED_EXTERNAL = ("http://www.w3.org/2000/svg",)  # the SVG namespace name, never fetched


def test_no_page_refers_to_another_origin(admin: Browserless, db: psycopg.Connection):
    machine = insert_machine(db, logs=every_widget_logs(datetime.now(UTC), hours=2))
    pages = {
        path: admin.get(path).text
        for path in (
            "/",
            f"/machines/{quote(machine.machine_id, safe='')}",
            "/admin/users",
            "/admin/tokens",
            "/admin/audit",
            "/account",
            "/static/dashboard.css",
        )
    }
    pages["/login"] = httpx.get(f"{admin.server.url}/login").text
    for path, text in pages.items():
        found = [url for url in EXTERNAL.findall(text) if not url.startswith(ALLOWED_EXTERNAL)]
        assert not found, (path, found)
        assert "@import" not in text
        assert "@font-face" not in text
        for attribute in re.findall(r'(?:src|href|action)="([^"]*)"', text):
            assert attribute.startswith(("/", "#", "data:", "?")), (path, attribute)


# --- pure helpers, with what the agent really sends --------------------------------------

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_extract_reads_the_agents_real_data():
    """The dashboard's readers against ``as_data()`` of the agent's collectors on captured output."""
    from atlas.agent.collectors import health, ping, processes, speedtest, wifi

    reading = health.HealthReading(
        psutil=health.sample_psutil(0.05),
        smc=health.parse_powermetrics_smc((FIXTURES / "health/powermetrics_smc_intel_idle_fan0.txt").read_text()),
        battery=health.parse_ioreg_battery(
            (FIXTURES / "health/ioreg_rn_AppleSmartBattery_grep_capacity_mojave.txt").read_text()
        ),
    ).as_data()
    summary = extract.health_summary(reading)
    assert summary["cpu_percent"] is not None
    assert summary["memory_percent"] == reading["psutil"]["memory"]["percent"]
    assert summary["disks"]
    assert [r.label for r in summary["temperatures"]][:1] == ["CPU die"]
    assert [r.value for r in summary["fans"]] == reading["smc"]["fans_rpm"]
    assert ("Cycles", 200.0) in [(r.label, r.value) for r in summary["battery"]]
    assert extract.health_cpu(reading) == reading["psutil"]["cpu_percent"]

    ok = ping.parse_ping((FIXTURES / "ping/macos_success_c5_macbookpro.txt").read_text(), "1.1.1.1").as_data()
    assert extract.ping_latency(ok) == ok["rtt_avg_ms"]
    assert extract.ping_loss(ok) == 0.0
    lost = ping.parse_ping((FIXTURES / "ping/macos_mojave_100pct_loss_host_unreachable.txt").read_text(), "x").as_data()
    assert extract.ping_loss(lost) == 100.0
    assert extract.ping_latency(lost) is None

    connected = wifi.parse_wdutil_info((FIXTURES / "wifi/wdutil_info_monterey12_5ghz_dfs_trimmed.txt").read_text())
    shown = extract.wifi_summary(connected.as_data())
    assert (shown["ssid"], shown["rssi_dbm"], shown["noise_dbm"], shown["band"]) == ("SomeSSID-5", -61, -96, "5GHz")
    off = wifi.parse_system_profiler_airport(
        (FIXTURES / "wifi/system_profiler_airport_sequoia15.5_wifi_off.json").read_text()
    )
    assert extract.wifi_summary(off.as_data())["state"] == "off"
    assert extract.wifi_rssi(off.as_data()) is None

    result = speedtest.parse_speedtest_cli_simple((FIXTURES / "speedtest/speedtest_cli_simple.txt").read_text())
    assert (extract.speed_down(result.as_data()), extract.speed_up(result.as_data())) == (86.41, 82.64)
    failed = speedtest.parse_speedtest_cli_simple(
        (FIXTURES / "speedtest/speedtest_cli_error_403_forbidden.txt").read_text()
    )
    assert extract.speed_summary(failed.as_data())["status"] == "error"

    ps_output = (FIXTURES / "processes/macos_mojave10.14.6_ps_axu.txt").read_text()
    top = extract.top_processes(processes.collect_ps(run=lambda argv: ps_output, top_n=10).as_data())
    assert len(top) == 5
    assert [p.cpu_percent for p in top] == sorted((p.cpu_percent for p in top), reverse=True)
    assert top[0].name == "com.docker.hyperkit"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3.0),
        (-61.5, -61.5),
        (-100, -100.0),
        (250, 250.0),
        (True, None),
        (False, None),
        ("12", None),
        ("NaN", None),
        (None, None),
        ([], None),
        (float("nan"), None),
        (float("inf"), None),
        (float("-inf"), None),
        (10**400, None),
        (-(10**400), None),
        (1e308, None),
        (-1e308, None),
        (250.0001, None),
        (-101, None),
    ],
)
def test_a_number_is_an_int_or_a_float_within_its_fields_bounds(value: object, expected: float | None):
    assert extract.number(value, "health.battery.temperature_c") == expected


def test_every_bound_formats_charts_and_averages_without_overflow():
    for field, (low, high) in extract.BOUNDS.items():
        assert low < high, field
        for value in (low, high):
            assert render.num(extract.number(value, field), 1) != render.DASH
            assert render.size(extract.number(value, field)) != render.DASH
            assert math.isfinite(float(high) * 1000 - float(low) * 1000), field


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/machines/a?range=week", "/machines/a?range=week"),
        ("/", "/"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("/ok\r\nSet-Cookie: x=1", "/"),
        ("/login?next=/x", "/"),
        ("", "/"),
        (None, "/"),
    ],
)
def test_safe_next_keeps_only_local_paths(target: str | None, expected: str):
    assert security.safe_next(target) == expected


def test_same_origin_and_csrf_comparison():
    assert security.same_origin(None, "127.0.0.1:8770")
    assert security.same_origin("http://127.0.0.1:8770", "127.0.0.1:8770")
    assert security.same_origin("https://Atlas.example", "atlas.example")
    assert not security.same_origin("https://evil.example", "atlas.example")
    assert not security.same_origin("null", "atlas.example")
    assert not security.same_origin("http://atlas.example:8771", "atlas.example:8770")
    assert security.tokens_match("abc", "abc")
    assert not security.tokens_match("abc", "abd")
    assert not security.tokens_match("", "")
    assert not security.tokens_match(None, "abc")


def test_fleet_query_parsing_and_helpers():
    query = fleet.FleetQuery.from_params(
        {"q": "  mac   book ", "sort": "nope", "dir": "up", "status": "x", "page": "0"}
    )
    assert query == fleet.FleetQuery(q="mac book", sort="hostname", descending=False, status="", page=1)
    assert fleet.FleetQuery.from_params({"sort": "last_seen", "dir": "desc", "page": "3"}).url() == (
        "/?sort=last_seen&dir=desc&page=3"
    )
    assert fleet.FleetQuery().sort_url("hostname") == "/?dir=desc"  # the current column flips
    assert fleet.FleetQuery().sort_url("last_seen") == "/?sort=last_seen&dir=desc"  # newest first
    assert fleet.escape_like("100%_a\\b") == "100\\%\\_a\\\\b"
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    online, stale = timedelta(minutes=15), timedelta(days=1)
    assert fleet.status_of(now - timedelta(minutes=15), now, online, stale) == "online"
    assert fleet.status_of(now - timedelta(minutes=16), now, online, stale) == "stale"
    assert fleet.status_of(now - timedelta(days=1, seconds=1), now, online, stale) == "offline"
    assert render.ago(now - timedelta(minutes=5), now) == "5 min ago"
    assert render.ago(now - timedelta(hours=30), now) == "30 h ago"
    assert render.ago(now - timedelta(days=3), now) == "3 days ago"
    assert render.utc(now) == "2026-11-28 12:00 UTC"
    assert levels_from("WARNING") == ("WARNING", "ERROR")
    assert levels_from("") == ("DEBUG", "INFO", "WARNING", "ERROR")


def test_a_nul_byte_is_a_bad_request_not_a_server_error(browserless, make_user, dashboard) -> None:
    """PostgreSQL refuses NUL in text; a URL or form carrying one gets a 400 page, and the server logs no traceback."""
    client = browserless()
    client.login(make_user())
    assert client.get("/machines/%00").status_code == 400
    assert client.get("/", params={"q": "a\x00b"}).status_code == 400
    anonymous = browserless()
    token = anonymous.login_form_token()
    refused = anonymous.post("/login", {"username": "ad\x00min", "password": PASSWORD, "csrf_token": token})
    assert refused.status_code in (400, 401)
    assert client.get("/").status_code == 200  # the same connection goes on working
    assert "Traceback" not in dashboard.logs()


def test_the_fleet_list_shows_which_machines_still_speak_v1(viewer: Browserless, db: psycopg.Connection):
    tag = unique("proto")
    machines = {p: insert_machine(db, hostname=f"{tag}-{p}.local") for p in (1, 2, None)}
    for protocol, machine in machines.items():
        db.execute("UPDATE machines SET protocol = %s WHERE machine_id = %s", (protocol, machine.machine_id))
    page = viewer.get(f"/?q={tag}&sort=protocol")
    assert page.status_code == 200
    cells = dict(re.findall(r'data-machine-id="([^"]+)".*?<td[^>]*class="protocol">(.*?)</td>', page.text, re.DOTALL))
    assert re.sub(r"<[^>]+>", "", cells[machines[1].machine_id]) == "v1"
    assert cells[machines[2].machine_id] == "v2"
    assert cells[machines[None].machine_id] not in ("v1", "v2")
