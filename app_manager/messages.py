"""What the app manager is asked and answers (``<prefix>.commands.app-manager``, request/reply).

The AI manager asks ``ListModelUsers`` before it deletes a model: the apps are the app
manager's, so it is the one to say which of them name the model (``app_manager.answers``).
The scheduler asks ``PickAppVersion`` for the app and version a schedule names, when it is
created (the front door) and when a run starts (the scheduler service). The logger asks
``FindAppOwners`` whose the apps behind app instances' logs are.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from platform_sdk.artifacts import AppManifest
from platform_sdk.envelope import Message
from platform_sdk.topics import Topics


def app_manager_topic(topics: Topics) -> str:
    """Requests to the app manager (answered by the front door's process, which hosts it)."""
    return topics.commands("app-manager")


class ListModelUsers(Message):
    """Which apps use model ``model`` (its name, as ``app.json`` names it), in any of their versions?"""

    message_type = "app-manager.list-model-users"
    model: str


class ModelUser(BaseModel):
    """An app with the versions whose ``app.json`` names the model (each would fail to start without it)."""

    app_id: str
    app: str
    owner: str
    versions: list[str] = Field(description="The app's versions that use the model, oldest upload first.")


class ModelUsers(Message):
    message_type = "app-manager.model-users"
    model: str
    apps: list[ModelUser] = Field(default_factory=list)


class PickAppVersion(Message):
    """App ``app`` (by id or name) at ``version``, or at its latest when None (request/reply).

    Answered with ``NotFound`` naming the app, or the versions it has.
    """

    message_type = "app-manager.pick-version"
    app: str
    version: str | None = None


class AppVersion(Message):
    """One stored version of an app: what starting it needs."""

    message_type = "app-manager.app-version"
    app_id: str
    name: str
    version: str
    artifact_key: str
    sha256: str
    manifest: AppManifest
    owner: str = Field(default="", description="Who uploaded the app (its owner).")


class FindAppOwners(Message):
    """Who owns each of these apps (by app id)?"""

    message_type = "app-manager.find-app-owners"
    app_ids: list[str]


class AppOwner(BaseModel):
    app_id: str
    name: str
    owner: str


class AppOwners(Message):
    message_type = "app-manager.app-owners"
    apps: list[AppOwner] = Field(default_factory=list, description="The apps known; unknown ids left out.")
