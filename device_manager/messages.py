"""What the device manager's service is told (``<prefix>.commands.device-manager``)."""

from __future__ import annotations

from typing import Literal

from platform_sdk.envelope import Message


class DeviceChanged(Message):
    """A device was registered or deleted: start or stop its simulator, follow or forget its topics."""

    message_type = "devices.changed"
    action: Literal["added", "removed"]
    device: str
