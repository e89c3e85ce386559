"""Every topic name the platform uses, in one place.

Nobody writes a topic string by hand elsewhere: take a ``Topics`` for the
configured prefix (``Topics.from_settings()``) and ask it. The prefix lets
several platforms (or tests) share one Kafka cluster without seeing each
other's messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from platform_sdk.settings import Settings, get_settings

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
DEVICE_TOPIC_KINDS = ("data", "commands", "state")


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

    def partitions_of(self, topic: str, default: int) -> int:
        """Partitions a new topic gets: one for a device's topics, else ``default``.

        A device topic carries one key (the device), so its records land in one partition
        whatever the count; more partitions buy no parallelism and make every consumer
        fetch (and the embedded broker scan) partitions that stay empty.
        """
        if topic.startswith(f"{self.prefix}.devices.") and topic.rsplit(".", 1)[-1] in DEVICE_TOPIC_KINDS:
            return 1
        return default

    def commands(self, service: str) -> str:
        """Commands addressed to one service (or one service agent)."""
        return f"{self.prefix}.commands.{_safe(service)}"

    def replies(self, client_id: str) -> str:
        """Replies to one request/reply client; single partition."""
        return f"{self.prefix}.replies.{_safe(client_id)}"

    def events(self, domain: str) -> str:
        """Events one domain publishes for whoever listens."""
        return f"{self.prefix}.events.{_safe(domain)}"
