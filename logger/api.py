"""``GET /api/logs``: query collected logs by service, level, time range and text (front door).

Each caller reads only the logs the rule of ``logger.scope`` gives them: a service they may not
read is a 403 naming it and why; a query across services, and the list of services, leave out
what they may not read. The app holds the ``LogReaders`` that applies it (made at the first read,
keeping owners' answers ``web.log_owners_ttl_s``), so the answers it keeps live and die with the app.
"""

from __future__ import annotations

import flask
from pydantic import BaseModel

from logger.scope import LogReaders
from logger.store import LogQuery, LogStore
from platform_core.auth import Role, allow, current_principal
from platform_core.http import app_extension, query_as, resources, shapes
from platform_sdk.messages import LogRecord

blueprint = flask.Blueprint("logs", __name__, url_prefix="/api/logs")
READERS = (Role.PLATFORM_CONFIGURER, Role.AI_DEVELOPER, Role.APP_DEVELOPER, Role.END_USER)
_READERS_KEY = "aiot.log-readers"


class LogRecords(BaseModel):
    """``GET /api/logs``: oldest first."""

    records: list[LogRecord]


class ServiceIds(BaseModel):
    """``GET /api/logs/services``."""

    services: list[str]


def _readers() -> LogReaders:
    """The app's one ``LogReaders``, made at its first read with the front door's settings."""
    return app_extension(
        flask.current_app, _READERS_KEY, lambda: LogReaders(ttl_s=resources().settings.web.log_owners_ttl_s)
    )


def _store() -> LogStore:
    return LogStore(resources().blobs)


@blueprint.get("")
@allow(*READERS)
@shapes(response=LogRecords)
def query_logs() -> flask.Response:
    """Records matching ``service``, ``level``, ``since``, ``until``, ``grep``, ``limit``; oldest first."""
    records = _readers().query(_store(), query_as(LogQuery), current_principal())
    return flask.jsonify(records=[record.model_dump(mode="json") for record in records])


@blueprint.get("/services")
@allow(*READERS)
@shapes(response=ServiceIds)
def list_services() -> flask.Response:
    """Service ids that have collected logs the caller may read."""
    return flask.jsonify(services=_readers().services(_store(), current_principal()))
