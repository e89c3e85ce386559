"""HTTP client of the front door, with the caller's saved credentials.

Credentials (front door URL, username, API token) are kept in
``AIOT_HOME/credentials.json``, readable by the owner only. Error replies come
back as the typed ``PlatformError`` subclasses their status names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import requests
from pydantic import BaseModel

from platform_sdk.errors import Unauthorized, Unavailable, error_from_status
from platform_sdk.runstate import web_url
from platform_sdk.settings import Settings

CREDENTIALS_FILE = "credentials.json"


class Credentials(BaseModel):
    url: str
    username: str
    token: str


def credentials_path(settings: Settings) -> Path:
    return settings.home_dir / CREDENTIALS_FILE


def save_credentials(settings: Settings, credentials: Credentials) -> None:
    path = credentials_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(credentials.model_dump(), handle)


def load_credentials(settings: Settings) -> Credentials | None:
    try:
        return Credentials.model_validate_json(credentials_path(settings).read_bytes())
    except FileNotFoundError:
        return None


def forget_credentials(settings: Settings) -> None:
    credentials_path(settings).unlink(missing_ok=True)


class PlatformClient:
    """Calls the front door; ``token`` None means anonymous (login, health)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def from_settings(cls, settings: Settings, *, authenticated: bool = True) -> PlatformClient:
        url = web_url(settings)
        saved = load_credentials(settings)
        if url is None and saved is not None:
            url = saved.url
        if url is None:
            raise Unavailable(
                f"no platform front door known for {settings.home_dir}: start one with `aiot up` "
                "or set AIOT_WEB__URL"
            )
        if not authenticated:
            return cls(url)
        if saved is None:
            raise Unauthorized("not logged in: run `aiot login`")
        return cls(url, saved.token)

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
