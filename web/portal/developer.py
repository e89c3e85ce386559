"""The developers' pages: models (upload, versions, deploy stages), apps (browse, upload), and logs.

Each page calls the ``/api`` routes as the signed-in user (``core.api``): ``/api/models`` (the AI
manager in this process, the deployer over the bus), ``/api/apps`` (the app manager), ``/api/logs``
(the logger's records, scoped to what the caller may read). An upload is forwarded as the
multipart ``file`` field the API takes; its 422 names each zip entry, field and reason, which the
page lists. ``/models/<name>/live.json`` is what a model's page polls for its deploy stages; a
model's page has a "try it" form per endpoint, made from its manifest's inputs, that calls
``POST /api/models/<name>/call`` once and shows the output.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import flask
from pydantic import Field
from werkzeug.wrappers import Response

from platform_core.auth import ALL_ROLES, Role, allow, page
from platform_sdk.errors import BadRequest, PlatformError, ValidationFailed
from web.portal.core import Model, api, blueprint, done, form_as, form_page, may

MODEL_READERS = (Role.AI_DEVELOPER, Role.APP_DEVELOPER, Role.PLATFORM_CONFIGURER)
MODEL_WRITERS = (Role.AI_DEVELOPER, Role.PLATFORM_CONFIGURER)
APP_WRITERS = (Role.APP_DEVELOPER, Role.PLATFORM_CONFIGURER)
LEVELS = ("", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _upload(path: str, what: str) -> Any:
    """Forward the form's ``file`` to the upload route at ``path``."""
    upload = flask.request.files.get("file")
    if upload is None or not upload.filename:
        raise BadRequest(f"choose the {what} zip to upload (field file)")
    return api("POST", path, data={"file": (upload.stream, upload.filename, "application/zip")})


# --- models --------------------------------------------------------------------------------------


def _models_context() -> dict[str, Any]:
    return {"models": api("GET", "/api/models")["models"]}


@blueprint.get("/models")
@allow(*MODEL_READERS)
@page
def models() -> tuple[str, int]:
    """Every model with its versions and deploy status; the upload form for who may upload."""
    return form_page("models.html", _models_context)


@blueprint.post("/models")
@allow(*MODEL_WRITERS)
@page
def upload_model() -> Response | tuple[str, int]:
    try:
        answer = _upload("/api/models", "model")
    except PlatformError as error:
        return form_page("models.html", _models_context, error)
    return done(
        "portal.model",
        f"Model {answer['name']} {answer['version']} uploaded: deploying.",
        name=answer["name"],
    )


@blueprint.get("/models/<name>")
@allow(*MODEL_READERS)
@page
def model(name: str) -> tuple[str, int]:
    """One model: each version's endpoints, deploy stages (live) and replicas, and how to call it."""
    return form_page("model.html", lambda: {"model": api("GET", f"/api/models/{name}")})


@blueprint.get("/models/<name>/live.json")
@allow(*MODEL_READERS)
@page
def model_live(name: str) -> flask.Response:
    """The model's versions as ``GET /api/models/<name>`` has them, for its page to poll."""
    return flask.jsonify(api("GET", f"/api/models/{name}"))


_ARTICLE = {"int": "an", "image": "an", "object": "an"}


def try_inputs(spec: dict[str, dict[str, Any]], form: Any, files: Any) -> dict[str, Any]:
    """The input fields of a "try it" form (``input.<field>``) as an endpoint's ``inputs`` say:
    numbers parsed, a checkbox a bool, an image file base64, a list or object JSON; an empty field
    is left out for the model to name. ``ValidationFailed`` naming each field that does not parse."""
    inputs: dict[str, Any] = {}
    problems = []
    for field, described in spec.items():
        kind = str(described.get("type", "string"))
        key = f"input.{field}"
        if kind == "image":
            upload = files.get(key)
            if upload is not None and upload.filename:
                inputs[field] = base64.b64encode(upload.read()).decode()
            continue
        if kind == "bool":
            inputs[field] = key in form
            continue
        text = str(form.get(key, "")).strip()
        if not text:
            continue
        try:
            parsers: dict[str, Any] = {"int": int, "float": float, "list": json.loads, "object": json.loads}
            inputs[field] = parsers.get(kind, str)(text)
        except ValueError:
            reason = f"not {_ARTICLE.get(kind, 'a')} {kind}: {text[:40]!r}"
            problems.append({"field": f"inputs.{field}", "reason": reason})
    if problems:
        raise ValidationFailed("some inputs do not parse", details=problems)
    return inputs


