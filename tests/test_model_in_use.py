"""Deleting a model that apps use: refused with 409 naming the apps, or forced, saying what breaks.

The AI manager does not read the app manager's tables: it asks over Kafka which apps use the
model (``ListModelUsers`` on ``<prefix>.commands.app-manager``), and the app manager answers
from its own (``app_manager.answers``, run by the front door's process). Here the front door
(its Flask app) talks to the real broker; the app manager's answers run as in production; a
stand-in deployer answers ``UndeployModel``; the device manager's answers (an uploaded app's
device types) run as in ``tests.fixtures.registries``. The registry of each test is a copy of one made
per module (``tests.test_schedule_api.seed``): users, the sample devices, the comfort model and
the smart-home app, which calls comfort.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app_manager.answers import AppManagerAnswers
from app_manager.messages import ListModelUsers, ModelUsers, app_manager_topic
from bootstrapper.kafka import KafkaBroker
from deployer.messages import Deployments, ListDeployments, UndeployModel
from platform_core.db import Database
from platform_core.http import HttpServer
from platform_sdk.artifacts import app_id_for, model_id_for
from platform_sdk.bus import Bus, ConsumerLoop, Requester
from platform_sdk.envelope import Envelope
from platform_sdk.net import free_port
from platform_sdk.settings import Settings, temporary_settings
from tests.fixtures.components import kafka_updates
from tests.fixtures.registries import Registries, answering
from tests.test_app_upload import run_aiot
from tests.test_front_door import bearer, error_of, json_of
from tests.test_schedule_api import SMART_HOME, seed
from web import identity
from web.app import build_front_door
from web.service import FrontDoorService

pytestmark = pytest.mark.service("kafka")

COMFORT_ID = model_id_for("comfort")
SMART_HOME_ID = app_id_for("smart-home")


# --- the bus: the front door's requester and a stand-in deployer ------------------------------


@dataclass
class Deployer:
    """Answers ``UndeployModel`` and ``ListDeployments`` (nothing is deployed) and remembers who
    was undeployed."""

    undeployed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.undeployed.clear()

    def undeploy(self, request: UndeployModel, _envelope: Envelope) -> Deployments:
        with self.lock:
            self.undeployed.append(request.model_id)
        return Deployments(deployments=[])

    def deployments(self, _request: ListDeployments, _envelope: Envelope) -> Deployments:
        return Deployments(deployments=[])

    def seen(self) -> list[str]:
        with self.lock:
            return list(self.undeployed)


@dataclass
class Platform:
    settings: Settings
    bus: Bus
    requester: Requester
    deployer: Deployer
    registries: Registries


@pytest.fixture(scope="module")
def platform(kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """The module's settings (own home, topic prefix and bucket), bus, requester and deployer."""
    home = tmp_path_factory.mktemp("model-in-use")
    overrides = {
        "home": str(home),
        "kafka.topic_prefix": f"t{uuid.uuid4().hex[:10]}",
        **kafka_updates(kafka_broker),
        "blob.backend": "local",
        "blob.local_path": str(home / "bucket"),
    }
    deployer = Deployer()
    with temporary_settings(overrides) as settings:
        bus = Bus(settings, source="model-in-use-test")
        loop = ConsumerLoop(bus, [bus.topics.deployer], group=None, name="deployer-topic")
        loop.add_handler(UndeployModel, deployer.undeploy)
        loop.add_handler(ListDeployments, deployer.deployments)
        loop.start()
        nowhere = Database("sqlite://")  # until a test's site names its registry
        try:
            with Requester(bus) as requester, answering(bus, nowhere, ("device-manager",)) as registries:
                yield Platform(settings, bus, requester, deployer, registries)
        finally:
            loop.stop()
            nowhere.stop()


