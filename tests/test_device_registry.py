"""Registering devices as a platform configurer meets it, through the real front door: the sample
bundle, one document at a time, every kind of bad document refused with a message that names the
device, field and reason (and nothing stored), bundles all or nothing, who may write and read,
deleting what is in use, binding devices to app instances, and the latest device states.

The front door here has no Kafka connection. Tests of successful registrations replace
``device_manager.api.notify_device_change`` (the one call that reaches the device-manager
service) with a recorder; the ``busless`` site keeps the real one, so a registration
answers 503 and undoes itself. Users are created once per module (argon2 is slow on
purpose); each test gets its own copy of that database.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from werkzeug.test import TestResponse

from device_manager import api, registry
from device_manager.models import DeviceBindingRow, DeviceRow, DeviceStateRow, DeviceTypeRow, LocationRow
from platform_core.auth import Role
from platform_sdk.device_documents import DeviceBundle, DeviceInstance, DeviceType, Location
from platform_sdk.errors import NotFound, ValidationFailed
from platform_sdk.settings import Settings
from tests.test_front_door import FrontDoor, error_of, field_names, front_door, json_of, seed_registry

SAMPLE = Path(__file__).resolve().parents[1] / "configs" / "devices" / "sample.json"
USERS = {
    "admin": Role.PLATFORM_CONFIGURER,
    "aidev": Role.AI_DEVELOPER,
    "appdev": Role.APP_DEVELOPER,
    "enduser": Role.END_USER,
}
READER_NAMES = ("admin", "aidev", "appdev", "enduser")


# --- documents ----------------------------------------------------------------------------------


def sample() -> dict[str, Any]:
    bundle: dict[str, Any] = json.loads(SAMPLE.read_text())
    return bundle


def sample_type(name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(doc for doc in sample()["device_types"] if doc["name"] == name)
    return found


def sample_location(name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(doc for doc in sample()["locations"] if doc["name"] == name)
    return found


def camera_bundle(*devices: dict[str, Any], **changed_type: Any) -> dict[str, Any]:
    """The camera type (with ``changed_type``), the bank, and ``devices`` (by default one camera)."""
    return {
        "device_types": [sample_type("camera") | changed_type],
        "locations": [sample_location("city-bank")],
        "devices": list(devices) or [camera()],
    }


def camera(name: str = "cam-1", **changed: Any) -> dict[str, Any]:
    return {"name": name, "type": "camera", "location": "city-bank"} | changed


# --- the front door -----------------------------------------------------------------------------


@dataclass
class Site:
    """The front door and the notices its device routes sent to the device-manager service."""

    door: FrontDoor
    notices: list[tuple[str, str]] = field(default_factory=list)

    def post(self, path: str, body: Any, username: str | None = "admin") -> TestResponse:
        headers = self.door.auth(username) if username is not None else {}
        return self.door.client.post(path, json=body, headers=headers)

    def get(self, path: str, username: str | None = "admin") -> TestResponse:
        headers = self.door.auth(username) if username is not None else {}
        return self.door.client.get(path, headers=headers)

    def delete(self, path: str, username: str | None = "admin") -> TestResponse:
        headers = self.door.auth(username) if username is not None else {}
        return self.door.client.delete(path, headers=headers)

    def register_sample(self) -> None:
        json_of(self.post("/api/devices/bulk", sample()), 201)
        self.notices.clear()

    def stored(self) -> dict[str, list[str]]:
        """The names in each table (bindings as ``instance/alias/device``)."""
        with self.door.database.session() as session:
            return {
                "device_types": list(
                    session.scalars(sa.select(DeviceTypeRow.name).order_by(DeviceTypeRow.name))
                ),
                "locations": list(session.scalars(sa.select(LocationRow.name).order_by(LocationRow.name))),
                "devices": list(session.scalars(sa.select(DeviceRow.name).order_by(DeviceRow.name))),
                "bindings": sorted(
                    f"{row.app_instance_id}/{row.alias}/{row.device}"
                    for row in session.scalars(sa.select(DeviceBindingRow))
                ),
                "states": list(
                    session.scalars(sa.select(DeviceStateRow.device).order_by(DeviceStateRow.device))
                ),
            }

    def assert_nothing_stored(self) -> None:
        assert self.stored() == {
            key: [] for key in ("device_types", "locations", "devices", "bindings", "states")
        }
        assert self.notices == []


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite registry with the users of ``USERS``; tests work on copies of it."""
    path = tmp_path_factory.mktemp("device-registry") / "registry.db"
    seed_registry(f"sqlite:///{path}", USERS)
    return path


