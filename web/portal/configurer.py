"""The platform configurer's pages: users; device types, locations and devices; nodes.

Every action is the matching ``/api`` route called as the signed-in configurer (``core.api``):
``/api/users…`` for users, ``/api/devices…`` for the device registry (which asks the device manager
over the bus). ``/devices/live.json`` is what the devices page polls for readings and controller
states: ``GET /api/devices`` reduced to each device's latest state; ``/nodes/live.json`` is
``GET /api/nodes`` (the node manager's answer over the bus) for the nodes page.
"""

from __future__ import annotations

import json
from typing import Any

import flask
from pydantic import Field
from werkzeug.wrappers import Response

from platform_core.auth import Role, allow, page
from platform_sdk.errors import BadRequest, PlatformError, ValidationFailed
from web.identity_api import MAX_PASSWORD_LENGTH
from web.portal.core import Model, api, blueprint, done, form_as, form_page, perform

CONFIGURER = Role.PLATFORM_CONFIGURER


class NewUserForm(Model):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)
    role: Role
    email: str = Field(default="", max_length=255)


class ResetForm(Model):
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


class NewLocationForm(Model):
    name: str = Field(min_length=1, max_length=64)
    kind: str = Field(min_length=1, max_length=32)
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    description: str = Field(default="", max_length=2000)


class NewDeviceForm(Model):
    name: str = Field(min_length=1, max_length=64)
    type: str = Field(min_length=1, max_length=64)
    location: str = Field(min_length=1, max_length=64)
    simulated: bool = False
    parameters: str = Field(default="", max_length=100_000)


# --- users ---------------------------------------------------------------------------------------


def _users_context() -> dict[str, Any]:
    return {"users": api("GET", "/api/users")["users"], "roles": [role.value for role in Role]}


@blueprint.get("/users")
@allow(CONFIGURER)
@page
def users() -> tuple[str, int]:
    """Every user, a form to create one, and each one's disable / enable / reset."""
    return form_page("users.html", _users_context)


@blueprint.post("/users")
@allow(CONFIGURER)
@page
def create_user() -> Response | tuple[str, int]:
    try:
        form = form_as(NewUserForm, flask.request.form.to_dict())
        body = {"username": form.username, "password": form.password, "role": form.role.value}
        api("POST", "/api/users", json=body | ({"email": form.email} if form.email else {}))
    except PlatformError as error:
        return form_page("users.html", _users_context, error)
    return done("portal.users", f"User {form.username} created ({form.role.value}).")


def _switch_user(username: str, action: str) -> Response | tuple[str, int]:
    def switch() -> str:
        api("POST", f"/api/users/{username}/{action}")
        return f"User {username} {action}d."

    return perform(switch, "users.html", _users_context, "portal.users")


@blueprint.post("/users/<username>/disable")
@allow(CONFIGURER)
@page
def disable_user(username: str) -> Response | tuple[str, int]:
    """Disable a user: their sessions and tokens end at once."""
    return _switch_user(username, "disable")


@blueprint.post("/users/<username>/enable")
@allow(CONFIGURER)
@page
def enable_user(username: str) -> Response | tuple[str, int]:
    return _switch_user(username, "enable")


class RoleForm(Model):
    role: Role


@blueprint.post("/users/<username>/role")
@allow(CONFIGURER)
@page
def change_role(username: str) -> Response | tuple[str, int]:
    """Give a user another role (from their next page on)."""

    def change() -> str:
        form = form_as(RoleForm, flask.request.form.to_dict())
        api("POST", f"/api/users/{username}/role", json={"role": form.role.value})
        return f"User {username} now has the role {form.role.value.replace('_', ' ')}."

    return perform(change, "users.html", _users_context, "portal.users")


@blueprint.post("/users/<username>/password")
@allow(CONFIGURER)
@page
def reset_password(username: str) -> Response | tuple[str, int]:
    try:
        form = form_as(ResetForm, flask.request.form.to_dict())
        answer = api("POST", f"/api/users/{username}/password", json={"password": form.password})
    except PlatformError as error:
        return form_page("users.html", _users_context, error)
    return done("portal.users", f"Password of {username} reset; {answer['revoked_tokens']} session(s) ended.")


# --- device types, locations, devices ------------------------------------------------------------


