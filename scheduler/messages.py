"""What the scheduler service is told (``<prefix>.commands.scheduler``)."""

from __future__ import annotations

from typing import Literal

from platform_sdk.envelope import Message


class ScheduleChanged(Message):
    """A schedule was created, paused, resumed or cancelled through the API: (re)plan its jobs."""

    message_type = "scheduler.schedule-changed"
    schedule_id: str
    action: Literal["created", "paused", "resumed", "cancelled"]