@contextlib.contextmanager
def open_site(
    template_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, bus: bool
) -> Iterator[Site]:
    """A front door on a copy of the template; with ``bus`` the notices are recorded, not sent."""
    database = tmp_path / "registry.db"
    shutil.copyfile(template_db, database)
    with front_door(f"sqlite:///{database}") as door:
        site = Site(door)
        if bus:
            monkeypatch.setattr(
                api, "notify_device_change", lambda action, name: site.notices.append((action, name))
            )
        yield site


@pytest.fixture
def site(
    settings: Settings, template_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Site]:
    with open_site(template_db, tmp_path, monkeypatch, bus=True) as opened:
        yield opened


@pytest.fixture
def busless(
    settings: Settings, template_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Site]:
    """A site whose device routes really try to reach the device-manager service (and cannot)."""
    with open_site(template_db, tmp_path, monkeypatch, bus=False) as opened:
        yield opened


def refused(site: Site, body: dict[str, Any], status: int, path: str = "/api/devices/bulk") -> dict[str, Any]:
    """``body`` is refused with ``status`` and nothing is stored or announced; the error."""
    error = error_of(site.post(path, body), status)
    site.assert_nothing_stored()
    return error


def refused_naming(
    site: Site, body: dict[str, Any], *, status: int, subject: str, field: str, reason: str
) -> dict[str, Any]:
    """Refused with a message naming ``subject``, ``field`` and ``reason``; the first detail says the same."""
    error = refused(site, body, status)
    assert error["message"].startswith(f"{subject}: {field}: "), error["message"]
    assert reason in error["message"]
    assert error["details"][0]["field"] == field
    assert reason in error["details"][0]["reason"]
    return error


# --- the sample and good registrations ----------------------------------------------------------


def test_the_sample_bundle_registers_cleanly_and_every_device_is_announced(site: Site) -> None:
    bundle = sample()
    DeviceBundle.model_validate(bundle)
    body = json_of(site.post("/api/devices/bulk", bundle), 201)

    assert body["counts"] == {"device_types": 6, "locations": 3, "devices": 12}
    assert body["names"]["devices"] == [device["name"] for device in bundle["devices"]]
    assert site.notices == [("added", device["name"]) for device in bundle["devices"]]
    stored = site.stored()
    assert stored["device_types"] == ["ac", "camera", "display", "fan", "light", "temperature"]
    assert stored["locations"] == ["city-bank", "green-school", "lake-home"]
    assert len(stored["devices"]) == 12

    home = json_of(site.get("/api/devices?location=lake-home", "enduser"))["devices"]
    assert [device["name"] for device in home] == ["home-ac", "home-fan", "home-light", "home-temp"]
    assert {device["kind"] for device in home} == {"sensor", "controller"}
    cameras = json_of(site.get("/api/devices?type=camera"))["devices"]
    assert [device["name"] for device in cameras] == ["bank-cam", "school-cam"]
    school = json_of(site.get("/api/devices?location=green-school&type=camera"))["devices"]
    assert [device["name"] for device in school] == ["school-cam"]
    zones = {loc["name"]: loc["timezone"] for loc in json_of(site.get("/api/devices/locations"))["locations"]}
    assert zones == {
        "city-bank": "Europe/London",
        "green-school": "Asia/Kolkata",
        "lake-home": "America/New_York",
    }
    simulators = {t["name"]: t["simulator"] for t in json_of(site.get("/api/devices/types"))["device_types"]}
    assert simulators == {name: name for name in simulators}


