"""Artifact manifests: the documented formats of what developers upload.

A model zip carries ``model.json`` (``ModelManifest``) beside the model's code
and files. The manifest is validated by ``aiot model pack`` on the developer's
machine and again by the AI manager on upload; the REST wrapper reads it to
build its routes and input validators; the deployer reads requirements,
resources, replicas and the example. ``docs/models.md`` documents it and
``docs/schemas/model.schema.json`` is generated from it.

An app zip carries ``app.json`` (``AppManifest``): its entrypoint, whether it
serves web pages, and the models and devices it uses under aliases
(``docs/apps.md``, ``docs/schemas/app.schema.json``). Each running instance gets
an ``AppInstanceConfig`` from the deployer: those aliases bound to concrete
devices at its location and to models.

Field types (``FieldSpec.type``): ``int``, ``float``, ``bool``, ``string``,
``image`` (encoded JPEG/PNG bytes; base64 in JSON), ``list`` (with ``items``)
and ``object`` (any JSON object).

Versions (of models and apps) are PEP 440 versions written in ASCII (``VERSION_PATTERN``;
the upload refuses one PEP 440 cannot read): ``1.0.0``, ``2.1-rc1`` (a release candidate of
``2.1``), ``1.0.post1``. Every comparison of
versions goes through ``version_key``, ``latest``, ``same_version`` and ``find_version``
(``packaging.version``): a release ranks above its candidates, ``1.10`` above ``1.9``, and
"latest" is the highest release (a pre-release only when there is nothing else).

Manifests are read by one function, ``parse_manifest``, on upload (``aiot model pack`` and
``POST /api/models``, through ``platform_core.manifests``) and where the artifact runs (a
model replica, an app instance), so what the upload accepts is what runs: UTF-8 with or
without a byte-order mark, JSON, then the manifest's schema.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal, TypeVar

from packaging.version import InvalidVersion, Version
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from platform_sdk.device_documents import Binding
from platform_sdk.errors import ValidationFailed

MODEL_MANIFEST = "model.json"
APP_MANIFEST = "app.json"
NAME_PATTERN = r"^[a-z][a-z0-9-]{1,47}$"
# ASCII digits only: `\d` (in Python's re and in pydantic's) also takes other scripts' digits (U+0661...).
VERSION_PATTERN = r"^[0-9]+(\.[0-9]+){0,2}([.-]?[a-z0-9]+)?$"
ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
ENDPOINT_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
ALIAS_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
HEALTH_PATH_PATTERN = r"^/[A-Za-z0-9._~/-]{0,200}$"
FIELD_PATTERN = r"^[a-z_][a-z0-9_]{0,47}$"
BUILTIN_STEPS = ("decode_image", "decode_image_gray")

FieldType = Literal["int", "float", "bool", "string", "image", "list", "object"]
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
VersionKey = tuple[int, Version, str]
_ZERO = Version("0")


# --- versions -------------------------------------------------------------------------------


def parse_version(text: str) -> Version:
    """``text`` as a PEP 440 version; ``ValueError`` saying why not.

    Only what ``VERSION_PATTERN`` admits (ASCII digits, dots, lowercase letters, one ``-``
    or ``.`` before a suffix) and PEP 440 understands: ``2.1-rc1`` is ``2.1rc1``, a release
    candidate; ``1.0-foo`` is refused.
    """
    _check_version_text(text)
    try:
        return Version(text)
    except InvalidVersion:
        raise ValueError(
            f"version {text!r} is not a PEP 440 version (e.g. 1.0.0, 2.1-rc1, 1.0b2, 1.0.post1)"
        ) from None


def _check_version_text(text: str) -> None:
    """``ValueError`` saying what is wrong when ``text`` does not match ``VERSION_PATTERN``."""
    if re.fullmatch(VERSION_PATTERN, text):
        return
    foreign = sorted({ch for ch in text if not ch.isascii()})
    if foreign:
        shown = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in foreign)
        raise ValueError(
            f"version {text!r} has characters that are not ASCII: {shown}; "
            "write it with ASCII digits and letters, e.g. 1.0.0 or 2.1-rc1"
        )
    raise ValueError(f"version {text!r} must match {VERSION_PATTERN} (e.g. 1.0.0 or 2.1-rc1)")


def _version_text(value: Any) -> Any:
    """A version field's text with characters that are not ASCII refused saying so (a digit of
    another script looks like an ASCII one); everything else is left to the field's pattern."""
    if isinstance(value, str) and not value.isascii():
        _check_version_text(value)
    return value


