"""The device manager's tables: device types, locations, devices, app bindings, latest states and
the MQTT credentials of real devices.

Types, locations and devices keep their whole document (``platform_sdk.device_documents``)
as JSON text beside the columns they are looked up by.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from platform_core.db import Base, utcnow

NAME = sa.String(48)  # DEVICE_NAME_PATTERN: at most 48 characters


class DeviceTypeRow(Base):
    __tablename__ = "device_types"

    name: Mapped[str] = mapped_column(NAME, primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    document: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LocationRow(Base):
    __tablename__ = "locations"

    name: Mapped[str] = mapped_column(NAME, primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    timezone: Mapped[str] = mapped_column(sa.String(64))
    document: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeviceRow(Base):
    __tablename__ = "devices"

    name: Mapped[str] = mapped_column(NAME, primary_key=True)
    type: Mapped[str] = mapped_column(NAME, sa.ForeignKey("device_types.name"), index=True)
    location: Mapped[str] = mapped_column(NAME, sa.ForeignKey("locations.name"), index=True)
    simulated: Mapped[bool]
    document: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeviceBindingRow(Base):
    """One device serving one alias of one app instance."""

    __tablename__ = "device_bindings"

    app_instance_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    alias: Mapped[str] = mapped_column(NAME, primary_key=True)
    device: Mapped[str] = mapped_column(NAME, sa.ForeignKey("devices.name"), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeviceStateRow(Base):
    """The latest reading or frame (sensors) or state (controllers) of one device."""

    __tablename__ = "device_states"

    device: Mapped[str] = mapped_column(
        NAME, sa.ForeignKey("devices.name", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(sa.String(16))
    values: Mapped[str] = mapped_column(sa.Text)
    time: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class MqttCredentialRow(Base):
    """A real device's MQTT password, as the hash Mosquitto's password file holds (``mqtt_auth``)."""

    __tablename__ = "mqtt_credentials"

    device: Mapped[str] = mapped_column(
        NAME, sa.ForeignKey("devices.name", ondelete="CASCADE"), primary_key=True
    )
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
