"""CRUD of the device manager's tables; every function takes the session it works in.

A name already taken raises ``Conflict`` naming it; an unknown name ``NotFound``; a
document that does not fit what is registered ``ValidationFailed``, whose ``details``
are ``{"field", "reason"}`` entries with the field as a path into the document
(``parameters.fps``) or the bundle (``devices.2.parameters.fps``). Every check runs
before anything is written, so a refused call leaves the session as it found it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from device_manager import mqtt_auth
from device_manager.models import DeviceBindingRow, DeviceRow, DeviceStateRow, DeviceTypeRow, LocationRow
from platform_core.db import Base, utcnow
from platform_sdk.device_documents import DeviceBundle, DeviceInstance, DeviceType, Location
from platform_sdk.errors import Conflict, NotFound, ValidationFailed

# Device names that would hide a route of /api/devices (GET /api/devices/<name>).
RESERVED_DEVICE_NAMES = frozenset({"types", "locations", "bulk"})
# What a device last said: a sensor's reading, a camera's frame (its metadata), a controller's state.
STATE_KINDS = ("reading", "frame", "state")
Problem = dict[str, str]


# --- documents ----------------------------------------------------------------------------------


def type_document(row: DeviceTypeRow) -> DeviceType:
    return DeviceType.model_validate_json(row.document)


def location_document(row: LocationRow) -> Location:
    return Location.model_validate_json(row.document)


def device_document(row: DeviceRow) -> DeviceInstance:
    return DeviceInstance.model_validate_json(row.document)


def _stored(document: DeviceType | Location | DeviceInstance) -> str:
    return document.model_dump_json(exclude_none=True)


def effective_parameters(device_type: DeviceType, instance: DeviceInstance) -> dict[str, Any]:
    """The instance's parameters, with the type's defaults for those it does not set."""
    defaults = {
        name: spec.default for name, spec in device_type.parameters.items() if spec.default is not None
    }
    return defaults | instance.parameters


# --- checks -------------------------------------------------------------------------------------


def _some(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _refuse(error: type[Conflict | ValidationFailed], problems: list[tuple[str, Problem]]) -> None:
    """Raise ``error`` if there are problems; the message names the first one's subject, field and reason."""
    if not problems:
        return
    subject, first = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise error(
        f"{subject}: {first['field']}: {first['reason']}{more}",
        details=[problem for _, problem in problems],
    )


def type_problems(device_type: DeviceType, prefix: str = "") -> list[Problem]:
    """Defaults of the type's instance and command parameters that do not fit their own spec."""
    problems = []
    for name, spec in device_type.parameters.items():
        reason = None if spec.default is None else spec.problem(spec.default)
        if reason:
            problems.append({"field": f"{prefix}parameters.{name}.default", "reason": reason})
    for command, command_spec in device_type.commands.items():
        for name, spec in command_spec.params.items():
            reason = None if spec.default is None else spec.problem(spec.default)
            if reason:
                field = f"{prefix}commands.{command}.params.{name}.default"
                problems.append({"field": field, "reason": reason})
    return problems


def parameter_problems(
    device_type: DeviceType, parameters: Mapping[str, Any], prefix: str = "parameters."
) -> list[Problem]:
    """What is wrong with an instance's ``parameters`` for ``device_type``: one entry per parameter."""
    known = ", ".join(sorted(device_type.parameters)) or "none"
    problems = [
        {
            "field": f"{prefix}{name}",
            "reason": f"unknown parameter of type {device_type.name!r} (it has: {known})",
        }
        for name in parameters
        if name not in device_type.parameters
    ]
    for name, spec in device_type.parameters.items():
        if name not in parameters:
            if spec.required and spec.default is None:
                missing = f"missing: type {device_type.name!r} requires it and has no default"
                problems.append({"field": f"{prefix}{name}", "reason": missing})
            continue
        problem = spec.problem(parameters[name])
        if problem:
            problems.append({"field": f"{prefix}{name}", "reason": problem})
    return problems


