"""The CLI's sessions and `aiot user add` against a real front door: several users on one
AIOT_HOME, a login that replaces a session revokes its token, AIOT_TOKEN, and passwords with and
without a terminal.

The front door is the real app (``build_front_door``) served by waitress on a free port over a
migrated registry; ``aiot`` runs as a user runs it, in its own process and session (no
controlling terminal, stdin empty unless a test gives it a pseudo-terminal).
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from platform_core.auth import Role
from platform_core.db import Database, utcnow
from platform_core.http import HttpServer
from platform_sdk.settings import Settings, temporary_settings
from web import identity
from web.app import build_front_door

PASSWORD = "correct horse battery"
ADA_PASSWORD = "analytical engine"
CLI_TIMEOUT_S = 60
PROMPT_TIMEOUT_S = 30


@dataclass
class Terminal:
    """An ``aiot`` process on a pseudo-terminal: what it wrote so far, and what is typed to it."""

    master: int
    process: subprocess.Popen[bytes]
    seen: bytearray = field(default_factory=bytearray)

    def read_until(self, text: bytes) -> None:
        deadline = time.monotonic() + PROMPT_TIMEOUT_S
        while text not in self.seen:
            assert time.monotonic() < deadline, f"no {text!r} on the terminal: {bytes(self.seen)!r}"
            ready, _, _ = select.select([self.master], [], [], deadline - time.monotonic())
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the terminal closed: the process ended
                    chunk = b""
                assert chunk, f"the terminal closed before {text!r}: {bytes(self.seen)!r}"
                self.seen.extend(chunk)

    def answer(self, prompt: bytes, line: str) -> None:
        """Wait for ``prompt``, then type ``line`` and Enter."""
        self.read_until(prompt)
        os.write(self.master, line.encode() + b"\n")

    def wait(self) -> int:
        return self.process.wait(CLI_TIMEOUT_S)


@dataclass
class Door:
    """A served front door and an AIOT_HOME for the CLI that knows only its URL."""

    url: str
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("AIOT_")}
        env.update({"AIOT_HOME": str(self.home), "AIOT_WEB__URL": self.url, **extra})
        return env

    def aiot(
        self, *args: str, env: Mapping[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``aiot ARGS`` run as a user runs it; ``stdin``: what is piped to it (else nothing)."""
        return subprocess.run(
            [sys.executable, "-m", "aiot", *args],
            env=self.env(**(env or {})),
            cwd=self.home,
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
            start_new_session=True,  # no controlling terminal, as in CI or cron
        )

    def ok(
        self, *args: str, env: Mapping[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = self.aiot(*args, env=env, stdin=stdin)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    @contextlib.contextmanager
    def on_terminal(self, *args: str) -> Iterator[Terminal]:
        """``aiot ARGS`` on a pseudo-terminal of its own (killed if still running at the end)."""
        master, replica = pty.openpty()
        process = subprocess.Popen(
            [sys.executable, "-m", "aiot", *args],
            env=self.env(),
            stdin=replica,
            stdout=replica,
            stderr=replica,
            start_new_session=True,
        )
        os.close(replica)
        try:
            yield Terminal(master, process)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            os.close(master)

    def me(self, token: str) -> requests.Response:
        return requests.get(
            f"{self.url}/api/auth/me", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

    def session(self, profile: str | None = None) -> dict[str, Any]:
        """The saved session file of ``profile`` (None: the default one)."""
        path = (
            self.home / "credentials.json" if profile is None else self.home / "profiles" / f"{profile}.json"
        )
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded


def serve(
    settings: Settings,
    url: str,
    tmp_path: Path,
    *,
    overrides: Mapping[str, Any] | None = None,
    clock: identity.Clock = utcnow,
) -> Iterator[Door]:
    """A front door on ``url`` with ``admin`` and ``ada``, with settings ``overrides``, telling
    the time by ``clock``."""
    database = Database(url)
    database.migrate()
    with database.session() as session:
        identity.create_user(session, "admin", PASSWORD, Role.PLATFORM_CONFIGURER)
        identity.create_user(session, "ada", ADA_PASSWORD, Role.AI_DEVELOPER)
    with temporary_settings({"database.url": url, **(overrides or {})}) as current:
        server = HttpServer(build_front_door(current, database, clock=clock), "127.0.0.1", 0)
        server.start()
    home = tmp_path / "cli-home"
    home.mkdir()
    try:
        yield Door(server.url, home)
    finally:
        server.stop()
        database.stop()


@pytest.fixture
def door(settings: Settings, tmp_path: Path) -> Iterator[Door]:
    """A front door on a SQLite registry with ``admin`` (configurer) and ``ada`` (AI developer)."""
    yield from serve(settings, f"sqlite:///{tmp_path / 'registry.db'}", tmp_path)


@pytest.fixture
def any_door(settings: Settings, database_url: str, tmp_path: Path) -> Iterator[Door]:
    """The same on each backend (SQLite, PostgreSQL): for what the server decides."""
    yield from serve(settings, database_url, tmp_path)


def user_names(door: Door, *args: str) -> list[str]:
    listed = door.ok(*args, "user", "list", "--json")
    return [user["username"] for user in json.loads(listed.stdout)]


# --- aiot user add: the password ---------------------------------------------------------------


def test_user_add_without_a_password_or_a_terminal_prints_a_generated_one_once(door: Door) -> None:
    door.ok("login", "--username", "admin", "--password", PASSWORD)  # the older spelling still works

    added = door.ok("user", "add", "grace", "--role", "app_developer")

    generated = added.stdout.strip()
    assert added.stdout == f"{generated}\n"  # alone on stdout, for scripts
    assert len(generated) >= identity.MIN_PASSWORD_LENGTH
    assert "user grace (app_developer) created" in added.stderr
    assert "shown once" in added.stderr
    assert generated not in added.stderr
    reply = requests.post(
        f"{door.url}/api/auth/login", json={"username": "grace", "password": generated}, timeout=10
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["user"]["role"] == "app_developer"

    given = door.ok("user", "add", "linus", "--role", "end_user", "--password", "given password")
    assert given.stdout.strip() == "user linus (end_user) created"  # a given password is never printed
    assert "given password" not in given.stdout + given.stderr


def test_user_add_asks_for_the_password_on_a_terminal(door: Door) -> None:
    door.ok("login", "--username", "admin", "--password", PASSWORD)
    with door.on_terminal("user", "add", "grace", "--role", "end_user") as terminal:
        terminal.answer(b"Password: ", "typed on a tty")
        terminal.answer(b"Repeat for confirmation: ", "typed on a tty")
        terminal.read_until(b"user grace (end_user) created")
        assert terminal.wait() == 0, bytes(terminal.seen)
    assert b"typed on a tty" not in terminal.seen  # hidden input, never echoed or printed
    reply = requests.post(
        f"{door.url}/api/auth/login", json={"username": "grace", "password": "typed on a tty"}, timeout=10
    )
    assert reply.status_code == 200, reply.text


# --- several users on one AIOT_HOME ------------------------------------------------------------


def test_two_users_keep_their_own_sessions_on_one_home(door: Door) -> None:
    door.ok("login", "admin", "--password", PASSWORD)
    admin_token = door.session()["token"]

    second = door.ok("login", "ada", "--password", ADA_PASSWORD)
    assert "logged in as ada (ai_developer)" in second.stdout
    assert "aiot --as ada" in second.stdout  # says how to use it

    assert door.session()["token"] == admin_token  # the admin's session is untouched...
    assert door.me(admin_token).status_code == 200  # ...and still valid
    assert door.session("ada")["username"] == "ada"
    for path in (door.home / "credentials.json", door.home / "profiles" / "ada.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((door.home / "profiles").stat().st_mode) == 0o700

    assert json.loads(door.ok("whoami", "--json").stdout)["user"]["username"] == "admin"
    assert json.loads(door.ok("--as", "ada", "whoami", "--json").stdout)["user"]["username"] == "ada"
    as_env = door.ok("whoami", "--json", env={"AIOT_PROFILE": "ada"})
    assert json.loads(as_env.stdout)["user"]["username"] == "ada"
    # --as also names the user of the default session.
    assert json.loads(door.ok("--as", "admin", "whoami", "--json").stdout)["profile"] == "default"

    assert "admin" in user_names(door)  # the admin still manages users
    refused = door.aiot("--as", "ada", "user", "list")
    assert refused.returncode == 1
    assert "role ai_developer may not call GET /api/users" in refused.stderr

    listed = json.loads(door.ok("profiles", "--json").stdout)
    assert [(row["profile"], row["username"], row["in_use"]) for row in listed] == [
        ("default", "admin", True),
        ("ada", "ada", False),
    ]

    unknown = door.aiot("--as", "nobody", "whoami")
    assert unknown.returncode == 1
    assert "no saved session 'nobody'" in unknown.stderr
    assert "aiot login nobody" in unknown.stderr


def test_a_new_login_revokes_the_token_it_replaces(any_door: Door) -> None:
    door = any_door
    door.ok("login", "admin", "--password", PASSWORD)
    first = door.session()["token"]

    again = door.ok("login", "admin", "--password", PASSWORD)
    assert "replaced the earlier session of admin" in again.stdout
    second = door.session()["token"]
    assert second != first
    assert door.me(first).status_code == 401  # refused by the server, not just forgotten here
    assert door.me(second).status_code == 200

    # A chosen profile that changes hands: the token it held is revoked, the default one is not.
    door.ok("--as", "shared", "login", "admin", "--password", PASSWORD)
    shared_admin = door.session("shared")["token"]
    door.ok("--as", "shared", "login", "ada", "--password", ADA_PASSWORD)
    assert door.session("shared")["username"] == "ada"
    assert door.me(shared_admin).status_code == 401
    assert door.me(door.session("shared")["token"]).status_code == 200
    assert door.me(second).status_code == 200

    # A failed login replaces nothing.
    wrong = door.aiot("login", "admin", "--password", "wrong password")
    assert wrong.returncode == 1
    assert door.session()["token"] == second
    assert door.me(second).status_code == 200


def test_the_login_api_revokes_only_a_token_it_is_given_after_the_password_is_checked(any_door: Door) -> None:
    door = any_door

    def login(password: str, replaces: str | None = None) -> requests.Response:
        body = {"username": "ada", "password": password, "replaces": replaces}
        return requests.post(f"{door.url}/api/auth/login", json=body, timeout=10)

    old = login(ADA_PASSWORD).json()
    assert old["replaced"] is None

    refused = login("wrong password", replaces=old["token"])
    assert refused.status_code == 401
    assert door.me(old["token"]).status_code == 200

    new = login(ADA_PASSWORD, replaces=old["token"]).json()
    assert new["replaced"] == old["token_id"]
    assert door.me(old["token"]).status_code == 401
    assert door.me(new["token"]).status_code == 200

    unknown = login(ADA_PASSWORD, replaces="aiot_not-a-token").json()
    assert unknown["replaced"] is None
    assert door.me(new["token"]).status_code == 200


def test_logout_revokes_the_session_in_use_and_forgets_only_it(door: Door) -> None:
    door.ok("login", "admin", "--password", PASSWORD)
    door.ok("login", "ada", "--password", ADA_PASSWORD)
    admin, ada = door.session()["token"], door.session("ada")["token"]

    logged_out = door.ok("--as", "ada", "logout")
    assert "logged out ada" in logged_out.stdout
    assert door.me(ada).status_code == 401
    assert not (door.home / "profiles" / "ada.json").exists()
    assert door.me(admin).status_code == 200
    assert "admin" in user_names(door)

    assert door.ok("--as", "ada", "logout").stdout.strip() == "not logged in"

    door.ok("logout")
    assert door.me(admin).status_code == 401
    assert not (door.home / "credentials.json").exists()
    after = door.aiot("user", "list")
    assert after.returncode == 1
    assert "not logged in: run `aiot login`" in after.stderr


def test_a_token_in_aiot_token_overrides_the_saved_sessions(door: Door) -> None:
    door.ok("login", "admin", "--password", PASSWORD)
    admin = door.session()["token"]
    issued = requests.post(
        f"{door.url}/api/auth/login", json={"username": "ada", "password": ADA_PASSWORD}, timeout=10
    ).json()
    with_token = {"AIOT_TOKEN": issued["token"]}

    shown = json.loads(door.ok("whoami", "--json", env=with_token).stdout)
    assert (shown["user"]["username"], shown["profile"]) == ("ada", None)
    # AIOT_TOKEN beats AIOT_PROFILE; --as on the command line beats both.
    both = door.ok("whoami", "--json", env={**with_token, "AIOT_PROFILE": "admin"})
    assert json.loads(both.stdout)["user"]["username"] == "ada"
    flag = door.ok("--as", "admin", "whoami", "--json", env=with_token)
    assert json.loads(flag.stdout)["user"]["username"] == "admin"

    # A login while AIOT_TOKEN is set saves the session and says the token still wins.
    noted = door.ok("login", "admin", "--password", PASSWORD, env=with_token)
    assert "AIOT_TOKEN is set" in noted.stdout
    admin = door.session()["token"]

    revoked = door.ok("logout", env=with_token)
    assert "unset AIOT_TOKEN" in revoked.stdout
    assert door.me(issued["token"]).status_code == 401
    assert door.me(admin).status_code == 200  # the saved session is not touched
    assert (door.home / "credentials.json").exists()
