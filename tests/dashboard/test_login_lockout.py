"""Dashboard sign-in limits against a real ``atlas-server dashboard``: per address, and per address and name.

The module's dashboard allows 30 attempts a minute per address (one back every
2 s); after 3 consecutive failures at a name an address waits 1 s before it may
try that name again, then 2 s, then at most 3 s. Each test comes
from addresses of its own through X-Forwarded-For (trusted from 127.0.0.1,
as from the proxy in production), so the tests do not share a budget.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from atlas.dashboard.auth import SESSION_COOKIE_GRACE

from ..fix_dashboard import PASSWORD, Browserless, unique
from ..fix_processes import BIN, ServerProcess, service_env

ATTEMPTS_PER_MINUTE = 30
LOCKOUT_FAILURES = 3
LOCKOUT_SECONDS = 3
SESSION_SECONDS = 120
WRONG = "not-the-password-at-all"


@pytest.fixture(scope="module")
def guarded(start_server: Callable[..., ServerProcess], server_config: dict[str, Any]) -> ServerProcess:
    config = {name: dict(values) for name, values in server_config.items()}
    config["dashboard"] = {
        "login_attempts_per_minute": ATTEMPTS_PER_MINUTE,
        "lockout_failures": LOCKOUT_FAILURES,
        "lockout_seconds": LOCKOUT_SECONDS,
        "session_max_age_seconds": SESSION_SECONDS,
    }
    return start_server("dashboard", config)


@pytest.fixture
def client(guarded: ServerProcess) -> Iterator[Callable[[str], Browserless]]:
    """New clients of the guarded dashboard, each seen at the address given."""
    made: list[Browserless] = []

    def make(address: str) -> Browserless:
        browser = Browserless(guarded)
        browser.client.headers["X-Forwarded-For"] = address
        made.append(browser)
        return browser

    yield make
    for browser in made:
        browser.close()


def new_address() -> str:
    return f"198.18.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"


def attempt(browser: Browserless, username: str, password: str) -> tuple[int, str, str | None]:
    """One sign-in: status, the page's alert text, Retry-After."""
    answer = browser.login(username, password)
    alert = re.search(r'role="alert">([^<]*)<', answer.text)
    return answer.status_code, alert.group(1) if alert else "", answer.headers.get("retry-after")


def run_cli(server: ServerProcess, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "atlas-server", *args, "--config", str(server.config_path)],
        input=stdin,
        capture_output=True,
        text=True,
        env=service_env(),
        timeout=60,
        check=False,
    )


def use_up_budget(browser: Browserless) -> tuple[str, str]:
    """Fail sign-ins from this client's address until a 429; its alert and Retry-After.

    Attempts without a password fail before any password check, so they cost little. One attempt
    comes back every 2 s, so one or two more than the budget may pass while this runs.
    """
    statuses: list[int] = []
    while len(statuses) < ATTEMPTS_PER_MINUTE + 3 and 429 not in statuses:
        status, alert, wait = attempt(browser, unique("nobody"), "")
        statuses.append(status)
    assert statuses[:ATTEMPTS_PER_MINUTE] == [401] * ATTEMPTS_PER_MINUTE
    assert statuses[-1] == 429
    assert wait is not None
    return alert, wait


def test_per_address_limit_answers_429_and_recovers(
    client: Callable[[str], Browserless], make_user: Callable[..., str]
) -> None:
    user, address = make_user(), new_address()
    alert, wait = use_up_budget(client(address))
    assert wait in ("1", "2")
    assert alert == f"Too many sign-in attempts from this address. Please wait {wait} seconds and try again."
    assert attempt(client(new_address()), user, PASSWORD)[0] == 303  # another address is not held back
    time.sleep(int(wait))
    assert attempt(client(address), user, PASSWORD)[0] == 303


def test_successful_sign_ins_do_not_use_up_the_address_budget(
    client: Callable[[str], Browserless], make_user: Callable[..., str]
) -> None:
    user, address = make_user(), new_address()
    _, wait = use_up_budget(client(address))
    time.sleep(int(wait))  # one attempt back, and one more every 2 s: at most 3 in the next 4 s
    answers = [attempt(client(address), user, PASSWORD)[0] for _ in range(6)]
    assert answers == [303] * 6


def test_failures_delay_the_address_not_the_user(
    client: Callable[[str], Browserless], make_user: Callable[..., str], guarded: ServerProcess
) -> None:
    user, address = make_user(), new_address()
    browser = client(address)
    assert [attempt(browser, user, WRONG)[0] for _ in range(LOCKOUT_FAILURES)] == [401] * LOCKOUT_FAILURES
    status, alert, wait = attempt(browser, user, PASSWORD)  # this address waits, the password untried
    assert (status, wait) == (429, "1")
    assert alert.startswith("Too many failed sign-ins for this username from this address. Please wait ")
    assert attempt(client(new_address()), user, PASSWORD)[0] == 303  # the real user elsewhere: at once
    logs = guarded.logs()
    assert f"Dashboard sign-ins for username '{user}' from {address} delayed (1 s, doubling" in logs
    assert WRONG not in logs
    assert PASSWORD not in logs
    time.sleep(int(wait) + 0.2)
    assert attempt(browser, user, PASSWORD)[0] == 303


