"""``/api/apps``: upload, list, show and delete apps (mounted on the front door).

App developers upload and manage their own apps; platform configurers manage any; every
role reads (end users pick an app, and a location that can run it, when they schedule
one). Uploading validates the zip in the request and what its ``app.json`` names against
the model and device registries (422 naming file, field and reason; nothing stored), then
registers the version and stores the zip. Nothing is deployed: an app runs when an end user
schedules it. The locations that can run an app are the device manager's to say: listing
asks it over the bus (``FindLocations``, for the caller: only locations open to them, every
one for a configurer; 503 when it does not answer).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import flask
from sqlalchemy.orm import Session

from app_manager import registry
from app_manager.artifact import ValidatedApp, validate_app_zip
from app_manager.models import AppRow, AppVersionRow
from app_manager.references import check_references
from device_manager.messages import FindLocations, LocationsFound
from platform_core.auth import Principal, Role, allow, current_principal
from platform_core.http import ask, resources, uploaded_file
from platform_sdk.artifacts import AppManifest, app_id_for
from platform_sdk.errors import Forbidden, PlatformError

blueprint = flask.Blueprint("apps", __name__, url_prefix="/api/apps")
WRITERS = (Role.APP_DEVELOPER, Role.PLATFORM_CONFIGURER)
READERS = (Role.APP_DEVELOPER, Role.PLATFORM_CONFIGURER, Role.AI_DEVELOPER, Role.END_USER)


def _check_owner(app: AppRow, principal: Principal) -> None:
    if principal.role != Role.PLATFORM_CONFIGURER and app.owner != principal.username:
        raise Forbidden(f"app {app.name!r} belongs to {app.owner!r}")


# --- JSON ---------------------------------------------------------------------------------------


def _location_user() -> str | None:
    """Whose locations the listing shows: the caller's, or every one for a platform configurer."""
    principal = current_principal()
    return None if principal.role == Role.PLATFORM_CONFIGURER else principal.username


def _locations(documents: list[dict[str, Any]], manifests: dict[str, AppManifest]) -> None:
    """Add to each app's document (of ``_app_json``) the locations with enough devices of every
    type its latest version needs, as binding will judge: the device manager says which."""
    if not manifests:
        return
    needs = {app_id: dict(manifest.devices) for app_id, manifest in manifests.items()}
    found = ask(
        "the device manager",
        resources().bus_requester().bus.topics.device_manager,
        FindLocations(needs=needs, user=_location_user()),
        LocationsFound,
    )
    for document in documents:
        if document["app_id"] in manifests:
            document["locations"] = found.locations.get(document["app_id"], [])


def _uses_json(manifest: AppManifest) -> dict[str, Any]:
    """What the app needs, from one version's manifest: its kind, device types and models by alias."""
    return {
        "kind": manifest.kind,
        "devices": {alias: need.model_dump() for alias, need in manifest.devices.items()},
        "models": {alias: use.model_dump() for alias, use in manifest.models.items()},
    }


def _version_json(version: AppVersionRow) -> dict[str, Any]:
    return {
        "version": version.version,
        "uploaded_by": version.uploaded_by,
        "uploaded_at": version.uploaded_at.isoformat(),
        "size": version.size,
        "sha256": version.sha256,
    }


def _app_json(
    session: Session, app: AppRow, manifests: dict[str, AppManifest], *, detailed: bool
) -> dict[str, Any]:
    """An app with what its latest version needs (its manifest is added to ``manifests``, by app
    id, for ``_locations``).

    ``detailed`` lists each version with its manifest, otherwise only the version strings.
    """
    versions = registry.list_versions(session, app.app_id)
    latest = registry.latest_version(versions)
    document: dict[str, Any] = {
        "app_id": app.app_id,
        "name": app.name,
        "owner": app.owner,
        "description": app.description,
        "created_at": app.created_at.isoformat(),
        "latest_version": latest.version if latest else None,
    }
    if latest is not None:
        manifest = AppManifest.model_validate_json(latest.manifest)
        document |= _uses_json(manifest)
        manifests[app.app_id] = manifest
    if detailed:
        document["versions"] = [
            _version_json(version) | {"manifest": json.loads(version.manifest)} for version in versions
        ]
    else:
        document["versions"] = [version.version for version in versions]
    return document