def _devices_context() -> dict[str, Any]:
    return {
        "device_types": api("GET", "/api/devices/types")["device_types"],
        "locations": api("GET", "/api/devices/locations")["locations"],
        "devices": api("GET", "/api/devices")["devices"],
    }


def _json_field(text: str, field: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationFailed(
            f"{field} is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            details=[{"field": field, "reason": f"not JSON: {exc.msg} at line {exc.lineno}"}],
        ) from exc


@blueprint.get("/devices")
@allow(CONFIGURER)
@page
def devices() -> tuple[str, int]:
    """Types, locations and devices with their latest state (kept fresh by polling live.json)."""
    return form_page("devices.html", _devices_context)


@blueprint.get("/devices/live.json")
@allow(CONFIGURER)
@page
def devices_live() -> flask.Response:
    """Each device's latest state, for the devices page to show without reloading."""
    found = api("GET", "/api/devices")["devices"]
    return flask.jsonify(states={device["name"]: device.get("state") for device in found})


@blueprint.post("/devices/types")
@allow(CONFIGURER)
@page
def create_device_type() -> Response | tuple[str, int]:
    try:
        document = _json_field(flask.request.form.get("document", ""), "document")
        if not isinstance(document, dict):
            raise BadRequest("the device type must be a JSON object (see docs/devices.md)")
        answer = api("POST", "/api/devices/types", json=document)
    except PlatformError as error:
        return form_page("devices.html", _devices_context, error)
    return done("portal.devices", f"Device type {answer.get('name', '')} registered.")


@blueprint.post("/devices/locations")
@allow(CONFIGURER)
@page
def create_location() -> Response | tuple[str, int]:
    try:
        form = form_as(NewLocationForm, flask.request.form.to_dict())
        api("POST", "/api/devices/locations", json=form.model_dump())
    except PlatformError as error:
        return form_page("devices.html", _devices_context, error)
    return done("portal.devices", f"Location {form.name} registered.")


@blueprint.post("/devices/new")
@allow(CONFIGURER)
@page
def create_device() -> Response | tuple[str, int]:
    try:
        form = form_as(NewDeviceForm, flask.request.form.to_dict())
        parameters = _json_field(form.parameters, "parameters") if form.parameters.strip() else {}
        body = form.model_dump(exclude={"parameters"}) | {"parameters": parameters}
        answer = api("POST", "/api/devices", json=body)
    except PlatformError as error:
        return form_page("devices.html", _devices_context, error)
    credentials = answer.get("mqtt_credentials")
    shown = (
        f" MQTT username {credentials['username']}, password {credentials['password']} (shown once)."
        if credentials
        else ""
    )
    return done("portal.devices", f"Device {form.name} registered.{shown}")


@blueprint.post("/devices/bulk")
@allow(CONFIGURER)
@page
def import_devices() -> Response | tuple[str, int]:
    try:
        upload = flask.request.files.get("bundle")
        text = upload.read().decode("utf-8", "replace") if upload and upload.filename else ""
        document = _json_field(text or flask.request.form.get("document", ""), "bundle")
        answer = api("POST", "/api/devices/bulk", json=document)
    except PlatformError as error:
        return form_page("devices.html", _devices_context, error)
    counts = ", ".join(f"{count} {what}" for what, count in answer.get("counts", {}).items())
    return done("portal.devices", f"Imported {counts}.")


@blueprint.post("/devices/<name>/delete")
@allow(CONFIGURER)
@page
def delete_device(name: str) -> Response | tuple[str, int]:
    def delete() -> str:
        api("DELETE", f"/api/devices/{name}")
        return f"Device {name} deregistered."

    return perform(delete, "devices.html", _devices_context, "portal.devices")


# --- nodes ---------------------------------------------------------------------------------------


@blueprint.get("/nodes")
@allow(CONFIGURER)
@page
def nodes() -> tuple[str, int]:
    """The nodes with their load and the services on each, and the latest incidents (kept fresh by
    polling live.json)."""
    return form_page("nodes.html", lambda: api("GET", "/api/nodes"))


@blueprint.get("/nodes/live.json")
@allow(CONFIGURER)
@page
def nodes_live() -> flask.Response:
    """``GET /api/nodes``, for the nodes page to show without reloading."""
    return flask.jsonify(api("GET", "/api/nodes"))
