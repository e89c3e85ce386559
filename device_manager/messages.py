"""What the device manager's service is told (``<prefix>.commands.device-manager``) and answers.

Besides the deployer's binds, the front door asks here what the device registry holds: the
locations that can run an app (``FindLocations``), what one location lacks for it and its time
zone (``CheckLocation``), which device types exist (``CheckDeviceTypes``). The first two answer
for one user (``user``): a location a configurer restricted to some users (``Location.users``)
is not theirs to use otherwise. The tables are the device manager's; nobody else reads them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from platform_sdk.artifacts import DeviceNeed
from platform_sdk.device_documents import Binding
from platform_sdk.envelope import Message

# Who asks, for the locations' owner rule (``Location.users``): None for a platform configurer.
USER_FIELD = "Only the locations open to this user (a username); none: every location (a configurer)."


class DeviceChanged(Message):
    """A device was registered or deleted: start or stop its simulator, follow or forget its topics;
    or a real device got new MQTT credentials (``credentials``): rewrite Mosquitto's files."""

    message_type = "devices.changed"
    action: Literal["added", "removed", "credentials"]
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


class FindLocations(Message):
    """Per key (an app id, say): the registered locations with enough devices of every type its
    ``needs`` (alias → need) name, as binding will judge (request/reply)."""

    message_type = "devices.find-locations"
    needs: dict[str, dict[str, DeviceNeed]]
    user: str | None = Field(default=None, description=USER_FIELD)


class LocationsFound(Message):
    message_type = "devices.locations-found"
    locations: dict[str, list[str]] = Field(description="The keys asked about → the locations, by name.")


class CheckLocation(Message):
    """What ``location`` lacks for ``needs`` (alias → need), and its time zone (request/reply).

    Answered with ``NotFound`` (``no location 'x'; …``) when there is no such location, and
    with ``Forbidden`` naming the location when it is not open to ``user``.
    """

    message_type = "devices.check-location"
    location: str
    needs: dict[str, DeviceNeed]
    user: str | None = Field(default=None, description=USER_FIELD)


class LocationCheck(Message):
    message_type = "devices.location-check"
    location: str
    timezone: str
    problems: list[dict[str, str]] = Field(
        default_factory=list, description='What it lacks: {"field": "devices.<alias>", "reason"}; empty: all.'
    )


class CheckDeviceTypes(Message):
    """Which of ``types`` are not registered device types (request/reply)."""

    message_type = "devices.check-types"
    types: list[str]


class DeviceTypesChecked(Message):
    message_type = "devices.types-checked"
    unknown: list[str] = Field(default_factory=list)
