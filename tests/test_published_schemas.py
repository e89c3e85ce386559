"""The JSON Schemas published in docs/schemas are the ones the code validates with."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from platform_sdk.artifacts import AppManifest, ModelManifest, json_schema_document
from platform_sdk.device_documents import DeviceBundle, DeviceInstance, DeviceType, Location
from scheduler.timetable import ScheduleSpec

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"
PUBLISHED: dict[str, tuple[type[BaseModel], str]] = {
    "model": (ModelManifest, "aiot model schema"),
    "app": (AppManifest, "aiot app schema"),
    "device-type": (DeviceType, "aiot device schema device-type"),
    "location": (Location, "aiot device schema location"),
    "device": (DeviceInstance, "aiot device schema device"),
    "device-bundle": (DeviceBundle, "aiot device schema device-bundle"),
    "schedule": (ScheduleSpec, "aiot schedule schema"),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_the_published_schema_is_current(name: str) -> None:
    model, command = PUBLISHED[name]
    published = SCHEMAS / f"{name}.schema.json"
    assert published.read_text() == json_schema_document(model, name), (
        f"{published.name} is stale: regenerate it with `{command} > docs/schemas/{name}.schema.json`"
    )