# --- routes -------------------------------------------------------------------------------------


@blueprint.post("")
@allow(*WRITERS)
def upload_app() -> tuple[flask.Response, int]:
    """Validate an app zip against itself and the registry, then register the version and store it."""
    data, filename = uploaded_file("app zip")
    accepted = validate_app_zip(data, label=filename)
    stored = _store(accepted, filename, current_principal())
    _describe(stored)
    manifest = accepted.manifest
    return (
        flask.jsonify(
            app_id=stored.app_id,
            name=manifest.name,
            version=stored.version,
            kind=manifest.kind,
            files=len(accepted.files),
            size=stored.size,
            sha256=stored.sha256,
        ),
        201,
    )


def _store(accepted: ValidatedApp, label: str, principal: Principal) -> AppVersionRow:
    """Check the references and write the rows (a concurrent upload of one version loses there,
    before the blob is touched), then the blob.

    A failure writing the blob removes the rows again: either both exist or neither.
    """
    manifest = accepted.manifest
    app_id = app_id_for(manifest.name)
    key = f"apps/{app_id}/{manifest.version}.zip"
    check_references(manifest, label=label)  # asks the AI and device managers, before any write
    with resources().database.session() as session:
        app = registry.find_app_by_name(session, manifest.name)
        if app is None:
            app = AppRow(app_id=app_id, name=manifest.name, owner=principal.username, description="")
            session.add(app)
        else:
            _check_owner(app, principal)
        version = AppVersionRow(
            app_id=app_id,
            version=manifest.version,
            manifest=manifest.model_dump_json(),
            artifact_key=key,
            sha256=accepted.sha256,
            size=len(accepted.data),
            uploaded_by=principal.username,
        )
        registry.create_version(session, app, version)
        session.flush()
        session.expunge(version)
    try:
        resources().blobs.put(key, accepted.data)
    except BaseException:
        _unstore(version)
        raise
    return version


def _unstore(version: AppVersionRow) -> None:
    """Remove a version whose zip could not be stored, and its app when it has no other version."""
    with resources().database.session() as session:
        row = session.get(AppVersionRow, (version.app_id, version.version))
        if row is not None:
            session.delete(row)
            session.flush()
            app = session.get(AppRow, version.app_id)
            if app is not None and not registry.list_versions(session, version.app_id):
                session.delete(app)


def _describe(version: AppVersionRow) -> None:
    """The description of a stored version that is the app's latest becomes the app's."""
    description = AppManifest.model_validate_json(version.manifest).description
    with resources().database.session() as session:
        app = session.get(AppRow, version.app_id)
        latest = registry.latest_version(registry.list_versions(session, version.app_id))
        if app is not None and latest is not None and latest.version == version.version:
            app.description = description


@blueprint.get("")
@allow(*READERS)
def list_apps() -> flask.Response:
    """Every app with its latest version's needs and the locations that can run it."""
    manifests: dict[str, AppManifest] = {}
    with resources().database.session() as session:
        apps = [_app_json(session, app, manifests, detailed=False) for app in registry.list_apps(session)]
    _locations(apps, manifests)
    return flask.jsonify(apps=apps)


@blueprint.get("/<app>")
@allow(*READERS)
def show_app(app: str) -> flask.Response:
    """One app (by id or name) with every version and its manifest."""
    manifests: dict[str, AppManifest] = {}
    with resources().database.session() as session:
        row = registry.read_app(session, app)
        document = _app_json(session, row, manifests, detailed=True)
    _locations([document], manifests)
    return flask.jsonify(document)


@blueprint.delete("/<app>")
@allow(*WRITERS)
def delete_app(app: str) -> flask.Response:
    """Remove the app, its versions and their zips (its owner or a platform configurer).

    Running instances are not stopped (they end with their window); each node removes its
    unpacked copy of the zip once no instance there runs in it (``service_agent.bundles``).
    """
    with resources().database.session() as session:
        row = registry.read_app(session, app)
        _check_owner(row, current_principal())
        app_id, name = row.app_id, row.name
        keys = registry.delete_app(session, row)
    for key in keys:
        with contextlib.suppress(PlatformError):
            resources().blobs.delete(key)
    return flask.jsonify(app_id=app_id, name=name, deleted=True)
