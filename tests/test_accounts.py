"""Accounts as a user meets them over HTTP and through `aiot`: logins throttled per user and per
address (429 with Retry-After), tokens that expire, disabling that revokes for good, changing and
resetting passwords, and platform files that are their owner's alone.

The front door is the real app served by waitress (``tests.test_cli_sessions.serve``); it tells the
time by a ``Clock`` the test moves forward, so expiries and lock-outs are reached without waiting.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from bootstrapper.broker import BrokerProcess
from platform_core.auth import Role
from platform_core.db import Database
from platform_sdk.runstate import RunState, write_run_state
from platform_sdk.settings import AuthSettings, Settings
from tests.test_cli_sessions import ADA_PASSWORD, PASSWORD, Door, serve
from web import identity

NEW_PASSWORD = "difference engine"
WAIT_S = 30


@dataclass
class Clock:
    """The front door's time, moved by the test."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def door_with(settings: Settings, tmp_path: Path, clock: Clock, **overrides: Any) -> Iterator[Door]:
    return serve(
        settings,
        f"sqlite:///{tmp_path / 'registry.db'}",
        tmp_path,
        overrides={f"auth.{key}": value for key, value in overrides.items()},
        clock=clock,
    )


@pytest.fixture
def door(settings: Settings, tmp_path: Path, clock: Clock) -> Iterator[Door]:
    """A front door with the default account settings (admin: configurer; ada: AI developer)."""
    yield from door_with(settings, tmp_path, clock)


def login(door: Door, username: str, password: str) -> requests.Response:
    return requests.post(
        f"{door.url}/api/auth/login", json={"username": username, "password": password}, timeout=10
    )


def token_of(door: Door, username: str, password: str) -> str:
    reply = login(door, username, password)
    assert reply.status_code == 200, reply.text
    token: str = reply.json()["token"]
    return token


def call(door: Door, method: str, path: str, token: str, **kwargs: Any) -> requests.Response:
    return requests.request(
        method, f"{door.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10, **kwargs
    )


def error(reply: requests.Response, status: int) -> str:
    assert reply.status_code == status, reply.text
    message: str = reply.json()["error"]["message"]
    return message


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- (f) logins are throttled ----------------------------------------------------------------------


def test_wrong_passwords_lock_the_username_out_with_429_and_retry_after(door: Door, clock: Clock) -> None:
    defaults = AuthSettings()
    for _ in range(defaults.login_attempts):
        error(login(door, "ada", "wrong password"), 401)

    # Locked: even the right password is refused, before it is checked, saying when to come back.
    locked = login(door, "ada", ADA_PASSWORD)
    lockout = int(defaults.login_lockout_s)
    assert error(locked, 429).startswith(f"too many failed logins for user 'ada': try again in {lockout} s")
    assert locked.headers["Retry-After"] == str(lockout)
    assert locked.json()["error"]["details"] == {"retry_after_s": lockout}

    # The lock is the user's: another user logs in from the same address.
    assert token_of(door, "admin", PASSWORD)

    # The CLI says the same.
    refused = door.aiot("login", "ada", "--password", ADA_PASSWORD)
    assert refused.returncode == 1
    assert "too many failed logins for user 'ada'" in refused.stderr

    clock.advance(defaults.login_lockout_s - 10)
    assert login(door, "ada", ADA_PASSWORD).headers["Retry-After"] == "10"
    clock.advance(10)
    assert token_of(door, "ada", ADA_PASSWORD)  # the lock-out is over


def test_a_successful_login_resets_the_users_count_and_old_failures_leave_the_window(
    settings: Settings, tmp_path: Path, clock: Clock
) -> None:
    for door in door_with(settings, tmp_path, clock, login_attempts=3, login_window_s=60):
        for _ in range(2):
            error(login(door, "ada", "wrong password"), 401)
        assert token_of(door, "ada", ADA_PASSWORD)  # resets ada's count
        for _ in range(2):
            error(login(door, "ada", "wrong password"), 401)
        clock.advance(61)  # those two fall out of the window
        for _ in range(2):
            error(login(door, "ada", "wrong password"), 401)
        assert token_of(door, "ada", ADA_PASSWORD)
        for _ in range(3):
            error(login(door, "ada", "wrong password"), 401)
        error(login(door, "ada", ADA_PASSWORD), 429)


