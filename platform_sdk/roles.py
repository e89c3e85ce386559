"""The four kinds of platform user; the front door's role rules and every client share these names."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """What a user may do on the platform."""

    AI_DEVELOPER = "ai_developer"
    APP_DEVELOPER = "app_developer"
    PLATFORM_CONFIGURER = "platform_configurer"
    END_USER = "end_user"
