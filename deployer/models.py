"""The deployer's tables: deployments of model versions, and app instances; each records its stages."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from platform_core.db import Base, Database, utcnow


class DeploymentRow(Base):
    __tablename__ = "deployments"

    deployment_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16), default="model")
    model_id: Mapped[str] = mapped_column(sa.String(32), index=True)
    name: Mapped[str] = mapped_column(sa.String(64), index=True)
    version: Mapped[str] = mapped_column(sa.String(32))
    status: Mapped[str] = mapped_column(sa.String(16), default="queued")
    error: Mapped[str | None] = mapped_column(sa.Text)
    stages: Mapped[str] = mapped_column(sa.Text, default="[]")
    replicas: Mapped[str] = mapped_column(sa.Text, default="[]")
    endpoints: Mapped[str] = mapped_column(sa.Text, default="[]")
    request: Mapped[str] = mapped_column(sa.Text, default="{}")
    bundle_key: Mapped[str | None] = mapped_column(sa.String(255))
    bundle_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AppInstanceRow(Base):
    """One app instance: bound, placed and started for a schedule (or by hand), then stopped."""

    __tablename__ = "app_instances"

    instance_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    app_id: Mapped[str] = mapped_column(sa.String(32), index=True)
    app_name: Mapped[str] = mapped_column(sa.String(64))
    version: Mapped[str] = mapped_column(sa.String(32))
    location: Mapped[str] = mapped_column(sa.String(48))
    schedule_id: Mapped[str | None] = mapped_column(sa.String(32), index=True)
    owner: Mapped[str] = mapped_column(sa.String(64), index=True)
    status: Mapped[str] = mapped_column(sa.String(16), default="queued")
    error: Mapped[str | None] = mapped_column(sa.Text)
    stages: Mapped[str] = mapped_column(sa.Text, default="[]")
    node_id: Mapped[str] = mapped_column(sa.String(64), default="")
    url: Mapped[str] = mapped_column(sa.String(255), default="")
    request: Mapped[str] = mapped_column(sa.Text, default="{}")
    config: Mapped[str] = mapped_column(sa.Text, default="{}")
    stop_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


StagedRow = TypeVar("StagedRow", DeploymentRow, AppInstanceRow)


def record_stage(
    database: Database,
    table: type[StagedRow],
    key: str,
    stage: str,
    detail: str = "",
    status: str | None = None,
) -> None:
    """Add a stage (and set the status) of the deployment or instance ``key``, if it still exists."""
    with database.session() as session:
        row = session.get(table, key)
        if row is not None:
            add_stage(row, stage, detail)
            if status:
                row.status = status


def add_stage(row: DeploymentRow | AppInstanceRow, stage: str, detail: str = "") -> None:
    now = datetime.now(UTC)
    stages = json.loads(row.stages or "[]")
    stages.append({"stage": stage, "at": now.isoformat(), "detail": detail})
    row.stages = json.dumps(stages)
    row.updated_at = now
