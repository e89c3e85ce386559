"""Uploads are checked entry by entry before anything is stored, and a deleted model leaves no bundle.

Uploading (``POST /api/models``, the front door without Kafka as in ``tests.test_model_upload``):
a zip whose manifest is fine but another entry is damaged (a wrong CRC, content shorter than its
header says, a broken compressed stream), an entry name no node should write (backslash, drive
letter, control character, duplicate), a manifest that is not UTF-8 and a version written in
other scripts' digits are each refused with a 422 naming the zip, the entry or field and the
reason; nothing is stored (no row, no blob, no bundle folder). Before these checks a damaged
entry passed the upload and failed only when a node unpacked it.

Deleting (on Kafka): a node keeps a bundle's unpacked folder while a service of its own runs in
it or its zip is still in the bucket (the next start fetches nothing), removes it once neither
holds (at the last stop, or by its periodic check), and clears what a previous run left;
deleting a model (through the front door, with the real deployer) removes its deploy bundle and
its zip from the bucket, and a model that apps use keeps both until the delete is forced.
"""

from __future__ import annotations

import hashlib
import json
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from ai_manager.artifact import pack_model, validate_model_zip
from ai_manager.models import ModelVersionRow
from bootstrapper.kafka import KafkaBroker
from deployer.messages import DeployModel, deployment_id_for
from deployer.models import DeploymentRow
from deployer.service import DeployerService
from platform_core.blobstore import LocalBlobStore, blob_store_from_settings
from platform_core.db import Database
from platform_core.nodes import (
    BundleRef,
    RestartService,
    ServiceSpec,
    ServiceStateReply,
    StopService,
    agent_topic,
)
from platform_sdk.artifacts import model_id_for
from platform_sdk.bus import Bus, Requester
from platform_sdk.errors import NotFound, ValidationFailed
from platform_sdk.settings import Settings, get_settings, temporary_settings
from service_agent.agent import ServiceAgent
from service_agent.sandbox import remove_root
from tests import test_model_upload as uploads
from tests.fixtures.components import kafka_updates
from tests.fixtures.registries import answering
from tests.fixtures.sites import running
from tests.test_archive import patch_header, with_bad_crc
from tests.test_bus import wait_for
from tests.test_front_door import bearer, error_of, seed_registry
from tests.test_schedule_api import seed
from tests.test_service_agent import start
from web import identity
from web.app import build_front_door

COMFORT_ID = model_id_for("comfort")
MODEL_CODE = "comfort_model.py"


# --- uploading ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("upload-entries") / "registry.db"
    seed_registry(f"sqlite:///{path}", uploads.USERS)
    return path


@pytest.fixture
def site(settings: Settings, registry_template: Path, tmp_path: Path) -> Iterator[uploads.Site]:
    with uploads.open_site(registry_template, tmp_path) as opened:
        yield opened


def refused(site: uploads.Site, data: bytes, *, file: str, field: str | None, reason: str) -> dict[str, Any]:
    """``tests.test_model_upload.refused`` (422 naming ``file``, ``field`` and ``reason``; no row, no
    blob), and no bundle folder either."""
    error = uploads.refused(site, data, file=file, field=field, reason=reason)
    assert not (get_settings().home_dir / "bundles").exists()
    return error


def shorter_than_its_header(data: bytes, name: str) -> bytes:
    """``data`` whose headers say ``name`` holds one byte more than it does."""
    content = uploads.comfort_files()[name]
    return patch_header(data, name, file_size=len(content) + 1, crc=zlib.crc32(content))


def broken_stream(data: bytes, name: str) -> bytes:
    """``data`` with a byte flipped inside the compressed stream of ``name``."""
    buffer = bytearray(data)
    start_of_data = data.index(name.encode()) + len(name) + 8  # past the local header's name
    buffer[start_of_data] ^= 0xFF
    return bytes(buffer)


@pytest.mark.parametrize(
    ("damage", "name", "reason"),
    [
        pytest.param(with_bad_crc, MODEL_CODE, f"Bad CRC-32 for file '{MODEL_CODE}'", id="crc-of-the-code"),
        pytest.param(
            with_bad_crc, "comfort.npz", "Bad CRC-32 for file 'comfort.npz'", id="crc-of-the-weights"
        ),
        pytest.param(shorter_than_its_header, MODEL_CODE, "shorter than its header says", id="short"),
        pytest.param(broken_stream, MODEL_CODE, "content is corrupt", id="broken-stream"),
    ],
)
def test_a_damaged_entry_beside_a_valid_manifest_is_refused_naming_it(
    site: uploads.Site, damage: Callable[[bytes, str], bytes], name: str, reason: str
) -> None:
    data = damage(uploads.comfort_zip(), name)
    error = refused(site, data, file=name, field=None, reason=reason)
    assert error["message"].startswith(f"{uploads.LABEL}: '{name}': ")
    assert error["message"].endswith("; zip the folder again")  # what to do