def test_failures_from_one_address_lock_the_address_whatever_names_it_tries(
    settings: Settings, tmp_path: Path, clock: Clock
) -> None:
    for door in door_with(
        settings, tmp_path, clock, login_attempts=100, login_address_attempts=4, login_lockout_s=60
    ):
        assert token_of(door, "admin", PASSWORD)  # a success of one's own does not wash the count
        for name in ("nobody", "ada", "ghost", "admin"):
            error(login(door, name, "wrong password"), 401)

        refused = login(door, "admin", PASSWORD)
        assert error(refused, 429).startswith("too many failed logins for this address: try again in 60 s")
        assert refused.headers["Retry-After"] == "60"

        clock.advance(60)
        assert token_of(door, "admin", PASSWORD)


def test_wrong_passwords_sent_at_once_get_no_more_tries_than_the_limit(door: Door) -> None:
    attempts = AuthSettings().login_attempts
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda _: login(door, "ada", "wrong password"), range(4 * attempts)))
    statuses = sorted(reply.status_code for reply in replies)
    assert statuses == [401] * attempts + [429] * (3 * attempts)


def test_the_throttle_forgets_the_least_recently_failing_keys_beyond_its_bound(clock: Clock) -> None:
    settings = AuthSettings(login_tracked=100, login_attempts=2, login_address_attempts=1000)
    throttle = identity.LoginThrottle(settings, clock)
    throttle.attempt("ada", "10.0.0.1")
    throttle.attempt("ada", "10.0.0.1")
    with pytest.raises(identity.LoginThrottled):
        throttle.attempt("ada", "10.0.0.1")

    for number in range(1000):  # a flood of names from many addresses
        throttle.attempt(f"user{number}", f"10.1.{number // 256}.{number % 256}")
        assert len(throttle) <= settings.login_tracked

    # Windows and lock-outs that are over are dropped before anything else.
    clock.advance(settings.login_window_s + settings.login_lockout_s)
    throttle.attempt("grace", "10.0.0.2")
    assert len(throttle) == 2


# --- (g) tokens expire; re-enabling revives nothing ------------------------------------------------


def test_a_login_token_expires_after_its_lifetime_with_a_401_that_says_so(
    settings: Settings, tmp_path: Path, clock: Clock
) -> None:
    for door in door_with(settings, tmp_path, clock, token_lifetime_s=3600):
        door.ok("login", "ada", "--password", ADA_PASSWORD)
        token = door.session()["token"]
        reply = login(door, "ada", ADA_PASSWORD).json()
        expected = clock.now + timedelta(seconds=3600)
        assert datetime.fromisoformat(reply["expires_at"]) == expected
        assert door.ok("whoami").stdout.startswith("ada (ai_developer)")

        clock.advance(3599)
        assert door.me(token).status_code == 200
        clock.advance(1)
        message = error(door.me(token), 401)
        assert message.startswith(f"token expired at {expected.isoformat(timespec='seconds')}")
        assert "log in again with `aiot login`" in message

        expired = door.aiot("whoami")
        assert expired.returncode == 1
        assert "token expired at" in expired.stderr
        assert "aiot login" in expired.stderr

        door.ok("login", "ada", "--password", ADA_PASSWORD)  # a new login: a new lifetime
        assert door.ok("whoami").stdout.startswith("ada (ai_developer)")


def test_named_tokens_expire_when_asked_and_never_later_than_the_cap(
    settings: Settings, tmp_path: Path, clock: Clock
) -> None:
    for door in door_with(
        settings, tmp_path, clock, api_token_lifetime_s=86_400, api_token_max_lifetime_s=7 * 86_400
    ):
        session = token_of(door, "ada", ADA_PASSWORD)

        short = call(door, "POST", "/api/auth/tokens", session, json={"name": "ci", "expires_in_s": 60})
        assert short.status_code == 201, short.text
        assert datetime.fromisoformat(short.json()["expires_at"]) == clock.now + timedelta(seconds=60)
        default = call(door, "POST", "/api/auth/tokens", session, json={"name": "cron"}).json()
        assert datetime.fromisoformat(default["expires_at"]) == clock.now + timedelta(days=1)

        too_long = call(
            door, "POST", "/api/auth/tokens", session, json={"name": "forever", "expires_in_s": 8 * 86_400}
        )
        message = error(too_long, 422)
        assert "longer than the longest lifetime allowed, 604800 s" in message
        assert "auth.api_token_max_lifetime_s" in message
        for bad in (0, -5, "soon"):
            error(
                call(door, "POST", "/api/auth/tokens", session, json={"name": "x", "expires_in_s": bad}), 422
            )

        listed = call(door, "GET", "/api/auth/tokens", session).json()["tokens"]
        assert [token["name"] for token in listed] == ["login", "ci", "cron"]
        assert listed[1]["expires_at"] == short.json()["expires_at"]

        clock.advance(61)
        assert "token expired at" in error(door.me(short.json()["token"]), 401)
        assert door.me(default["token"]).status_code == 200


