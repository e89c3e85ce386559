"""apps: apps and versions, app instances, schedules, the mail outbox

Revision ID: 0005_apps
Revises: 0004_devices
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from platform_core.db import UTCDateTime

revision = "0005_apps"
down_revision = "0004_devices"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "apps",
        sa.Column("app_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_apps_owner", "apps", ["owner"])
    op.create_table(
        "app_versions",
        sa.Column(
            "app_id", sa.String(32), sa.ForeignKey("apps.app_id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("version", sa.String(32), primary_key=True),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("artifact_key", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("uploaded_by", sa.String(64), nullable=False),
        sa.Column("uploaded_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "app_instances",
        sa.Column("instance_id", sa.String(64), primary_key=True),
        sa.Column("app_id", sa.String(32), nullable=False),
        sa.Column("app_name", sa.String(64), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("location", sa.String(48), nullable=False),
        sa.Column("schedule_id", sa.String(32), nullable=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("stages", sa.Text(), nullable=False),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("url", sa.String(255), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("stop_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_app_instances_app_id", "app_instances", ["app_id"])
    op.create_index("ix_app_instances_schedule_id", "app_instances", ["schedule_id"])
    op.create_index("ix_app_instances_owner", "app_instances", ["owner"])
    op.create_table(
        "schedules",
        sa.Column("schedule_id", sa.String(32), primary_key=True),
        sa.Column("app_id", sa.String(32), nullable=False),
        sa.Column("app_name", sa.String(64), nullable=False),
        sa.Column("version", sa.String(32), nullable=True),
        sa.Column("location", sa.String(48), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("email", sa.String(255), nullable=True),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("history", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_schedules_app_id", "schedules", ["app_id"])
    op.create_index("ix_schedules_location", "schedules", ["location"])
    op.create_index("ix_schedules_owner", "schedules", ["owner"])
    op.create_table(
        "mails",
        sa.Column("mail_id", sa.String(32), primary_key=True),
        sa.Column("recipient", sa.String(255), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("instance_id", sa.String(64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_mails_recipient", "mails", ["recipient"])
    op.create_index("ix_mails_instance_id", "mails", ["instance_id"])


def downgrade() -> None:
    op.drop_index("ix_mails_instance_id", table_name="mails")
    op.drop_index("ix_mails_recipient", table_name="mails")
    op.drop_table("mails")
    op.drop_index("ix_schedules_owner", table_name="schedules")
    op.drop_index("ix_schedules_location", table_name="schedules")
    op.drop_index("ix_schedules_app_id", table_name="schedules")
    op.drop_table("schedules")
    op.drop_index("ix_app_instances_owner", table_name="app_instances")
    op.drop_index("ix_app_instances_schedule_id", table_name="app_instances")
    op.drop_index("ix_app_instances_app_id", table_name="app_instances")
    op.drop_table("app_instances")
    op.drop_table("app_versions")
    op.drop_index("ix_apps_owner", table_name="apps")
    op.drop_table("apps")
