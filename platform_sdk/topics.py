"""Every topic name the platform uses, in one place.

Nobody writes a topic string by hand elsewhere: take a ``Topics`` for the
configured prefix (``Topics.from_settings()``) and ask it. The prefix lets
several platforms (or tests) share one Kafka cluster without seeing each
other's messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from platform_sdk.settings import Settings, TopicClass, get_settings

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
DEVICE_TOPIC_KINDS = ("data", "commands", "state")
TopicClassName = Literal[
    "heartbeats", "replies", "logs", "commands", "events",
    "device_data", "device_state", "device_commands", "dead_letter", "other",
]  # fmt: skip


def _safe(part: str) -> str:
    """Kafka topic names allow only ``[A-Za-z0-9._-]``; anything else becomes ``_``."""
    return _UNSAFE.sub("_", part)


@dataclass(frozen=True)
class Topics:
    """Topic names under one prefix."""

    prefix: str = "aiot"

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Topics:
        return cls((settings or get_settings()).kafka.topic_prefix)

    @property
    def logs(self) -> str:
        """Structured log records of every managed process."""
        return f"{self.prefix}.logs"

    @property
    def heartbeats(self) -> str:
        """One heartbeat per managed process per interval."""
        return f"{self.prefix}.heartbeats"

    @property
    def dead_letter(self) -> str:
        """Messages a handler failed on, with the failure in their headers."""
        return f"{self.prefix}.dead-letter"

    @property
    def deployer(self) -> str:
        """Deploy and undeploy requests, and model resolution (``model_call``)."""
        return self.commands("deployer")

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

        A device topic carries one key (the device), so its records land in one partition
        whatever the count; more partitions buy no parallelism and make every consumer
        fetch (and the broker scan) partitions that stay empty.
        """
        kind = self.class_of(topic)
        if kind.startswith("device_"):
            return 1
        if kind == "replies":
            return replies
        return default

    def class_of(self, topic: str) -> TopicClassName:
        """The retention class of ``topic`` (``kafka.retention.<class>`` in the settings)."""
        if topic == self.heartbeats:
            return "heartbeats"
        if topic == self.logs:
            return "logs"
        if topic == self.dead_letter:
            return "dead_letter"
        if topic == self.replies or topic.startswith(f"{self.replies}."):
            return "replies"
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
        processes start, stop or are killed (a killed process could not delete its own).
        """
        return f"{self.prefix}.replies"

    def events(self, domain: str) -> str:
        """Events one domain publishes for whoever listens."""
        return f"{self.prefix}.events.{_safe(domain)}"
