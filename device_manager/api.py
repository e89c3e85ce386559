"""``/api/devices``: register, list, show and delete device types, locations and devices (front door).

Platform configurers write; every other role reads (end users pick locations and devices
when they schedule apps). A location may be open to some users only (``Location.users``, set
with ``PUT /api/devices/locations/<name>/users``); the device manager's answers to the
scheduler and app listing apply it.

Platform configurers command controllers with ``POST /api/devices/<name>/commands``: checked
against the type and sent over the bus as the SDK sends it (``command_controller``, the same
``DeviceCommand`` request/reply an app's ``send_controller`` uses), answered with the device's
new state; a rejection is a 422 with the reason, a device that does not answer a 504 saying
what to check. App instances command the devices bound to them through the SDK on the bus,
not here (that binding rule is for the bus's ACLs to enforce).

Bodies are the documents of ``platform_sdk.device_documents``:
a malformed one is a 422 naming each field; a name taken is a 409 naming it; an unknown
type or location, parameters that do not fit the type, or a simulated device whose type
has no simulator is a 422 naming the device, the field and the reason; nothing is stored
then. ``POST /api/devices/bulk`` registers a ``DeviceBundle`` all or nothing.

A device's latest reading, frame summary or state (``state``, in ``GET /api/devices/<name>``
and for each device of ``GET /api/devices``) is read from its topic when asked, through the
front door's bus (``device_manager.states``); what cannot be read there (nothing on the
topic any more, no bus, or the list's ``web.device_list_budget_s`` spent) is the row the
device-manager service recorded, or null.

Registering a real device (``"simulated": false``) answers its MQTT credentials once
(``mqtt_credentials``: ``{"username", "password"}``; per device name from ``/bulk``);
``POST /api/devices/<name>/mqtt-credentials`` issues new ones, which replace the old (409
for a simulated device). The registry keeps only the password's hash (``mqtt_auth``).

After a device is registered or deleted (or gets new credentials) the device-manager
service is told with ``notify_device_change`` (a ``DeviceChanged`` on
``<prefix>.commands.device-manager``). The rows are committed first, then the notice is
sent; when it cannot be sent (no bus: ``Unavailable``, 503) the change is undone (what was
registered is removed again, a deleted device is registered again with its credentials, new
credentials give way to the old) and the error is raised, so the registry never holds a
device (or credentials) the service was not told about.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import flask
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from device_manager import mqtt_auth, registry, states
from device_manager.messages import DeviceChanged
from device_manager.models import DeviceRow, DeviceTypeRow, LocationRow
from platform_core.auth import Role, allow
from platform_core.http import body_as, query_as, resources
from platform_sdk.bus import Bus
from platform_sdk.device_documents import (
    USERNAME_PATTERN,
    Binding,
    DeviceBundle,
    DeviceInstance,
    DeviceType,
    Location,
)
from platform_sdk.devices import command_controller
from platform_sdk.errors import Timeout, Unavailable, ValidationFailed

log = logging.getLogger(__name__)
blueprint = flask.Blueprint("devices", __name__, url_prefix="/api/devices")
WRITERS = (Role.PLATFORM_CONFIGURER,)
READERS = (Role.PLATFORM_CONFIGURER, Role.AI_DEVELOPER, Role.APP_DEVELOPER, Role.END_USER)
# Who commands devices through the front door; app instances command their bound ones on the bus.
COMMANDERS = (Role.PLATFORM_CONFIGURER,)


def notify_device_change(action: Literal["added", "removed", "credentials"], device_name: str) -> None:
    """Tell the device-manager service a device was added or removed (or got new MQTT credentials);
    ``Unavailable`` without a bus."""
    requester = resources().bus_requester()
    requester.send(
        requester.bus.topics.device_manager,
        DeviceChanged(action=action, device=device_name),
        key=device_name,
    )


class DeviceFilter(BaseModel):
    """``GET /api/devices`` query: only devices at ``location`` and of ``type``."""

    model_config = ConfigDict(extra="forbid")
    location: str | None = None
    type: str | None = None


# --- JSON ---------------------------------------------------------------------------------------


def _document(row: DeviceTypeRow | LocationRow | DeviceRow) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(row.document)
    return document | {"created_at": row.created_at.isoformat()}


def _device_json(row: DeviceRow, device_type: DeviceType) -> dict[str, Any]:
    return _document(row) | {
        "kind": device_type.kind,
        "effective_parameters": registry.effective_parameters(device_type, registry.device_document(row)),
    }


def _devices_json(rows: list[DeviceRow], types: dict[str, DeviceType]) -> list[dict[str, Any]]:
    return [_device_json(row, types[row.type]) for row in rows]


def _all_types(session: Session) -> dict[str, DeviceType]:
    return {row.name: registry.type_document(row) for row in registry.list_types(session)}


def _bus() -> Bus | None:
    requester = resources().requester
    return None if requester is None else requester.bus


def _latest_states(
    rows: list[DeviceRow], types: dict[str, DeviceType], budget_s: float
) -> dict[str, dict[str, Any] | None]:
    """Each device's latest value: read from its topic while ``budget_s`` lasts, else its recorded row.

    Called outside any session (no transaction stays open while the bus is read). A topic
    the bus cannot read (no broker, or a topic not created yet) costs at most the read
    timeout, and the whole list at most ``budget_s``.
    """
    bus = _bus()
    read_timeout_s = resources().settings.device.state_read_timeout_s
    deadline = time.monotonic() + budget_s
    found: dict[str, dict[str, Any] | None] = {}
    for row in rows:
        device_type = types[row.type]
        remaining = deadline - time.monotonic()
        if bus is None or remaining <= 0:
            continue
        try:
            live = states.read_latest(bus, row.name, device_type.kind, timeout=min(read_timeout_s, remaining))
        except Unavailable as exc:
            log.warning("cannot read the latest state of %s from the bus: %s", row.name, exc)
            continue
        if live is not None:
            found[row.name] = states.state_json(live, device_type, "bus")
    missing = [row for row in rows if row.name not in found]
    if missing:
        with resources().database.session() as session:
            for row in missing:
                stored = registry.read_state(session, row.name)
                found[row.name] = (
                    None if stored is None else states.state_json(stored, types[row.type], "registry")
                )
    return found


# --- device types -------------------------------------------------------------------------------


@blueprint.post("/types")
@allow(*WRITERS)
def create_type() -> tuple[flask.Response, int]:
    """Register one ``DeviceType``."""
    document = body_as(DeviceType)
    with resources().database.session() as session:
        body = _document(registry.create_type(session, document))
    return flask.jsonify(body), 201


@blueprint.get("/types")
@allow(*READERS)
def list_types() -> flask.Response:
    with resources().database.session() as session:
        return flask.jsonify(device_types=[_document(row) for row in registry.list_types(session)])


@blueprint.get("/types/<name>")
@allow(*READERS)
def show_type(name: str) -> flask.Response:
    """One type and the names of its devices."""
    with resources().database.session() as session:
        row = registry.read_type(session, name)
        devices = [device.name for device in registry.list_devices(session, type=name)]
        return flask.jsonify(_document(row) | {"devices": devices})


@blueprint.delete("/types/<name>")
@allow(*WRITERS)
def delete_type(name: str) -> flask.Response:
    """Delete a type no device uses (409 naming the devices otherwise)."""
    with resources().database.session() as session:
        registry.delete_type(session, name)
    return flask.jsonify(name=name, deleted=True)


# --- locations ----------------------------------------------------------------------------------


@blueprint.post("/locations")
@allow(*WRITERS)
def create_location() -> tuple[flask.Response, int]:
    """Register one ``Location``."""
    document = body_as(Location)
    with resources().database.session() as session:
        body = _document(registry.create_location(session, document))
    return flask.jsonify(body), 201


@blueprint.get("/locations")
@allow(*READERS)
def list_locations() -> flask.Response:
    with resources().database.session() as session:
        return flask.jsonify(locations=[_document(row) for row in registry.list_locations(session)])


@blueprint.get("/locations/<name>")
@allow(*READERS)
def show_location(name: str) -> flask.Response:
    """One location with its devices."""
    with resources().database.session() as session:
        row = registry.read_location(session, name)
        devices = _devices_json(registry.list_devices(session, location=name), _all_types(session))
        return flask.jsonify(_document(row) | {"devices": devices})


@blueprint.delete("/locations/<name>")
@allow(*WRITERS)
def delete_location(name: str) -> flask.Response:
    """Delete a location without devices (409 naming them otherwise)."""
    with resources().database.session() as session:
        registry.delete_location(session, name)
    return flask.jsonify(name=name, deleted=True)


# --- devices ------------------------------------------------------------------------------------


def _undo(what: str, undo: Callable[[Session], object]) -> None:
    """Run the compensation ``undo(session)``; its own failure is logged, never raised over the first."""
    try:
        with resources().database.session() as session:
            undo(session)
    except Exception:
        log.exception("could not undo %s after the device manager was not told", what)


@blueprint.post("")
@allow(*WRITERS)
def create_device() -> tuple[flask.Response, int]:
    """Register one ``DeviceInstance`` and tell the device-manager service."""
    document = body_as(DeviceInstance)
    with resources().database.session() as session:
        row = registry.create_device(session, document)
        body = _device_json(row, registry.type_document(registry.read_type(session, row.type)))
        if not document.simulated:  # shown this once; the registry keeps its hash
            body["mqtt_credentials"] = mqtt_auth.issue(session, document.name).as_json()
    try:
        notify_device_change("added", document.name)
    except BaseException:
        _undo(f"device {document.name!r}", lambda session: registry.delete_device(session, document.name))
        raise
    return flask.jsonify(body), 201


@blueprint.post("/bulk")
@allow(*WRITERS)
def register_bundle() -> tuple[flask.Response, int]:
    """Register a ``DeviceBundle`` all or nothing, then tell the service about each device."""
    bundle = body_as(DeviceBundle)
    with resources().database.session() as session:
        registered = registry.register_bundle(session, bundle)
        credentials = {  # shown this once; the registry keeps their hashes
            device.name: mqtt_auth.issue(session, device.name).as_json()
            for device in bundle.devices
            if not device.simulated
        }
    told: list[str] = []
    try:
        for name in registered.devices:
            notify_device_change("added", name)
            told.append(name)
    except BaseException:
        for name in told:  # best effort: the service may already have started them
            try:
                notify_device_change("removed", name)
            except Exception:
                log.warning("could not tell the device manager that %s is removed again", name)
        _undo("the bundle", lambda session: registry.unregister(session, registered))
        raise
    names = {
        "device_types": registered.device_types,
        "locations": registered.locations,
        "devices": registered.devices,
    }
    return flask.jsonify(counts=registered.counts(), names=names, mqtt_credentials=credentials), 201


@blueprint.get("")
@allow(*READERS)
def list_devices() -> flask.Response:
    """Devices, by name, each with its latest ``state``; ``?location=`` and ``?type=`` narrow the list
    (404 for an unknown one)."""
    wanted = query_as(DeviceFilter)
    with resources().database.session() as session:
        if wanted.location is not None:
            registry.read_location(session, wanted.location)
        if wanted.type is not None:
            registry.read_type(session, wanted.type)
        rows = registry.list_devices(session, location=wanted.location, type=wanted.type)
        types = _all_types(session)
    latest = _latest_states(rows, types, resources().settings.web.device_list_budget_s)
    devices = [body | {"state": latest[body["name"]]} for body in _devices_json(rows, types)]
    return flask.jsonify(devices=devices)


@blueprint.get("/<name>")
@allow(*READERS)
def show_device(name: str) -> flask.Response:
    """One device: its document, effective parameters, its type's document, latest state, bindings."""
    with resources().database.session() as session:
        row = registry.read_device(session, name)
        device_type = registry.type_document(registry.read_type(session, row.type))
        bound_to = registry.bound_instances(session, name)
    latest = _latest_states([row], {row.type: device_type}, resources().settings.device.state_read_timeout_s)
    body = _device_json(row, device_type) | {
        "device_type": device_type.model_dump(mode="json", exclude_none=True),
        "state": latest[name],
        "bound_to": bound_to,
    }
    return flask.jsonify(body)


