"""Uploading an app as its users meet it: a good app uploads, lists with the device types it
needs and the locations that have them, shows and deletes; every kind of bad zip is refused
with a message that names the file, field and reason (by ``validate_app_zip`` and by
``POST /api/apps`` alike, which then stores nothing: no row, no blob), a damaged entry beside a
valid ``app.json`` included; a manifest with a byte-order mark is stored and read back as an
instance reads it; what ``app.json`` names
is checked against the model and device registries; who may upload, list, show and delete;
``aiot app pack``.

The registry of each test is a copy of one made per module: users of every role, the sample
device types of ``configs/devices/sample.json`` with three locations and their devices
(``DEVICES``), and the sample face detector model (rows only: apps never read a model's zip).
Each test gets its own bucket.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from werkzeug.test import TestResponse

from ai_manager import registry as model_registry
from ai_manager.models import ModelRow, ModelVersionRow
from app_manager import registry as app_registry
from app_manager.artifact import validate_app_zip
from app_manager.models import AppRow, AppVersionRow
from bootstrapper.kafka import KafkaBroker
from device_manager import registry as device_registry
from platform_core.archive import Archive, ArchiveLimits
from platform_core.auth import Role
from platform_core.blobstore import LocalBlobStore
from platform_core.db import Database
from platform_core.http import HttpServer, resources
from platform_sdk.app import load_manifest
from platform_sdk.artifacts import AppManifest, ModelManifest, app_id_for, model_id_for
from platform_sdk.bus import Bus, Requester
from platform_sdk.device_documents import DeviceBundle
from platform_sdk.errors import ValidationFailed
from platform_sdk.settings import Settings, temporary_settings
from tests.fixtures.components import kafka_updates
from tests.fixtures.registries import Registries, answering
from tests.test_archive import with_bad_crc
from tests.test_front_door import FrontDoor, error_of, json_of, seed_registry
from web.app import build_front_door

pytestmark = pytest.mark.service("kafka")

ROOT = Path(__file__).resolve().parents[1]
FACE_DETECTOR = ROOT / "examples" / "models" / "face-detector" / "model.json"
SAMPLE_DEVICES = ROOT / "configs" / "devices" / "sample.json"
WATCHER_ID = app_id_for("watcher")
# Where the tests' devices are (the sample device types; locations and devices of their own).
DEVICES = {
    "city-bank": ["camera", "display", "fan"],
    "green-school": ["camera", "display", "fan", "light", "temperature"],
    "lake-home": ["fan", "temperature", "ac", "light"],
}
LABEL = "x.zip"
USERS = {
    "admin": Role.PLATFORM_CONFIGURER,
    "ada": Role.AI_DEVELOPER,
    "appdev": Role.APP_DEVELOPER,
    "linus": Role.APP_DEVELOPER,
    "enduser": Role.END_USER,
}
WATCHER_CODE = b"""def run(app):
    faces = app.model_call("faces", "detect", image=app.get_sensor_data("camera").image)
    app.send_controller("display", "show", text=str(faces["count"]))
"""


# --- building zips ------------------------------------------------------------------------------


def watcher_manifest() -> dict[str, Any]:
    """A backend app that calls the face detector and uses a camera and a display."""
    return {
        "name": "watcher",
        "version": "1.0.0",
        "description": "Counts faces on the camera and shows the count.",
        "entrypoint": "watcher:run",
        "kind": "backend",
        "requirements": ["pillow>=10"],
        "models": {"faces": {"model": "face-detector", "endpoints": ["detect"]}},
        "devices": {"camera": {"type": "camera"}, "display": {"type": "display", "count": 1}},
    }


def zip_of(files: Mapping[str, bytes]) -> bytes:
    """A zip of ``files`` as given (no name checks)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def watcher_files(manifest: Mapping[str, Any] | None = None) -> dict[str, bytes]:
    document = watcher_manifest() if manifest is None else manifest
    return {"app.json": json.dumps(document, indent=2).encode(), "watcher.py": WATCHER_CODE}


def app_zip(manifest: Mapping[str, Any] | None = None, /, **extra: bytes) -> bytes:
    return zip_of({**watcher_files(manifest), **extra})


