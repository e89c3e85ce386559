"""The device protocol: what sensors and controllers say on the bus (documented in docs/devices.md).

A simulated device and a real one behind the MQTT gateway send exactly these:

* a sensor publishes on ``topics.device_data(<device id>)``: a ``Reading`` (JSON values:
  numbers, booleans, strings), or a ``Frame`` whose envelope carries the encoded image as
  its binary data (content type ``image/jpeg`` or ``image/png``);
* a controller consumes ``topics.device_commands(<device id>)``: ``DeviceCommand``
  (request/reply: it answers with its ``DeviceState``, ``accepted=False`` and an ``error``
  when it rejects the command) and publishes every ``DeviceState`` on
  ``topics.device_state(<device id>)``.

Records are keyed by the device id, so one device's messages stay in order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import Field

from platform_sdk.envelope import Message

ReadingValue = float | int | bool | str


def _now() -> datetime:
    return datetime.now(UTC)


class Reading(Message):
    """One sample of a numeric (or textual) sensor."""

    message_type = "device.reading"
    device_id: str
    seq: int = Field(ge=0, description="Counts up from 0 at each start of the device.")
    time: datetime = Field(default_factory=_now)
    values: dict[str, ReadingValue]


class Frame(Message):
    """One camera frame; the encoded image is the envelope's binary data."""

    message_type = "device.frame"
    device_id: str
    seq: int = Field(ge=0)
    time: datetime = Field(default_factory=_now)
    content_type: str = Field(default="image/jpeg", description="image/jpeg or image/png")
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class DeviceCommand(Message):
    """Ask a controller to do something; its answer is a ``DeviceState``."""

    message_type = "device.command"
    device_id: str
    command: str
    params: dict[str, Any] = Field(default_factory=dict)


class DeviceState(Message):
    """A controller's state, after a command (accepted or not) or on its own schedule."""

    message_type = "device.state"
    device_id: str
    state: dict[str, Any]
    time: datetime = Field(default_factory=_now)
    command: str | None = Field(default=None, description="The command this answers, if any.")
    accepted: bool = True
    error: str | None = Field(default=None, description="Why the command was rejected.")
    by: str | None = Field(
        default=None,
        description="Who sent the command this answers (an app instance's service id): controllers "
        "shared by several apps apply commands in arrival order and say who set what.",
    )