@blueprint.delete("/<name>")
@allow(*WRITERS)
def delete_device(name: str) -> flask.Response:
    """Delete a device no app instance is bound to (409 naming them otherwise) and tell the service."""
    with resources().database.session() as session:
        password_hash = mqtt_auth.stored_hash(session, name)
        row = registry.delete_device(session, name)
    document, created_at = registry.device_document(row), row.created_at

    def register_again(session: Session) -> None:
        registry.create_device(session, document, created_at)
        mqtt_auth.restore(session, name, password_hash)

    try:
        notify_device_change("removed", name)
    except BaseException:
        _undo(f"deleting {name!r}", register_again)
        raise
    return flask.jsonify(name=name, deleted=True)


@blueprint.post("/<name>/mqtt-credentials")
@allow(*WRITERS)
def issue_mqtt_credentials(name: str) -> tuple[flask.Response, int]:
    """New MQTT credentials for a real device, replacing its old ones (409 for a simulated device)."""
    with resources().database.session() as session:
        registry.read_device(session, name)
        previous = mqtt_auth.stored_hash(session, name)
        credentials = mqtt_auth.issue(session, name)
    try:
        notify_device_change("credentials", name)
    except BaseException:
        _undo(f"new MQTT credentials of {name!r}", lambda session: mqtt_auth.restore(session, name, previous))
        raise
    return flask.jsonify(device=name, mqtt_credentials=credentials.as_json()), 201