def device_problems(
    device: DeviceInstance, types: Mapping[str, DeviceType], locations: Collection[str], prefix: str = ""
) -> list[Problem]:
    """What is wrong with ``device`` given the known ``types`` and ``locations``, in the order checked:
    reserved name, unknown type or location, parameters, a simulated device whose type has no simulator."""
    problems = []
    if device.name in RESERVED_DEVICE_NAMES:
        reason = f"{device.name!r} is reserved (a route of /api/devices); choose another name"
        problems.append({"field": f"{prefix}name", "reason": reason})
    device_type = types.get(device.type)
    if device_type is None:
        reason = f"unknown device type {device.type!r}: register the type first (or in the same bundle)"
        problems.append({"field": f"{prefix}type", "reason": reason})
    if device.location not in locations:
        reason = f"unknown location {device.location!r}: register the location first (or in the same bundle)"
        problems.append({"field": f"{prefix}location", "reason": reason})
    if device_type is not None:
        problems += parameter_problems(device_type, device.parameters, f"{prefix}parameters.")
        if device.simulated and device_type.simulator is None:
            reason = (
                f'type {device_type.name!r} has no simulator: register the device with "simulated": false'
            )
            problems.append({"field": f"{prefix}simulated", "reason": reason})
    return problems


def _refuse_taken(session: Session, table: type[Base], label: str, name: str, field: str = "name") -> None:
    if session.get(table, name) is not None:
        raise Conflict(
            f"{label} {name!r} already exists", details=[{"field": field, "reason": "already exists"}]
        )


# --- device types -------------------------------------------------------------------------------


def create_type(session: Session, device_type: DeviceType) -> DeviceTypeRow:
    _refuse_taken(session, DeviceTypeRow, "device type", device_type.name)
    _refuse(ValidationFailed, [(f"device type {device_type.name!r}", p) for p in type_problems(device_type)])
    row = DeviceTypeRow(name=device_type.name, kind=device_type.kind, document=_stored(device_type))
    session.add(row)
    session.flush()
    return row


def read_type(session: Session, name: str) -> DeviceTypeRow:
    row = session.get(DeviceTypeRow, name)
    if row is None:
        raise NotFound(f"no device type {name!r}; see GET /api/devices/types")
    return row


def list_types(session: Session) -> list[DeviceTypeRow]:
    return list(session.scalars(sa.select(DeviceTypeRow).order_by(DeviceTypeRow.name)))


def delete_type(session: Session, name: str) -> None:
    """Delete an unused type; ``Conflict`` naming the devices of that type."""
    row = read_type(session, name)
    users = [device.name for device in list_devices(session, type=name)]
    if users:
        raise Conflict(
            f"device type {name!r} is used by devices {_some(users)}: delete them first",
            details={"devices": users},
        )
    session.delete(row)


# --- locations ----------------------------------------------------------------------------------


def create_location(session: Session, location: Location) -> LocationRow:
    _refuse_taken(session, LocationRow, "location", location.name)
    row = LocationRow(
        name=location.name, kind=location.kind, timezone=location.timezone, document=_stored(location)
    )
    session.add(row)
    session.flush()
    return row


def read_location(session: Session, name: str) -> LocationRow:
    row = session.get(LocationRow, name)
    if row is None:
        raise NotFound(f"no location {name!r}; see GET /api/devices/locations")
    return row


def set_location_users(session: Session, name: str, users: list[str] | None) -> LocationRow:
    """Open ``name`` to ``users`` only (None: to every user); they are kept in its document."""
    row = read_location(session, name)
    row.document = _stored(location_document(row).model_copy(update={"users": users}))
    session.flush()
    return row


def list_locations(session: Session) -> list[LocationRow]:
    return list(session.scalars(sa.select(LocationRow).order_by(LocationRow.name)))


