"""mqtt credentials: the password hash of each real (MQTT) device

Revision ID: 0007_mqtt_credentials
Revises: 0006_accounts
Create Date: 2026-12-07

Devices registered before this revision have no credentials: a configurer issues them with
``POST /api/devices/<name>/mqtt-credentials`` (``aiot device credentials NAME``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from platform_core.db import UTCDateTime

revision = "0007_mqtt_credentials"
down_revision = "0006_accounts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mqtt_credentials",
        sa.Column(
            "device", sa.String(48), sa.ForeignKey("devices.name", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("mqtt_credentials")
