"""The app manager's tables: apps (one per name, stable id) and their uploaded versions."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from platform_core.db import Base, utcnow


class AppRow(Base):
    __tablename__ = "apps"

    app_id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    owner: Mapped[str] = mapped_column(sa.String(64), index=True)
    description: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AppVersionRow(Base):
    __tablename__ = "app_versions"

    app_id: Mapped[str] = mapped_column(
        sa.String(32), sa.ForeignKey("apps.app_id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    manifest: Mapped[str] = mapped_column(sa.Text)
    artifact_key: Mapped[str] = mapped_column(sa.String(255))
    sha256: Mapped[str] = mapped_column(sa.String(64))
    size: Mapped[int]
    uploaded_by: Mapped[str] = mapped_column(sa.String(64))
    uploaded_at: Mapped[datetime] = mapped_column(default=utcnow)
