"""Uploading a model as its users meet it: every kind of bad zip refused with a message that
names the file, field and reason (by ``validate_model_zip`` and by ``POST /api/models`` alike,
which then stores nothing), who may upload, list, show and delete, and ``aiot model pack``.

The front door here has no Kafka connection, so a valid upload gets as far as the deployer
and answers 503, undoing what it stored. Models that must exist are inserted with the
registry functions. Users are created once per module (argon2 is slow on purpose); each
test gets its own copy of that database and its own local bucket.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from werkzeug.test import TestResponse

from ai_manager import registry
from ai_manager.artifact import validate_model_zip
from ai_manager.models import ModelRow, ModelVersionRow
from platform_core.auth import Role
from platform_core.blobstore import LocalBlobStore
from platform_core.http import resources
from platform_sdk.artifacts import model_id_for
from platform_sdk.errors import ValidationFailed
from platform_sdk.settings import Settings
from tests.test_front_door import FrontDoor, error_of, front_door, json_of, seed_registry

COMFORT = Path(__file__).resolve().parents[1] / "examples" / "models" / "comfort"
COMFORT_ID = model_id_for("comfort")
LABEL = "x.zip"
USERS = {
    "admin": Role.PLATFORM_CONFIGURER,
    "ada": Role.AI_DEVELOPER,
    "grace": Role.AI_DEVELOPER,
    "appdev": Role.APP_DEVELOPER,
    "enduser": Role.END_USER,
}


# --- building zips ------------------------------------------------------------------------------


def comfort_files() -> dict[str, bytes]:
    """The files of the valid sample model, by name in the zip."""
    return {path.name: path.read_bytes() for path in sorted(COMFORT.iterdir()) if path.is_file()}


def comfort_manifest() -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((COMFORT / "model.json").read_text())
    return manifest


def zip_of(files: Mapping[str, bytes], symlinks: Mapping[str, str] | None = None) -> bytes:
    """A zip of ``files`` as given (no name checks), plus ``symlinks`` (name -> target) entries."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # unix, so the mode bits mean what they say
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buffer.getvalue()


def comfort_zip(**replaced: bytes) -> bytes:
    return zip_of({**comfort_files(), **replaced})


def with_manifest(manifest: Mapping[str, Any], **extra: bytes) -> bytes:
    """The comfort model with ``manifest`` as its model.json."""
    return comfort_zip(**{"model.json": json.dumps(manifest, indent=2).encode()}, **extra)


