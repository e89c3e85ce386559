"""The app manager's answers on the bus: what other domains may ask about apps.

The app manager has no process of its own: its routes and these answers run in the front
door's (``web.service`` runs ``AppManagerAnswers`` on its answers loop, beside the HTTP server).

    <prefix>.commands.app-manager (the front door's group "<prefix>.front-door-answers", request/reply)
        ListModelUsers ──▶ ModelUsers: every app with a version whose app.json names the model
                           (the AI manager asks before it deletes one)
        PickAppVersion ──▶ AppVersion: an app's version (or latest) with its zip and manifest;
                           NotFound naming the app or its versions (the scheduler asks)
        FindAppOwners  ──▶ AppOwners: the owner and name of each app asked about that exists
                           (the logger asks whose an app instance's logs are)
"""

from __future__ import annotations

import logging

from app_manager import registry
from app_manager.messages import (
    AppOwner,
    AppOwners,
    AppVersion,
    FindAppOwners,
    ListModelUsers,
    ModelUser,
    ModelUsers,
    PickAppVersion,
)
from platform_core.db import Database
from platform_sdk.artifacts import AppManifest
from platform_sdk.bus import ConsumerLoop
from platform_sdk.envelope import Envelope

log = logging.getLogger(__name__)


def model_users(database: Database, model: str) -> list[ModelUser]:
    """The apps that name ``model`` in any version, with those versions."""
    with database.session() as session:
        return [
            ModelUser(
                app_id=app.app_id,
                app=app.name,
                owner=app.owner,
                versions=[version.version for version in versions],
            )
            for app, versions in registry.apps_using_model(session, model)
        ]


class AppManagerAnswers:
    """Answers the app manager's requests from ``database``; ``add_to(loop)`` registers them."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def add_to(self, loop: ConsumerLoop) -> None:
        loop.add_handler(ListModelUsers, self.on_model_users)
        loop.add_handler(PickAppVersion, self.on_pick_version)
        loop.add_handler(FindAppOwners, self.on_find_owners)

    def on_model_users(self, request: ListModelUsers, _envelope: Envelope) -> ModelUsers:
        users = model_users(self.database, request.model)
        log.info("model %s is used by %d app(s)", request.model, len(users))
        return ModelUsers(model=request.model, apps=users)

    def on_pick_version(self, request: PickAppVersion, _envelope: Envelope) -> AppVersion:
        with self.database.session() as session:
            app = registry.read_app(session, request.app)
            version = registry.pick_version(session, app.app_id, request.version)
            return AppVersion(
                app_id=app.app_id,
                name=app.name,
                version=version.version,
                artifact_key=version.artifact_key,
                sha256=version.sha256,
                manifest=AppManifest.model_validate_json(version.manifest),
                owner=app.owner,
            )

    def on_find_owners(self, request: FindAppOwners, _envelope: Envelope) -> AppOwners:
        with self.database.session() as session:
            rows = registry.apps_by_id(session, request.app_ids)
            return AppOwners(
                apps=[AppOwner(app_id=row.app_id, name=row.name, owner=row.owner) for row in rows]
            )
