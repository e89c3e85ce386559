"""What the device manager's service is told (``<prefix>.commands.device-manager``) and answers."""

from __future__ import annotations

from typing import Literal

from platform_sdk.artifacts import DeviceNeed
from platform_sdk.device_documents import Binding
from platform_sdk.envelope import Message


class DeviceChanged(Message):
    """A device was registered or deleted: start or stop its simulator, follow or forget its topics."""

    message_type = "devices.changed"
    action: Literal["added", "removed"]
    device: str


class BindDevices(Message):
    """Bind, per alias, ``count`` devices of a type at ``location`` to an app instance (request/reply)."""

    message_type = "devices.bind"
    app_instance_id: str
    location: str
    needs: dict[str, DeviceNeed]


class DeviceBindings(Message):
    """The devices bound to each alias, with their types, and the location's time zone."""

    message_type = "devices.bindings"
    app_instance_id: str
    timezone: str
    bindings: dict[str, list[Binding]]


class UnbindDevices(Message):
    """Release an app instance's devices (request/reply: answers how many bindings there were)."""

    message_type = "devices.unbind"
    app_instance_id: str


class Unbound(Message):
    message_type = "devices.unbound"
    app_instance_id: str
    released: int