def test_a_device_shows_its_effective_parameters_type_and_latest_state(site: Site) -> None:
    site.register_sample()
    device = json_of(site.get("/api/devices/school-cam", "enduser"))
    assert device["type"] == "camera"
    assert device["location"] == "green-school"
    assert device["simulated"] is True
    assert device["parameters"] == {"fps": 1}
    assert device["effective_parameters"] == {"fps": 1, "width": 640, "height": 480, "scene": "cycle"}
    assert device["device_type"]["outputs"] == {
        "image": {"type": "image", "description": "One JPEG frame.", "required": True}
    }
    assert device["state"] is None
    assert device["bound_to"] == []

    first = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    later = datetime(2026, 11, 26, 9, 5, tzinfo=UTC)
    with site.door.database.session() as session:
        registry.record_state(session, "home-fan", "state", {"on": False, "speed": 0}, first)
    with site.door.database.session() as session:
        registry.record_state(session, "home-fan", "state", {"on": True, "speed": 3}, later)  # upsert
        registry.record_state(session, "home-temp", "reading", {"temperature": 21.5}, later)
    fan = json_of(site.get("/api/devices/home-fan", "appdev"))
    assert fan["state"]["kind"] == "state"
    assert fan["state"]["values"] == {"on": True, "speed": 3}
    assert datetime.fromisoformat(fan["state"]["time"]) == later
    with site.door.database.session() as session:
        reading = registry.read_state(session, "home-temp")
        assert reading is not None
        assert (reading.kind, reading.values, reading.time) == ("reading", {"temperature": 21.5}, later)
        assert registry.read_state(session, "bank-cam") is None
        with pytest.raises(NotFound, match="no device 'nowhere'"):
            registry.record_state(session, "nowhere", "reading", {}, later)

    json_of(site.delete("/api/devices/home-fan"))
    assert site.notices == [("removed", "home-fan")]
    assert site.stored()["states"] == ["home-temp"]  # the fan's state went with it


def test_types_locations_and_devices_register_one_at_a_time(site: Site) -> None:
    created = json_of(site.post("/api/devices/types", sample_type("fan")), 201)
    assert created["name"] == "fan"
    assert "created_at" in created
    json_of(site.post("/api/devices/locations", sample_location("lake-home")), 201)
    device = json_of(
        site.post("/api/devices", {"name": "fan-1", "type": "fan", "location": "lake-home"}), 201
    )
    assert device["kind"] == "controller"
    assert site.notices == [("added", "fan-1")]

    assert json_of(site.get("/api/devices/types/fan"))["devices"] == ["fan-1"]
    home = json_of(site.get("/api/devices/locations/lake-home", "enduser"))
    assert home["timezone"] == "America/New_York"
    assert [d["name"] for d in home["devices"]] == ["fan-1"]

    assert json_of(site.delete("/api/devices/fan-1")) == {"name": "fan-1", "deleted": True}
    assert json_of(site.delete("/api/devices/types/fan")) == {"name": "fan", "deleted": True}
    assert json_of(site.delete("/api/devices/locations/lake-home")) == {"name": "lake-home", "deleted": True}
    assert site.notices == [("added", "fan-1"), ("removed", "fan-1")]
    site.notices.clear()
    site.assert_nothing_stored()


def test_a_real_device_of_a_type_without_simulator_registers(site: Site) -> None:
    bundle = camera_bundle(camera(simulated=False), simulator=None)
    json_of(site.post("/api/devices/bulk", bundle), 201)
    assert site.stored()["devices"] == ["cam-1"]


# --- bad documents: references and parameters (checked against what is registered) -----------


