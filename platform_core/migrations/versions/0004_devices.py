"""devices: device types, locations, devices, app bindings, latest device states

Revision ID: 0004_devices
Revises: 0003_models
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from platform_core.db import UTCDateTime

revision = "0004_devices"
down_revision = "0003_models"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_types",
        sa.Column("name", sa.String(48), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "locations",
        sa.Column("name", sa.String(48), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "devices",
        sa.Column("name", sa.String(48), primary_key=True),
        sa.Column("type", sa.String(48), sa.ForeignKey("device_types.name"), nullable=False),
        sa.Column("location", sa.String(48), sa.ForeignKey("locations.name"), nullable=False),
        sa.Column("simulated", sa.Boolean(), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_devices_type", "devices", ["type"])
    op.create_index("ix_devices_location", "devices", ["location"])
    op.create_table(
        "device_bindings",
        sa.Column("app_instance_id", sa.String(64), primary_key=True),
        sa.Column("alias", sa.String(48), primary_key=True),
        sa.Column("device", sa.String(48), sa.ForeignKey("devices.name"), primary_key=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_device_bindings_device", "device_bindings", ["device"])
    op.create_table(
        "device_states",
        sa.Column(
            "device",
            sa.String(48),
            sa.ForeignKey("devices.name", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("values", sa.Text(), nullable=False),
        sa.Column("time", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("device_states")
    op.drop_index("ix_device_bindings_device", table_name="device_bindings")
    op.drop_table("device_bindings")
    op.drop_index("ix_devices_location", table_name="devices")
    op.drop_index("ix_devices_type", table_name="devices")
    op.drop_table("devices")
    op.drop_table("locations")
    op.drop_table("device_types")
