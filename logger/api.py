"""``GET /api/logs``: query collected logs by service, level, time range and text (front door).

Each caller reads only the logs the rule of ``logger.scope`` gives them: a service they may not
read is a 403 naming it and why; a query across services, and the list of services, leave out
what they may not read. The app holds the ``LogReaders`` that applies it (installed when this
blueprint is registered), so the owners' answers it keeps live and die with the app.
"""

from __future__ import annotations

import flask
from flask.blueprints import BlueprintSetupState

from logger.scope import LogReaders
from logger.store import LogQuery, LogStore
from platform_core.auth import Role, allow, current_principal
from platform_core.http import query_as, resources

blueprint = flask.Blueprint("logs", __name__, url_prefix="/api/logs")
READERS = (Role.PLATFORM_CONFIGURER, Role.AI_DEVELOPER, Role.APP_DEVELOPER, Role.END_USER)
_READERS_KEY = "aiot.log-readers"


@blueprint.record_once
def _install_readers(state: BlueprintSetupState) -> None:
    state.app.extensions[_READERS_KEY] = LogReaders()


def _readers() -> LogReaders:
    found: LogReaders = flask.current_app.extensions[_READERS_KEY]
    return found


def _store() -> LogStore:
    return LogStore(resources().blobs)


@blueprint.get("")
@allow(*READERS)
def query_logs() -> flask.Response:
    """Records matching ``service``, ``level``, ``since``, ``until``, ``grep``, ``limit``; oldest first."""
    records = _readers().query(_store(), query_as(LogQuery), current_principal())
    return flask.jsonify(records=[record.model_dump(mode="json") for record in records])


@blueprint.get("/services")
@allow(*READERS)
def list_services() -> flask.Response:
    """Service ids that have collected logs the caller may read."""
    return flask.jsonify(services=_readers().services(_store(), current_principal()))