def test_an_unknown_type_is_refused_naming_device_and_field(site: Site) -> None:
    bundle = camera_bundle(camera(), camera("cam-2", type="camra"))
    error = refused_naming(
        site,
        bundle,
        status=422,
        subject="device 'cam-2'",
        field="devices.1.type",
        reason="unknown device type 'camra'",
    )
    assert error["type"] == "ValidationFailed"
    assert len(error["details"]) == 1

    json_of(site.post("/api/devices/locations", sample_location("city-bank")), 201)
    error = error_of(site.post("/api/devices", camera()), 422)
    assert error["message"].startswith("device 'cam-1': type: unknown device type 'camera'")
    assert site.stored()["devices"] == []
    assert site.notices == []


def test_an_unknown_location_is_refused_naming_device_and_field(site: Site) -> None:
    bundle = camera_bundle(camera(location="city-bnak"))
    refused_naming(
        site,
        bundle,
        status=422,
        subject="device 'cam-1'",
        field="devices.0.location",
        reason="unknown location 'city-bnak'",
    )


def test_types_and_locations_registered_earlier_count(site: Site) -> None:
    json_of(site.post("/api/devices/bulk", camera_bundle()), 201)
    json_of(site.post("/api/devices/bulk", {"devices": [camera("cam-2")]}), 201)
    json_of(site.post("/api/devices", camera("cam-3")), 201)
    assert site.stored()["devices"] == ["cam-1", "cam-2", "cam-3"]


def test_a_duplicate_name_in_the_file_is_a_conflict_naming_it(site: Site) -> None:
    bundle = camera_bundle(camera(), camera("cam-2"), camera())
    error = refused_naming(
        site,
        bundle,
        status=409,
        subject="device 'cam-1'",
        field="devices.2.name",
        reason="appears twice in the bundle (also devices.0)",
    )
    assert error["type"] == "Conflict"

    bundle = camera_bundle()
    bundle["locations"].append(sample_location("city-bank") | {"description": "again"})
    refused_naming(
        site,
        bundle,
        status=409,
        subject="location 'city-bank'",
        field="locations.1.name",
        reason="appears twice",
    )


def test_a_name_already_registered_is_a_conflict_naming_it(site: Site) -> None:
    site.register_sample()
    before = site.stored()
    error = error_of(site.post("/api/devices/bulk", camera_bundle(camera("fresh-cam"))), 409)
    assert error["message"] == "device type 'camera': device_types.0.name: already exists (and 1 more)"
    assert error["details"] == [
        {"field": "device_types.0.name", "reason": "already exists"},
        {"field": "locations.0.name", "reason": "already exists"},
    ]
    error = error_of(site.post("/api/devices", camera("bank-cam")), 409)
    assert error["message"] == "device 'bank-cam' already exists"
    assert error_of(site.post("/api/devices/types", sample_type("fan")), 409)["message"] == (
        "device type 'fan' already exists"
    )
    assert (
        "location 'lake-home' already exists"
        in error_of(site.post("/api/devices/locations", sample_location("lake-home")), 409)["message"]
    )
    assert site.stored() == before
    assert site.notices == []


def test_a_parameter_out_of_range_is_refused_naming_it(site: Site) -> None:
    bundle = camera_bundle(camera(parameters={"fps": 60, "scene": "crowd"}))
    error = refused_naming(
        site,
        bundle,
        status=422,
        subject="device 'cam-1'",
        field="devices.0.parameters.fps",
        reason="60 is above the maximum 30",
    )
    assert error["details"][1] == {
        "field": "devices.0.parameters.scene",
        "reason": "'crowd' is not one of person, empty, cycle",
    }
    assert error["message"].endswith("(and 1 more)")
    wrong_type = camera_bundle(camera(parameters={"width": "wide"}))
    refused_naming(
        site,
        wrong_type,
        status=422,
        subject="device 'cam-1'",
        field="devices.0.parameters.width",
        reason="must be an integer, not 'wide'",
    )


def test_an_unknown_parameter_is_refused_naming_it(site: Site) -> None:
    refused_naming(
        site,
        camera_bundle(camera(parameters={"zoom": 2})),
        status=422,
        subject="device 'cam-1'",
        field="devices.0.parameters.zoom",
        reason="unknown parameter of type 'camera' (it has: fps, height, scene, width)",
    )