def test_enabling_a_disabled_user_again_revives_none_of_their_tokens(door: Door) -> None:
    door.ok("login", "admin", "--password", PASSWORD)
    door.ok("login", "ada", "--password", ADA_PASSWORD)
    script = call(door, "POST", "/api/auth/tokens", door.session("ada")["token"], json={"name": "ci"})
    script_token = script.json()["token"]

    assert "user ada disabled" in door.ok("user", "disable", "ada").stdout
    assert door.aiot("--as", "ada", "whoami").returncode == 1
    door.ok("user", "enable", "ada")

    for token in (door.session("ada")["token"], script_token):
        assert door.me(token).status_code == 401
    again = door.aiot("--as", "ada", "whoami")
    assert again.returncode == 1
    assert "log in again" in again.stderr
    door.ok("login", "ada", "--password", ADA_PASSWORD)
    assert door.ok("--as", "ada", "whoami").stdout.startswith("ada (ai_developer)")


def test_the_upgrade_gives_existing_tokens_an_expiry_and_revokes_disabled_users_tokens(
    database_url: str,
) -> None:
    database = Database(database_url)
    try:
        database.migrate("0005_apps")
        now = datetime.now(UTC)
        with database.engine.begin() as connection:
            for user_id, name, disabled in ((1, "alice", False), (2, "bob", True)):
                connection.execute(
                    sa.text(
                        "INSERT INTO users (id, username, role, password_hash, disabled, created_at) "
                        "VALUES (:id, :name, 'end_user', 'x', :disabled, :now)"
                    ),
                    {"id": user_id, "name": name, "disabled": disabled, "now": now},
                )
                connection.execute(
                    sa.text(
                        "INSERT INTO api_tokens (user_id, name, token_hash, created_at) "
                        "VALUES (:id, 'old', :hash, :now)"
                    ),
                    {"id": user_id, "hash": f"hash-of-{name}", "now": now},
                )
        database.migrate()

        with database.session() as session:
            tokens = {token.user_id: token for token in session.scalars(sa.select(identity.ApiToken))}
        assert tokens[1].revoked_at is None
        assert timedelta(days=29) < tokens[1].expires_at - now <= timedelta(days=30, minutes=5)
        assert tokens[2].revoked_at is not None  # bob's stays dead when he is enabled again
    finally:
        database.stop()


# --- (h) passwords: change your own, reset another's ------------------------------------------------


def test_a_user_changes_their_own_password_and_their_other_sessions_end(door: Door) -> None:
    door.ok("login", "ada", "--password", ADA_PASSWORD)
    elsewhere = token_of(door, "ada", ADA_PASSWORD)

    wrong = door.aiot("password", stdin=f"not my password\n{NEW_PASSWORD}\n")
    assert wrong.returncode == 1
    assert "the current password is wrong" in wrong.stderr
    same = door.aiot("password", stdin=f"{ADA_PASSWORD}\n{ADA_PASSWORD}\n")
    assert "the new password is the current one" in same.stderr
    short = door.aiot("password", stdin=f"{ADA_PASSWORD}\nshort\n")
    assert "password is too short" in short.stderr
    missing = door.aiot("password", stdin=f"{ADA_PASSWORD}\n")
    assert "no new password: pipe the current and the new password on stdin" in missing.stderr

    changed = door.ok("password", stdin=f"{ADA_PASSWORD}\n{NEW_PASSWORD}\n")
    assert "password changed; 1 token of your other sessions revoked" in changed.stdout
    assert NEW_PASSWORD not in changed.stdout + changed.stderr

    assert door.ok("whoami").stdout.startswith("ada (ai_developer)")  # this session stays
    assert door.me(elsewhere).status_code == 401
    error(login(door, "ada", ADA_PASSWORD), 401)
    assert token_of(door, "ada", NEW_PASSWORD)


def test_aiot_password_asks_on_a_terminal_and_never_shows_what_is_typed(door: Door) -> None:
    door.ok("login", "ada", "--password", ADA_PASSWORD)
    with door.on_terminal("password") as terminal:
        terminal.answer(b"Current password: ", ADA_PASSWORD)
        terminal.answer(b"New password: ", NEW_PASSWORD)
        terminal.answer(b"Repeat for confirmation: ", NEW_PASSWORD)
        terminal.read_until(b"password changed")
        assert terminal.wait() == 0, bytes(terminal.seen)
    assert ADA_PASSWORD.encode() not in terminal.seen
    assert NEW_PASSWORD.encode() not in terminal.seen
    assert token_of(door, "ada", NEW_PASSWORD)


