"""CRUD of the app manager's tables; every function takes the session it works in.

Versions are compared as PEP 440 versions (``platform_sdk.artifacts``): the latest is the
highest release, a pinned ``1.0`` finds ``1.0.0``, and a new version equal to a stored one
is a conflict.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app_manager.models import AppRow, AppVersionRow
from platform_sdk.artifacts import AppManifest, find_version, latest
from platform_sdk.errors import Conflict, NotFound


def read_app(session: Session, app: str) -> AppRow:
    """An app by id or name."""
    row = session.get(AppRow, app) or session.scalar(sa.select(AppRow).where(AppRow.name == app))
    if row is None:
        raise NotFound(f"no app {app!r}; see `aiot app list`")
    return row


def find_app_by_name(session: Session, name: str) -> AppRow | None:
    return session.scalar(sa.select(AppRow).where(AppRow.name == name))


def apps_by_id(session: Session, app_ids: list[str]) -> list[AppRow]:
    """The apps among ``app_ids`` that exist."""
    return list(session.scalars(sa.select(AppRow).where(AppRow.app_id.in_(app_ids))))


def list_apps(session: Session) -> list[AppRow]:
    return list(session.scalars(sa.select(AppRow).order_by(AppRow.name)))


def list_versions(session: Session, app_id: str) -> list[AppVersionRow]:
    """An app's versions in the order they were uploaded."""
    query = sa.select(AppVersionRow).where(AppVersionRow.app_id == app_id)
    return list(session.scalars(query.order_by(AppVersionRow.uploaded_at)))


def latest_version(versions: list[AppVersionRow]) -> AppVersionRow | None:
    """The latest version: the highest release (1.10 after 1.9, 2.1 after 2.1-rc1), a pre-release
    only when there is no release."""
    return latest(versions, _version_of)


def _version_of(row: AppVersionRow) -> str:
    return row.version


def pick_version(session: Session, app_id: str, version: str | None = None) -> AppVersionRow:
    """``version`` of the app, or its latest when None; ``NotFound`` naming the versions it has."""
    versions = list_versions(session, app_id)
    row = latest_version(versions) if version is None else find_version(versions, version, _version_of)
    if row is None:
        app = session.get(AppRow, app_id)
        name = app.name if app is not None else app_id
        known = ", ".join(found.version for found in versions) or "none"
        raise NotFound(
            f"app {name!r} has no version {version!r} (it has: {known}); see `aiot app show {name}`"
        )
    return row


def check_new_version(session: Session, app: AppRow, version: str) -> None:
    """``Conflict`` when the app has ``version`` already, spelt so or otherwise (``1.0`` is ``1.0.0``)."""
    existing = find_version(list_versions(session, app.app_id), version, _version_of)
    if existing is not None:
        same = "" if existing.version == version else f" (as {existing.version})"
        raise Conflict(f"app {app.name!r} already has version {version}{same}: raise the version in app.json")


def create_version(session: Session, app: AppRow, version: AppVersionRow) -> AppVersionRow:
    check_new_version(session, app, version.version)
    session.add(version)
    return version


def delete_app(session: Session, app: AppRow) -> list[str]:
    """Delete the app and its versions; the artifact keys to remove from the blob store."""
    keys = [version.artifact_key for version in list_versions(session, app.app_id)]
    session.execute(sa.delete(AppVersionRow).where(AppVersionRow.app_id == app.app_id))
    session.delete(app)
    return keys


def apps_using_model(session: Session, model: str) -> list[tuple[AppRow, list[AppVersionRow]]]:
    """The apps with a version whose ``app.json`` names ``model``, each with those versions (by name)."""
    candidates = sa.select(AppVersionRow).where(AppVersionRow.manifest.contains(model, autoescape=True))
    found: dict[str, list[AppVersionRow]] = {}
    for version in session.scalars(candidates.order_by(AppVersionRow.uploaded_at)):
        manifest = AppManifest.model_validate_json(version.manifest)
        if any(use.model == model for use in manifest.models.values()):
            found.setdefault(version.app_id, []).append(version)
    return [(app, found[app.app_id]) for app in list_apps(session) if app.app_id in found]