def test_a_missing_required_parameter_is_refused_naming_it(site: Site) -> None:
    parameters = sample_type("camera")["parameters"] | {"serial": {"type": "string"}}
    refused_naming(
        site,
        camera_bundle(camera(), parameters=parameters),
        status=422,
        subject="device 'cam-1'",
        field="devices.0.parameters.serial",
        reason="missing: type 'camera' requires it and has no default",
    )
    optional = parameters | {"serial": {"type": "string", "required": False}}
    json_of(site.post("/api/devices/bulk", camera_bundle(camera(), parameters=optional)), 201)


def test_a_type_whose_default_does_not_fit_is_refused(site: Site) -> None:
    parameters = sample_type("camera")["parameters"] | {"fps": {"type": "float", "max": 30, "default": 50}}
    refused_naming(
        site,
        camera_bundle(parameters=parameters),
        status=422,
        subject="device type 'camera'",
        field="device_types.0.parameters.fps.default",
        reason="50 is above the maximum 30",
    )


def test_a_simulated_device_of_a_type_without_simulator_is_refused(site: Site) -> None:
    refused_naming(
        site,
        camera_bundle(camera(), simulator=None),
        status=422,
        subject="device 'cam-1'",
        field="devices.0.simulated",
        reason="type 'camera' has no simulator: register the device with \"simulated\": false",
    )


def test_a_reserved_device_name_is_refused(site: Site) -> None:
    refused_naming(
        site,
        camera_bundle(camera("types")),
        status=422,
        subject="device 'types'",
        field="devices.0.name",
        reason="'types' is reserved",
    )


# --- bad documents: the document itself (pydantic, before the registry is asked) --------------


def test_a_sensor_without_outputs_is_refused(site: Site) -> None:
    error = refused(site, camera_bundle(outputs={}), 422)
    assert field_names(error) == ["device_types.0"]
    assert "a sensor needs `outputs`" in error["details"][0]["msg"]
    error = refused(site, sample_type("camera") | {"outputs": {}}, 422, "/api/devices/types")
    assert error["message"] == "invalid DeviceType"


def test_a_controller_without_commands_is_refused(site: Site) -> None:
    bundle = {"device_types": [sample_type("fan") | {"commands": {}}]}
    error = refused(site, bundle, 422)
    assert field_names(error) == ["device_types.0"]
    assert "a controller needs `commands`" in error["details"][0]["msg"]


def test_a_bad_time_zone_is_refused(site: Site) -> None:
    error = refused(
        site, sample_location("lake-home") | {"timezone": "Mars/Olympus"}, 422, "/api/devices/locations"
    )
    assert field_names(error) == ["timezone"]
    assert "unknown time zone 'Mars/Olympus'" in error["details"][0]["msg"]
    bundle = camera_bundle()
    bundle["locations"][0]["timezone"] = "Europe/Lndon"
    assert field_names(refused(site, bundle, 422)) == ["locations.0.timezone"]


def test_a_bad_name_is_refused(site: Site) -> None:
    error = refused(site, camera_bundle(camera("Bank Cam")), 422)
    assert field_names(error) == ["devices.0.name"]
    assert "should match pattern" in error["details"][0]["msg"]
    error = refused(site, sample_type("fan") | {"name": "x"}, 422, "/api/devices/types")
    assert field_names(error) == ["name"]
    error = refused(site, camera_bundle(camera(colour="red")), 422)
    assert field_names(error) == ["devices.0.colour"]
    assert error_of(site.post("/api/devices", "not an object"), 400)["type"] == "BadRequest"


def test_a_bundle_whose_last_device_is_bad_stores_nothing(site: Site) -> None:
    bundle = sample()
    bundle["devices"][-1]["parameters"] = {"noise": 5}
    error = refused_naming(
        site,
        bundle,
        status=422,
        subject="device 'home-light'",
        field="devices.11.parameters.noise",
        reason="5 is above the maximum 1",
    )
    assert len(error["details"]) == 1


