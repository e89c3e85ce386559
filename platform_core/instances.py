"""Reading what model replicas and app instances say on their own topics, under the id their topic names.

An instance with its own principal writes its heartbeats, logs and requests to the deployer on
``<prefix>.inst.<service id>.heartbeats|logs|requests`` only (``platform_sdk.topics``). The
heartbeat monitor, the logger and the deployer read all instances' topics of a kind with one
consumer each, matching ``Topics.instance_pattern``: the logger and the deployer in a group of
their own (their place survives a restart), the monitor on Apache Kafka without a group (it reads
the present, and comes back right after a broker pause, with no group to rejoin). A new instance's topics are
read from the consumer's next look (``kafka.instance_topics_refresh_ms``). A heartbeat or log
record is filed under the service id its topic names, whatever id it claims (a forged one is
logged and corrected): an instance can speak only as itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from platform_sdk.bus import Bus, ConsumerLoop
from platform_sdk.envelope import Envelope
from platform_sdk.errors import BadRequest
from platform_sdk.messages import Heartbeat, LogRecord
from platform_sdk.topics import InstanceTopicKind

log = logging.getLogger(__name__)
S = TypeVar("S", Heartbeat, LogRecord)  # what an instance says about itself, by service id


def instance_loop(
    bus: Bus,
    kind: InstanceTopicKind,
    *,
    group: str,
    name: str,
    offset_reset: str = "latest",
    listed: bool = False,
) -> ConsumerLoop:
    """A consumer of every instance's ``kind`` topic, finding new ones within
    ``kafka.instance_topics_refresh_ms``; register its handlers, then start it.

    In ``group`` the broker's group coordinator hands out the topics and keeps the loop's
    place across restarts (what must not be lost: logs, requests). ``listed`` (a view of the
    present: heartbeats) has the loop list and read them all itself on Apache Kafka, with no
    group to rejoin after a broker pause; on Tansu it stays in ``group`` (``ConsumerLoop``).
    """
    if listed and bus.broker_kind == "kafka":
        return ConsumerLoop(
            bus, [bus.topics.instance_pattern(kind)], group=None, name=name, offset_reset=offset_reset
        )
    refresh: dict[str, Any] = {
        "topic.metadata.refresh.interval.ms": bus.settings.kafka.instance_topics_refresh_ms
    }
    return ConsumerLoop(
        bus, [bus.topics.instance_pattern(kind)], group=group, name=name, offset_reset=offset_reset, **refresh
    )


def file_under_owner(
    loop: ConsumerLoop, message_cls: type[S], handler: Callable[[S, Envelope], object]
) -> None:
    """Hand each ``message_cls`` ``loop`` reads to ``handler`` with its ``service_id`` set to the
    instance its topic belongs to; anything else on an instance's topic is refused (dead-lettered)."""
    topics = loop.bus.topics

    def dispatch(topic: str, envelope: Envelope) -> None:
        owner = topics.instance_of(topic)
        if owner is None or envelope.type != message_cls.message_type:
            raise BadRequest(f"{envelope.type!r} does not belong on {topic}")
        message = envelope.open(message_cls)
        if message.service_id != owner:
            log.warning(
                "%s on %s claims to be from %r: filed under %r",
                envelope.type,
                topic,
                message.service_id,
                owner,
            )
            message = message.model_copy(update={"service_id": owner})
        handler(message, envelope)

    loop.on_any_with_topic(dispatch)