def delete_location(session: Session, name: str) -> None:
    """Delete a location without devices; ``Conflict`` naming the devices there."""
    row = read_location(session, name)
    users = [device.name for device in list_devices(session, location=name)]
    if users:
        raise Conflict(
            f"location {name!r} still has devices {_some(users)}: delete them first",
            details={"devices": users},
        )
    session.delete(row)


# --- devices ------------------------------------------------------------------------------------


def _device_row(device: DeviceInstance, created_at: datetime | None = None) -> DeviceRow:
    return DeviceRow(
        name=device.name,
        type=device.type,
        location=device.location,
        simulated=device.simulated,
        document=_stored(device),
        created_at=created_at or utcnow(),
    )


def create_device(session: Session, device: DeviceInstance, created_at: datetime | None = None) -> DeviceRow:
    """Register one device of a registered type at a registered location."""
    _refuse_taken(session, DeviceRow, "device", device.name)
    type_row = session.get(DeviceTypeRow, device.type)
    types = {} if type_row is None else {device.type: type_document(type_row)}
    locations = {device.location} if session.get(LocationRow, device.location) is not None else set()
    _refuse(
        ValidationFailed, [(f"device {device.name!r}", p) for p in device_problems(device, types, locations)]
    )
    row = _device_row(device, created_at)
    session.add(row)
    session.flush()
    return row


def read_device(session: Session, name: str) -> DeviceRow:
    row = session.get(DeviceRow, name)
    if row is None:
        raise NotFound(f"no device {name!r}; see GET /api/devices")
    return row


def list_devices(session: Session, location: str | None = None, type: str | None = None) -> list[DeviceRow]:
    """Devices, by name; only those at ``location`` and of ``type`` when given."""
    query = sa.select(DeviceRow)
    if location is not None:
        query = query.where(DeviceRow.location == location)
    if type is not None:
        query = query.where(DeviceRow.type == type)
    return list(session.scalars(query.order_by(DeviceRow.name)))


def delete_device(session: Session, name: str) -> DeviceRow:
    """Delete a device no app instance is bound to, its latest state and MQTT credentials; the deleted row.

    ``Conflict`` naming the app instances bound to it.
    """
    row = read_device(session, name)
    bound = bound_instances(session, name)
    if bound:
        raise Conflict(
            f"device {name!r} is bound to app instances {_some(bound)}: stop them first",
            details={"app_instances": bound},
        )
    session.execute(sa.delete(DeviceStateRow).where(DeviceStateRow.device == name))
    mqtt_auth.forget(session, [name])
    session.delete(row)
    return row


# --- bundles ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registered:
    """The names a bundle registered."""

    device_types: list[str]
    locations: list[str]
    devices: list[str]

    def counts(self) -> dict[str, int]:
        return {
            "device_types": len(self.device_types),
            "locations": len(self.locations),
            "devices": len(self.devices),
        }


def _refuse_taken_names(session: Session, bundle: DeviceBundle) -> None:
    """``Conflict`` naming every name given twice in the bundle, then every name already registered."""
    sections: list[tuple[str, str, type[Base], list[str]]] = [
        ("device_types", "device type", DeviceTypeRow, [doc.name for doc in bundle.device_types]),
        ("locations", "location", LocationRow, [doc.name for doc in bundle.locations]),
        ("devices", "device", DeviceRow, [doc.name for doc in bundle.devices]),
    ]
    twice: list[tuple[str, Problem]] = []
    taken: list[tuple[str, Problem]] = []
    for section, label, table, names in sections:
        first: dict[str, int] = {}
        for index, name in enumerate(names):
            subject = f"{label} {name!r}"
            if name in first:
                reason = f"appears twice in the bundle (also {section}.{first[name]})"
                twice.append((subject, {"field": f"{section}.{index}.name", "reason": reason}))
            else:
                first[name] = index
        for name, index in first.items():
            if session.get(table, name) is not None:
                problem = {"field": f"{section}.{index}.name", "reason": "already exists"}
                taken.append((f"{label} {name!r}", problem))
    _refuse(Conflict, twice + taken)


