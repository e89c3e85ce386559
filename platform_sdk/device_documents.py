"""Device documents: what a platform configurer registers (device types, locations, device instances).

They are JSON documents (``docs/devices.md``; JSON Schemas in ``docs/schemas/``), read by
the device manager's API and CLI, and carried in an app instance's binding config so
the SDK can validate a controller command before it is sent.

* ``DeviceType``: a sensor (its output fields, their types and units, its rate) or a
  controller (its commands with typed, ranged parameters, and the state it reports), the
  simulator that plays it, and the parameters an instance of it takes.
* ``Location``: where devices are (a school, a bank, a junction, a home), with its time zone
  and, optionally, the only users who may schedule apps there.
* ``DeviceInstance``: one device of a type at a location, simulated or real.
* ``DeviceBundle``: several of each in one file, registered all or nothing.

Numbers are finite: the documents refuse ``NaN`` and infinities, and a value checked against a
``ParamSpec`` (an instance parameter, a command parameter, a reading) must be finite and within
64 bits.
"""

from __future__ import annotations

import math
import re
import zoneinfo
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from platform_sdk.json_numbers import MAX_INT

DEVICE_NAME_PATTERN = r"^[a-z][a-z0-9-]{1,47}$"
FIELD_NAME_PATTERN = r"^[a-z_][a-z0-9_]{0,47}$"
USERNAME_PATTERN = r"^[a-z][a-z0-9_.-]{1,62}$"  # as the front door's identity accepts them
SIMULATORS = ("camera", "light", "temperature", "fan", "display", "ac")
# What an image output accepts unless its type says otherwise (a frame must fit one Kafka record).
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_BYTES = 4 * 1024 * 1024
MAX_IMAGE_BYTES_CEILING = 6 * 1024 * 1024

ParamType = Literal["int", "float", "bool", "string", "image"]
_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "string": (str,),
}
_ARTICLE_TYPE = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ParamSpec(_Strict):
    """A typed value: a sensor output, a command parameter, a state field or an instance parameter."""

    type: ParamType
    description: str = Field(default="", max_length=500)
    unit: str | None = Field(default=None, max_length=32)
    min: float | None = None
    max: float | None = None
    choices: list[str | int | float] | None = Field(default=None, description="The allowed values.")
    default: Any = Field(default=None, description="Instance parameters and optional command parameters.")
    required: bool = Field(default=True, description="Command and instance parameters: must be given.")
    max_width: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description=f"Images: widest frame accepted, in pixels (unset: {MAX_IMAGE_SIDE}).",
    )
    max_height: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description=f"Images: tallest frame accepted, in pixels (unset: {MAX_IMAGE_SIDE}).",
    )
    max_bytes: int | None = Field(
        default=None,
        ge=1,
        le=MAX_IMAGE_BYTES_CEILING,
        description=f"Images: largest frame accepted, in bytes (unset: {MAX_IMAGE_BYTES}).",
    )

    @model_validator(mode="after")
    def _range(self) -> ParamSpec:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            raise ValueError(f"min/max apply to numbers, not {self.type}")
        if self.type != "image" and (self.max_width or self.max_height or self.max_bytes):
            raise ValueError(f"max_width/max_height/max_bytes apply to images, not {self.type}")
        return self

    def image_limits(self) -> tuple[int, int, int]:
        """An image's largest (width, height, bytes): those set, else the defaults."""
        return (
            self.max_width or MAX_IMAGE_SIDE,
            self.max_height or MAX_IMAGE_SIDE,
            self.max_bytes or MAX_IMAGE_BYTES,
        )

    def problem(self, value: Any) -> str | None:
        """Why ``value`` does not fit, or None."""
        expected = _PYTHON_TYPES.get(self.type)
        if self.type == "image":
            return None if isinstance(value, bytes | str) else "must be an image"
        assert expected is not None
        if (isinstance(value, bool) and self.type != "bool") or not isinstance(value, expected):
            return f"must be {_ARTICLE_TYPE[self.type]}, not {value!r}"
        number: Any = value
        if isinstance(number, float) and not math.isfinite(number):
            return f"{value} is not a finite number"
        if isinstance(number, int) and not isinstance(number, bool) and abs(number) > MAX_INT:
            return f"{_ARTICLE_TYPE[self.type]} beyond the 64-bit range is not accepted"
        if self.min is not None and number < self.min:
            return f"{value} is below the minimum {self.min:g}"
        if self.max is not None and number > self.max:
            return f"{value} is above the maximum {self.max:g}"
        if self.choices is not None and value not in self.choices:
            return f"{value!r} is not one of {', '.join(map(str, self.choices))}"
        return None


def _check_names(fields: dict[str, Any]) -> dict[str, Any]:
    for name in fields:
        if not re.match(FIELD_NAME_PATTERN, name):
            raise ValueError(f"name {name!r} must match {FIELD_NAME_PATTERN}")
    return fields


