"""``GET /api/nodes``: the nodes, their load, the services placed on each and the placements
waiting for a node with room (front door, configurers).

The node manager owns the nodes and placements; the front door asks it over the bus
(``ListNodes`` on its command topic → ``NodesReport``) rather than reading its tables, and
answers 503 naming it when it does not answer within ``web.ask_timeout_s``. The newest
incidents (restarts, moves) are read from ``<prefix>.events.incidents`` beside it, at most once
per ``web.incidents_ttl_s`` (``RecentIncidents``, held by the app): the portal's nodes page polls
this route every few seconds per open page. The nodes page shows the same answer.
"""

from __future__ import annotations

import logging
import threading
import time

import flask
from pydantic import BaseModel, Field

from platform_core.auth import Role, allow
from platform_core.http import app_extension, ask, resources, shapes
from platform_core.nodes import (
    IncidentNote,
    ListNodes,
    NodeReport,
    NodesReport,
    WaitingPlacement,
    node_manager_topic,
    recent_incidents,
)
from platform_sdk.bus import Bus
from platform_sdk.errors import PlatformError

log = logging.getLogger(__name__)

blueprint = flask.Blueprint("nodes", __name__, url_prefix="/api/nodes")


INCIDENTS_SHOWN = 20
_INCIDENTS_KEY = "aiot.recent_incidents"


class RecentIncidents:
    """The newest incidents on a bus, read again only once ``ttl_s`` has passed since the last read."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._incidents: list[IncidentNote] = []

    def get(self, bus: Bus, timeout: float) -> list[IncidentNote]:
        """The incidents read within ``ttl_s``, or read now; ``PlatformError``: the bus did not answer."""
        with self._lock:  # one reader at a time: concurrent polls wait for it instead of reading too
            if time.monotonic() - self._read_at >= self.ttl_s:
                self._incidents = recent_incidents(bus, INCIDENTS_SHOWN, timeout)
                self._read_at = time.monotonic()
            return list(self._incidents)


def _recent() -> RecentIncidents:
    return app_extension(
        flask.current_app, _INCIDENTS_KEY, lambda: RecentIncidents(resources().settings.web.incidents_ttl_s)
    )


class NodeList(BaseModel):
    """``GET /api/nodes``: by node id, and the newest incidents (oldest first)."""

    nodes: list[NodeReport]
    waiting: list[WaitingPlacement] = Field(
        default_factory=list,
        description="Placements no node has room for, waiting for the node the provider was asked for.",
    )
    incidents: list[IncidentNote] = Field(
        description="The heartbeat monitor's and the node manager's latest decisions: restarts, moves; "
        "empty when the broker did not answer in time."
    )


@blueprint.get("")
@allow(Role.PLATFORM_CONFIGURER)
@shapes(response=NodeList)
def list_nodes() -> flask.Response:
    """Every node: state, load, capacity, last heard, and its services with state and restarts."""
    bus = resources().bus_requester().bus
    report = ask("the node manager", node_manager_topic(bus.topics), ListNodes(), NodesReport)
    try:
        incidents = _recent().get(bus, resources().settings.web.ask_timeout_s)
    except PlatformError as exc:
        log.warning("no incidents for the nodes list: %s", exc)
        incidents = []
    listed = NodeList(nodes=report.nodes, waiting=report.waiting, incidents=incidents)
    return flask.jsonify(listed.model_dump(mode="json"))