@blueprint.post("/models/<name>/try")
@allow(*MODEL_READERS)
@page
def try_model(name: str) -> tuple[str, int]:
    """Call an endpoint once from its generated form (``POST /api/models/<name>/call``); the
    model's page again with the output, or with each input and reason refused."""
    found = api("GET", f"/api/models/{name}")
    version, endpoint = flask.request.form.get("version", ""), flask.request.form.get("endpoint", "")
    entry = next((item for item in found["versions"] if item["version"] == version), None)
    spec = (entry or {}).get("inputs", {}).get(endpoint, {})
    tried = {"version": version, "endpoint": endpoint, "form": flask.request.form}

    def build() -> dict[str, Any]:
        return {"model": found, "tried": tried}

    try:
        inputs = try_inputs(spec, flask.request.form, flask.request.files)
        call = {"endpoint": endpoint or None, "version": version or None, "inputs": inputs}
        output = api("POST", f"/api/models/{name}/call", json=call)["output"]
    except PlatformError as error:
        return form_page("model.html", build, error)
    return form_page("model.html", lambda: build() | {"output": json.dumps(output, indent=2)})


# --- device types ----------------------------------------------------------------------------


@blueprint.get("/device-types")
@allow(*ALL_ROLES)
@page
def device_types() -> tuple[str, int]:
    """Every device type: what it measures or accepts, its parameters (for writing an app.json)."""
    return form_page("device_types.html", lambda: {"types": api("GET", "/api/devices/types")["device_types"]})


# --- apps ----------------------------------------------------------------------------------------


def _apps_context() -> dict[str, Any]:
    return {"apps": api("GET", "/api/apps")["apps"]}


@blueprint.get("/apps")
@allow(*ALL_ROLES)
@page
def apps() -> tuple[str, int]:
    """The apps, each with its devices, models and the locations where it can run."""
    return form_page("apps.html", _apps_context, may_schedule=may("portal.new_schedule"))


@blueprint.post("/apps")
@allow(*APP_WRITERS)
@page
def upload_app() -> Response | tuple[str, int]:
    try:
        answer = _upload("/api/apps", "app")
    except PlatformError as error:
        return form_page("apps.html", _apps_context, error, may_schedule=may("portal.new_schedule"))
    return done(
        "portal.apps", f"App {answer['name']} {answer['version']} uploaded ({answer['files']} files)."
    )


@blueprint.get("/apps/<name>")
@allow(*ALL_ROLES)
@page
def app(name: str) -> tuple[str, int]:
    """One app: every version (who uploaded it, when, its size), where it can run, and the
    instances of it the caller may see, each with its address and a link to its logs."""

    def build() -> dict[str, Any]:
        shown = api("GET", f"/api/apps/{name}")
        instances = (
            [item for item in api("GET", "/api/instances")["instances"] if item["app"] == shown["name"]]
            if may("portal.schedules")
            else []
        )
        return {"app": shown, "instances": instances, "may_schedule": may("portal.new_schedule")}

    return form_page("app.html", build)


# --- logs ----------------------------------------------------------------------------------------


class LogSearch(Model):
    service: str = Field(default="", max_length=200)
    level: str = Field(default="", max_length=10)
    since: str = Field(default="1h", max_length=40)
    grep: str = Field(default="", max_length=200)
    limit: int = Field(default=200, ge=1, le=10_000)


@blueprint.get("/logs")
@allow(*ALL_ROLES)
@page
def logs() -> tuple[str, int]:
    """Search the logs the caller may read (``GET /api/logs``); the newest at the bottom."""
    services = api("GET", "/api/logs/services")["services"]

    def build() -> dict[str, Any]:
        return {"services": services, "levels": LEVELS, "search": None, "records": []}

    try:
        search = form_as(LogSearch, flask.request.args.to_dict())
        query = {key: value for key, value in search.model_dump().items() if value not in ("", None)}
        records = api("GET", "/api/logs", query_string=query)["records"]
    except PlatformError as error:
        return form_page("logs.html", build, error)
    return form_page("logs.html", lambda: build() | {"search": search, "records": records})
