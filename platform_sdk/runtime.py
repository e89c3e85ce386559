"""What the SDK runs inside every managed process: its heartbeat and its log shipping.

``PlatformRuntime`` is started by the ``Service`` base for the platform's own
services, and by the generated launcher of models, apps and simulators. It
reads the process identity (``AIOT_SERVICE_ID``) and the bus address from the
settings, so the code around it never names a host or a topic.
"""

from __future__ import annotations

import logging

from platform_sdk.bus import Bus
from platform_sdk.heartbeat import HeartbeatClient
from platform_sdk.log import KafkaLogHandler, install_log_handler
from platform_sdk.settings import Settings, get_settings


class PlatformRuntime:
    """Heartbeat + log handler for one managed process; a context manager."""

    def __init__(self, settings: Settings | None = None, service_id: str | None = None) -> None:
        self.settings = settings or get_settings()
        self.service_id = service_id or self.settings.service_id
        if not self.service_id:
            raise ValueError("a managed process needs an identity: set AIOT_SERVICE_ID")
        self.bus = Bus(self.settings, source=self.service_id)
        self.heartbeat = HeartbeatClient(
            self.bus, interval_s=self.settings.heartbeat.interval_s, parent_pid=self.settings.agent_pid
        )
        self.log_handler: KafkaLogHandler | None = None

    def start(self) -> None:
        self.start_logging()
        self.start_heartbeat()

    def start_logging(self) -> None:
        self.log_handler = install_log_handler(self.settings, self.service_id)

    def start_heartbeat(self) -> None:
        """Heartbeats double as 'ready': services start them once they take work."""
        self.heartbeat.start()

    def stop(self) -> None:
        self.heartbeat.stop()
        self.bus.close()
        if self.log_handler is not None:
            logging.getLogger().removeHandler(self.log_handler)
            self.log_handler.close()
            self.log_handler = None

    def __enter__(self) -> PlatformRuntime:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