def test_every_problem_of_a_bundle_is_listed(site: Site) -> None:
    bundle = camera_bundle(
        camera(type="camra"), camera("cam-2", location="nowhere", parameters={"fps": 0}), camera("cam-3")
    )
    error = refused(site, bundle, 422)
    assert [detail["field"] for detail in error["details"]] == [
        "devices.0.type",
        "devices.1.location",
        "devices.1.parameters.fps",
    ]
    assert error["message"].endswith("(and 2 more)")


# --- the device-manager service must hear of every change ---------------------------------------


def test_without_a_bus_a_registration_answers_503_and_leaves_nothing(busless: Site) -> None:
    error = error_of(busless.post("/api/devices/bulk", sample()), 503)
    assert error["type"] == "Unavailable"
    busless.assert_nothing_stored()

    with busless.door.database.session() as session:
        registry.create_type(session, DeviceType.model_validate(sample_type("camera")))
        registry.create_location(session, Location.model_validate(sample_location("city-bank")))
    error_of(busless.post("/api/devices", camera()), 503)
    assert busless.stored()["devices"] == []

    with busless.door.database.session() as session:
        registry.create_device(session, DeviceInstance.model_validate(camera()))
    error_of(busless.delete("/api/devices/cam-1"), 503)
    assert busless.stored()["devices"] == ["cam-1"]  # the service still runs it: it stays registered


# --- who may do what ----------------------------------------------------------------------------


def test_only_a_configurer_writes_and_every_role_reads(site: Site) -> None:
    for username in ("enduser", "appdev", "aidev"):
        error = error_of(site.post("/api/devices/bulk", sample(), username), 403)
        assert f"role {USERS[username]} may not call POST /api/devices/bulk" in error["message"]
        error_of(site.post("/api/devices/types", sample_type("fan"), username), 403)
        error_of(site.post("/api/devices/locations", sample_location("lake-home"), username), 403)
        error_of(site.post("/api/devices", camera(), username), 403)
    site.assert_nothing_stored()

    site.register_sample()
    for username in READER_NAMES:
        assert len(json_of(site.get("/api/devices", username))["devices"]) == 12
        assert len(json_of(site.get("/api/devices/types", username))["device_types"]) == 6
        assert len(json_of(site.get("/api/devices/locations", username))["locations"]) == 3
        json_of(site.get("/api/devices/locations/city-bank", username))
        json_of(site.get("/api/devices/types/camera", username))
        json_of(site.get("/api/devices/bank-cam", username))
    for path in ("/api/devices/bank-cam", "/api/devices/types/camera", "/api/devices/locations/city-bank"):
        error_of(site.delete(path, "enduser"), 403)

    for path in ("/api/devices", "/api/devices/types", "/api/devices/locations", "/api/devices/bank-cam"):
        assert "missing credentials" in error_of(site.get(path, None), 401)["message"]
    error_of(site.post("/api/devices/bulk", sample(), None), 401)
    error_of(site.delete("/api/devices/bank-cam", None), 401)
    assert len(site.stored()["devices"]) == 12
    assert site.notices == []


# --- unknown names and deleting what is in use --------------------------------------------------


def test_unknown_names_are_404_naming_them(site: Site) -> None:
    assert "no device type 'robot'" in error_of(site.get("/api/devices/types/robot"), 404)["message"]
    assert "no location 'moon'" in error_of(site.get("/api/devices/locations/moon"), 404)["message"]
    assert "no device 'cam-9'" in error_of(site.get("/api/devices/cam-9"), 404)["message"]
    assert "no device 'cam-9'" in error_of(site.delete("/api/devices/cam-9"), 404)["message"]
    assert "no location 'moon'" in error_of(site.get("/api/devices?location=moon"), 404)["message"]
    assert "no device type 'robot'" in error_of(site.get("/api/devices?type=robot"), 404)["message"]
    assert field_names(error_of(site.get("/api/devices?colour=red"), 400)) == ["colour"]
    assert site.notices == []


