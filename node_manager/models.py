"""The node manager's tables: nodes with their last load, and placements (which service runs where)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from platform_core.db import Base, utcnow


class NodeRow(Base):
    __tablename__ = "nodes"

    node_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    host: Mapped[str] = mapped_column(sa.String(255))
    http_url: Mapped[str] = mapped_column(sa.String(255))
    runtime: Mapped[str] = mapped_column(sa.String(16))
    main: Mapped[bool] = mapped_column(default=False)
    capacity: Mapped[int]
    state: Mapped[str] = mapped_column(sa.String(16), default="up")
    cpu_percent: Mapped[float] = mapped_column(default=0.0)
    memory_used_mb: Mapped[float] = mapped_column(default=0.0)
    memory_total_mb: Mapped[float] = mapped_column(default=0.0)
    services: Mapped[int] = mapped_column(default=0)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)


class PlacementRow(Base):
    __tablename__ = "placements"

    service_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    node_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    spec: Mapped[str] = mapped_column(sa.Text)
    state: Mapped[str] = mapped_column(sa.String(16), default="starting")
    pid: Mapped[int | None]
    container_id: Mapped[str | None] = mapped_column(sa.String(80))
    restarts: Mapped[int] = mapped_column(default=0)
    ports: Mapped[str] = mapped_column(sa.Text, default="{}")
    started_at: Mapped[datetime | None]
    placed_at: Mapped[datetime] = mapped_column(default=utcnow)
