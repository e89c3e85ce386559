"""The newest incidents ``GET /api/nodes`` shows, on the session's Apache Kafka.

The portal's nodes page polls ``GET /api/nodes`` every few seconds per open page; the route reads
the incidents topic at most once per ``web.incidents_ttl_s`` (``node_manager.api.RecentIncidents``)
and shows a new incident once that has passed.
"""

from __future__ import annotations

from node_manager.api import RecentIncidents
from platform_core.nodes import ServiceIncident, publish_incident
from platform_sdk.bus import Bus
from platform_sdk.settings import Settings


def incident(service_id: str) -> ServiceIncident:
    return ServiceIncident(service_id=service_id, node_id="node-1", kind="restarted", detail="exit code 1")


def test_incidents_are_read_again_only_once_their_ttl_has_passed(kafka_settings: Settings) -> None:
    bus = Bus(kafka_settings, source="heartbeat")
    try:
        bus.ensure_topics([bus.topics.incidents])
        producer = bus.producer()
        publish_incident(producer, incident("logger"))
        producer.flush(10)

        kept = RecentIncidents(ttl_s=3600)
        assert [note.service_id for note in kept.get(bus, 10)] == ["logger"]
        publish_incident(producer, incident("web"))
        producer.flush(10)
        assert [note.service_id for note in kept.get(bus, 10)] == ["logger"]  # within its TTL

        every_time = RecentIncidents(ttl_s=0)
        assert [note.service_id for note in every_time.get(bus, 10)] == ["logger", "web"]
        publish_incident(producer, incident("scheduler"))
        producer.flush(10)
        assert [note.service_id for note in every_time.get(bus, 10)] == ["logger", "web", "scheduler"]
    finally:
        bus.close()
