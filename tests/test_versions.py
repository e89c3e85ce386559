"""Versions are PEP 440 versions, compared in one place (``platform_sdk.artifacts``).

A release ranks above its release candidates (``2.1`` over ``2.1-rc1``), numbers compare as
numbers (``1.10`` over ``1.9``), and "latest" is the highest release, a pre-release only when
there is nothing else (PEP 440's rule for pre-releases). A manifest's version is ASCII digits
and lowercase letters (Arabic-Indic digits, U+0661 ..., are refused naming the field), and an
upload's is a valid PEP 440 version (``1.0-foo`` is refused; one stored before is still read).
Every comparer uses that one helper: the app registry's latest version, the check of what an
app names against the model registry, the deployer's resolution of ``model_call``, and the
registries' duplicate checks (``1.0`` is ``1.0.0``).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ai_manager import registry as model_registry
from ai_manager.answers import model_problems
from ai_manager.artifact import validate_model_zip
from ai_manager.models import ModelRow, ModelVersionRow
from app_manager import registry as app_registry
from app_manager.artifact import validate_app_zip
from app_manager.models import AppRow, AppVersionRow
from deployer.messages import DeployModel, Replica
from deployer.models import DeploymentRow
from deployer.service import DeployerService
from platform_core.db import Database
from platform_sdk import artifacts
from platform_sdk.artifacts import AppManifest, ModelManifest, ModelUse
from platform_sdk.errors import Conflict, ValidationFailed
from platform_sdk.model_client import ResolveModel
from platform_sdk.settings import Settings
from scheduler.timetable import ScheduleSpec

ROOT = Path(__file__).resolve().parents[1]
COMFORT = json.loads((ROOT / "examples" / "models" / "comfort" / "model.json").read_text())
SMART_HOME = json.loads((ROOT / "examples" / "apps" / "smart-home" / "app.json").read_text())
ARABIC_INDIC = "\u0661.\u0660.\u0667"  # digits to `\d`, not to PEP 440
FULLWIDTH = "\uff11.\uff10"  # fullwidth 1.0


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    database.migrate()
    try:
        yield database
    finally:
        database.stop()


# --- the helper -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("2.1-rc1", "2.1"),
        ("2.1rc1", "2.1"),
        ("2.1.0-rc2", "2.1.0"),
        ("1.0.0-beta", "1.0.0"),
        ("1.0a1", "1.0b1"),
        ("1.0.dev1", "1.0a1"),
        ("1.9", "1.10"),
        ("1.0.0", "1.0.0-1"),  # a post-release
        ("2.1", "2.2-rc1"),
    ],
)
def test_versions_rank_as_pep_440_ranks_them(lower: str, higher: str) -> None:
    assert artifacts.version_key(lower) < artifacts.version_key(higher)
    assert sorted([higher, lower], key=artifacts.version_key) == [lower, higher]


def test_latest_is_the_highest_release_and_a_pre_release_only_when_there_is_nothing_else() -> None:
    assert artifacts.latest(["2.1", "2.1-rc1"], str) == "2.1"
    assert artifacts.latest(["2.1-rc1", "2.1"], str) == "2.1"
    assert artifacts.latest(["1.9", "1.10", "1.2"], str) == "1.10"
    assert artifacts.latest(["2.1", "2.2-rc1"], str) == "2.1"  # a candidate is tried by pinning it
    assert artifacts.latest(["2.2-rc1", "2.2-rc2"], str) == "2.2-rc2"
    assert artifacts.latest(["1.0.0", "1.0.0-1"], str) == "1.0.0-1"
    assert artifacts.latest([], str) is None


def test_a_version_stored_before_it_was_checked_sorts_below_every_valid_one() -> None:
    assert artifacts.latest(["1.0-foo", "0.1"], str) == "0.1"
    assert artifacts.version_key("1.0-foo") < artifacts.version_key("0.0.1")


def test_equal_versions_are_the_same_version() -> None:
    assert artifacts.same_version("1.0", "1.0.0")
    assert artifacts.same_version("2.1-rc1", "2.1rc1")
    assert not artifacts.same_version("2.1-rc1", "2.1")
    assert not artifacts.same_version("1.0-foo", "1.0")


@pytest.mark.parametrize("text", [ARABIC_INDIC, FULLWIDTH, "1.0-foo", "latest", "1.0\n", " 1.0", "v1.0"])
def test_parse_version_refuses_what_is_not_an_ascii_pep_440_version(text: str) -> None:
    with pytest.raises(ValueError, match="version"):
        artifacts.parse_version(text)


# --- manifests ------------------------------------------------------------------------------


def _field_errors(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple[str, str]]:
    return [(".".join(str(part) for part in error["loc"]), error["msg"]) for error in exc.value.errors()]


@pytest.mark.parametrize("version", [ARABIC_INDIC, FULLWIDTH])
def test_a_manifest_version_in_non_ascii_digits_is_refused(version: str) -> None:
    with pytest.raises(ValidationError) as model_error:
        ModelManifest.model_validate(COMFORT | {"version": version})
    assert [field for field, _ in _field_errors(model_error)] == ["version"]
    with pytest.raises(ValidationError) as app_error:
        AppManifest.model_validate(SMART_HOME | {"version": version})
    assert [field for field, _ in _field_errors(app_error)] == ["version"]
    with pytest.raises(ValidationError):
        ModelUse.model_validate({"model": "comfort", "version": version})
    with pytest.raises(ValidationError):
        ScheduleSpec.model_validate(
            {"app": "smart-home", "location": "lake-home", "version": version, "now": True, "duration": "1h"}
        )


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_an_upload_whose_version_is_not_pep_440_is_refused_saying_so() -> None:
    model = {path.name: path.read_bytes() for path in (ROOT / "examples" / "models" / "comfort").iterdir()}
    with pytest.raises(ValidationFailed) as model_error:
        validate_model_zip(
            _zip(model | {"model.json": json.dumps(COMFORT | {"version": "1.0-foo"}).encode()}), label="m.zip"
        )
    assert model_error.value.message.startswith(
        "m.zip: model.json field version: version '1.0-foo' is not a PEP 440"
    )
    app = {path.name: path.read_bytes() for path in (ROOT / "examples" / "apps" / "smart-home").iterdir()}
    pinned = SMART_HOME | {
        "version": "1.0.0-snapshot",
        "models": {"comfort": {"model": "comfort", "version": "1.x"}},
    }
    with pytest.raises(ValidationFailed) as app_error:
        validate_app_zip(_zip(app | {"app.json": json.dumps(pinned).encode()}), label="a.zip")
    assert [detail["field"] for detail in app_error.value.details] == ["version", "models.comfort.version"]
    accepted = validate_model_zip(
        _zip(model | {"model.json": json.dumps(COMFORT | {"version": "2.1-rc1"}).encode()}), label="m.zip"
    )
    assert accepted.manifest.version == "2.1-rc1"


def test_a_manifest_stored_before_versions_were_checked_is_still_read() -> None:
    assert ModelManifest.model_validate(COMFORT | {"version": "1.0-foo"}).version == "1.0-foo"
    assert AppManifest.model_validate(SMART_HOME | {"version": "1.0.0-snapshot"}).version == "1.0.0-snapshot"


# --- the comparers ----------------------------------------------------------------------------


def _app_version(version: str) -> AppVersionRow:
    return AppVersionRow(
        app_id="a1",
        version=version,
        manifest="{}",
        artifact_key="k",
        sha256="0",
        size=1,
        uploaded_by="appdev",
    )


def test_the_latest_app_version_is_the_release_not_its_candidate() -> None:
    rows = [_app_version("2.1"), _app_version("2.1-rc1")]
    found = app_registry.latest_version(rows)
    assert found is not None
    assert found.version == "2.1"


def _add_model_version(database: Database, version: str, endpoint: str) -> None:
    manifest = COMFORT | {
        "version": version,
        "endpoints": [COMFORT["endpoints"][0] | {"name": endpoint}],
        "example": None,
    }
    with database.session() as session:
        model = model_registry.find_model_by_name(session, "comfort")
        if model is None:
            model = ModelRow(model_id="mcomfort", name="comfort", owner="ada")
            session.add(model)
        model_registry.create_version(
            session,
            model,
            ModelVersionRow(
                model_id="mcomfort",
                version=version,
                manifest=ModelManifest.model_validate(manifest).model_dump_json(),
                artifact_key=f"models/mcomfort/{version}.zip",
                sha256="0" * 64,
                size=1,
                uploaded_by="ada",
            ),
        )


def test_an_app_is_checked_against_the_models_release_not_its_candidate(database: Database) -> None:
    _add_model_version(database, "2.1", "predict")
    _add_model_version(database, "2.1-rc1", "experimental")
    with database.session() as session:
        assert model_problems(session, "comfort", ModelUse(model="comfort", endpoints=["predict"])) == []
        pinned = ModelUse(model="comfort", version="2.1rc1", endpoints=["experimental"])
        assert model_problems(session, "comfort", pinned) == []  # the same version, spelt otherwise


def test_an_equal_version_spelt_otherwise_is_a_conflict(database: Database) -> None:
    _add_model_version(database, "1.0.0", "predict")
    with database.session() as session:
        model = model_registry.read_model(session, "comfort")
        with pytest.raises(Conflict, match=r"1\.0\.0"):
            model_registry.check_new_version(session, model, "1.0")
    with database.session() as session:
        app = AppRow(app_id="a1", name="watcher", owner="appdev")
        session.add(app)
        app_registry.create_version(session, app, _app_version("1.0.0"))
    with database.session() as session:
        app = app_registry.read_app(session, "watcher")
        with pytest.raises(Conflict, match=r"1\.0\.0"):
            app_registry.check_new_version(session, app, "1.0")
        assert app_registry.pick_version(session, "a1", "1.0").version == "1.0.0"


def _deployment(database: Database, version: str) -> None:
    manifest = ModelManifest.model_validate(COMFORT | {"version": version})
    request = DeployModel(
        model_id="mcomfort", version=version, artifact_key="k", artifact_sha256="0", manifest=manifest
    )
    service_id = f"mcomfort-v{version}-r0"
    with database.session() as session:
        session.add(
            DeploymentRow(
                deployment_id=f"mcomfort-v{version}",
                model_id="mcomfort",
                name="comfort",
                version=version,
                status="deployed",
                request=request.model_dump_json(),
                replicas=json.dumps([Replica(service_id=service_id).model_dump()]),
            )
        )


def test_model_call_resolves_to_the_release_not_its_candidate(
    database: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = DeployerService(settings)  # not started: resolve needs the table and where replicas run
    service.database = database
    urls: dict[str, Any] = {}
    monkeypatch.setattr(service, "_replica_url", lambda service_id: urls.setdefault(service_id, service_id))
    _deployment(database, "2.1")
    _deployment(database, "2.1-rc1")
    assert service.resolve(ResolveModel(model="comfort")).version == "2.1"
    assert service.resolve(ResolveModel(model="comfort", version="2.1rc1")).version == "2.1-rc1"