# --- the front door -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """The front door and the directory of its local blob store."""

    door: FrontDoor
    bucket: Path

    def upload(self, data: bytes, username: str | None = "ada", filename: str = LABEL) -> TestResponse:
        headers = {"Content-Type": "application/zip", "X-Filename": filename}
        if username is not None:
            headers |= self.door.auth(username)
        return self.door.client.post("/api/models", data=data, headers=headers)

    def stored(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[str]]:
        """(model id, owner) rows, (model id, version) rows and every file in the bucket."""
        with self.door.database.session() as session:
            models = sorted((row.model_id, row.owner) for row in session.scalars(sa.select(ModelRow)))
            versions = sorted(
                (row.model_id, row.version) for row in session.scalars(sa.select(ModelVersionRow))
            )
        files = sorted(
            path.relative_to(self.bucket).as_posix() for path in self.bucket.rglob("*") if path.is_file()
        )
        return models, versions, files

    def assert_nothing_stored(self) -> None:
        assert self.stored() == ([], [], [])
        assert not (self.bucket / "models").exists()

    def insert_model(self, owner: str, version: str = "1.0.0", description: str = "") -> str:
        """Register comfort ``version`` owned by ``owner`` (blob and rows); its artifact key."""
        manifest = comfort_manifest() | {"version": version, "description": description}
        accepted = validate_model_zip(with_manifest(manifest), label="seed.zip")
        key = f"models/{COMFORT_ID}/{version}.zip"
        LocalBlobStore(self.bucket).put(key, accepted.data)
        with self.door.database.session() as session:
            model = registry.find_model_by_name(session, "comfort")
            if model is None:
                model = ModelRow(model_id=COMFORT_ID, name="comfort", owner=owner, description=description)
                session.add(model)
            registry.create_version(
                session,
                model,
                ModelVersionRow(
                    model_id=COMFORT_ID,
                    version=version,
                    manifest=accepted.manifest.model_dump_json(),
                    artifact_key=key,
                    sha256=accepted.sha256,
                    size=len(accepted.data),
                    uploaded_by=owner,
                ),
            )
        return key


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite registry with the users of ``USERS``; tests work on copies of it."""
    path = tmp_path_factory.mktemp("model-upload") / "registry.db"
    seed_registry(f"sqlite:///{path}", USERS)
    return path


@contextlib.contextmanager
def open_site(
    template_db: Path, tmp_path: Path, overrides: Mapping[str, Any] | None = None
) -> Iterator[Site]:
    database = tmp_path / "registry.db"
    shutil.copyfile(template_db, database)
    bucket = tmp_path / "bucket"
    settings = {"blob.backend": "local", "blob.local_path": str(bucket), **(overrides or {})}
    with front_door(f"sqlite:///{database}", settings) as door:
        with door.app.app_context():
            blobs = resources().blobs
        assert isinstance(blobs, LocalBlobStore)
        assert blobs.root == bucket  # the bucket the checks below look into
        yield Site(door, bucket)


@pytest.fixture
def site(settings: Settings, template_db: Path, tmp_path: Path) -> Iterator[Site]:
    with open_site(template_db, tmp_path) as opened:
        yield opened


def refused(site: Site, data: bytes, *, file: str | None, field: str | None, reason: str) -> dict[str, Any]:
    """Check ``data`` is refused alike by ``validate_model_zip`` and the front door; the 422 error.

    The message names the zip, ``file`` (and ``field``) and contains ``reason``; the upload
    stores nothing.
    """
    with pytest.raises(ValidationFailed) as caught:
        validate_model_zip(data, label=LABEL)
    message = caught.value.message
    assert message.startswith(f"{LABEL}: "), message
    if file is not None:
        assert file in message, message
    if field is not None:
        assert f"field {field}:" in message, message
    assert reason in message, message
    first = caught.value.details[0]
    assert (first["file"], first["field"]) == (file, field)
    assert reason in first["reason"]

    error = error_of(site.upload(data), 422)
    assert error["type"] == "ValidationFailed"
    assert error["message"] == message
    assert error["details"] == caught.value.details
    site.assert_nothing_stored()
    return error


# --- the valid base -----------------------------------------------------------------------------


def test_the_sample_model_zip_is_accepted() -> None:
    accepted = validate_model_zip(comfort_zip(), label=LABEL)
    assert accepted.manifest.name == "comfort"
    assert accepted.files == sorted(comfort_files())
    assert validate_model_zip(with_manifest(comfort_manifest()), label=LABEL).manifest.version == "1.0.0"


# --- unsafe archives ----------------------------------------------------------------------------


def test_a_path_climbing_out_of_the_zip_is_refused(site: Site) -> None:
    data = comfort_zip(**{"../x.py": b"import os\n"})
    refused(site, data, file="../x.py", field=None, reason="path has a '..' component")
    nested = comfort_zip(**{"lib/../../evil.py": b""})
    refused(site, nested, file="lib/../../evil.py", field=None, reason="'..' component")


def test_an_absolute_path_is_refused(site: Site) -> None:
    data = comfort_zip(**{"/etc/cron.d/x.py": b"import os\n"})
    refused(site, data, file="/etc/cron.d/x.py", field=None, reason="path is absolute")


def test_a_symlink_entry_is_refused(site: Site) -> None:
    data = zip_of(comfort_files(), symlinks={"secrets.txt": "/etc/passwd"})
    refused(site, data, file="secrets.txt", field=None, reason="entry is a symlink")


def test_a_zip_bomb_is_refused_before_it_is_inflated(site: Site) -> None:
    data = comfort_zip(**{"weights.bin": b"\0" * (8 * 1024 * 1024)})
    assert len(data) < 64 * 1024  # 8 MiB that travel as a few KiB
    error = refused(site, data, file="weights.bin", field=None, reason="(zip bomb?)")
    assert "compression ratio" in error["message"]
    assert "8388608 bytes" in error["message"]


def test_something_that_is_not_a_zip_is_refused(site: Site) -> None:
    refused(site, b"just some text, no zip\n" * 10, file=None, field=None, reason="not a valid zip archive")
    truncated = comfort_zip()[:-100]
    refused(site, truncated, file=None, field=None, reason="not a valid zip archive")


# --- model.json ---------------------------------------------------------------------------------


def test_model_json_that_is_not_json_is_refused_naming_the_line(site: Site) -> None:
    text = (COMFORT / "model.json").read_text()
    broken = text.replace('"version": "1.0.0"', '"version": 1.0.0')
    assert broken != text
    line = next(n for n, row in enumerate(broken.splitlines(), 1) if "1.0.0" in row)
    error = refused(
        site,
        comfort_zip(**{"model.json": broken.encode()}),
        file="model.json",
        field=None,
        reason="not valid JSON",
    )
    assert f"(line {line} column " in error["message"]

    windows = comfort_zip(**{"model.json": text.encode("cp1252")})  # its degree signs are not UTF-8
    refused(site, windows, file="model.json", field=None, reason="not valid JSON")


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"replicas": "two"}, "replicas", "valid integer"),
        ({"endpoints": {}}, "endpoints", "valid list"),
        ({"resources": {"cpu": 0.5, "memory_mb": 256, "gpus": 1}}, "resources.gpus", "Extra inputs"),
        ({"version": "latest"}, "version", "should match pattern"),
    ],
    ids=["replicas-string", "endpoints-object", "unknown-field", "version"],
)
def test_a_field_of_the_wrong_type_is_refused_naming_its_path(
    site: Site, change: dict[str, Any], field: str, reason: str
) -> None:
    refused(site, with_manifest(comfort_manifest() | change), file="model.json", field=field, reason=reason)


def test_an_unknown_field_type_is_refused_naming_its_path(site: Site) -> None:
    manifest = comfort_manifest()
    manifest["endpoints"][0]["inputs"]["temperature"]["type"] = "tensor"
    error = refused(
        site,
        with_manifest(manifest),
        file="model.json",
        field="endpoints.0.inputs.temperature.type",
        reason="Input should be 'int', 'float', 'bool', 'string', 'image', 'list' or 'object'",
    )
    assert len(error["details"]) == 1


def test_every_problem_of_model_json_is_listed(site: Site) -> None:
    manifest = comfort_manifest() | {"replicas": "two", "endpoints": {}}
    error = refused(site, with_manifest(manifest), file="model.json", field="endpoints", reason="valid list")
    assert {detail["field"] for detail in error["details"]} == {"endpoints", "replicas"}
    assert "(and 1 more)" in error["message"]


def test_a_zip_without_model_json_is_refused(site: Site) -> None:
    files = comfort_files()
    del files["model.json"]
    error = refused(site, zip_of(files), file="model.json", field=None, reason="missing at the top level")
    assert "found" not in error["message"]


def test_model_json_inside_a_folder_is_refused_with_a_hint(site: Site) -> None:
    data = zip_of({f"comfort/{name}": content for name, content in comfort_files().items()})
    error = refused(site, data, file="model.json", field=None, reason="missing at the top level")
    assert "found comfort/model.json: zip the folder's contents, not the folder" in error["message"]
    assert "aiot model pack" in error["message"]


def test_a_missing_entrypoint_module_is_refused(site: Site) -> None:
    files = comfort_files()
    del files["comfort_model.py"]
    refused(
        site,
        zip_of(files),
        file="model.json",
        field="entrypoint",
        reason="module 'comfort_model' is not in the zip (expected comfort_model.py)",
    )

    manifest = comfort_manifest()
    manifest["endpoints"][0]["postprocess"] = ["rounding:tidy"]
    refused(
        site,
        with_manifest(manifest),
        file="model.json",
        field="endpoints.0.postprocess",
        reason="module 'rounding' is not in the zip",
    )
    accepted = validate_model_zip(
        with_manifest(manifest, **{"rounding.py": b"def tidy(o): return o\n"}), label=LABEL
    )
    assert accepted.manifest.endpoints[0].postprocess == ["rounding:tidy"]


def test_an_invalid_requirement_line_is_refused(site: Site) -> None:
    manifest = comfort_manifest() | {"requirements": ["numpy>=1.26", "numpy >> 2"]}
    error = refused(
        site,
        with_manifest(manifest),
        file="model.json",
        field="requirements.1",
        reason="'numpy >> 2' is not a pip requirement",
    )
    assert len(error["details"]) == 1  # the valid line is not blamed


def test_a_missing_example_image_is_refused(site: Site) -> None:
    manifest = comfort_manifest()
    manifest["endpoints"][0]["inputs"]["photo"] = {"type": "image", "required": False}
    manifest["example"]["input"]["photo"] = "examples/room.jpg"
    refused(
        site,
        with_manifest(manifest),
        file="model.json",
        field="example.input.photo",
        reason="image file 'examples/room.jpg' is not in the zip",
    )
    with_image = with_manifest(manifest, **{"examples/room.jpg": b"\xff\xd8\xff\xe0 not much of a jpeg"})
    assert validate_model_zip(with_image, label=LABEL).manifest.example is not None


def test_duplicate_endpoint_names_are_refused(site: Site) -> None:
    manifest = comfort_manifest()
    manifest["endpoints"].append(manifest["endpoints"][0] | {"method": "predict_again"})
    refused(
        site,
        with_manifest(manifest),
        file="model.json",
        field="endpoints",
        reason="endpoint names repeat: predict",
    )


def test_a_bad_zip_sent_as_a_form_file_is_named_by_its_filename(site: Site) -> None:
    files = comfort_files()
    del files["model.json"]
    response = site.door.client.post(
        "/api/models",
        data={"file": (io.BytesIO(zip_of(files)), "my-model.zip")},
        headers=site.door.auth("ada"),
        content_type="multipart/form-data",
    )
    error = error_of(response, 422)
    assert error["message"].startswith("my-model.zip: model.json: missing at the top level")
    site.assert_nothing_stored()


def test_an_empty_body_is_a_bad_request(site: Site) -> None:
    error = error_of(site.upload(b""), 400)
    assert "send the model zip as the request body" in error["message"]
    site.assert_nothing_stored()


# --- who may do what ----------------------------------------------------------------------------


def test_uploading_needs_a_token(site: Site) -> None:
    error = error_of(site.upload(comfort_zip(), username=None), 401)
    assert error["type"] == "Unauthorized"
    error_of(site.door.client.get("/api/models"), 401)
    error_of(site.door.client.delete("/api/models/comfort"), 401)
    site.assert_nothing_stored()


@pytest.mark.parametrize("username", ["enduser", "appdev"])
def test_end_users_and_app_developers_may_not_upload(site: Site, username: str) -> None:
    error = error_of(site.upload(comfort_zip(), username=username), 403)
    assert error["type"] == "Forbidden"
    role = USERS[username].value
    assert error["message"] == (
        f"role {role} may not call POST /api/models (allowed: ai_developer, platform_configurer)"
    )
    site.assert_nothing_stored()


def test_app_developers_may_list_models_and_end_users_may_not(site: Site) -> None:
    assert json_of(site.door.client.get("/api/models", headers=site.door.auth("appdev"))) == {"models": []}
    error_of(site.door.client.get("/api/models", headers=site.door.auth("enduser")), 403)

    site.insert_model("ada", description="fans and AC")
    models = json_of(site.door.client.get("/api/models", headers=site.door.auth("appdev")))["models"]
    assert [(m["model_id"], m["name"], m["owner"], m["description"]) for m in models] == [
        (COMFORT_ID, "comfort", "ada", "fans and AC")
    ]
    [version] = models[0]["versions"]
    assert (version["version"], version["uploaded_by"], version["endpoints"]) == ("1.0.0", "ada", ["predict"])
    assert version["status"] == "unknown"  # the deployer cannot be asked here
    assert version["deployment"] is None


@pytest.mark.parametrize("username", ["ada", "admin"])
def test_a_valid_upload_without_a_deployer_is_unavailable_and_leaves_nothing(
    site: Site, username: str
) -> None:
    data = comfort_zip()
    validate_model_zip(data, label=LABEL)
    error = error_of(site.upload(data, username=username), 503)
    assert error["type"] == "Unavailable"
    site.assert_nothing_stored()


def test_an_ai_developer_may_not_touch_another_ones_model(site: Site) -> None:
    key = site.insert_model("ada")
    before = site.stored()
    assert before == ([(COMFORT_ID, "ada")], [(COMFORT_ID, "1.0.0")], [key])

    for target in ("comfort", COMFORT_ID):
        denied = error_of(
            site.door.client.delete(f"/api/models/{target}", headers=site.door.auth("grace")), 403
        )
        assert denied["message"] == "model 'comfort' belongs to 'ada'"
    newer = with_manifest(comfort_manifest() | {"version": "1.1.0"})
    taken = error_of(site.upload(newer, username="grace"), 403)
    assert taken["message"] == "model 'comfort' belongs to 'ada'"
    assert site.stored() == before

    # The owner and a configurer get past the ownership check, then need the deployer.
    for username in ("ada", "admin"):
        error_of(site.door.client.delete("/api/models/comfort", headers=site.door.auth(username)), 503)
    assert site.stored() == before


def test_uploading_a_version_that_exists_is_a_conflict(site: Site) -> None:
    key = site.insert_model("ada")
    before = site.stored()
    stored_zip = (site.bucket / key).read_bytes()
    error = error_of(site.upload(comfort_zip(), username="ada"), 409)
    assert error["type"] == "Conflict"
    assert error["message"] == "model 'comfort' already has version 1.0.0: raise the version in model.json"
    assert site.stored() == before
    assert (site.bucket / key).read_bytes() == stored_zip  # not overwritten


def test_a_new_version_that_cannot_be_deployed_leaves_the_old_one_alone(site: Site) -> None:
    site.insert_model("ada", description="first")
    before = site.stored()
    newer = with_manifest(comfort_manifest() | {"version": "1.1.0"})
    error_of(site.upload(newer, username="ada"), 503)
    assert site.stored() == before
    shown = json_of(site.door.client.get("/api/models/comfort", headers=site.door.auth("appdev")))
    assert [v["version"] for v in shown["versions"]] == ["1.0.0"]


def test_a_refused_new_version_does_not_change_the_models_description(site: Site) -> None:
    site.insert_model("ada", description="first")
    newer = with_manifest(comfort_manifest() | {"version": "1.1.0", "description": "second"})
    error_of(site.upload(newer, username="ada"), 503)
    shown = json_of(site.door.client.get("/api/models/comfort", headers=site.door.auth("appdev")))
    assert shown["description"] == "first"


def test_a_losing_concurrent_upload_keeps_the_winners_artifact(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = site.insert_model("ada")  # the winner registered the version a moment ago...
    winner_zip = (site.bucket / key).read_bytes()
    # ...after the loser had already checked that the version was free.
    monkeypatch.setattr(registry, "check_new_version", lambda *_args: None)
    different = with_manifest(comfort_manifest() | {"description": "the loser's"})
    error_of(site.upload(different, username="ada"), 409)
    assert (site.bucket / key).read_bytes() == winner_zip, "the registered version lost its zip"
    with site.door.database.session() as session:
        winner = session.get(ModelVersionRow, (COMFORT_ID, "1.0.0"))
        assert winner is not None
        assert winner.sha256 == hashlib.sha256(winner_zip).hexdigest()


def test_a_model_is_shown_by_name_or_id_and_an_unknown_one_is_not_found(site: Site) -> None:
    site.insert_model("ada")
    by_name = json_of(site.door.client.get("/api/models/comfort", headers=site.door.auth("appdev")))
    by_id = json_of(site.door.client.get(f"/api/models/{COMFORT_ID}", headers=site.door.auth("appdev")))
    assert by_name == by_id
    assert (by_name["model_id"], by_name["owner"]) == (COMFORT_ID, "ada")

    for method in ("GET", "DELETE"):
        missing = error_of(
            site.door.client.open(
                "/api/models/no-such-model", method=method, headers=site.door.auth("admin")
            ),
            404,
        )
        assert missing["type"] == "NotFound"
        assert missing["message"] == "no model 'no-such-model'; see `aiot model list`"


def test_an_upload_over_the_size_limit_is_too_large(
    settings: Settings, template_db: Path, tmp_path: Path
) -> None:
    noise = random.Random(7).randbytes(2 * 1024 * 1024)  # incompressible: the zip stays ~2 MB
    big = comfort_zip(**{"weights.bin": noise})
    assert len(big) > 2 * 1024 * 1024
    validate_model_zip(big, label=LABEL)  # valid: only its size is wrong
    with open_site(template_db, tmp_path, {"web.max_upload_mb": 1}) as limited:
        error = error_of(limited.upload(big), 413)
        assert error["type"] == "PayloadTooLarge"
        assert error["message"] == "request body exceeds the 1 MB limit"
        limited.assert_nothing_stored()
        # A small bad zip still gets the validation answer under that limit.
        bad = error_of(limited.upload(b"not a zip"), 422)
        assert "not a valid zip archive" in bad["message"]


# --- aiot model pack ----------------------------------------------------------------------------


def run_pack(folder: Path, output: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIOT_")}
    env["AIOT_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "aiot", "model", "pack", str(folder), "-o", str(output)],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_model_pack_writes_a_zip_the_platform_accepts_and_names_a_broken_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    folder = tmp_path / "comfort"
    shutil.copytree(COMFORT, folder)
    (folder / "__pycache__").mkdir(exist_ok=True)
    (folder / "__pycache__" / "comfort_model.cpython-311.pyc").write_bytes(b"junk")

    packed = run_pack(folder, tmp_path / "comfort.zip", home)
    assert packed.returncode == 0, packed.stderr
    assert "packed comfort 1.0.0: 4 files" in packed.stdout
    accepted = validate_model_zip((tmp_path / "comfort.zip").read_bytes(), label="comfort.zip")
    assert accepted.manifest.name == "comfort"
    assert accepted.files == sorted(comfort_files())

    text = (folder / "model.json").read_text()
    (folder / "model.json").write_text(text.replace('"version": "1.0.0"', '"version": 1.0.0'))
    broken = run_pack(folder, tmp_path / "broken.zip", home)
    assert broken.returncode == 1
    assert "model.json: is not valid JSON (line 3 column" in broken.stderr
    assert str(folder) in broken.stderr
    assert "Traceback" not in broken.stderr
    assert not (tmp_path / "broken.zip").exists()
