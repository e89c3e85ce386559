"""CRUD of the app manager's tables; every function takes the session it works in."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app_manager.models import AppRow, AppVersionRow
from deployer.service import version_key
from platform_sdk.errors import Conflict, NotFound


def read_app(session: Session, app: str) -> AppRow:
    """An app by id or name."""
    row = session.get(AppRow, app) or session.scalar(sa.select(AppRow).where(AppRow.name == app))
    if row is None:
        raise NotFound(f"no app {app!r}; see `aiot app list`")
    return row


def find_app_by_name(session: Session, name: str) -> AppRow | None:
    return session.scalar(sa.select(AppRow).where(AppRow.name == name))


def list_apps(session: Session) -> list[AppRow]:
    return list(session.scalars(sa.select(AppRow).order_by(AppRow.name)))


def list_versions(session: Session, app_id: str) -> list[AppVersionRow]:
    """An app's versions in the order they were uploaded."""
    query = sa.select(AppVersionRow).where(AppVersionRow.app_id == app_id)
    return list(session.scalars(query.order_by(AppVersionRow.uploaded_at)))


def latest_version(versions: list[AppVersionRow]) -> AppVersionRow | None:
    """The highest version, ordered numerically where they are numbers (1.10 after 1.9)."""
    return max(versions, key=lambda row: version_key(row.version), default=None)


def pick_version(session: Session, app_id: str, version: str | None = None) -> AppVersionRow:
    """``version`` of the app, or its latest when None; ``NotFound`` naming the versions it has."""
    versions = list_versions(session, app_id)
    row = (
        latest_version(versions)
        if version is None
        else next((found for found in versions if found.version == version), None)
    )
    if row is None:
        app = session.get(AppRow, app_id)
        name = app.name if app is not None else app_id
        known = ", ".join(found.version for found in versions) or "none"
        raise NotFound(
            f"app {name!r} has no version {version!r} (it has: {known}); see `aiot app show {name}`"
        )
    return row


def check_new_version(session: Session, app: AppRow, version: str) -> None:
    if session.get(AppVersionRow, (app.app_id, version)) is not None:
        raise Conflict(f"app {app.name!r} already has version {version}: raise the version in app.json")


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