def test_every_damaged_entry_is_listed(site: uploads.Site) -> None:
    data = with_bad_crc(with_bad_crc(uploads.comfort_zip(), MODEL_CODE), "train.py")
    error = refused(site, data, file=MODEL_CODE, field=None, reason="Bad CRC-32")
    assert [detail["file"] for detail in error["details"]] == [MODEL_CODE, "train.py"]
    assert "2 problems" in error["message"]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        pytest.param("lib\\helper.py", "path contains a backslash", id="backslash"),
        pytest.param("C:/helper.py", "path starts with a drive letter", id="drive-letter"),
        pytest.param("help\ter.py", "control character (U+0009)", id="tab"),
        pytest.param("helper\x7f.py", "control character (U+007F)", id="delete"),
        pytest.param("helper\x9b.py", "control character (U+009B)", id="c1-escape"),
        pytest.param(f"./{MODEL_CODE}", "duplicate name", id="duplicate"),
    ],
)
def test_an_entry_name_no_node_should_write_is_refused(site: uploads.Site, name: str, reason: str) -> None:
    data = uploads.comfort_zip(**{name: b"print('hello')\n"})
    with pytest.raises(ValidationFailed) as caught:
        validate_model_zip(data, label=uploads.LABEL)
    error = error_of(site.upload(data), 422)
    assert error["message"] == caught.value.message
    assert error["message"].startswith(f"{uploads.LABEL}: {name!r}: ")  # shown escaped: \t, \x7f
    assert reason in error["message"]
    assert error["details"] == [{"file": name, "field": None, "reason": error["details"][0]["reason"]}]
    site.assert_nothing_stored()
    assert not (get_settings().home_dir / "bundles").exists()


def test_a_model_json_that_is_not_utf8_is_refused(site: uploads.Site) -> None:
    ascii_json = json.dumps(uploads.comfort_manifest()).encode()
    latin1 = ascii_json.replace(b'"description": "', b'"description": "f\xfcr ', 1)  # latin-1's "ü"
    assert latin1 != ascii_json
    data = uploads.comfort_zip(**{"model.json": latin1})
    refused(site, data, file="model.json", field=None, reason="is not valid JSON (not UTF-8")


@pytest.mark.parametrize(
    ("version", "shown"),
    [
        pytest.param("\u0661.\u0660.\u0660", "U+0661", id="arabic-indic"),
        pytest.param("1.\u06f2", "U+06F2", id="extended-arabic-indic"),
        pytest.param("\u0967.0", "U+0967", id="devanagari"),
        pytest.param("\uff11.0.0", "U+FF11", id="fullwidth"),
    ],
)
def test_a_version_in_other_digits_is_refused_saying_to_use_ascii(
    site: uploads.Site, version: str, shown: str
) -> None:
    data = uploads.with_manifest(uploads.comfort_manifest() | {"version": version})
    error = refused(site, data, file="model.json", field="version", reason="not ASCII")
    assert shown in error["message"]
    assert "write it with ASCII digits" in error["message"]


# --- deleting: the bundles on a node ------------------------------------------------------------

SLEEPER = ["{python}", "-c", "import time; time.sleep(120)"]


@dataclass(frozen=True)
class Node:
    settings: Settings
    agent: ServiceAgent
    bus: Bus
    requester: Requester

    @property
    def bundles(self) -> Path:
        return self.settings.home_dir / "bundles"

    def command(self, message: StopService | RestartService) -> ServiceStateReply:
        topic = agent_topic(self.bus.topics, "t-node")
        return self.requester.request(topic, message, ServiceStateReply, timeout=30)

    def run(self, service_id: str, bundle: BundleRef) -> None:
        spec = ServiceSpec(service_id=service_id, kind="model", owner="dev", command=SLEEPER, bundle=bundle)
        assert start(self.requester, self.bus, spec).state.state == "running"


def put_bundle(settings: Settings, files: dict[str, bytes]) -> BundleRef:
    """A bundle of ``files`` in the bucket, as the deployer leaves one."""
    data = uploads.zip_of(files)
    sha256 = hashlib.sha256(data).hexdigest()
    key = f"bundles/{sha256}.zip"
    blob_store_from_settings(settings).put(key, data)
    return BundleRef(key=key, sha256=sha256)


