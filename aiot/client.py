"""HTTP client of the front door, and the sessions the CLI saves for it.

A session is a front door URL, a username and an API token, in a file readable
by the owner only (0600, in AIOT_HOME and ``profiles`` kept 0700). One AIOT_HOME
holds several, so several users share a machine: the default session in
``AIOT_HOME/credentials.json`` (``aiot up`` logs the first configurer in there), any
other in ``AIOT_HOME/profiles/<profile>.json``. A login goes to the profile chosen with
``aiot --as NAME`` or ``AIOT_PROFILE``; without one, to the default session when
it is free or already that user's, else to a profile named after the user. A
login that takes a saved session's place asks the front door to revoke its token.

Which credentials a command uses: the profile ``aiot --as NAME`` names (or the
default session when ``NAME`` is its user), else the API token in
``AIOT_TOKEN``, else the profile in ``AIOT_PROFILE``, else the default session.
Error replies come back as the typed ``PlatformError`` subclasses their status names.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from pydantic import BaseModel, ValidationError

from platform_sdk.errors import BadRequest, Unauthorized, Unavailable, error_from_status
from platform_sdk.runstate import PRIVATE_FILE_MODE, private_dir, web_url
from platform_sdk.settings import Settings

CREDENTIALS_FILE = "credentials.json"
PROFILES_DIR = "profiles"
DEFAULT_PROFILE = "default"
TOKEN_ENV = "AIOT_TOKEN"
PROFILE_ENV = "AIOT_PROFILE"
PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Credentials(BaseModel):
    url: str
    username: str
    token: str


def check_profile_name(name: str) -> str:
    if not PROFILE_NAME.match(name):
        raise BadRequest(
            f"profile name {name!r} is invalid: use up to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def credentials_path(settings: Settings, profile: str = DEFAULT_PROFILE) -> Path:
    if profile == DEFAULT_PROFILE:
        return settings.home_dir / CREDENTIALS_FILE
    return settings.home_dir / PROFILES_DIR / f"{check_profile_name(profile)}.json"


def save_credentials(settings: Settings, credentials: Credentials, profile: str = DEFAULT_PROFILE) -> None:
    path = credentials_path(settings, profile)
    private_dir(settings.home_dir)
    private_dir(path.parent)
    # Written beside and renamed into place: never half a file, and the owner's alone from the start.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(credentials.model_dump(), handle)
    os.replace(temporary, path)


def load_credentials(settings: Settings, profile: str = DEFAULT_PROFILE) -> Credentials | None:
    path = credentials_path(settings, profile)
    try:
        return Credentials.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValidationError:
        raise BadRequest(f"{path} is not a saved session: delete it and log in again") from None


def forget_credentials(settings: Settings, profile: str = DEFAULT_PROFILE) -> None:
    credentials_path(settings, profile).unlink(missing_ok=True)


def saved_sessions(settings: Settings) -> dict[str, Credentials]:
    """Every saved session by profile: the default one first, then the others by name."""
    sessions: dict[str, Credentials] = {}
    default = load_credentials(settings)
    if default is not None:
        sessions[DEFAULT_PROFILE] = default
    folder = settings.home_dir / PROFILES_DIR
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if path.stem != DEFAULT_PROFILE and PROFILE_NAME.match(path.stem):
            found = load_credentials(settings, path.stem)
            if found is not None:
                sessions[path.stem] = found
    return sessions


@dataclass
class _Choice:
    profile: str | None = None


_choice = _Choice()


def choose_profile(name: str | None) -> None:
    """The profile ``aiot --as NAME`` names for this command (None: no ``--as``)."""
    _choice.profile = check_profile_name(name) if name else None


def chosen_profile() -> str | None:
    """``--as``, else ``AIOT_PROFILE``, else None."""
    return _choice.profile or os.environ.get(PROFILE_ENV, "").strip() or None


def resolve_profile(settings: Settings, name: str, username: str | None = None) -> str:
    """The profile ``name`` means: a saved profile of that name, else the default session when it is
    the session of user ``name`` (and of ``username``, when given), else a profile ``name`` to be."""
    check_profile_name(name)
    if name == DEFAULT_PROFILE or credentials_path(settings, name).exists():
        return name
    default = load_credentials(settings)
    if default is not None and default.username == name and username in (None, name):
        return DEFAULT_PROFILE
    return name


def login_profile(settings: Settings, username: str) -> str:
    """Where a login of ``username`` is saved (see the module docstring)."""
    chosen = chosen_profile()
    if chosen:
        return resolve_profile(settings, chosen, username)
    default = load_credentials(settings)
    if default is None or default.username == username:
        return DEFAULT_PROFILE
    return resolve_profile(settings, username)


@dataclass(frozen=True)
class Caller:
    """Whom a command acts as: a saved session (its ``profile``), or the token in AIOT_TOKEN."""

    token: str
    profile: str | None
    saved: Credentials | None

    def describe(self) -> str:
        if self.profile is None:
            return TOKEN_ENV
        if self.profile == DEFAULT_PROFILE:
            return "the default session"
        return f"profile '{self.profile}'"


def current_caller(settings: Settings) -> Caller:
    """The credentials this command uses (see the module docstring); ``Unauthorized`` if none."""
    env_token = os.environ.get(TOKEN_ENV, "").strip()
    if _choice.profile is None and env_token:
        return Caller(env_token, None, None)
    name = chosen_profile()
    if name is None:
        default = load_credentials(settings)
        if default is not None:
            return Caller(default.token, DEFAULT_PROFILE, default)
        others = ", ".join(saved_sessions(settings))
        hint = f", or use a saved session with `aiot --as NAME` ({others})" if others else ""
        raise Unauthorized(f"not logged in: run `aiot login`{hint}")
    profile = resolve_profile(settings, name)
    saved = load_credentials(settings, profile)
    if saved is None:
        known = ", ".join(saved_sessions(settings)) or "none"
        raise Unauthorized(
            f"no saved session {name!r} in {settings.home_dir} (saved: {known}): "
            f"log in with `aiot login {name}` or `aiot --as {name} login USER`"
        )
    return Caller(saved.token, profile, saved)


def front_door_url(settings: Settings, saved: Credentials | None = None) -> str:
    """The configured or running front door's URL, else the one ``saved`` was made with."""
    url = web_url(settings) or (saved.url if saved is not None else None)
    if url is None:
        raise Unavailable(
            f"no platform front door known for {settings.home_dir}: start one with `aiot up` "
            "or set AIOT_WEB__URL"
        )
    return url