class CommandSpec(_Strict):
    description: str = Field(default="", max_length=500)
    params: dict[str, ParamSpec] = Field(default_factory=dict)

    _names = field_validator("params")(classmethod(lambda cls, value: _check_names(value)))


class DeviceType(_Strict):
    """A kind of device: what it measures or what it obeys."""

    name: str = Field(pattern=DEVICE_NAME_PATTERN, description="e.g. camera, temperature, fan.")
    kind: Literal["sensor", "controller"]
    description: str = Field(default="", max_length=2000)
    simulator: Literal["camera", "light", "temperature", "fan", "display", "ac"] | None = Field(
        default=None, description="The built-in simulator that plays it; none: real devices only."
    )
    outputs: dict[str, ParamSpec] = Field(default_factory=dict, description="Sensors: fields of a reading.")
    rate_hz: float = Field(default=1.0, gt=0, le=100, description="Sensors: readings per second by default.")
    commands: dict[str, CommandSpec] = Field(default_factory=dict, description="Controllers: what they obey.")
    state: dict[str, ParamSpec] = Field(default_factory=dict, description="Controllers: what they report.")
    parameters: dict[str, ParamSpec] = Field(
        default_factory=dict, description="What an instance of this type is configured with."
    )

    _names = field_validator("outputs", "commands", "state", "parameters")(
        classmethod(lambda cls, value: _check_names(value))
    )

    @model_validator(mode="after")
    def _fits_kind(self) -> DeviceType:
        if self.kind == "sensor" and not self.outputs:
            raise ValueError("a sensor needs `outputs` (the fields of a reading)")
        if self.kind == "sensor" and self.commands:
            raise ValueError("a sensor takes no `commands`")
        if self.kind == "controller" and not self.commands:
            raise ValueError("a controller needs `commands`")
        if self.kind == "controller" and self.outputs:
            raise ValueError("a controller has `state`, not `outputs`")
        return self

    def command_problems(self, command: str, params: dict[str, Any]) -> list[dict[str, str]]:
        """What is wrong with ``command(**params)`` for this type: one entry per field."""
        spec = self.commands.get(command)
        if spec is None:
            known = ", ".join(sorted(self.commands)) or "none"
            return [
                {"field": "command", "reason": f"{self.name} has no command {command!r} (it has: {known})"}
            ]
        problems = [
            {"field": name, "reason": f"unknown parameter of {command}"}
            for name in params
            if name not in spec.params
        ]
        for name, param in spec.params.items():
            if name not in params:
                if param.required and param.default is None:
                    problems.append({"field": name, "reason": "missing"})
                continue
            reason = param.problem(params[name])
            if reason:
                problems.append({"field": name, "reason": reason})
        return problems


class Location(_Strict):
    """Where devices are."""

    name: str = Field(pattern=DEVICE_NAME_PATTERN)
    kind: str = Field(
        pattern=r"^[a-z][a-z_-]{1,31}$", description="school, bank, traffic-junction, home, office, ..."
    )
    timezone: str = Field(default="UTC", description="IANA time zone, e.g. Europe/Berlin; schedules use it.")
    description: str = Field(default="", max_length=2000)
    address: str | None = Field(default=None, max_length=500)
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    users: list[Annotated[str, Field(pattern=USERNAME_PATTERN)]] | None = Field(
        default=None,
        max_length=10_000,
        description="The users (by username) who may schedule apps here; absent: every user. "
        "Platform configurers may schedule anywhere.",
    )

    def open_to(self, username: str) -> bool:
        """May ``username`` (not a platform configurer) schedule apps here?"""
        return self.users is None or username in self.users

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (IANA names like Europe/Berlin)") from exc
        return value


class DeviceInstance(_Strict):
    """One device: a type at a location. Its name is its id on the bus."""

    name: str = Field(pattern=DEVICE_NAME_PATTERN)
    type: str = Field(pattern=DEVICE_NAME_PATTERN, description="A registered device type.")
    location: str = Field(pattern=DEVICE_NAME_PATTERN, description="A registered location.")
    simulated: bool = Field(default=True, description="Run the type's simulator; false: a real device.")
    description: str = Field(default="", max_length=2000)
    parameters: dict[str, Any] = Field(default_factory=dict, description="Values of the type's parameters.")


class DeviceBundle(_Strict):
    """Types, locations and devices in one file; registered all or nothing, in that order."""

    device_types: list[DeviceType] = Field(default_factory=list)
    locations: list[Location] = Field(default_factory=list)
    devices: list[DeviceInstance] = Field(default_factory=list)


class SimulatedDevice(_Strict):
    """One device a simulator host plays: its id, its type and its parameters (defaults filled in)."""

    id: str = Field(pattern=DEVICE_NAME_PATTERN, description="The device's name, its id on the bus.")
    type: DeviceType
    parameters: dict[str, Any] = Field(default_factory=dict)


class Binding(BaseModel):
    """One device alias of an app instance: the concrete device behind it and its type."""

    device_id: str
    type: DeviceType