def test_deleting_a_type_or_location_in_use_is_a_conflict_naming_the_devices(site: Site) -> None:
    site.register_sample()
    error = error_of(site.delete("/api/devices/types/camera"), 409)
    assert (
        error["message"] == "device type 'camera' is used by devices bank-cam, school-cam: delete them first"
    )
    assert error["details"] == {"devices": ["bank-cam", "school-cam"]}
    error = error_of(site.delete("/api/devices/locations/city-bank"), 409)
    assert "location 'city-bank' still has devices bank-cam, bank-display" in error["message"]
    assert "camera" in site.stored()["device_types"]
    assert "city-bank" in site.stored()["locations"]

    json_of(site.delete("/api/devices/bank-cam"))
    json_of(site.delete("/api/devices/school-cam"))
    json_of(site.delete("/api/devices/types/camera"))
    assert "camera" not in site.stored()["device_types"]


# --- bindings -----------------------------------------------------------------------------------


def test_two_app_instances_bind_the_same_camera(site: Site) -> None:
    site.register_sample()
    needs = {"entrance": ("camera", 1), "screen": ("display", 1)}
    with site.door.database.session() as session:
        first = registry.bind(session, "app-1", needs, "city-bank")
        second = registry.bind(session, "app-2", {"cam": ("camera", 1)}, "city-bank")
    assert first == {"entrance": ["bank-cam"], "screen": ["bank-display"]}
    assert second == {"cam": ["bank-cam"]}
    with site.door.database.session() as session:
        assert registry.bindings_of(session, "app-1") == first
        assert registry.bound_instances(session, "bank-cam") == ["app-1", "app-2"]
        registry.bind(
            session, "app-2", {"cam": ("camera", 1), "screen": ("display", 1)}, "city-bank"
        )  # replaces
    assert site.stored()["bindings"] == [
        "app-1/entrance/bank-cam",
        "app-1/screen/bank-display",
        "app-2/cam/bank-cam",
        "app-2/screen/bank-display",
    ]
    assert json_of(site.get("/api/devices/bank-cam", "enduser"))["bound_to"] == ["app-1", "app-2"]

    error = error_of(site.delete("/api/devices/bank-cam"), 409)
    assert error["message"] == "device 'bank-cam' is bound to app instances app-1, app-2: stop them first"
    assert site.notices == []
    with site.door.database.session() as session:
        assert registry.unbind(session, "app-1") == 2
        assert registry.unbind(session, "app-2") == 2
    json_of(site.delete("/api/devices/bank-cam"))


def test_binding_at_a_location_lacking_a_type_names_type_and_location(site: Site) -> None:
    site.register_sample()
    with site.door.database.session() as session, pytest.raises(ValidationFailed) as caught:
        registry.bind(session, "app-3", {"door": ("camera", 1), "screen": ("display", 1)}, "lake-home")
    assert caught.value.message == (
        "app instance 'app-3': devices.door: location 'lake-home' has 0 device(s) of type 'camera'; "
        "'door' needs 1 (and 1 more)"
    )
    assert [detail["field"] for detail in caught.value.details] == ["devices.door", "devices.screen"]

    with (
        site.door.database.session() as session,
        pytest.raises(ValidationFailed, match="'camera'; 'cams' needs 2"),
    ):
        registry.bind(session, "app-3", {"cams": ("camera", 2)}, "city-bank")
    with (
        site.door.database.session() as session,
        pytest.raises(ValidationFailed, match="unknown location 'moon'"),
    ):
        registry.bind(session, "app-3", {"cam": ("camera", 1)}, "moon")
    with (
        site.door.database.session() as session,
        pytest.raises(ValidationFailed, match="unknown device type 'robot'"),
    ):
        registry.bind(session, "app-3", {"arm": ("robot", 1)}, "city-bank")
    assert site.stored()["bindings"] == []
