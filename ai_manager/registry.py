"""CRUD of the AI manager's tables; every function takes the session it works in."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ai_manager.models import ModelRow, ModelVersionRow
from platform_sdk.artifacts import find_version
from platform_sdk.errors import Conflict, NotFound


def read_model(session: Session, model: str) -> ModelRow:
    """A model by id or name."""
    row = session.get(ModelRow, model) or session.scalar(sa.select(ModelRow).where(ModelRow.name == model))
    if row is None:
        raise NotFound(f"no model {model!r}; see `aiot model list`")
    return row


def find_model_by_name(session: Session, name: str) -> ModelRow | None:
    return session.scalar(sa.select(ModelRow).where(ModelRow.name == name))


def models_by_id(session: Session, model_ids: list[str]) -> list[ModelRow]:
    """The models among ``model_ids`` that exist."""
    return list(session.scalars(sa.select(ModelRow).where(ModelRow.model_id.in_(model_ids))))


def list_models(session: Session) -> list[ModelRow]:
    return list(session.scalars(sa.select(ModelRow).order_by(ModelRow.name)))


def list_versions(session: Session, model_id: str) -> list[ModelVersionRow]:
    query = sa.select(ModelVersionRow).where(ModelVersionRow.model_id == model_id)
    return list(session.scalars(query.order_by(ModelVersionRow.uploaded_at)))


def check_new_version(session: Session, model: ModelRow, version: str) -> None:
    """``Conflict`` when the model has ``version`` already, spelt so or otherwise (``1.0`` is ``1.0.0``)."""
    existing = find_version(list_versions(session, model.model_id), version, lambda row: row.version)
    if existing is not None:
        same = "" if existing.version == version else f" (as {existing.version})"
        raise Conflict(
            f"model {model.name!r} already has version {version}{same}: raise the version in model.json"
        )


def create_version(session: Session, model: ModelRow, version: ModelVersionRow) -> ModelVersionRow:
    check_new_version(session, model, version.version)
    session.add(version)
    return version


def delete_model(session: Session, model: ModelRow) -> list[str]:
    """Delete the model and its versions; the artifact keys to remove from the blob store."""
    keys = [version.artifact_key for version in list_versions(session, model.model_id)]
    session.execute(sa.delete(ModelVersionRow).where(ModelVersionRow.model_id == model.model_id))
    session.delete(model)
    return keys