# --- the front door -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """The front door and the directory of its local blob store."""

    door: FrontDoor
    bucket: Path

    def upload(self, data: bytes, username: str | None = "appdev", filename: str = LABEL) -> TestResponse:
        headers = {"Content-Type": "application/zip", "X-Filename": filename}
        if username is not None:
            headers |= self.door.auth(username)
        return self.door.client.post("/api/apps", data=data, headers=headers)

    def get(self, path: str, username: str = "enduser") -> dict[str, Any]:
        return json_of(self.door.client.get(path, headers=self.door.auth(username)))

    def stored(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[str]]:
        """(app id, owner) rows, (app id, version) rows and every file in the bucket."""
        with self.door.database.session() as session:
            apps = sorted((row.app_id, row.owner) for row in session.scalars(sa.select(AppRow)))
            versions = sorted((row.app_id, row.version) for row in session.scalars(sa.select(AppVersionRow)))
        files = sorted(
            path.relative_to(self.bucket).as_posix() for path in self.bucket.rglob("*") if path.is_file()
        )
        return apps, versions, files

    def assert_nothing_stored(self) -> None:
        assert self.stored() == ([], [], [])
        assert not (self.bucket / "apps").exists()


def register_face_detector(database: Database) -> None:
    """The sample face detector's rows (version 1.0.0, endpoint ``detect``), as its upload leaves them."""
    manifest = ModelManifest.model_validate_json(FACE_DETECTOR.read_text())
    model_id = model_id_for(manifest.name)
    with database.session() as session:
        model = ModelRow(model_id=model_id, name=manifest.name, owner="ada", description="")
        session.add(model)
        model_registry.create_version(
            session,
            model,
            ModelVersionRow(
                model_id=model_id,
                version=manifest.version,
                manifest=manifest.model_dump_json(),
                artifact_key=f"models/{model_id}/{manifest.version}.zip",
                sha256="0" * 64,
                size=1,
                uploaded_by="ada",
            ),
        )