class PlatformClient:
    """Calls the front door; ``token`` None means anonymous (login, health)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.caller: Caller | None = None
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def from_settings(cls, settings: Settings, *, authenticated: bool = True) -> PlatformClient:
        """A client of this AIOT_HOME's front door, as the caller this command uses (``caller``)."""
        if not authenticated:
            return cls(front_door_url(settings, load_credentials(settings)))
        try:
            caller = current_caller(settings)
        except Unauthorized:
            front_door_url(settings)  # no front door known at all is said first
            raise
        client = cls(front_door_url(settings, caller.saved), caller.token)
        client.caller = caller
        return client

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.session.request(method, f"{self.url}{path}", timeout=self.timeout, **kwargs)
        except requests.ConnectionError as exc:
            raise Unavailable(
                f"the front door at {self.url} does not answer; is the platform up? (`aiot status`)"
            ) from exc
        except requests.Timeout as exc:
            raise Unavailable(
                f"the front door at {self.url} did not answer within {self.timeout:g}s"
            ) from exc
        if response.ok:
            return response.json()
        try:
            error = response.json()["error"]
            message, details = error["message"], error.get("details")
        except (ValueError, KeyError, TypeError):
            message, details = response.text[:200] or response.reason, None
        raise error_from_status(response.status_code, message, details)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)
