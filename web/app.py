"""Assembly of the front door: which blueprints it mounts (the ``/api`` ones and the portal's pages)
and what they may use."""

from __future__ import annotations

import flask

from ai_manager.api import blueprint as models_blueprint
from app_manager.api import blueprint as apps_blueprint
from device_manager.api import blueprint as devices_blueprint
from logger.api import blueprint as logs_blueprint
from node_manager.api import blueprint as nodes_blueprint
from platform_core.blobstore import blob_store_from_settings
from platform_core.db import Database, utcnow
from platform_core.http import Resources, create_app
from platform_core.openapi import blueprint as openapi_blueprint
from platform_sdk.bus import Requester
from platform_sdk.settings import Settings
from scheduler.api import blueprint as schedules_blueprint
from web.identity import Accounts, Clock
from web.identity_api import blueprint as identity_blueprint
from web.identity_api import install_accounts
from web.portal import blueprint as portal_blueprint

BLUEPRINTS = (
    identity_blueprint,
    logs_blueprint,
    models_blueprint,
    devices_blueprint,
    apps_blueprint,
    schedules_blueprint,
    nodes_blueprint,
    openapi_blueprint,
    portal_blueprint,
)


def build_front_door(
    settings: Settings,
    database: Database | None = None,
    requester: Requester | None = None,
    *,
    clock: Clock = utcnow,
) -> flask.Flask:
    """The front door app for ``settings``; the caller owns the ``database`` and ``requester`` it passes.

    Without a ``requester`` (no Kafka) the routes that talk to other services answer 503. Its
    accounts (login throttle, token expiry) tell the time with ``clock``.
    """
    database = database or Database.from_settings(settings)
    resources = Resources(
        settings=settings, database=database, blobs=blob_store_from_settings(settings), requester=requester
    )
    accounts = Accounts(database, settings.auth, clock)
    app = create_app("aiot-front-door", BLUEPRINTS, accounts.authenticate, resources)
    install_accounts(app, accounts)
    return app