def register_bundle(session: Session, bundle: DeviceBundle) -> Registered:
    """Register the bundle's types, locations and devices, all or nothing.

    Checked in order, nothing written until every check passed: names given twice or
    already registered (``Conflict``); then types' defaults, and each device's type and
    location (known in the database or defined in the bundle), parameters and simulator
    (one ``ValidationFailed`` listing every problem). A failure after that (the database)
    raises out of the caller's session, which rolls everything back.
    """
    _refuse_taken_names(session, bundle)
    types = {doc.name: doc for doc in bundle.device_types}
    locations = {doc.name for doc in bundle.locations}
    for name in sorted({device.type for device in bundle.devices} - types.keys()):
        type_row = session.get(DeviceTypeRow, name)
        if type_row is not None:
            types[name] = type_document(type_row)
    for name in sorted({device.location for device in bundle.devices} - locations):
        if session.get(LocationRow, name) is not None:
            locations.add(name)
    problems: list[tuple[str, Problem]] = []
    for index, device_type in enumerate(bundle.device_types):
        subject = f"device type {device_type.name!r}"
        problems += [(subject, p) for p in type_problems(device_type, f"device_types.{index}.")]
    for index, device in enumerate(bundle.devices):
        subject = f"device {device.name!r}"
        problems += [(subject, p) for p in device_problems(device, types, locations, f"devices.{index}.")]
    _refuse(ValidationFailed, problems)

    session.add_all(
        DeviceTypeRow(name=doc.name, kind=doc.kind, document=_stored(doc)) for doc in bundle.device_types
    )
    session.add_all(
        LocationRow(name=doc.name, kind=doc.kind, timezone=doc.timezone, document=_stored(doc))
        for doc in bundle.locations
    )
    session.flush()  # types and locations before the devices that refer to them
    session.add_all(_device_row(doc) for doc in bundle.devices)
    session.flush()
    return Registered(
        device_types=[doc.name for doc in bundle.device_types],
        locations=[doc.name for doc in bundle.locations],
        devices=[doc.name for doc in bundle.devices],
    )


def unregister(session: Session, registered: Registered) -> None:
    """Remove what ``register_bundle`` registered: devices, then locations, then types (gone ones skipped)."""
    for name in registered.devices:
        session.execute(sa.delete(DeviceBindingRow).where(DeviceBindingRow.device == name))
        session.execute(sa.delete(DeviceStateRow).where(DeviceStateRow.device == name))
    mqtt_auth.forget(session, registered.devices)
    _delete_names(session, DeviceRow, DeviceRow.name, registered.devices)
    _delete_names(session, LocationRow, LocationRow.name, registered.locations)
    _delete_names(session, DeviceTypeRow, DeviceTypeRow.name, registered.device_types)


def _delete_names(session: Session, table: type[Base], column: Any, names: Iterable[str]) -> None:
    wanted = list(names)
    if wanted:
        session.execute(sa.delete(table).where(column.in_(wanted)))


# --- bindings -----------------------------------------------------------------------------------


def _choose(
    session: Session, subject: str, needs: Mapping[str, tuple[str, int]], location: str
) -> tuple[dict[str, list[str]], list[tuple[str, Problem]]]:
    """The devices each alias would get at ``location``, and what the location lacks."""
    if session.get(LocationRow, location) is None:
        return {}, [(subject, {"field": "location", "reason": f"unknown location {location!r}"})]
    chosen: dict[str, list[str]] = {}
    problems: list[tuple[str, Problem]] = []
    for alias, (type_name, count) in needs.items():
        field = f"devices.{alias}"
        if count < 1:
            problems.append((subject, {"field": field, "reason": f"needs at least 1 device, not {count}"}))
            continue
        if session.get(DeviceTypeRow, type_name) is None:
            problems.append((subject, {"field": field, "reason": f"unknown device type {type_name!r}"}))
            continue
        found = [row.name for row in list_devices(session, location=location, type=type_name)]
        if len(found) < count:
            reason = (
                f"location {location!r} has {len(found)} device(s) of type {type_name!r}; "
                f"{alias!r} needs {count}"
            )
            problems.append((subject, {"field": field, "reason": reason}))
        chosen[alias] = found[:count]
    return chosen, problems