@pytest.fixture
def node(kafka_settings: Settings) -> Iterator[Node]:
    """A service agent (node ``t-node``) in this process, driven over the bus, with leftovers of
    a previous run of its own and a folder of another node beside them."""
    overrides = {
        "agent.node_id": "t-node",
        "agent.allow_commands": True,  # a sleeper stands in for a model
        "agent.port_range": "31200-31299",
        "agent.stop_timeout_s": 1.0,
        "agent.bundle_check_interval_s": 0.2,
    }
    with temporary_settings(overrides) as current:
        bundles = current.home_dir / "bundles"
        (bundles / "t-node" / ("0" * 64)).mkdir(parents=True)
        (bundles / "t-node" / ("0" * 64) / "model.py").write_text("left by a crash")
        (bundles / "other-node" / ("1" * 64)).mkdir(parents=True)
        bus = Bus(current, source="upload-entries-node-manager")
        agent = ServiceAgent(current)
        try:
            with running(agent), Requester(bus) as requester:
                yield Node(current, agent, bus, requester)
        finally:
            bus.close()
            remove_root(current)  # the sandboxes' venvs (as `aiot down` removes them)


@pytest.mark.service("kafka")
def test_a_node_keeps_a_bundle_while_a_service_runs_in_it_or_its_zip_is_in_the_bucket(node: Node) -> None:
    bundle = put_bundle(node.settings, {"model.py": b"print('served')\n"})
    folder = node.bundles / "t-node" / bundle.sha256
    # What a previous run of this node left is gone; another node's folder is not this node's to clear.
    assert sorted(path.name for path in (node.bundles / "t-node").iterdir()) == []
    assert (node.bundles / "other-node" / ("1" * 64)).is_dir()

    node.run("m-v1-r0", bundle)
    node.run("m-v1-r1", bundle)  # two replicas of one version on one node: one copy
    assert (folder / "model.py").read_text() == "print('served')\n"
    unpacked = folder.stat().st_ino
    node.command(RestartService(service_id="m-v1-r0"))
    node.command(StopService(service_id="m-v1-r0"))
    node.command(StopService(service_id="m-v1-r1"))
    node.run("m-v1-r0", bundle)
    assert folder.stat().st_ino == unpacked  # kept while its zip is in the bucket: not fetched again

    blob_store_from_settings(node.settings).delete(bundle.key)  # the model is being deleted
    cache = node.agent.supervisor.bundles
    assert cache is not None
    cache.prune()  # as the agent does every agent.bundle_check_interval_s
    assert folder.stat().st_ino == unpacked  # a service still runs in it
    node.command(StopService(service_id="m-v1-r0"))
    assert not folder.exists()  # the last one out, its zip gone: removed at once
    assert sorted(path.name for path in (node.bundles / "t-node").iterdir()) == []


@pytest.mark.service("kafka")
def test_a_bundle_no_service_runs_in_goes_when_its_zip_leaves_the_bucket(node: Node) -> None:
    bundle = put_bundle(node.settings, {"app.py": b"print('ran')\n"})
    folder = node.bundles / "t-node" / bundle.sha256
    node.run("app-i1", bundle)
    node.command(StopService(service_id="app-i1"))  # the instance ended; the app is still there
    assert (folder / "app.py").is_file()

    blob_store_from_settings(node.settings).delete(bundle.key)  # the app is deleted
    wait_for(lambda: not folder.exists(), timeout=10, what="the unused bundle removed by the periodic check")


@pytest.mark.service("kafka")
def test_a_service_whose_bundle_cannot_be_fetched_leaves_no_folder(node: Node) -> None:
    missing = BundleRef(key="bundles/gone.zip", sha256="2" * 64)
    spec = ServiceSpec(service_id="m-v2-r0", kind="model", owner="dev", command=SLEEPER, bundle=missing)
    with pytest.raises(NotFound, match=r"gone\.zip"):
        start(node.requester, node.bus, spec)
    assert sorted(path.name for path in (node.bundles / "t-node").iterdir()) == []


# --- deleting: the model's bundle in the bucket -------------------------------------------------


