"""The device manager's answers about its registry, on ``<prefix>.commands.device-manager``.

``DeviceManagerService`` registers them on its command loop beside ``BindDevices``:

    FindLocations    ──▶ LocationsFound: per set of needs, the locations that satisfy it and are
                         open to the asking user (the front door lists which locations can run
                         each app)
    CheckLocation    ──▶ LocationCheck: what one location lacks for an app, and its time zone
                         (the front door checks a new schedule); NotFound for an unknown location,
                         Forbidden for one not open to the asking user (``Location.users``)
    CheckDeviceTypes ──▶ DeviceTypesChecked: the device types that are not registered
                         (the front door checks an uploaded app.json)
"""

from __future__ import annotations

from collections.abc import Mapping

from device_manager import registry
from device_manager.messages import (
    CheckDeviceTypes,
    CheckLocation,
    DeviceTypesChecked,
    FindLocations,
    LocationCheck,
    LocationsFound,
)
from device_manager.models import DeviceTypeRow
from platform_core.db import Database
from platform_sdk.artifacts import DeviceNeed
from platform_sdk.bus import ConsumerLoop
from platform_sdk.envelope import Envelope
from platform_sdk.errors import Forbidden


def _needs(needs: Mapping[str, DeviceNeed]) -> dict[str, tuple[str, int]]:
    return {alias: (need.type, need.count) for alias, need in needs.items()}


class DeviceManagerAnswers:
    """Answers questions about the device registry from ``database``; ``add_to(loop)`` registers them."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def add_to(self, loop: ConsumerLoop) -> None:
        loop.add_handler(FindLocations, self.on_find_locations)
        loop.add_handler(CheckLocation, self.on_check_location)
        loop.add_handler(CheckDeviceTypes, self.on_check_types)

    def on_find_locations(self, request: FindLocations, _envelope: Envelope) -> LocationsFound:
        with self.database.session() as session:
            names = [
                row.name
                for row in registry.list_locations(session)
                if request.user is None or registry.location_document(row).open_to(request.user)
            ]
            found = {
                key: [name for name in names if not registry.need_problems(session, _needs(needs), name)]
                for key, needs in request.needs.items()
            }
        return LocationsFound(locations=found)

    def on_check_location(self, request: CheckLocation, _envelope: Envelope) -> LocationCheck:
        with self.database.session() as session:
            row = registry.read_location(session, request.location)
            if request.user is not None and not registry.location_document(row).open_to(request.user):
                raise Forbidden(
                    f"location {row.name!r} is open only to the users a platform configurer chose, "
                    f"and {request.user!r} is not one of them: ask a configurer to add you "
                    f"(PUT /api/devices/locations/{row.name}/users), or pick another location "
                    "(`aiot location list`)"
                )
            problems = registry.need_problems(session, _needs(request.needs), row.name)
            return LocationCheck(location=row.name, timezone=row.timezone, problems=problems)

    def on_check_types(self, request: CheckDeviceTypes, _envelope: Envelope) -> DeviceTypesChecked:
        with self.database.session() as session:
            unknown = [name for name in request.types if session.get(DeviceTypeRow, name) is None]
        return DeviceTypesChecked(unknown=unknown)
