"""Every topic name the platform uses, in one place.

Nobody writes a topic string by hand elsewhere: take a ``Topics`` for the
configured prefix (``Topics.from_settings()``) and ask it. The prefix lets
several platforms (or tests) share one Kafka cluster without seeing each
other's messages.

A model replica or app instance on a bus with principals speaks on topics of its own
(``kafka.own_topics``, set by the node manager with its credential): its ``Topics`` has an
``instance`` (its service id), and its heartbeats, logs, replies and requests to the deployer
go to ``<prefix>.inst.<service id>.heartbeats|logs|replies|requests``, the only topics its
principal may write (or, for replies, read) besides its bound devices'. The heartbeat monitor,
the logger and the deployer read every instance's topics by a pattern (``instance_pattern``)
and file what they read under the service id in the topic's name (``instance_of``).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Literal

from platform_sdk.settings import Settings, TopicClass, get_settings

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
DEVICE_TOPIC_KINDS = ("data", "commands", "state")
TopicClassName = Literal[
    "heartbeats", "replies", "logs", "commands", "events",
    "device_data", "device_state", "device_commands", "dead_letter", "other",
]  # fmt: skip
InstanceTopicKind = Literal["heartbeats", "logs", "replies", "requests"]
INSTANCE_TOPIC_KINDS: tuple[InstanceTopicKind, ...] = ("heartbeats", "logs", "replies", "requests")
_INSTANCE_CLASSES: dict[str, TopicClassName] = {
    "heartbeats": "heartbeats",
    "logs": "logs",
    "replies": "replies",
    "requests": "commands",
}


def _safe(part: str) -> str:
    """Kafka topic names allow only ``[A-Za-z0-9._-]``; anything else becomes ``_``."""
    return _UNSAFE.sub("_", part)


@dataclass(frozen=True)
class Topics:
    """Topic names under one prefix; with ``instance``, as that model replica or app instance sees them."""

    prefix: str = "aiot"
    instance: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Topics:
        settings = settings or get_settings()
        own = settings.kafka.own_topics and settings.service_id
        return cls(settings.kafka.topic_prefix, settings.service_id if own else None)

    @property
    def logs(self) -> str:
        """Structured log records of every managed process (an instance's: its own topic)."""
        return self._own("logs") or f"{self.prefix}.logs"

    @property
    def heartbeats(self) -> str:
        """One heartbeat per managed process per interval (an instance's: its own topic)."""
        return self._own("heartbeats") or f"{self.prefix}.heartbeats"

    def _own(self, kind: InstanceTopicKind) -> str | None:
        return self.instance_topic(self.instance, kind) if self.instance else None

    def instance_topic(self, service_id: str, kind: InstanceTopicKind) -> str:
        """One of the topics of the model replica or app instance ``service_id``."""
        return f"{self.prefix}.inst.{_safe(service_id)}.{kind}"

    def instance_topics(self, service_id: str) -> list[str]:
        """Every topic of the instance ``service_id`` (the node manager creates and deletes them)."""
        return [self.instance_topic(service_id, kind) for kind in INSTANCE_TOPIC_KINDS]

    def instance_pattern(self, kind: InstanceTopicKind) -> str:
        """Every instance's topic of ``kind``, as a subscription pattern (librdkafka: a leading ``^``)."""
        head, tail = (part.replace(".", r"\.") for part in (f"{self.prefix}.inst.", f".{kind}"))
        return f"^{head}[A-Za-z0-9._-]+{tail}$"

    def instance_of(self, topic: str) -> str | None:
        """The service id an instance's topic belongs to (its name says it), or None for another topic."""
        head, kind = f"{self.prefix}.inst.", topic.rsplit(".", 1)[-1]
        if not topic.startswith(head) or kind not in INSTANCE_TOPIC_KINDS:
            return None
        return topic[len(head) : -len(kind) - 1] or None

    def instance_groups(self, service_id: str) -> list[str]:
        """The consumer groups an instance's SDK names: its assign-only consumers' (they join no
        group and commit nothing) and its device streams' (an app's ``DeviceClient``)."""
        return [f"{self.prefix}.inst.{_safe(service_id)}", f"{self.prefix}.inst.{_safe(service_id)}.devices"]

    def assigned_group(self, purpose: str) -> str:
        """The group.id of an assign-only consumer (no join, no commits): a fresh one per consumer,
        or an instance's one (its principal may describe that group only)."""
        if self.instance:
            return self.instance_groups(self.instance)[0]
        return f"{self.prefix}.{purpose}.{uuid.uuid4().hex}"

    @property
    def dead_letter(self) -> str:
        """Messages a handler failed on, with the failure in their headers."""
        return f"{self.prefix}.dead-letter"

    @property
    def deployer(self) -> str:
        """Deploy and undeploy requests, and model resolution (``model_call``; an instance's: its
        own requests topic, where the deployer answers ``ResolveModel`` only)."""
        return self._own("requests") or self.commands("deployer")

    @property
    def deployments(self) -> str:
        """Deployments reaching a status (deployed, failed, undeployed)."""
        return self.events("deployments")

    @property
    def app_instances(self) -> str:
        """App instances reaching a status (running, failed, stopped); the scheduler mails from them."""
        return self.events("app-instances")

    @property
    def incidents(self) -> str:
        """What the heartbeat monitor did about a failing service (restarted, replaced, gave up)."""
        return self.events("incidents")

    @property
    def scheduler(self) -> str:
        """Schedule changes for the scheduler service (created, paused, resumed, cancelled)."""
        return self.commands("scheduler")

    @property
    def device_manager(self) -> str:
        """Device changes and binding requests for the device manager."""
        return self.commands("device-manager")

    def device_data(self, device_id: str) -> str:
        """Readings (or camera frames) of one sensor instance."""
        return f"{self.prefix}.devices.{_safe(device_id)}.data"

    def device_commands(self, device_id: str) -> str:
        """Commands to one controller instance (request/reply: the answer is its new state)."""
        return f"{self.prefix}.devices.{_safe(device_id)}.commands"

    def device_state(self, device_id: str) -> str:
        """State of one controller instance, published after every change."""
        return f"{self.prefix}.devices.{_safe(device_id)}.state"

    def platform_topics(self) -> list[str]:
        """The topics every platform has from its start, created by ``aiot up`` with their classes'
        configs before any process could have them auto-created with the broker's defaults."""
        if self.instance:
            return Topics(self.prefix).platform_topics()
        return [
            self.heartbeats,
            self.logs,
            self.dead_letter,
            self.replies,
            self.deployments,
            self.app_instances,
            self.incidents,
            self.deployer,
            self.scheduler,
            self.device_manager,
        ]

    def partitions_of(self, topic: str, default: int, replies: int = 1) -> int:
        """Partitions a new topic gets: one for a device's topics, ``replies`` for the replies topic,
        else ``default``.

        A device topic carries one key (the device), and an instance's topic one writer, so its
        records land in one partition whatever the count; more partitions buy no parallelism and
        make every consumer fetch (and the broker scan) partitions that stay empty.
        """
        kind = self.class_of(topic)
        if kind.startswith("device_") or self.instance_of(topic):
            return 1
        if kind == "replies":
            return replies
        return default

    def class_of(self, topic: str) -> TopicClassName:
        """The retention class of ``topic`` (``kafka.retention.<class>`` in the settings); an
        instance's requests topic is of class ``commands``."""
        if topic == f"{self.prefix}.heartbeats":
            return "heartbeats"
        if topic == f"{self.prefix}.logs":
            return "logs"
        if topic == self.dead_letter:
            return "dead_letter"
        replies = f"{self.prefix}.replies"
        if topic == replies or topic.startswith(f"{replies}."):
            return "replies"
        if self.instance_of(topic):
            return _INSTANCE_CLASSES[topic.rsplit(".", 1)[-1]]
        if topic.startswith(f"{self.prefix}.devices."):
            kind = topic.rsplit(".", 1)[-1]
            if kind == "data":
                return "device_data"
            if kind == "state":
                return "device_state"
            if kind == "commands":
                return "device_commands"
        if topic.startswith(f"{self.prefix}.commands."):
            return "commands"
        if topic.startswith(f"{self.prefix}.events."):
            return "events"
        return "other"

    def config_of(self, topic: str, settings: Settings) -> dict[str, str]:
        """The topic configs ``topic`` is created with: its class's retention, and min.insync.replicas."""
        kind = self.class_of(topic)
        if kind == "device_commands":
            kind = "commands"
        retention: TopicClass = getattr(settings.kafka.retention, kind)
        configs = retention.configs()
        if settings.kafka.min_insync_replicas is not None:
            configs["min.insync.replicas"] = str(settings.kafka.min_insync_replicas)
        return configs

    def commands(self, service: str) -> str:
        """Commands addressed to one service (or one service agent)."""
        return f"{self.prefix}.commands.{_safe(service)}"

    @property
    def replies(self) -> str:
        """Replies to every request/reply client: one topic; each requester reads one partition of it.

        One shared topic, not one per client, so the topic count stays flat however often
        processes start, stop or are killed (a killed process could not delete its own). An
        instance's requester reads its own replies topic (one partition), which the node manager
        deletes with the instance.
        """
        return self._own("replies") or f"{self.prefix}.replies"

    def events(self, domain: str) -> str:
        """Events one domain publishes for whoever listens."""
        return f"{self.prefix}.events.{_safe(domain)}"