def test_guesses_from_many_addresses_never_lock_the_user_out(
    client: Callable[[str], Browserless], make_user: Callable[..., str]
) -> None:
    """Five wrong guesses from five addresses, then each of them past the threshold: the user still signs in."""
    user = make_user()
    attackers = [client(new_address()) for _ in range(5)]
    assert [attempt(b, user, WRONG)[0] for b in attackers] == [401] * 5
    assert attempt(client(new_address()), user, PASSWORD)[0] == 303
    for browser in attackers:
        assert [attempt(browser, user, WRONG)[0] for _ in range(LOCKOUT_FAILURES)] == [401] * (LOCKOUT_FAILURES - 1) + [
            429
        ]
    assert attempt(client(new_address()), user, PASSWORD)[0] == 303


def test_the_delay_doubles_up_to_lockout_seconds(
    client: Callable[[str], Browserless], make_user: Callable[..., str]
) -> None:
    user = make_user()
    browser = client(new_address())
    assert [attempt(browser, user, WRONG)[0] for _ in range(LOCKOUT_FAILURES)] == [401] * LOCKOUT_FAILURES
    waits = []
    for _ in range(3):
        status, _, wait = attempt(browser, user, WRONG)
        assert status == 429
        waits.append(wait)
        time.sleep(int(wait) + 0.1)
        assert attempt(browser, user, WRONG)[0] == 401  # tried again after the wait, and failed again
    assert waits == ["1", "2", str(LOCKOUT_SECONDS)]  # 1, 2, then 4 capped at LOCKOUT_SECONDS


def test_parallel_guesses_check_at_most_the_threshold_of_passwords(
    client: Callable[[str], Browserless], make_user: Callable[..., str]
) -> None:
    """Each attempt is counted before its password is checked: 12 wrong guesses at once, from one address,
    get the password tried LOCKOUT_FAILURES times (401) and refused untried (429) the rest."""
    from concurrent.futures import ThreadPoolExecutor

    user, address = make_user(), new_address()
    browsers = [client(address) for _ in range(12)]
    with ThreadPoolExecutor(len(browsers)) as pool:
        statuses = sorted(pool.map(lambda b: b.login(user, WRONG).status_code, browsers))
    assert statuses == [401] * LOCKOUT_FAILURES + [429] * (12 - LOCKOUT_FAILURES)


def test_a_success_resets_the_count(
    client: Callable[[str], Browserless], make_user: Callable[..., str], db: psycopg.Connection
) -> None:
    user, address = make_user(), new_address()
    for _ in range(2):
        browser = client(address)
        assert [attempt(browser, user, WRONG)[0] for _ in range(LOCKOUT_FAILURES - 1)] == [401] * (LOCKOUT_FAILURES - 1)
        row = db.execute("SELECT failures FROM login_failures WHERE username_key = lower(%s)", (user,)).fetchone()
        assert row == (LOCKOUT_FAILURES - 1,)
        assert attempt(browser, user.upper(), PASSWORD)[0] == 303  # names match whatever their case
        row = db.execute("SELECT failures FROM login_failures WHERE username_key = lower(%s)", (user,)).fetchone()
        assert row is None


def test_unknown_usernames_are_answered_exactly_alike(
    client: Callable[[str], Browserless], make_user: Callable[..., str]
) -> None:
    """Failures, the lockout and its answer look the same whether or not the name exists."""
    real, ghost = make_user(), unique("test-viewer")  # the same shape of name; the second was never created
    outcomes = {}
    for name in (real, ghost):
        browser = client(new_address())
        answers = [attempt(browser, name, WRONG) for _ in range(LOCKOUT_FAILURES)]
        answers.append(attempt(browser, name, PASSWORD))
        outcomes[name] = [(status, alert, wait is not None) for status, alert, wait in answers]
    assert outcomes[real] == outcomes[ghost]
    assert [status for status, _, _ in outcomes[real]] == [401, 401, 401, 429]


def test_an_admin_unlocks_with_the_cli(
    client: Callable[[str], Browserless], make_user: Callable[..., str], guarded: ServerProcess
) -> None:
    user = make_user()
    for unlock in (["unlock-user", user], ["create-admin", "--username", user, "--reset-password", "--password-stdin"]):
        browser = client(new_address())
        assert [attempt(browser, user, WRONG)[0] for _ in range(LOCKOUT_FAILURES)] == [401] * LOCKOUT_FAILURES
        assert attempt(browser, user, PASSWORD)[0] == 429
        result = run_cli(guarded, *unlock, stdin=PASSWORD + "\n")
        assert result.returncode == 0, result.stderr
        assert attempt(browser, user, PASSWORD)[0] == 303, unlock  # at once, well before the lockout ends
    result = run_cli(guarded, "unlock-user", user)
    assert result.stdout.strip() == f"'{user}' had no failed sign-ins to forget"


def test_sessions_last_session_max_age_and_expired_ones_are_refused(
    client: Callable[[str], Browserless], make_user: Callable[..., str], db: psycopg.Connection
) -> None:
    user = make_user()
    browser = client(new_address())
    answer = browser.login(user)
    assert answer.status_code == 303
    # the cookie outlives the session a little, so that the login form can say the session expired
    assert f"Max-Age={SESSION_SECONDS + int(SESSION_COOKIE_GRACE.total_seconds())}" in answer.headers["set-cookie"]
    (lifetime,) = db.execute(
        "SELECT extract(epoch FROM s.expires_at - s.created_at) FROM sessions s JOIN users u ON u.id = s.user_id"
        " WHERE u.username = %s",
        (user,),
    ).fetchone()
    assert float(lifetime) == pytest.approx(SESSION_SECONDS, abs=1)
    assert browser.get("/").status_code == 200
    db.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second'"
        " WHERE user_id = (SELECT id FROM users WHERE username = %s)",
        (user,),
    )
    assert browser.get("/").headers["location"] == "/login"
    assert browser.get("/api/exports/logs").status_code == 401  # the export API beside the pages too