def _parsed(text: str) -> Version | None:
    try:
        return parse_version(text)
    except ValueError:
        return None


def version_key(text: str) -> VersionKey:
    """A sort key in PEP 440 order (``2.1-rc1`` < ``2.1`` < ``2.1.post1`` < ``2.2``; ``1.9`` < ``1.10``).

    A stored string that is not a valid version (one kept from before versions were checked)
    sorts below every valid one; equal versions spelt differently (``1.0``, ``1.0.0``) by
    their text, so the order is total.
    """
    parsed = _parsed(text)
    return (0, _ZERO, text) if parsed is None else (1, parsed, text)


def latest(items: Iterable[T], version_of: Callable[[T], str]) -> T | None:
    """The item with the latest version: the highest release, as PEP 440 picks one.

    Pre-releases (``rc``, ``b``, ``a``, ``dev``) are left out while there is any release,
    so a candidate is tried by pinning it and "latest" moves once it is released; among
    pre-releases only, the highest. None when ``items`` is empty.
    """
    candidates = list(items)
    releases = [
        item
        for item in candidates
        if (parsed := _parsed(version_of(item))) is not None and not parsed.is_prerelease
    ]
    return max(releases or candidates, key=lambda item: version_key(version_of(item)), default=None)


def same_version(one: str, other: str) -> bool:
    """Whether two version strings name one version (``1.0`` and ``1.0.0``, ``2.1-rc1`` and ``2.1rc1``)."""
    if one == other:
        return True
    first, second = _parsed(one), _parsed(other)
    return first is not None and first == second


def find_version(items: Iterable[T], wanted: str, version_of: Callable[[T], str]) -> T | None:
    """The item whose version is ``wanted`` (the same text first, else the same PEP 440 version)."""
    candidates = list(items)
    exact = next((item for item in candidates if version_of(item) == wanted), None)
    if exact is not None:
        return exact
    return next((item for item in candidates if same_version(version_of(item), wanted)), None)


# A version field. That it is a PEP 440 version is checked where new ones come in (the upload's
# content checks, ``parse_version``), so that a manifest stored before that check is still read.
VersionText = Annotated[str, Field(pattern=VERSION_PATTERN, max_length=32), BeforeValidator(_version_text)]


# --- reading manifests ----------------------------------------------------------------------


