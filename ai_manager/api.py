"""``/api/models``: upload, list, show and delete models (mounted on the front door).

AI developers upload and manage their own models; platform configurers manage any;
app developers read. Uploading validates the zip in the request (422 naming file,
field and reason; nothing stored), stores it, registers the version and hands the
deploy to the deployer over Kafka; ``GET /api/models/<id>`` shows the deploy's stages.
``POST /api/models/<id>/call`` runs an endpoint once, as an app's ``model_call`` does: the
deployer is asked for the live replicas (``ResolveModel``), then one of them over HTTP.
Deleting a model that apps use is refused (409 naming them) unless forced: the apps are
the app manager's, so it is asked over Kafka which of them name the model
(``app_manager.messages.ListModelUsers``); this module never reads their tables.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import flask
from pydantic import BaseModel, Field

from ai_manager import registry
from ai_manager.artifact import ValidatedModel, validate_model_zip
from ai_manager.models import ModelRow, ModelVersionRow
from app_manager.messages import ListModelUsers, ModelUser, ModelUsers, app_manager_topic
from deployer.messages import DeploymentInfo, Deployments, DeployModel, ListDeployments, UndeployModel
from platform_core.auth import Principal, Role, allow, current_principal
from platform_core.http import ask, body_as, query_as, resources, shapes, uploaded_file
from platform_sdk.artifacts import model_id_for
from platform_sdk.errors import Conflict, Forbidden, NotFound, PlatformError, Timeout, Unavailable
from platform_sdk.model_client import ModelClient, ModelReplicas, ResolveModel

blueprint = flask.Blueprint("models", __name__, url_prefix="/api/models")
WRITERS = (Role.AI_DEVELOPER, Role.PLATFORM_CONFIGURER)
READERS = (Role.AI_DEVELOPER, Role.APP_DEVELOPER, Role.PLATFORM_CONFIGURER)


def _check_owner(model: ModelRow, principal: Principal) -> None:
    if principal.role != Role.PLATFORM_CONFIGURER and model.owner != principal.username:
        raise Forbidden(f"model {model.name!r} belongs to {model.owner!r}")


def _deployments(model_id: str | None) -> list[DeploymentInfo] | None:
    """The deployer's records, or None when it does not answer (listing still works)."""
    try:
        requester = resources().bus_requester()
        reply = requester.request(
            requester.bus.topics.deployer,
            ListDeployments(model_id=model_id),
            Deployments,
            timeout=resources().settings.web.deployer_timeout_s,
        )
    except PlatformError:
        return None
    return reply.deployments


def _model_json(
    model: ModelRow, versions: list[ModelVersionRow], deployments: list[DeploymentInfo] | None
) -> dict[str, Any]:
    by_version = {info.version: info for info in deployments or [] if info.model_id == model.model_id}
    return {
        "model_id": model.model_id,
        "name": model.name,
        "owner": model.owner,
        "description": model.description,
        "created_at": model.created_at.isoformat(),
        "versions": [
            {
                "version": version.version,
                "uploaded_by": version.uploaded_by,
                "uploaded_at": version.uploaded_at.isoformat(),
                "size": version.size,
                "sha256": version.sha256,
                "endpoints": [endpoint["name"] for endpoint in json.loads(version.manifest)["endpoints"]],
                "inputs": {
                    endpoint["name"]: endpoint.get("inputs", {})
                    for endpoint in json.loads(version.manifest)["endpoints"]
                },
                "status": by_version[version.version].status
                if version.version in by_version
                else ("unknown" if deployments is None else "not deployed"),
                "deployment": by_version[version.version].model_dump(mode="json")
                if version.version in by_version
                else None,
            }
            for version in versions
        ],
    }