@dataclass(frozen=True)
class Platform:
    settings: Settings
    database: Database
    deployer: DeployerService
    client: FlaskClient

    @property
    def bucket(self) -> Path:
        blobs = blob_store_from_settings(self.settings)
        assert isinstance(blobs, LocalBlobStore)
        return blobs.root

    def files(self) -> list[str]:
        return sorted(
            path.relative_to(self.bucket).as_posix() for path in self.bucket.rglob("*") if path.is_file()
        )

    def delete(self, path: str, username: str = "ada") -> tuple[int, dict[str, Any]]:
        """``DELETE path`` as ``username``: the status and the JSON answer."""
        with self.database.session() as session:
            token = identity.issue_token(session, identity.read_user(session, username), "test").secret
        response = self.client.delete(path, headers=bearer(token))
        return response.status_code, json.loads(response.get_data(as_text=True))

    def left(self, *prefixes: str) -> list[str]:
        """The files in the bucket under ``prefixes``."""
        return [name for name in self.files() if name.startswith(prefixes)]

    def deploy_comfort(self) -> str:
        """Comfort's zip in the bucket and a deployment of it with its bundle, as a deploy leaves them
        (its replicas aside: none runs here); the bundle's key."""
        packed = pack_model(uploads.COMFORT)
        with self.database.session() as session:
            query = sa.select(ModelVersionRow).where(ModelVersionRow.model_id == COMFORT_ID)
            version = session.scalar(query)
            assert version is not None
            artifact_key = version.artifact_key
        blob_store_from_settings(self.settings).put(artifact_key, packed.data)
        request = DeployModel(
            model_id=COMFORT_ID,
            version=packed.manifest.version,
            artifact_key=artifact_key,
            artifact_sha256=packed.sha256,
            manifest=packed.manifest,
        )
        deployment_id = deployment_id_for(COMFORT_ID, request.version)
        with self.database.session() as session:
            session.add(
                DeploymentRow(
                    deployment_id=deployment_id,
                    model_id=COMFORT_ID,
                    name="comfort",
                    version=request.version,
                    status="deployed",
                    request=request.model_dump_json(),
                )
            )
        return self.deployer._bundle(packed.data, deployment_id, request).key

    def deployment(self) -> tuple[str, str | None]:
        with self.database.session() as session:
            row = session.get(DeploymentRow, deployment_id_for(COMFORT_ID, "1.0.0"))
            assert row is not None
            return row.status, row.bundle_key


@pytest.fixture
def platform(kafka_broker: KafkaBroker, tmp_path: Path) -> Iterator[Platform]:
    """The real deployer, the app manager's answers and the front door on one registry: the sample
    users, devices, comfort model and smart-home app (which calls comfort)."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    overrides = {
        "home": str(tmp_path / "home"),
        "kafka.topic_prefix": f"t{uuid.uuid4().hex[:10]}",
        **kafka_updates(kafka_broker),
        "blob.backend": "local",
        "blob.local_path": str(tmp_path / "bucket"),
        "database.url": url,
    }
    with temporary_settings(overrides) as current:
        database = Database(url)
        bus = Bus(current, source="upload-entries-front-door")
        try:
            seed(database, current)
            deployer = DeployerService(current)
            with (
                running(deployer),
                Requester(bus) as requester,
                answering(bus, database, ("app-manager",)),
            ):
                client = build_front_door(current, database, requester).test_client()
                yield Platform(current, database, deployer, client)
        finally:
            bus.close()
            database.stop()


@pytest.mark.service("kafka")
def test_deleting_a_model_removes_its_bundle_and_its_zip(platform: Platform) -> None:
    bundle_key = platform.deploy_comfort()
    assert platform.delete("/api/apps/smart-home", username="appdev")[0] == 200  # no app uses comfort now
    assert platform.left("models/", "bundles/") == sorted([f"models/{COMFORT_ID}/1.0.0.zip", bundle_key])

    status, reply = platform.delete("/api/models/comfort")
    assert (status, reply["deleted"]) == (200, True)
    assert platform.left("models/", "bundles/") == []
    assert platform.deployment() == ("undeployed", None)


@pytest.mark.service("kafka")
def test_a_model_apps_use_keeps_its_bundle_until_the_delete_is_forced(platform: Platform) -> None:
    bundle_key = platform.deploy_comfort()
    before = platform.files()
    assert bundle_key in before

    status, refusal = platform.delete("/api/models/comfort")
    assert status == 409
    assert "--force" in refusal["error"]["message"]
    assert platform.files() == before  # nothing removed, nothing undeployed
    assert platform.deployment() == ("deployed", bundle_key)

    status, reply = platform.delete("/api/models/comfort?force=true")
    assert (status, reply["deleted"]) == (200, True)
    assert platform.left("models/", "bundles/") == []
    assert platform.left("apps/") == [
        name for name in before if name.startswith("apps/")
    ]  # the app's own zip stays
    assert platform.deployment() == ("undeployed", None)