def parse_manifest(raw: bytes, manifest_type: type[M], *, file: str) -> M:
    """The one reader of ``model.json`` and ``app.json``, on upload and where the artifact runs.

    ``raw`` is UTF-8, with or without a byte-order mark (how some editors save UTF-8),
    holding a JSON object valid as ``manifest_type``. Otherwise ``ValidationFailed`` whose
    message names ``file``, the field and the reason and whose ``details`` list every problem
    as ``{"file", "field", "reason"}`` (``field`` is None for the document as a whole).
    """
    try:
        document = json.loads(raw.decode("utf-8-sig"), parse_constant=_no_constant, parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        raise _manifest_failure(file, [(None, f"is not valid JSON (not UTF-8: {exc})")]) from exc
    except json.JSONDecodeError as exc:
        reason = f"is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        raise _manifest_failure(file, [(None, reason)]) from exc
    except ValueError as exc:  # a number JSON cannot hold
        raise _manifest_failure(file, [(None, f"is not valid JSON ({exc})")]) from exc
    except RecursionError as exc:
        raise _manifest_failure(file, [(None, "is not valid JSON (nested too deeply)")]) from exc
    try:
        return manifest_type.model_validate(document)
    except ValidationError as exc:
        problems: list[tuple[str | None, str]] = [
            (".".join(str(part) for part in error["loc"]) or "(document)", error["msg"])
            for error in exc.errors(include_url=False, include_input=False)
        ]
        raise _manifest_failure(file, problems) from exc


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError("a number too large for a 64-bit float")
    return value


def _manifest_failure(file: str, problems: list[tuple[str | None, str]]) -> ValidationFailed:
    field, reason = problems[0]
    where = file + (f" field {field}" if field else "")
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return ValidationFailed(
        f"{where}: {reason}{more}",
        details=[{"file": file, "field": field, "reason": reason} for field, reason in problems],
    )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FieldSpec(_Strict):
    """One input or output field of an endpoint."""

    type: FieldType = Field(description="int, float, bool, string, image, list (see items) or object.")
    items: FieldSpec | None = Field(default=None, description="Type of the elements of a list.")
    description: str = Field(default="", max_length=500)
    unit: str | None = Field(default=None, max_length=32, description="Unit of a number, e.g. °C.")
    required: bool = Field(default=True, description="Inputs only: whether the caller must send it.")

    @model_validator(mode="after")
    def _items_only_for_lists(self) -> FieldSpec:
        if self.type == "list" and self.items is None:
            raise ValueError("a list field needs `items` (the type of its elements)")
        if self.type != "list" and self.items is not None:
            raise ValueError(f"`items` is for lists only, not {self.type}")
        return self


class EndpointSpec(_Strict):
    """One prediction endpoint: ``POST /predict/<name>``."""

    name: str = Field(pattern=ENDPOINT_PATTERN, description="Lowercase letters, digits and _.")
    description: str = Field(default="", max_length=500)
    method: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Method of the entrypoint class that serves it (default: `predict`). "
        "A function entrypoint serves one endpoint.",
    )
    inputs: dict[str, FieldSpec] = Field(min_length=1, description="Input fields by name.")
    outputs: dict[str, FieldSpec] = Field(min_length=1, description="Output fields by name.")
    preprocess: list[str] = Field(
        default_factory=list,
        description="Steps applied to the inputs before the model: built-in "
        f"({', '.join(BUILTIN_STEPS)}: image fields to numpy arrays) or `module:function` "
        "of the model's code taking and returning the input dict.",
    )
    postprocess: list[str] = Field(
        default_factory=list,
        description="`module:function` steps taking and returning the output dict.",
    )

    @field_validator("inputs", "outputs")
    @classmethod
    def _field_names(cls, fields: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
        for name in fields:
            if not re.match(FIELD_PATTERN, name):
                raise ValueError(f"field name {name!r} must match {FIELD_PATTERN}")
        return fields

    @field_validator("preprocess", "postprocess")
    @classmethod
    def _steps(cls, steps: list[str]) -> list[str]:
        for step in steps:
            if step not in BUILTIN_STEPS and not re.match(ENTRYPOINT_PATTERN, step):
                raise ValueError(
                    f"step {step!r} is neither built in ({', '.join(BUILTIN_STEPS)}) nor module:function"
                )
        return steps


class Resources(_Strict):
    cpu: float = Field(default=1.0, gt=0, le=64, description="CPUs per replica (a limit on docker).")
    memory_mb: int = Field(default=512, ge=32, le=262144, description="Memory per replica in MB.")


class Example(_Strict):
    """A smoke test run at deploy time: the deploy fails when the output differs."""

    endpoint: str = Field(pattern=ENDPOINT_PATTERN)
    input: dict[str, Any] = Field(
        description="Input fields; an image field names a file in the zip (e.g. `examples/face.jpg`)."
    )
    output: dict[str, Any] = Field(
        default_factory=dict,
        description="Expected output fields (a subset; numbers compared within `tolerance`).",
    )
    tolerance: float = Field(default=1e-6, ge=0, description="Relative tolerance of numbers.")


class ModelManifest(_Strict):
    """``model.json``: what a model is and how to serve it."""

    name: str = Field(pattern=NAME_PATTERN, description="a-z, 0-9 and -; 2 to 48 long.")
    version: VersionText = Field(description="A PEP 440 version, e.g. 1.0.0 or 2.1-rc1.")
    description: str = Field(default="", max_length=2000)
    author: str = Field(default="", max_length=200)
    framework: str = Field(default="python", max_length=64, description="e.g. opencv, scikit-learn, numpy.")
    entrypoint: str = Field(
        pattern=ENTRYPOINT_PATTERN,
        description="`module:Class` (loaded once; one method per endpoint) or `module:function` "
        "(one endpoint). The module is a .py file or package in the zip.",
    )
    endpoints: list[EndpointSpec] = Field(min_length=1, max_length=32)
    requirements: list[str] = Field(default_factory=list, max_length=100, description="pip specifiers.")
    resources: Resources = Field(default_factory=Resources)
    replicas: int = Field(default=1, ge=1, le=16, description="Copies served side by side.")
    example: Example | None = None

    @field_validator("endpoints")
    @classmethod
    def _unique_endpoints(cls, endpoints: list[EndpointSpec]) -> list[EndpointSpec]:
        names = [endpoint.name for endpoint in endpoints]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"endpoint names repeat: {', '.join(repeated)}")
        return endpoints

    @model_validator(mode="after")
    def _example_names_an_endpoint(self) -> ModelManifest:
        if self.example is not None:
            endpoint = self.endpoint(self.example.endpoint)
            if endpoint is None:
                raise ValueError(f"example.endpoint {self.example.endpoint!r} is not one of the endpoints")
            unknown = sorted(set(self.example.input) - set(endpoint.inputs))
            if unknown:
                raise ValueError(f"example.input has fields the endpoint does not take: {', '.join(unknown)}")
        return self

    @property
    def entry_module(self) -> str:
        return self.entrypoint.split(":", 1)[0]

    @property
    def entry_attribute(self) -> str:
        return self.entrypoint.split(":", 1)[1]

    def endpoint(self, name: str) -> EndpointSpec | None:
        return next((endpoint for endpoint in self.endpoints if endpoint.name == name), None)