@blueprint.post("")
@allow(*WRITERS)
def upload_model() -> tuple[flask.Response, int]:
    """Validate, store and register a model zip, then ask the deployer to deploy it."""
    data, filename = uploaded_file("model zip")
    accepted = validate_model_zip(data, label=filename)
    principal = current_principal()
    stored, owner = _store(accepted, principal)
    try:
        requester = resources().bus_requester()
        requester.send(
            requester.bus.topics.deployer,
            DeployModel(
                model_id=stored.model_id,
                version=stored.version,
                artifact_key=stored.artifact_key,
                artifact_sha256=stored.sha256,
                manifest=accepted.manifest,
                owner=owner,
            ),
            key=stored.model_id,
        )
    except PlatformError:
        _unstore(stored)  # not deployable now: leave nothing registered
        raise
    _describe(stored.model_id, accepted.manifest.description)
    return (
        flask.jsonify(
            model_id=stored.model_id,
            name=accepted.manifest.name,
            version=stored.version,
            status="deploying",
            files=len(accepted.files),
        ),
        201,
    )


def _store(accepted: ValidatedModel, principal: Principal) -> tuple[ModelVersionRow, str]:
    """Rows first (a concurrent upload of one version loses there, before the blob is touched), then the blob.

    A failure writing the blob removes the rows again: either both exist or neither. Returns the
    version and the model's owner.
    """
    manifest = accepted.manifest
    model_id = model_id_for(manifest.name)
    key = f"models/{model_id}/{manifest.version}.zip"
    with resources().database.session() as session:
        model = registry.find_model_by_name(session, manifest.name)
        if model is None:
            model = ModelRow(
                model_id=model_id,
                name=manifest.name,
                owner=principal.username,
                description=manifest.description,
            )
            session.add(model)
        else:
            _check_owner(model, principal)
        version = registry.create_version(session, model, _version_row(accepted, key, principal))
        owner = model.owner
        session.flush()
        session.expunge(version)
    try:
        resources().blobs.put(key, accepted.data)
    except BaseException:
        _unstore(version, delete_blob=False)
        raise
    return version, owner


def _version_row(accepted: ValidatedModel, key: str, principal: Principal) -> ModelVersionRow:
    return ModelVersionRow(
        model_id=model_id_for(accepted.manifest.name),
        version=accepted.manifest.version,
        manifest=accepted.manifest.model_dump_json(),
        artifact_key=key,
        sha256=accepted.sha256,
        size=len(accepted.data),
        uploaded_by=principal.username,
    )


def _unstore(version: ModelVersionRow, *, delete_blob: bool = True) -> None:
    with resources().database.session() as session:
        row = session.get(ModelVersionRow, (version.model_id, version.version))
        if row is not None:
            session.delete(row)
            session.flush()
            model = session.get(ModelRow, version.model_id)
            if model is not None and not registry.list_versions(session, version.model_id):
                session.delete(model)
    if delete_blob:
        with contextlib.suppress(PlatformError):
            resources().blobs.delete(version.artifact_key)


def _describe(model_id: str, description: str) -> None:
    """A deployable new version's description becomes the model's."""
    if description:
        with resources().database.session() as session:
            model = session.get(ModelRow, model_id)
            if model is not None:
                model.description = description


@blueprint.get("")
@allow(*READERS)
def list_models() -> flask.Response:
    """Every model with its versions and their deploy status."""
    deployments = _deployments(None)
    with resources().database.session() as session:
        models = [
            _model_json(model, registry.list_versions(session, model.model_id), deployments)
            for model in registry.list_models(session)
        ]
    return flask.jsonify(models=models)


@blueprint.get("/<model>")
@allow(*READERS)
def show_model(model: str) -> flask.Response:
    """One model (by id or name): versions, manifest endpoints and each deploy's stages."""
    with resources().database.session() as session:
        row = registry.read_model(session, model)
        versions = registry.list_versions(session, row.model_id)
        session.expunge_all()
    return flask.jsonify(_model_json(row, versions, _deployments(row.model_id)))


class ModelCallRequest(BaseModel):
    """``POST /api/models/<model>/call``: one call of an endpoint (an image input: base64)."""

    endpoint: str | None = Field(default=None, max_length=64, description="Default: the model's first.")
    version: str | None = Field(default=None, max_length=32, description="Default: the latest deployed.")
    inputs: dict[str, Any] = Field(default_factory=dict, description="The endpoint's input fields.")