def device_bundle() -> DeviceBundle:
    """The sample device types; the locations and devices of ``DEVICES`` (not simulated)."""
    types = json.loads(SAMPLE_DEVICES.read_text())["device_types"]
    locations = [{"name": name, "kind": "site", "timezone": "UTC"} for name in DEVICES]
    devices = [
        {"name": f"{location}-{type_name}", "type": type_name, "location": location, "simulated": False}
        for location, type_names in DEVICES.items()
        for type_name in type_names
    ]
    return DeviceBundle.model_validate({"device_types": types, "locations": locations, "devices": devices})


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite registry with ``USERS``, the sample devices and the face detector."""
    path = tmp_path_factory.mktemp("app-upload") / "registry.db"
    seed_registry(f"sqlite:///{path}", USERS)
    database = Database(f"sqlite:///{path}")
    try:
        with database.session() as session:
            device_registry.register_bundle(session, device_bundle())
        register_face_detector(database)
    finally:
        database.stop()
    return path


@dataclass(frozen=True)
class Answering:
    """The front door's requester and the AI and device managers' answers, shared by the module."""

    requester: Requester
    registries: Registries


@pytest.fixture(scope="module")
def answers(kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Answering]:
    home = tmp_path_factory.mktemp("app-upload-bus")
    overrides = {
        "home": str(home),
        "kafka.topic_prefix": f"t{uuid.uuid4().hex[:10]}",
        **kafka_updates(kafka_broker),
    }
    with temporary_settings(overrides) as current:
        bus = Bus(current, source="app-upload-test")
        nowhere = Database("sqlite://")  # until a test's site names its registry
        try:
            with (
                Requester(bus) as requester,
                answering(bus, nowhere, ("ai-manager", "device-manager")) as registries,
            ):
                yield Answering(requester, registries)
        finally:
            nowhere.stop()
            bus.close()


@contextlib.contextmanager
def open_site(
    template_db: Path, tmp_path: Path, answers: Answering, overrides: Mapping[str, Any] | None = None
) -> Iterator[Site]:
    path = tmp_path / "registry.db"
    shutil.copyfile(template_db, path)
    bucket = tmp_path / "bucket"
    settings = {"blob.backend": "local", "blob.local_path": str(bucket), **(overrides or {})}
    with temporary_settings({"database.url": f"sqlite:///{path}", **settings}) as current:
        app = build_front_door(current, requester=answers.requester)
        with app.app_context():
            database = resources().database
            blobs = resources().blobs
        assert isinstance(blobs, LocalBlobStore)
        assert blobs.root == bucket  # the bucket the checks below look into
        answers.registries.serve(database)
        try:
            yield Site(FrontDoor(app, app.test_client(), database), bucket)
        finally:
            database.stop()


@pytest.fixture
def site(settings: Settings, template_db: Path, tmp_path: Path, answers: Answering) -> Iterator[Site]:
    with open_site(template_db, tmp_path, answers) as opened:
        yield opened


def refused(
    site: Site, data: bytes, *, file: str | None, field: str | None, reason: str, registry_only: bool = False
) -> dict[str, Any]:
    """Check ``data`` is refused alike by ``validate_app_zip`` and the front door; the 422 error.

    The message names the zip, ``file`` (and ``field``) and contains ``reason``; the upload
    stores nothing. A ``registry_only`` problem passes ``validate_app_zip`` (which needs no
    registry) and is found on upload only.
    """
    if registry_only:
        validate_app_zip(data, label=LABEL)
    else:
        with pytest.raises(ValidationFailed) as caught:
            validate_app_zip(data, label=LABEL)
        first = caught.value.details[0]
        assert (first["file"], first["field"]) == (file, field)
        assert reason in first["reason"]

    error = error_of(site.upload(data), 422)
    assert error["type"] == "ValidationFailed"
    message = error["message"]
    assert message.startswith(f"{LABEL}: "), message
    if file is not None:
        assert file in message, message
    if field is not None:
        assert f"field {field}:" in message, message
    assert reason in message, message
    if not registry_only:
        assert message == caught.value.message
        assert error["details"] == caught.value.details
    assert (error["details"][0]["file"], error["details"][0]["field"]) == (file, field)
    site.assert_nothing_stored()
    return error


# --- a good app ---------------------------------------------------------------------------------


def test_an_app_uploads_lists_shows_and_deletes(site: Site) -> None:
    uploaded = app_zip()  # once: a zip built a second later has other entry times
    reply = json_of(site.upload(uploaded, filename="watcher.zip"), 201)
    assert reply["app_id"] == WATCHER_ID
    assert (reply["name"], reply["version"], reply["kind"], reply["files"]) == (
        "watcher",
        "1.0.0",
        "backend",
        2,
    )
    key = f"apps/{WATCHER_ID}/1.0.0.zip"
    assert site.stored() == ([(WATCHER_ID, "appdev")], [(WATCHER_ID, "1.0.0")], [key])
    assert (site.bucket / key).read_bytes() == uploaded

    [listed] = site.get("/api/apps")["apps"]  # end users list apps to schedule them
    assert listed == {
        "app_id": WATCHER_ID,
        "name": "watcher",
        "owner": "appdev",
        "description": "Counts faces on the camera and shows the count.",
        "created_at": listed["created_at"],
        "latest_version": "1.0.0",
        "versions": ["1.0.0"],
        "kind": "backend",
        "devices": {"camera": {"type": "camera", "count": 1}, "display": {"type": "display", "count": 1}},
        "models": {"faces": {"model": "face-detector", "version": None, "endpoints": ["detect"]}},
        "locations": ["city-bank", "green-school"],  # lake-home has no camera nor display
    }

    for target in ("watcher", WATCHER_ID):
        shown = site.get(f"/api/apps/{target}")
        assert {key: value for key, value in shown.items() if key != "versions"} == {
            key: value for key, value in listed.items() if key != "versions"
        }
        [version] = shown["versions"]
        assert (version["version"], version["uploaded_by"]) == ("1.0.0", "appdev")
        assert version["size"] == len(app_zip())
        assert version["manifest"]["entrypoint"] == "watcher:run"
        assert version["manifest"]["devices"]["camera"] == {"type": "camera", "count": 1}

    deleted = json_of(site.door.client.delete("/api/apps/watcher", headers=site.door.auth("appdev")))
    assert deleted == {"app_id": WATCHER_ID, "name": "watcher", "deleted": True}
    site.assert_nothing_stored()
    assert site.get("/api/apps") == {"apps": []}


def test_the_locations_of_an_app_are_those_with_enough_devices_of_every_type(site: Site) -> None:
    def locations(devices: dict[str, Any], name: str) -> list[str]:
        manifest = watcher_manifest() | {"name": name, "devices": devices, "models": {}}
        json_of(site.upload(app_zip(manifest)), 201)
        found: list[str] = site.get(f"/api/apps/{name}")["locations"]
        return found

    assert locations({"fan": {"type": "fan"}}, "fans") == ["city-bank", "green-school", "lake-home"]
    assert locations({"t": {"type": "temperature"}, "cool": {"type": "ac"}}, "cooler") == ["lake-home"]
    assert locations({"cams": {"type": "camera", "count": 2}}, "two-cams") == []
    assert locations({}, "no-devices") == ["city-bank", "green-school", "lake-home"]
    listed = {app["name"]: app["locations"] for app in site.get("/api/apps")["apps"]}
    assert (listed["two-cams"], listed["cooler"]) == ([], ["lake-home"])


def test_the_highest_version_is_the_latest_and_its_description_the_apps(site: Site) -> None:
    json_of(site.upload(app_zip()), 201)
    newer = watcher_manifest() | {"version": "1.10.0", "description": "newer", "devices": {}}
    json_of(site.upload(app_zip(newer)), 201)
    json_of(site.upload(app_zip(watcher_manifest() | {"version": "1.9.0", "description": "a fix"})), 201)
    shown = site.get("/api/apps/watcher")
    assert [v["version"] for v in shown["versions"]] == ["1.0.0", "1.10.0", "1.9.0"]  # as uploaded
    assert shown["latest_version"] == "1.10.0"  # numerically highest
    assert (shown["description"], shown["devices"]) == ("newer", {})
    assert shown["locations"] == ["city-bank", "green-school", "lake-home"]


def test_an_app_that_cannot_be_stored_leaves_no_rows(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(LocalBlobStore, "put", broken)
    error_of(site.upload(app_zip()), 500)
    site.assert_nothing_stored()


# --- unsafe archives ----------------------------------------------------------------------------


def test_something_that_is_not_a_zip_is_refused(site: Site) -> None:
    refused(site, b"just some text, no zip\n" * 10, file=None, field=None, reason="not a valid zip archive")
    refused(site, app_zip()[:-100], file=None, field=None, reason="not a valid zip archive")


def test_a_path_climbing_out_of_the_zip_is_refused(site: Site) -> None:
    data = app_zip(**{"../x.py": b"import os\n"})
    refused(site, data, file="../x.py", field=None, reason="path has a '..' component")


def test_a_zip_bomb_is_refused_before_it_is_inflated(site: Site) -> None:
    data = app_zip(**{"static/video.bin": b"\0" * (8 * 1024 * 1024)})
    assert len(data) < 64 * 1024  # 8 MiB that travel as a few KiB
    error = refused(site, data, file="static/video.bin", field=None, reason="(zip bomb?)")
    assert "compression ratio" in error["message"]


def test_a_damaged_entry_beside_a_valid_app_json_is_refused_naming_it(site: Site) -> None:
    data = with_bad_crc(app_zip(**{"static/logo.png": b"\x89PNG" + bytes(range(256)) * 4}), "static/logo.png")
    error = refused(
        site, data, file="static/logo.png", field=None, reason="Bad CRC-32 for file 'static/logo.png'"
    )
    assert error["message"].endswith("zip the folder again")


def test_an_entry_name_with_a_control_character_is_refused(site: Site) -> None:
    data = app_zip(**{"static/logo\x1b[31m.png": b"x"})
    error = error_of(site.upload(data), 422)
    assert (
        error["message"]
        == f"{LABEL}: 'static/logo\\x1b[31m.png': path contains a control character (U+001B): rename the file"
    )
    site.assert_nothing_stored()


def test_an_app_json_with_a_byte_order_mark_is_stored_and_read_back_as_an_instance_reads_it(
    site: Site, tmp_path: Path
) -> None:
    files = watcher_files()
    files["app.json"] = b"\xef\xbb\xbf" + files["app.json"]
    reply = json_of(site.upload(zip_of(files)), 201)
    stored = site.bucket / "apps" / WATCHER_ID / "1.0.0.zip"
    with Archive.open(stored, label="stored") as archive:
        archive.extract_to(tmp_path / "bundle")
    manifest = load_manifest(tmp_path / "bundle")  # what python -m platform_sdk.run_app reads
    assert (manifest.name, manifest.version) == ("watcher", reply["version"])
    assert manifest == AppManifest.model_validate(watcher_manifest())


@pytest.mark.parametrize(
    ("field", "manifest"),
    [
        pytest.param("version", watcher_manifest() | {"version": "\u0661.\u0660"}, id="arabic-indic"),
        pytest.param(
            "models.faces.version",
            watcher_manifest()
            | {
                "models": {
                    "faces": {"model": "face-detector", "version": "\uff11.0.0", "endpoints": ["detect"]}
                }
            },
            id="fullwidth-pin",
        ),
    ],
)
def test_a_version_in_other_digits_is_refused_saying_to_use_ascii(
    site: Site, field: str, manifest: dict[str, Any]
) -> None:
    refused(site, app_zip(manifest), file="app.json", field=field, reason="characters that are not ASCII")


def test_a_zip_over_the_archive_limits_is_refused() -> None:
    limits = ArchiveLimits(max_files=2)
    with pytest.raises(ValidationFailed) as caught:
        validate_app_zip(app_zip(**{"extra.py": b""}), label=LABEL, limits=limits)
    assert caught.value.message == f"{LABEL}: 'extra.py': too many entries (3 > 2)"
    validate_app_zip(app_zip(), label=LABEL, limits=limits)  # two files are fine


def test_an_upload_over_the_size_limit_is_too_large(
    settings: Settings, template_db: Path, tmp_path: Path, answers: Answering
) -> None:
    big = app_zip(**{"static/noise.bin": os.urandom(2 * 1024 * 1024)})
    validate_app_zip(big, label=LABEL)  # valid: only its size is wrong
    with open_site(template_db, tmp_path, answers, {"web.max_upload_mb": 1}) as limited:
        error = error_of(limited.upload(big), 413)
        assert error["message"] == "request body exceeds the 1 MB limit"
        limited.assert_nothing_stored()


# --- app.json -----------------------------------------------------------------------------------


def test_a_zip_without_app_json_is_refused(site: Site) -> None:
    error = refused(
        site,
        zip_of({"watcher.py": WATCHER_CODE}),
        file="app.json",
        field=None,
        reason="missing at the top level",
    )
    assert "found" not in error["message"]


def test_app_json_inside_a_folder_is_refused_with_a_hint(site: Site) -> None:
    data = zip_of({f"watcher/{name}": content for name, content in watcher_files().items()})
    error = refused(site, data, file="app.json", field=None, reason="missing at the top level")
    assert (
        "found watcher/app.json: zip the folder's contents, not the folder (`aiot app pack DIR`)"
        in (error["message"])
    )


def test_app_json_that_is_not_json_is_refused_naming_the_line(site: Site) -> None:
    text = json.dumps(watcher_manifest(), indent=2).replace('"version": "1.0.0"', '"version": 1.0.0')
    error = refused(
        site,
        zip_of({"app.json": text.encode(), "watcher.py": WATCHER_CODE}),
        file="app.json",
        field=None,
        reason="is not valid JSON",
    )
    assert "(line 3 column " in error["message"]


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"kind": "daemon"}, "kind", "Input should be 'web' or 'backend'"),
        ({"devices": {"Camera!": {"type": "camera"}}}, "devices", "alias 'Camera!' must match"),
        ({"devices": {"camera": {"type": "camera", "count": 0}}}, "devices.camera.count", "greater than"),
        ({"web": {"title": "x"}}, "(document)", "`web` is for web apps"),
        ({"entrypoint": "watcher"}, "entrypoint", "should match pattern"),
        ({"models": {"faces": {"model": "face-detector", "gpu": True}}}, "models.faces.gpu", "Extra inputs"),
    ],
    ids=["kind", "alias", "count", "web-for-backend", "entrypoint", "unknown-field"],
)
def test_a_schema_error_is_refused_naming_its_path(
    site: Site, change: dict[str, Any], field: str, reason: str
) -> None:
    refused(site, app_zip(watcher_manifest() | change), file="app.json", field=field, reason=reason)


def test_every_schema_error_is_listed(site: Site) -> None:
    error = refused(
        site,
        app_zip(watcher_manifest() | {"kind": "daemon", "version": "latest"}),
        file="app.json",
        field="version",
        reason="should match pattern",
    )
    assert {detail["field"] for detail in error["details"]} == {"version", "kind"}
    assert "(and 1 more)" in error["message"]


def test_a_missing_entrypoint_module_is_refused(site: Site) -> None:
    refused(
        site,
        zip_of({"app.json": watcher_files()["app.json"], "main.py": WATCHER_CODE}),
        file="app.json",
        field="entrypoint",
        reason="module 'watcher' is not in the zip (expected watcher.py)",
    )
    package = watcher_manifest() | {"entrypoint": "watcher.main:run"}
    accepted = validate_app_zip(
        zip_of({**watcher_files(package), "watcher/__init__.py": b"", "watcher/main.py": WATCHER_CODE}),
        label=LABEL,
    )
    assert accepted.manifest.entry_module == "watcher.main"


def test_an_invalid_requirement_line_is_refused(site: Site) -> None:
    error = refused(
        site,
        app_zip(watcher_manifest() | {"requirements": ["pillow>=10", "numpy >> 2"]}),
        file="app.json",
        field="requirements.1",
        reason="'numpy >> 2' is not a pip requirement",
    )
    assert len(error["details"]) == 1  # the valid line is not blamed


# --- what app.json names, against the registry --------------------------------------------------


def test_an_unknown_model_is_refused(site: Site) -> None:
    manifest = watcher_manifest() | {"models": {"faces": {"model": "face-finder", "endpoints": ["detect"]}}}
    refused(
        site,
        app_zip(manifest),
        file="app.json",
        field="models.faces.model",
        reason="unknown model 'face-finder'; see `aiot model list`",
        registry_only=True,
    )


def test_an_endpoint_the_model_lacks_is_refused(site: Site) -> None:
    manifest = watcher_manifest()
    manifest["models"]["faces"]["endpoints"] = ["detect", "count"]
    refused(
        site,
        app_zip(manifest),
        file="app.json",
        field="models.faces.endpoints.1",
        reason="model 'face-detector' has no endpoint 'count' (it has: detect)",
        registry_only=True,
    )


def test_an_unknown_pinned_model_version_is_refused(site: Site) -> None:
    manifest = watcher_manifest()
    manifest["models"]["faces"]["version"] = "2.0.0"
    refused(
        site,
        app_zip(manifest),
        file="app.json",
        field="models.faces.version",
        reason="model 'face-detector' has no version '2.0.0' (it has: 1.0.0)",
        registry_only=True,
    )
    manifest["models"]["faces"]["version"] = "1.0.0"
    assert json_of(site.upload(app_zip(manifest)), 201)["version"] == "1.0.0"


def test_an_unknown_device_type_is_refused(site: Site) -> None:
    manifest = watcher_manifest()
    manifest["devices"]["heat"] = {"type": "thermostat"}
    refused(
        site,
        app_zip(manifest),
        file="app.json",
        field="devices.heat.type",
        reason="unknown device type 'thermostat'; see `aiot device type list`",
        registry_only=True,
    )


def test_every_registry_problem_is_listed(site: Site) -> None:
    manifest = watcher_manifest() | {
        "models": {"faces": {"model": "face-detector", "endpoints": ["count"]}, "x": {"model": "nope"}},
        "devices": {"heat": {"type": "thermostat"}},
    }
    error = refused(
        site,
        app_zip(manifest),
        file="app.json",
        field="models.faces.endpoints.0",
        reason="has no endpoint 'count'",
        registry_only=True,
    )
    fields = [detail["field"] for detail in error["details"]]
    assert fields == ["models.faces.endpoints.0", "models.x.model", "devices.heat.type"]
    assert "(and 2 more)" in error["message"]


def test_an_upload_whose_registries_do_not_answer_is_unavailable_and_stores_nothing(
    site: Site, kafka_broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with site.door.app.app_context():
        door_settings = resources().settings
    monkeypatch.setattr(door_settings.web, "ask_timeout_s", 1.0)
    overrides = {"kafka.topic_prefix": f"t{uuid.uuid4().hex[:10]}"}  # where nobody answers
    with temporary_settings(overrides | kafka_updates(kafka_broker)) as current:
        bus = Bus(current, source="app-upload-test")
        try:
            with Requester(bus) as requester:
                app = build_front_door(door_settings, site.door.database, requester)
                headers = {"Content-Type": "application/zip", **site.door.auth("appdev")}
                error = error_of(app.test_client().post("/api/apps", data=app_zip(), headers=headers), 503)
                assert error["type"] == "Unavailable"  # a 5xx message is only logged
                assert "POST /api/apps failed: the AI manager does not answer" in caplog.text
                listed = app.test_client().get("/api/apps", headers=site.door.auth("enduser"))
                assert json_of(listed) == {"apps": []}  # no app: nobody to ask
        finally:
            bus.close()
    site.assert_nothing_stored()


# --- versions, owners and roles -----------------------------------------------------------------


def test_uploading_a_version_that_exists_is_a_conflict(site: Site) -> None:
    json_of(site.upload(app_zip()), 201)
    before = site.stored()
    stored_zip = (site.bucket / before[2][0]).read_bytes()
    changed = watcher_manifest() | {"description": "changed"}
    error = error_of(site.upload(app_zip(changed)), 409)
    assert error["type"] == "Conflict"
    assert error["message"] == "app 'watcher' already has version 1.0.0: raise the version in app.json"
    assert site.stored() == before
    assert (site.bucket / before[2][0]).read_bytes() == stored_zip  # not overwritten


def test_a_losing_concurrent_upload_keeps_the_winners_zip(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    json_of(site.upload(app_zip()), 201)  # the winner registered the version a moment ago...
    key = f"apps/{WATCHER_ID}/1.0.0.zip"
    winner_zip = (site.bucket / key).read_bytes()
    # ...after the loser had already checked that the version was free.
    monkeypatch.setattr(app_registry, "check_new_version", lambda *_args: None)
    error_of(site.upload(app_zip(watcher_manifest() | {"description": "the loser's"})), 409)
    assert (site.bucket / key).read_bytes() == winner_zip, "the registered version lost its zip"
    assert site.stored() == ([(WATCHER_ID, "appdev")], [(WATCHER_ID, "1.0.0")], [key])


def test_uploading_needs_a_token(site: Site) -> None:
    error = error_of(site.upload(app_zip(), username=None), 401)
    assert error["type"] == "Unauthorized"
    error_of(site.door.client.get("/api/apps"), 401)
    error_of(site.door.client.get("/api/apps/watcher"), 401)
    error_of(site.door.client.delete("/api/apps/watcher"), 401)
    site.assert_nothing_stored()


@pytest.mark.parametrize("username", ["enduser", "ada"])
def test_end_users_and_ai_developers_may_not_upload(site: Site, username: str) -> None:
    error = error_of(site.upload(app_zip(), username=username), 403)
    assert error["type"] == "Forbidden"
    role = USERS[username].value
    allowed = "app_developer, platform_configurer"
    assert error["message"] == f"role {role} may not call POST /api/apps (allowed: {allowed})"
    site.assert_nothing_stored()


def test_a_platform_configurer_may_upload(site: Site) -> None:
    json_of(site.upload(app_zip(), username="admin"), 201)
    assert site.stored()[0] == [(WATCHER_ID, "admin")]


def test_an_app_developer_may_not_touch_another_ones_app(site: Site) -> None:
    json_of(site.upload(app_zip()), 201)
    before = site.stored()
    for target in ("watcher", WATCHER_ID):
        denied = error_of(
            site.door.client.delete(f"/api/apps/{target}", headers=site.door.auth("linus")), 403
        )
        assert denied["message"] == "app 'watcher' belongs to 'appdev'"
    error_of(site.door.client.delete("/api/apps/watcher", headers=site.door.auth("enduser")), 403)
    taken = error_of(site.upload(app_zip(watcher_manifest() | {"version": "1.1.0"}), username="linus"), 403)
    assert taken["message"] == "app 'watcher' belongs to 'appdev'"
    assert site.stored() == before

    json_of(site.door.client.delete("/api/apps/watcher", headers=site.door.auth("admin")))
    site.assert_nothing_stored()


def test_an_unknown_app_is_not_found(site: Site) -> None:
    for method in ("GET", "DELETE"):
        missing = error_of(
            site.door.client.open("/api/apps/no-such-app", method=method, headers=site.door.auth("admin")),
            404,
        )
        assert missing["message"] == "no app 'no-such-app'; see `aiot app list`"


def test_a_zip_sent_as_a_form_file_is_named_by_its_filename(site: Site) -> None:
    response = site.door.client.post(
        "/api/apps",
        data={"file": (io.BytesIO(zip_of({"watcher.py": WATCHER_CODE})), "my-app.zip")},
        headers=site.door.auth("appdev"),
        content_type="multipart/form-data",
    )
    assert error_of(response, 422)["message"].startswith("my-app.zip: app.json: missing at the top level")
    good = site.door.client.post(
        "/api/apps",
        data={"file": (io.BytesIO(app_zip()), "watcher.zip")},
        headers=site.door.auth("appdev"),
        content_type="multipart/form-data",
    )
    assert json_of(good, 201)["app_id"] == WATCHER_ID


def test_an_empty_body_is_a_bad_request(site: Site) -> None:
    error = error_of(site.upload(b""), 400)
    assert "send the app zip as the request body" in error["message"]
    site.assert_nothing_stored()


# --- aiot app pack ------------------------------------------------------------------------------


def run_aiot(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIOT_")}
    env["AIOT_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "aiot", *args],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write_watcher(folder: Path) -> Path:
    folder.mkdir()
    for name, content in watcher_files().items():
        (folder / name).write_bytes(content)
    return folder


def test_the_cli_uploads_a_folder_lists_shows_and_deletes_the_app(site: Site, tmp_path: Path) -> None:
    server = HttpServer(site.door.app, "127.0.0.1", 0)
    server.start()
    try:
        home = tmp_path / "home"
        home.mkdir()
        credentials = {"url": server.url, "username": "appdev", "token": site.door.token("appdev")}
        (home / "credentials.json").write_text(json.dumps(credentials))
        uploaded = run_aiot(home, "app", "upload", str(write_watcher(tmp_path / "watcher")))
        assert uploaded.returncode == 0, uploaded.stderr
        assert uploaded.stdout == f"{WATCHER_ID}\n"  # alone on stdout, for scripts
        assert "uploaded watcher 1.0.0 (backend app)" in uploaded.stderr

        listed = run_aiot(home, "app", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        [app] = json.loads(listed.stdout)
        assert (app["name"], app["locations"]) == ("watcher", ["city-bank", "green-school"])
        shown = run_aiot(home, "app", "show", "watcher")
        assert shown.returncode == 0, shown.stderr
        assert "camera: camera, display: display" in shown.stdout
        assert "city-bank, green-school" in shown.stdout

        deleted = run_aiot(home, "app", "delete", WATCHER_ID)
        assert deleted.returncode == 0, deleted.stderr
        assert f"app watcher ({WATCHER_ID}) deleted" in deleted.stdout
        site.assert_nothing_stored()
    finally:
        server.stop()


def test_app_pack_writes_a_zip_the_platform_accepts_and_names_a_broken_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    folder = write_watcher(tmp_path / "watcher")
    packed = run_aiot(home, "app", "pack", str(folder), "-o", str(tmp_path / "watcher.zip"))
    assert packed.returncode == 0, packed.stderr
    assert "packed watcher 1.0.0: 2 files" in packed.stdout
    accepted = validate_app_zip((tmp_path / "watcher.zip").read_bytes(), label="watcher.zip")
    assert accepted.files == ["app.json", "watcher.py"]

    (folder / "watcher.py").unlink()
    broken = run_aiot(home, "app", "pack", str(folder), "-o", str(tmp_path / "broken.zip"))
    assert broken.returncode == 1
    assert "app.json field entrypoint: module 'watcher' is not in the zip" in broken.stderr
    assert "Traceback" not in broken.stderr
    assert not (tmp_path / "broken.zip").exists()