def test_a_configurer_resets_a_users_password_and_every_token_of_theirs_is_revoked(door: Door) -> None:
    door.ok("login", "admin", "--password", PASSWORD)
    door.ok("login", "ada", "--password", ADA_PASSWORD)
    ada_tokens = [door.session("ada")["token"], token_of(door, "ada", ADA_PASSWORD)]

    refused = door.aiot("--as", "ada", "user", "reset-password", "admin", "--password", NEW_PASSWORD)
    assert "role ai_developer may not call POST /api/users/admin/password" in refused.stderr
    itself = door.aiot("user", "reset-password", "admin", "--password", NEW_PASSWORD)
    assert "change yours with POST /api/auth/password (`aiot password`)" in itself.stderr
    ghost = door.aiot("user", "reset-password", "ghost", "--password", NEW_PASSWORD)
    assert "no user named 'ghost'" in ghost.stderr

    reset = door.ok("user", "reset-password", "ada")  # no terminal: generated, printed once
    generated = reset.stdout.strip()
    assert reset.stdout == f"{generated}\n"
    assert "password of ada reset; 2 tokens of theirs revoked" in reset.stderr
    assert "shown once" in reset.stderr
    for token in ada_tokens:
        assert door.me(token).status_code == 401
    error(login(door, "ada", ADA_PASSWORD), 401)
    assert token_of(door, "ada", generated)

    given = door.ok("user", "reset-password", "ada", "--password", NEW_PASSWORD)
    assert given.stdout.strip() == "password of ada reset; 1 token of theirs revoked"
    assert token_of(door, "ada", NEW_PASSWORD)
    assert door.ok("whoami").stdout.startswith("admin")  # the configurer's own session is untouched


# --- (k) platform files are private --------------------------------------------------------------


def test_the_registry_database_and_its_wal_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "new-home" / "registry.db"
    database = Database(f"sqlite:///{path}")
    try:
        database.migrate()
        with database.session() as session:
            identity.create_user(session, "alice", PASSWORD, Role.END_USER)
        assert mode(path.parent) == 0o700
        for name in ("registry.db", "registry.db-wal", "registry.db-shm"):
            assert mode(path.parent / name) == 0o600, name
    finally:
        database.stop()

    # A database an older platform left open to others is narrowed when it is opened.
    for name in ("registry.db", "registry.db-wal", "registry.db-shm"):
        if (path.parent / name).exists():
            os.chmod(path.parent / name, 0o644)
    reopened = Database(f"sqlite:///{path}")
    try:
        for name in ("registry.db", "registry.db-wal", "registry.db-shm"):
            if (path.parent / name).exists():
                assert mode(path.parent / name) == 0o600, name
    finally:
        reopened.stop()


def test_the_cli_keeps_aiot_home_and_its_sessions_private(door: Door) -> None:
    os.chmod(door.home, 0o755)
    door.ok("login", "admin", "--password", PASSWORD)
    door.ok("login", "ada", "--password", ADA_PASSWORD)
    assert mode(door.home) == 0o700
    assert mode(door.home / "credentials.json") == 0o600
    assert mode(door.home / "profiles") == 0o700
    assert mode(door.home / "profiles" / "ada.json") == 0o600


def test_the_run_state_of_a_new_home_is_private(settings: Settings, aiot_home: Path) -> None:
    aiot_home.rmdir()
    write_run_state(settings, RunState())
    assert mode(aiot_home) == 0o700
    assert mode(aiot_home / "run") == 0o700
    assert mode(aiot_home / "run" / "state.json") == 0o600


class _UmaskReporter(BrokerProcess):
    """A stand-in for a broker that writes its umask to its log file and exits."""

    def __init__(self, log_file: Path) -> None:
        self.log_file = log_file

    def command(self) -> list[str]:
        return [sys.executable, "-c", "import os; print(oct(os.umask(0o022)), flush=True)"]


def test_processes_the_platform_starts_create_private_files(tmp_path: Path) -> None:
    process = _UmaskReporter(tmp_path / "out.log")
    process.launch()
    deadline = time.monotonic() + WAIT_S
    while process.running():
        assert time.monotonic() < deadline, "the process did not end"
        time.sleep(0.05)
    assert (tmp_path / "out.log").read_text().strip() == "0o77"
