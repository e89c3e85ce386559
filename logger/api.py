"""``GET /api/logs``: query collected logs by service, level, time range and text (front door)."""

from __future__ import annotations

import flask

from logger.store import LogQuery, LogStore
from platform_core.auth import Role, allow
from platform_core.http import query_as, resources

blueprint = flask.Blueprint("logs", __name__, url_prefix="/api/logs")
READERS = (Role.PLATFORM_CONFIGURER, Role.AI_DEVELOPER, Role.APP_DEVELOPER)


def _store() -> LogStore:
    return LogStore(resources().blobs)


@blueprint.get("")
@allow(*READERS)
def query_logs() -> flask.Response:
    """Records matching ``service``, ``level``, ``since``, ``until``, ``grep``, ``limit``; oldest first."""
    records = _store().query(query_as(LogQuery))
    return flask.jsonify(records=[record.model_dump(mode="json") for record in records])


@blueprint.get("/services")
@allow(*READERS)
def list_services() -> flask.Response:
    """Service ids that have collected logs."""
    return flask.jsonify(services=_store().services())
