"""The service roster: which platform services run, read from ``configs/roster.toml``.

The node manager places every service it lists; the provider that brings a platform up (the
bootstrapper's ``local`` one) waits for a heartbeat from each. Both read it here.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from platform_core.nodes import ServiceSpec
from platform_sdk.errors import ValidationFailed
from platform_sdk.settings import Settings

DEFAULT_ROSTER = Path(__file__).resolve().parents[1] / "configs" / "roster.toml"


class Roster(BaseModel):
    service: list[ServiceSpec] = Field(default_factory=list)


def load_roster(settings: Settings) -> list[ServiceSpec]:
    path = settings.node_manager.roster_file or DEFAULT_ROSTER
    try:
        roster = Roster.model_validate(tomllib.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise ValidationFailed(
            f"service roster {path} does not exist (AIOT_NODE_MANAGER__ROSTER_FILE)"
        ) from exc
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ValidationFailed(f"service roster {path} is invalid: {exc}") from exc
    ids = [spec.service_id for spec in roster.service]
    duplicates = sorted({service_id for service_id in ids if ids.count(service_id) > 1})
    if duplicates:
        raise ValidationFailed(f"service roster {path} lists {', '.join(duplicates)} more than once")
    return roster.service


def roster_modules(settings: Settings) -> set[str]:
    """The modules the roster runs (agents allow them beside ``agent.allowed_modules``); none
    when the roster cannot be read here."""
    try:
        return {spec.module for spec in load_roster(settings) if spec.module}
    except ValidationFailed:
        return set()