# --- commands and who may use a location --------------------------------------------------------


class CommandRequest(BaseModel):
    """``POST /api/devices/<name>/commands``: one of the controller type's commands and its parameters."""

    model_config = ConfigDict(extra="forbid")
    command: str = Field(min_length=1, max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)


class LocationUsers(BaseModel):
    """``PUT /api/devices/locations/<name>/users``: who may schedule apps there (null: everyone)."""

    model_config = ConfigDict(extra="forbid")
    users: list[Annotated[str, Field(pattern=USERNAME_PATTERN)]] | None = Field(max_length=10_000)


def _said(error: Timeout | Unavailable) -> tuple[flask.Response, int]:
    """A 5xx this route worded itself (what to do, nothing internal): shown, not hidden."""
    return flask.jsonify(error=error.to_dict(expose=True)), error.status


@blueprint.post("/<name>/commands")
@allow(*COMMANDERS)
def command_device(name: str) -> flask.Response | tuple[flask.Response, int]:
    """Send a controller a command over the bus, as an app does, and answer its new state.

    Checked against its type first (422 naming each parameter); the device's rejection is a 422
    with its reason; a device that does not answer a 504 saying what to check.
    """
    request = body_as(CommandRequest)
    with resources().database.session() as session:
        row = registry.read_device(session, name)
        device_type = registry.type_document(registry.read_type(session, row.type))
        host = (
            f"its simulator runs in sim-{row.location} (`aiot status`)"
            if row.simulated
            else "a real device must be connected to the MQTT gateway"
        )
    if device_type.kind != "controller":
        reason = f"{name!r} is a sensor ({device_type.name}); only controllers take commands"
        raise ValidationFailed(reason, details=[{"field": "device", "reason": reason}])
    binding = Binding(device_id=name, type=device_type)
    try:
        requester = resources().bus_requester()
        answer = command_controller(requester, binding, request.command, request.params, alias=name)
    except Timeout:
        return _said(
            Timeout(
                f"{name} did not answer {request.command!r} within "
                f"{requester.bus.settings.device.command_timeout_s:g}s: {host}; "
                f"`aiot device show {name}` shows when it last reported. Send it again once it runs."
            )
        )
    except Unavailable as exc:
        return _said(Unavailable(f"cannot reach the devices: {exc.message}"))
    return flask.jsonify(
        device=name,
        command=answer.command,
        state=answer.state,
        time=answer.time.isoformat(),
        by=answer.by,
    )


@blueprint.put("/locations/<name>/users")
@allow(*WRITERS)
def set_location_users(name: str) -> flask.Response:
    """Open a location to these users only (``{"users": null}``: to every user) → the location."""
    users = body_as(LocationUsers).users
    with resources().database.session() as session:
        body = _document(registry.set_location_users(session, name, users))
    return flask.jsonify(body)