class ModelUse(_Strict):
    """A model an app calls, under an alias: ``app.model_call(alias, endpoint, ...)``."""

    model: str = Field(pattern=NAME_PATTERN, description="The model's name (as in its model.json).")
    version: VersionText | None = Field(
        default=None, description="A pinned version; empty: the latest deployed release."
    )
    endpoints: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Endpoints the app calls; checked against the model on upload.",
    )

    @field_validator("endpoints")
    @classmethod
    def _endpoint_names(cls, endpoints: list[str]) -> list[str]:
        for name in endpoints:
            if not re.match(ENDPOINT_PATTERN, name):
                raise ValueError(f"endpoint name {name!r} must match {ENDPOINT_PATTERN}")
        return endpoints


class DeviceNeed(_Strict):
    """Devices an app needs at its location, under an alias, bound when an instance starts."""

    type: str = Field(
        pattern=r"^[a-z][a-z0-9-]{0,47}$", description="A registered device type (e.g. `camera`, `fan`)."
    )
    count: int = Field(
        default=1,
        ge=1,
        le=16,
        description="How many; with more than one the app sees aliases `<alias>.1` … `<alias>.<count>`.",
    )


class WebSpec(_Strict):
    """A web app serves its own pages on the port the platform gives it (``app.port``)."""

    health_path: str = Field(
        default="/health",
        pattern=HEALTH_PATH_PATTERN,
        description="Answers 200 once the app is up; the deployer waits for it.",
    )
    title: str = Field(default="", max_length=200, description="Title of its pages (shown with its address).")


