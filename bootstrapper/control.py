"""Commands the CLI sends to a running platform over its bus (restart a service on its node)."""

from __future__ import annotations

from platform_core.nodes import RestartService, ServiceState, ServiceStateReply, agent_topic
from platform_sdk.bus import Bus, Requester
from platform_sdk.settings import Settings


def restart_service(settings: Settings, node_id: str, service_id: str) -> ServiceState:
    """Ask ``node_id``'s agent to restart ``service_id``; returns its new state."""
    bus = Bus(settings, source="aiot-cli")
    with Requester(bus) as requester:
        reply = requester.request(
            agent_topic(bus.topics, node_id),
            RestartService(service_id=service_id),
            ServiceStateReply,
            timeout=60,
        )
    return reply.state
