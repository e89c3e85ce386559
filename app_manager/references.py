"""What an uploaded ``app.json`` names, checked against the registry (upload only).

``validate_app_zip`` (``app_manager.artifact``) needs nothing but the zip; these checks
need the database, so they run in the upload's session, before anything is written:

* every model alias names a registered model (``models.<alias>.model``), its pinned version
  exists (``models.<alias>.version``, compared as PEP 440 versions), and that version — or,
  unpinned, the model's latest release — has each endpoint the app calls
  (``models.<alias>.endpoints.<i>``);
* every device alias names a registered device type (``devices.<alias>.type``).

Problems are ``{"file": "app.json", "field", "reason"}`` like the zip's own.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from ai_manager import registry as models
from device_manager.models import DeviceTypeRow
from platform_core.manifests import Problem, fail, problem
from platform_sdk.artifacts import APP_MANIFEST, AppManifest, ModelManifest, ModelUse, find_version, latest


def model_problems(session: Session, alias: str, use: ModelUse) -> list[Problem]:
    """What the registry lacks of the model behind ``models.<alias>``: the model, the version, endpoints."""
    field = f"models.{alias}"
    row = models.find_model_by_name(session, use.model)
    if row is None:
        reason = f"unknown model {use.model!r}; see `aiot model list`"
        return [problem(APP_MANIFEST, f"{field}.model", reason)]
    versions = models.list_versions(session, row.model_id)
    chosen = (
        latest(versions, lambda version: version.version)
        if use.version is None
        else find_version(versions, use.version, lambda version: version.version)
    )
    if use.version is not None and chosen is None:
        known = ", ".join(version.version for version in versions) or "none"
        reason = f"model {use.model!r} has no version {use.version!r} (it has: {known})"
        return [problem(APP_MANIFEST, f"{field}.version", reason)]
    if chosen is None:  # a model is registered with its first version; be safe anyway
        return []
    endpoints = [endpoint.name for endpoint in ModelManifest.model_validate_json(chosen.manifest).endpoints]
    subject = f"model {use.model!r}" + (f" version {use.version}" if use.version is not None else "")
    return [
        problem(
            APP_MANIFEST,
            f"{field}.endpoints.{index}",
            f"{subject} has no endpoint {endpoint!r} (it has: {', '.join(endpoints)})",
        )
        for index, endpoint in enumerate(use.endpoints)
        if endpoint not in endpoints
    ]


def reference_problems(session: Session, manifest: AppManifest) -> list[Problem]:
    """What ``app.json`` names that the registry lacks: models, their versions and endpoints, device types."""
    problems: list[Problem] = []
    for alias, use in manifest.models.items():
        problems += model_problems(session, alias, use)
    for alias, need in manifest.devices.items():
        if session.get(DeviceTypeRow, need.type) is None:
            reason = f"unknown device type {need.type!r}; see `aiot device type list`"
            problems.append(problem(APP_MANIFEST, f"devices.{alias}.type", reason))
    return problems


def check_references(session: Session, manifest: AppManifest, *, label: str) -> None:
    """``ValidationFailed`` naming every model, version, endpoint and device type the registry lacks."""
    problems = reference_problems(session, manifest)
    if problems:
        raise fail(label, problems)