class AppManifest(_Strict):
    """``app.json``: what an app is, what it runs and what it uses."""

    name: str = Field(pattern=NAME_PATTERN, description="a-z, 0-9 and -; 2 to 48 long.")
    version: VersionText = Field(description="A PEP 440 version, e.g. 1.0.0 or 2.1-rc1.")
    description: str = Field(default="", max_length=2000)
    author: str = Field(default="", max_length=200)
    entrypoint: str = Field(
        pattern=ENTRYPOINT_PATTERN,
        description="`module:function` called with the running `platform_sdk.App`; it runs until "
        "`app.stopping` is set (a function that returns or raises earlier is restarted like any "
        "managed service). The module is a .py file or package in the zip.",
    )
    kind: Literal["web", "backend"] = Field(
        default="web", description="`web`: serves pages and a health path over HTTP; `backend`: no HTTP."
    )
    web: WebSpec | None = Field(default=None, description="A web app's HTTP (defaults apply when empty).")
    requirements: list[str] = Field(default_factory=list, max_length=100, description="pip specifiers.")
    resources: Resources = Field(default_factory=Resources)
    models: dict[str, ModelUse] = Field(
        default_factory=dict, max_length=32, description="Models by alias (like a Spring context file)."
    )
    devices: dict[str, DeviceNeed] = Field(
        default_factory=dict, max_length=32, description="Devices needed at the location, by alias."
    )

    @field_validator("models", "devices")
    @classmethod
    def _aliases(cls, uses: dict[str, Any]) -> dict[str, Any]:
        for alias in uses:
            if not re.match(ALIAS_PATTERN, alias):
                raise ValueError(f"alias {alias!r} must match {ALIAS_PATTERN}")
        return uses

    @model_validator(mode="after")
    def _web_spec(self) -> AppManifest:
        if self.kind == "web" and self.web is None:
            self.web = WebSpec()
        if self.kind == "backend" and self.web is not None:
            raise ValueError("`web` is for web apps; a backend app has no HTTP")
        return self

    @property
    def entry_module(self) -> str:
        return self.entrypoint.split(":", 1)[0]

    @property
    def entry_attribute(self) -> str:
        return self.entrypoint.split(":", 1)[1]

    def device_aliases(self) -> list[str]:
        """The aliases app code uses: one per device (``cam``, or ``cam.1`` … for a count > 1)."""
        return [
            alias if need.count == 1 else f"{alias}.{index}"
            for alias, need in self.devices.items()
            for index in range(1, need.count + 1)
        ]


class ModelBinding(BaseModel):
    """The model behind one model alias of an app instance."""

    model: str
    version: str | None = None


class AppInstanceConfig(BaseModel):
    """What the deployer generates for one app instance (``AIOT_APP__INSTANCE``), read by the SDK."""

    instance_id: str
    app: str
    version: str
    location: str
    timezone: str = "UTC"
    owner: str = Field(default="", description="The end user who scheduled the instance.")
    devices: dict[str, Binding] = Field(default_factory=dict, description="Device alias → bound device.")
    models: dict[str, ModelBinding] = Field(default_factory=dict, description="Model alias → model.")


def json_schema_document(model: type[BaseModel], name: str) -> str:
    """The JSON Schema of a document format as published in ``docs/schemas/<name>.schema.json``."""
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://aiot.example/schemas/{name}.schema.json",
        **model.model_json_schema(),
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def manifest_json_schema() -> str:
    """The JSON Schema of ``model.json``."""
    return json_schema_document(ModelManifest, "model")


def model_id_for(name: str) -> str:
    """The stable id of a model: a hash of its name, the same for every version."""
    return "m" + hashlib.sha256(name.encode()).hexdigest()[:11]


def app_id_for(name: str) -> str:
    """The stable id of an app: a hash of its name, the same for every version."""
    return "a" + hashlib.sha256(name.encode()).hexdigest()[:11]