def need_problems(session: Session, needs: Mapping[str, tuple[str, int]], location: str) -> list[Problem]:
    """What ``location`` lacks for ``needs`` (alias → (device type, count)); empty when it has it all."""
    return [problem for _, problem in _choose(session, "app", needs, location)[1]]


def bind(
    session: Session, app_instance_id: str, needs: Mapping[str, tuple[str, int]], location: str
) -> dict[str, list[str]]:
    """Bind, for each alias, ``count`` devices of its type at ``location`` to the app instance.

    ``needs`` maps an alias to (device type, count). Devices are picked by name, the same
    ones for every app instance (a device serves any number of them). The app instance's
    earlier bindings are replaced. ``ValidationFailed`` naming the type and the location
    when the location lacks enough devices of a type (or is unknown); nothing is bound then.
    """
    chosen, problems = _choose(session, f"app instance {app_instance_id!r}", needs, location)
    _refuse(ValidationFailed, problems)
    unbind(session, app_instance_id)
    session.add_all(
        DeviceBindingRow(app_instance_id=app_instance_id, alias=alias, device=device)
        for alias, devices in chosen.items()
        for device in devices
    )
    return chosen


def bindings_of(session: Session, app_instance_id: str) -> dict[str, list[str]]:
    """The devices bound to each alias of an app instance."""
    query = (
        sa.select(DeviceBindingRow)
        .where(DeviceBindingRow.app_instance_id == app_instance_id)
        .order_by(DeviceBindingRow.alias, DeviceBindingRow.device)
    )
    found: dict[str, list[str]] = {}
    for row in session.scalars(query):
        found.setdefault(row.alias, []).append(row.device)
    return found


def unbind(session: Session, app_instance_id: str) -> int:
    """Drop every binding of an app instance; how many there were."""
    result = session.execute(
        sa.delete(DeviceBindingRow).where(DeviceBindingRow.app_instance_id == app_instance_id)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def bound_instances(session: Session, device: str) -> list[str]:
    """The app instances a device is bound to."""
    query = sa.select(DeviceBindingRow.app_instance_id).where(DeviceBindingRow.device == device).distinct()
    return sorted(session.scalars(query))


# --- latest states ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatestState:
    """A device's latest reading or frame (sensor) or state (controller)."""

    device: str
    kind: str
    values: dict[str, Any]
    time: datetime
    updated_at: datetime


def record_state(session: Session, device: str, kind: str, values: Mapping[str, Any], time: datetime) -> None:
    """Keep ``values`` (JSON-serialisable) as a registered device's latest ``kind`` (see ``STATE_KINDS``)."""
    if kind not in STATE_KINDS:
        raise ValueError(f"state kind {kind!r} is not one of {', '.join(STATE_KINDS)}")
    if session.get(DeviceRow, device) is None:
        raise NotFound(f"no device {device!r}")
    text = json.dumps(dict(values))
    row = session.get(DeviceStateRow, device)
    if row is None:
        row = DeviceStateRow(device=device)
        session.add(row)
    row.kind = kind
    row.values = text
    row.time = time
    row.updated_at = utcnow()


def read_state(session: Session, device: str) -> LatestState | None:
    """The latest reading or state of a device; None before its first."""
    row = session.get(DeviceStateRow, device)
    if row is None:
        return None
    return LatestState(
        device=row.device,
        kind=row.kind,
        values=json.loads(row.values),
        time=row.time,
        updated_at=row.updated_at,
    )