class ModelCallAnswer(BaseModel):
    output: dict[str, Any] = Field(description="The endpoint's output fields.")


class _DeployerResolver:
    """Replicas of a model as the deployer says now (``ResolveModel``), asked through the front door."""

    def resolve(self, model: str, version: str | None) -> ModelReplicas:
        topics = resources().bus_requester().bus.topics
        return ask("the deployer", topics.deployer, ResolveModel(model=model, version=version), ModelReplicas)


@blueprint.post("/<model>/call")
@allow(*READERS)
@shapes(response=ModelCallAnswer)
def call_model(model: str) -> flask.Response:
    """Run an endpoint of a deployed model once on ``inputs`` (the portal's "try it"); the model's
    own 4xx (a missing or wrong input) comes through as it is, 503 when no replica answers."""
    body = body_as(ModelCallRequest)
    with resources().database.session() as session:
        registry.read_model(session, model)  # 404 naming it before the bus is asked
    settings = resources().settings.model
    with ModelClient(_DeployerResolver(), timeout=settings.call_timeout_s, ttl=0) as client:
        output = client.call(model, body.endpoint, body.inputs, version=body.version)
    return flask.jsonify(output=output)


class DeleteQuery(BaseModel):
    force: bool = False


@blueprint.delete("/<model>")
@allow(*WRITERS)
def delete_model(model: str) -> flask.Response:
    """Undeploy every version, then remove the model, its versions and its zips.

    Undeploying removes each version's deploy bundle from the blob store and stops every
    replica; each node removes its unpacked copy as the last replica there stops (or at its
    next bundle check, ``service_agent.bundles``). A refused delete touches nothing.

    While apps use the model the delete is refused (409 naming them and ``--force``);
    ``?force=true`` deletes anyway and answers the apps that break (``broken_apps``).
    """
    force = query_as(DeleteQuery).force
    with resources().database.session() as session:
        row = registry.read_model(session, model)
        _check_owner(row, current_principal())
        model_id, name = row.model_id, row.name
    users = _model_users(name, force=force)
    if users and not force:
        raise Conflict(
            f"model {name!r} is used by {_naming(users)}: delete those apps or upload versions "
            f"that do not use it, or delete it anyway with `aiot model delete {name} --force` "
            "(their instances then fail to start)",
            details={"apps": [user.model_dump() for user in users]},
        )
    requester = resources().bus_requester()
    with contextlib.suppress(NotFound):  # never deployed
        requester.request(
            requester.bus.topics.deployer,
            UndeployModel(model_id=model_id),
            Deployments,
            timeout=resources().settings.web.deployer_stop_timeout_s,
        )
    with resources().database.session() as session:
        keys = registry.delete_model(session, registry.read_model(session, model_id))
    for key in keys:
        with contextlib.suppress(PlatformError):
            resources().blobs.delete(key)
    return flask.jsonify(
        model_id=model_id,
        name=name,
        deleted=True,
        broken_apps=None if users is None else [user.model_dump() for user in users],
    )


def _model_users(name: str, *, force: bool) -> list[ModelUser] | None:
    """The apps that use model ``name``, as the app manager says; None when forced and it did not answer."""
    requester = resources().bus_requester()
    try:
        reply = requester.request(
            app_manager_topic(requester.bus.topics),
            ListModelUsers(model=name),
            ModelUsers,
            timeout=resources().settings.web.app_manager_timeout_s,
        )
    except (Timeout, Unavailable) as exc:
        if force:
            return None
        raise Unavailable(
            f"cannot tell which apps use model {name!r}: the app manager does not answer ({exc.message}); "
            f"try again, or delete it anyway with `aiot model delete {name} --force`"
        ) from exc
    return reply.apps


def _naming(users: list[ModelUser]) -> str:
    """``app 'a' (1.0.0)`` or ``apps 'a' (1.0.0), 'b' (1.0.0, 1.1.0)``."""
    named = ", ".join(f"{user.app!r} ({', '.join(user.versions)})" for user in users)
    return ("app " if len(users) == 1 else "apps ") + named