@pytest.fixture(scope="module")
def template_db(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model-in-use-db") / "registry.db"
    database = Database(f"sqlite:///{path}")
    try:
        seed(database, platform.settings)
    finally:
        database.stop()
    return path


# --- the front door -----------------------------------------------------------------------------


@dataclass
class Site:
    client: FlaskClient
    database: Database
    platform: Platform
    tokens: dict[str, str] = field(default_factory=dict)

    def token(self, username: str) -> str:
        if username not in self.tokens:
            with self.database.session() as session:
                user = identity.read_user(session, username)
                self.tokens[username] = identity.issue_token(session, user, "test").secret
        return self.tokens[username]

    def delete(self, model: str, *, force: bool = False, username: str = "ada") -> TestResponse:
        query = "?force=true" if force else ""
        return self.client.delete(f"/api/models/{model}{query}", headers=bearer(self.token(username)))

    def model_names(self) -> list[str]:
        listed = json_of(self.client.get("/api/models", headers=bearer(self.token("ada"))))["models"]
        return sorted(model["name"] for model in listed)


@pytest.fixture
def site_without_app_manager(platform: Platform, template_db: Path, tmp_path: Path) -> Iterator[Site]:
    """A front door whose app manager does not answer on the bus."""
    platform.deployer.reset()
    path = tmp_path / "registry.db"
    shutil.copyfile(template_db, path)
    database = Database(f"sqlite:///{path}")
    app = build_front_door(platform.settings, database, platform.requester)
    platform.registries.serve(database)
    try:
        yield Site(app.test_client(), database, platform)
    finally:
        database.stop()


@pytest.fixture
def site(site_without_app_manager: Site) -> Iterator[Site]:
    """A front door with the app manager's answers running on its database."""
    bus = site_without_app_manager.platform.bus
    answers = ConsumerLoop(bus, [app_manager_topic(bus.topics)], group=None, name="app-manager-answers")
    AppManagerAnswers(site_without_app_manager.database).add_to(answers)
    answers.start()
    try:
        yield site_without_app_manager
    finally:
        answers.stop()


# --- tests --------------------------------------------------------------------------------------


def test_deleting_a_model_an_app_uses_is_refused_naming_the_app(site: Site) -> None:
    error = error_of(site.delete("comfort"), 409)
    assert "model 'comfort' is used by app 'smart-home' (1.0.0)" in error["message"]
    assert "`aiot model delete comfort --force`" in error["message"]
    assert error["details"] == {
        "apps": [{"app_id": SMART_HOME_ID, "app": "smart-home", "owner": "appdev", "versions": ["1.0.0"]}]
    }
    assert site.model_names() == ["comfort"]  # nothing deleted
    assert COMFORT_ID not in site.platform.deployer.seen()  # nothing undeployed


def test_a_forced_delete_deletes_and_names_the_apps_that_break(site: Site) -> None:
    reply = json_of(site.delete("comfort", force=True))
    assert (reply["model_id"], reply["deleted"]) == (COMFORT_ID, True)
    assert reply["broken_apps"] == [
        {"app_id": SMART_HOME_ID, "app": "smart-home", "owner": "appdev", "versions": ["1.0.0"]}
    ]
    assert site.model_names() == []
    assert COMFORT_ID in site.platform.deployer.seen()


def test_once_its_apps_are_deleted_the_model_is_deleted_without_force(site: Site) -> None:
    json_of(site.client.delete("/api/apps/smart-home", headers=bearer(site.token("appdev"))))
    reply = json_of(site.delete("comfort"))
    assert (reply["name"], reply["deleted"], reply["broken_apps"]) == ("comfort", True, [])
    assert site.model_names() == []


def _smart_home_zip(version: str, models: dict[str, Any]) -> bytes:
    manifest = json.loads((SMART_HOME / "app.json").read_text()) | {"version": version, "models": models}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("app.json", json.dumps(manifest))
        zf.writestr("smart_home.py", (SMART_HOME / "smart_home.py").read_bytes())
    return buffer.getvalue()


def test_every_version_that_names_the_model_counts_and_only_those(site: Site) -> None:
    uploaded = site.client.post(
        "/api/apps",
        data=_smart_home_zip("1.1.0", {}),
        headers={"Content-Type": "application/zip", **bearer(site.token("appdev"))},
    )
    json_of(uploaded, 201)
    error = error_of(site.delete("comfort"), 409)
    assert "app 'smart-home' (1.0.0)" in error["message"]  # a schedule may pin 1.0.0: it still breaks
    [user] = error["details"]["apps"]
    assert user["versions"] == ["1.0.0"]


def test_when_the_app_manager_does_not_answer_the_delete_waits_for_it_unless_forced(
    site_without_app_manager: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = site_without_app_manager
    monkeypatch.setattr(site.platform.settings.web, "app_manager_timeout_s", 1.0)
    error_of(site.delete("comfort"), 503)  # its message (naming --force) is in the logs, as every 5xx's
    assert site.model_names() == ["comfort"]
    assert COMFORT_ID not in site.platform.deployer.seen()
    reply = json_of(site.delete("comfort", force=True))
    assert (reply["deleted"], reply["broken_apps"]) == (True, None)  # None: nobody said


def test_the_cli_refuses_then_deletes_with_force_saying_which_apps_break(
    site: Site, platform: Platform, template_db: Path, tmp_path: Path
) -> None:
    app = build_front_door(platform.settings, site.database, platform.requester)
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    try:
        home = tmp_path / "home"
        home.mkdir()
        credentials = {"url": server.url, "username": "ada", "token": site.token("ada")}
        (home / "credentials.json").write_text(json.dumps(credentials))
        refused = run_aiot(home, "model", "delete", "comfort")
        assert refused.returncode != 0
        assert "model 'comfort' is used by app 'smart-home' (1.0.0)" in refused.stderr
        assert "--force" in refused.stderr
        forced = run_aiot(home, "model", "delete", "comfort", "--force")
        assert forced.returncode == 0, forced.stderr
        assert f"model comfort ({COMFORT_ID}) undeployed and deleted" in forced.stdout
        assert "app smart-home (1.0.0) uses it" in forced.stdout
    finally:
        server.stop()


def test_the_front_door_service_answers_which_apps_use_a_model(
    platform: Platform, template_db: Path, tmp_path: Path
) -> None:
    """The production wiring: the front door's process runs the app manager's answers."""
    path = tmp_path / "registry.db"
    shutil.copyfile(template_db, path)
    overrides = {
        "database.url": f"sqlite:///{path}",
        "web.host": "127.0.0.1",
        "web.port": free_port("127.0.0.1"),
        "service_id": "web",
    }
    with temporary_settings(overrides) as settings:
        service = FrontDoorService(settings)
        service.start()
        try:
            reply = platform.requester.request(
                app_manager_topic(platform.bus.topics), ListModelUsers(model="comfort"), ModelUsers, 30
            )
        finally:
            service.stop()
    assert [(user.app, user.versions) for user in reply.apps] == [("smart-home", ["1.0.0"])]
