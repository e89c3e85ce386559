"""The scheduler's tables: end users' schedules and the mail outbox.

APScheduler keeps its jobs in its own table (``scheduler_jobs``) of the same database; it
creates that table itself when the scheduler first starts.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from platform_core.db import Base, utcnow


class ScheduleRow(Base):
    __tablename__ = "schedules"

    schedule_id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    app_id: Mapped[str] = mapped_column(sa.String(32), index=True)
    app_name: Mapped[str] = mapped_column(sa.String(64))
    version: Mapped[str | None] = mapped_column(sa.String(32))
    location: Mapped[str] = mapped_column(sa.String(48), index=True)
    timezone: Mapped[str] = mapped_column(sa.String(64))
    owner: Mapped[str] = mapped_column(sa.String(64), index=True)
    email: Mapped[str | None] = mapped_column(sa.String(255))
    spec: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(16), default="active")
    history: Mapped[str] = mapped_column(sa.Text, default="[]")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class MailRow(Base):
    __tablename__ = "mails"

    mail_id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    recipient: Mapped[str] = mapped_column(sa.String(255), index=True)
    subject: Mapped[str] = mapped_column(sa.String(255))
    body: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(16), default="outbox")
    error: Mapped[str | None] = mapped_column(sa.Text)
    instance_id: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
