"""``/api/schedules``, ``/api/instances`` and ``/api/mails`` on the real front door.

A schedule is refused, with a message and details naming the field and the reason, for every
kind of bad document and for what the registry says (unknown app, version or location, a
location without the devices the app needs, nothing left to run); a refused schedule stores
nothing. A good one is stored, answered with its next runs in UTC (its times are the
location's), handed to the scheduler as ``ScheduleChanged`` over the real embedded broker, and
seen and managed by its owner and platform configurers only. Instances belong to the deployer:
a stand-in deployer answers ``ListInstances`` and ``StopInstance`` on its topic. Mails: an end
user sees the mails to their address and to ``<username>@localhost``, a configurer all.

The registry of each test is a copy of one made per module: users of every role, the sample
devices of ``configs/devices/sample.json`` (their real time zones), the comfort model's rows
and the smart-home app's (with its zip), as their uploads leave them. The broker, the front
door's ``Requester``, the consumers on the scheduler and deployer topics and the app and device
managers' answers (``tests.fixtures.registries``, on each test's registry) are shared by the
module.
One test runs the good path on a fresh PostgreSQL database made the same way.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import flask
import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from ai_manager import registry as model_registry
from ai_manager.models import ModelRow, ModelVersionRow
from app_manager import registry as app_registry
from app_manager.artifact import pack_app
from app_manager.models import AppRow, AppVersionRow
from bootstrapper.kafka import KafkaBroker
from deployer.messages import InstanceInfo, Instances, InstanceStatus, ListInstances, StopInstance
from device_manager import registry as device_registry
from platform_core.auth import Role
from platform_core.blobstore import blob_store_from_settings
from platform_core.db import Database
from platform_sdk.artifacts import ModelManifest, app_id_for, model_id_for
from platform_sdk.bus import Bus, ConsumerLoop, Requester
from platform_sdk.device_documents import DeviceBundle
from platform_sdk.envelope import Envelope
from platform_sdk.settings import MailSettings, Settings, temporary_settings
from scheduler.mail import Mailer
from scheduler.messages import ScheduleChanged
from scheduler.models import ScheduleRow
from tests.fixtures.components import kafka_updates
from tests.fixtures.registries import Registries, answering
from tests.test_front_door import PASSWORD, bearer, error_of, json_of
from web import identity
from web.app import build_front_door

pytestmark = pytest.mark.service("kafka")

ROOT = Path(__file__).resolve().parents[1]
SMART_HOME = ROOT / "examples" / "apps" / "smart-home"
COMFORT = ROOT / "examples" / "models" / "comfort" / "model.json"
SAMPLE_DEVICES = ROOT / "configs" / "devices" / "sample.json"
SMART_HOME_ID = app_id_for("smart-home")
# username → (role, email address)
USERS: dict[str, tuple[Role, str | None]] = {
    "admin": (Role.PLATFORM_CONFIGURER, None),
    "ada": (Role.AI_DEVELOPER, None),
    "appdev": (Role.APP_DEVELOPER, None),
    "enduser": (Role.END_USER, "enduser@example.com"),
    "eve": (Role.END_USER, None),
}
ALLOWED = "app_developer, end_user, platform_configurer"
# Twice a day at lake-home (America/New_York) over the 2030 spring-forward day (Sunday 10 March).
GOOD = {
    "app": "smart-home",
    "location": "lake-home",
    "times": ["08:00", "20:00"],
    "duration": "1h",
    "start_date": "2030-03-09",
    "end_date": "2030-03-12",
}


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout:g}s")
        time.sleep(0.02)


# --- the bus: the front door's requester, the scheduler's topic, a stand-in deployer ------------


@dataclass
class Deployer:
    """Answers ``ListInstances`` from ``instances`` (filtered as asked) and ``StopInstance``.

    With ``answering`` off it does not reply, as a deployer that is down.
    """

    instances: list[InstanceInfo] = field(default_factory=list)
    queries: list[ListInstances] = field(default_factory=list)
    stops: list[StopInstance] = field(default_factory=list)
    answering: bool = True

    def reset(self) -> None:
        self.instances, self.queries, self.stops, self.answering = [], [], [], True

    def list(self, query: ListInstances, _envelope: Envelope) -> Instances | None:
        self.queries.append(query)
        if not self.answering:
            return None
        wanted = {key: value for key, value in query.model_dump().items() if value is not None}
        found = [
            info
            for info in self.instances
            if all(getattr(info, key) == value for key, value in wanted.items())
        ]
        return Instances(instances=found)

    def stop(self, command: StopInstance, _envelope: Envelope) -> Instances | None:
        self.stops.append(command)
        [info] = [info for info in self.instances if info.instance_id == command.instance_id]
        return Instances(instances=[info.model_copy(update={"status": "stopped"})])


@dataclass
class Platform:
    """What the module shares: settings, the front door's requester, what the bus carried."""

    settings: Settings
    bus: Bus
    requester: Requester
    deployer: Deployer
    changes: list[ScheduleChanged]
    lock: threading.Lock
    registries: Registries

    def changes_of(self, schedule_id: str) -> list[str]:
        with self.lock:
            return [change.action for change in self.changes if change.schedule_id == schedule_id]


@pytest.fixture(scope="module")
def platform_settings(
    kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("schedule-api-home")
    with temporary_settings(
        {
            "home": str(home),
            "kafka.topic_prefix": f"t{uuid.uuid4().hex[:10]}",
            **kafka_updates(kafka_broker),
            "blob.backend": "local",
            "blob.local_path": str(home / "bucket"),
        }
    ) as current:
        yield current


@pytest.fixture(scope="module")
def platform(platform_settings: Settings) -> Iterator[Platform]:
    bus = Bus(platform_settings, source="schedule-api-test")
    changes: list[ScheduleChanged] = []
    lock = threading.Lock()

    def changed(message: ScheduleChanged, _envelope: Envelope) -> None:
        with lock:
            changes.append(message)

    deployer = Deployer()
    scheduler_topic = ConsumerLoop(bus, [bus.topics.scheduler], group=None, name="scheduler-topic")
    scheduler_topic.add_handler(ScheduleChanged, changed)
    deployer_topic = ConsumerLoop(bus, [bus.topics.deployer], group=None, name="deployer-topic")
    deployer_topic.add_handler(ListInstances, deployer.list)
    deployer_topic.add_handler(StopInstance, deployer.stop)
    requester = Requester(bus)
    started: list[ConsumerLoop | Requester] = []
    nowhere = Database("sqlite://")  # until a test's site names its registry
    try:
        for part in (scheduler_topic, deployer_topic, requester):
            part.start()
            started.append(part)
        with answering(bus, nowhere, ("app-manager", "device-manager")) as registries:
            yield Platform(platform_settings, bus, requester, deployer, changes, lock, registries)
    finally:
        for part in reversed(started):
            part.stop()
        nowhere.stop()


# --- the registry -------------------------------------------------------------------------------


def register_comfort_model(database: Database) -> None:
    """The sample comfort model's rows (version 1.0.0, endpoint ``predict``), as its upload leaves them."""
    manifest = ModelManifest.model_validate_json(COMFORT.read_text())
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


def seed(database: Database, settings: Settings) -> None:
    """Migrate ``database`` and add ``USERS``, the sample devices, the comfort model and smart-home."""
    database.migrate()
    with database.session() as session:
        for username, (role, email) in USERS.items():
            identity.create_user(session, username, PASSWORD, role, email)
        bundle = DeviceBundle.model_validate_json(SAMPLE_DEVICES.read_text())
        device_registry.register_bundle(session, bundle)
    register_comfort_model(database)
    packed = pack_app(SMART_HOME)
    manifest = packed.manifest
    key = f"apps/{SMART_HOME_ID}/{manifest.version}.zip"
    with database.session() as session:  # the rows and the zip POST /api/apps leaves
        app = AppRow(
            app_id=SMART_HOME_ID, name=manifest.name, owner="appdev", description=manifest.description
        )
        session.add(app)
        app_registry.create_version(
            session,
            app,
            AppVersionRow(
                app_id=SMART_HOME_ID,
                version=manifest.version,
                manifest=manifest.model_dump_json(),
                artifact_key=key,
                sha256=packed.sha256,
                size=len(packed.data),
                uploaded_by="appdev",
            ),
        )
    blob_store_from_settings(settings).put(key, packed.data)


@pytest.fixture(scope="module")
def template_db(platform_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite registry made by ``seed``; each test gets a copy."""
    path = tmp_path_factory.mktemp("schedule-api") / "registry.db"
    database = Database(f"sqlite:///{path}")
    try:
        seed(database, platform_settings)
    finally:
        database.stop()
    return path


# --- the front door -----------------------------------------------------------------------------


@dataclass
class Site:
    """A front door on a fresh copy of the template registry."""

    app: flask.Flask
    client: FlaskClient
    database: Database
    platform: Platform
    tokens: dict[str, str] = field(default_factory=dict)

    def auth(self, username: str) -> dict[str, str]:
        if username not in self.tokens:
            with self.database.session() as session:
                user = identity.read_user(session, username)
                self.tokens[username] = identity.issue_token(session, user, "test").secret
        return bearer(self.tokens[username])

    def call(
        self,
        method: str,
        path: str,
        username: str | None = "enduser",
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> TestResponse:
        sent = (self.auth(username) if username is not None else {}) | (headers or {})
        return self.client.open(path, method=method, headers=sent, **kwargs)

    def schedule(self, document: dict[str, Any], username: str | None = "enduser") -> TestResponse:
        return self.call("POST", "/api/schedules", username, json=document)

    def listed(self, username: str) -> list[str]:
        """The ids of the schedules ``username`` lists."""
        schedules = json_of(self.call("GET", "/api/schedules", username))["schedules"]
        return [schedule["schedule_id"] for schedule in schedules]

    def rows(self) -> list[ScheduleRow]:
        with self.database.session() as session:
            rows = list(session.scalars(sa.select(ScheduleRow)))
            session.expunge_all()
        return rows

    def assert_nothing_stored(self) -> None:
        assert self.rows() == []
        assert self.listed("admin") == []
        assert self.listed("enduser") == []


def open_site(platform: Platform, template_db: Path, tmp_path: Path, *, bus: bool = True) -> Site:
    path = tmp_path / "registry.db"
    shutil.copyfile(template_db, path)
    database = Database(f"sqlite:///{path}")
    app = build_front_door(platform.settings, database, platform.requester if bus else None)
    platform.registries.serve(database)
    return Site(app, app.test_client(), database, platform)


@pytest.fixture
def site(platform: Platform, template_db: Path, tmp_path: Path) -> Iterator[Site]:
    platform.deployer.reset()
    opened = open_site(platform, template_db, tmp_path)
    try:
        yield opened
    finally:
        opened.database.stop()
        platform.deployer.reset()


def refused(
    site: Site,
    document: dict[str, Any],
    *,
    field: str,
    reason: str,
    status: int = 422,
) -> dict[str, Any]:
    """Check ``document`` is refused with ``status``, naming ``field`` and ``reason``; nothing stored."""
    error = error_of(site.schedule(document), status)
    assert error["type"] == "ValidationFailed"
    assert f"{field}: {reason}" in error["message"], error["message"]
    assert {"field": field, "reason": reason} in error["details"], error["details"]
    site.assert_nothing_stored()
    return error


def instance(schedule_id: str | None, owner: str, status: InstanceStatus, suffix: str = "") -> InstanceInfo:
    now = datetime.now(UTC)
    return InstanceInfo(
        instance_id=f"{schedule_id or 'manual'}-{owner}{suffix}",
        app_id=SMART_HOME_ID,
        app="smart-home",
        version="1.0.0",
        location="lake-home",
        schedule_id=schedule_id,
        owner=owner,
        status=status,
        created_at=now,
        updated_at=now,
    )


# --- a bad schedule stores nothing --------------------------------------------------------------


def test_a_body_that_is_not_json_is_a_bad_request(site: Site) -> None:
    for body in (b'{"app": "smart-home", "location": ', b'["smart-home"]'):
        response = site.call(
            "POST",
            "/api/schedules",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        error = error_of(response, 400)
        assert error["type"] == "BadRequest"
        assert "the request body must be a JSON schedule document" in error["message"]
    site.assert_nothing_stored()


DATES = {"start_date": "2030-03-09", "end_date": "2030-03-12"}
BASE = {"app": "smart-home", "location": "lake-home"}


@pytest.mark.parametrize(
    ("document", "field", "reason"),
    [
        ({**BASE, **DATES, "duration": "1h"}, "(schedule)", "give one of now, window, times or every"),
        (
            {**BASE, **DATES, "times": ["08:00"], "every": "6h", "duration": "1h"},
            "every",
            "cannot be combined with times",
        ),
        (
            {**BASE, **DATES, "times": ["08:00"], "duration": "10 minutes"},
            "duration",
            '"10 minutes" is not a duration like 90s, 10m, 2h or 1h30m',
        ),
        ({**BASE, **DATES, "times": ["08:00"], "duration": "5s"}, "duration", "at least 10s"),
        (
            {**BASE, **DATES, "times": ["08:00", "25:00"], "duration": "1h"},
            "times[1]",
            '"25:00" is not HH:MM',
        ),
        (
            {**BASE, **DATES, "window": {"start": "08:00", "end": "08:00"}},
            "window.end",
            "must differ from window.start",
        ),
        (
            {
                **BASE,
                "times": ["08:00"],
                "duration": "1h",
                "start_date": "2030-03-12",
                "end_date": "2030-03-09",
            },
            "end_date",
            "before start_date",
        ),
        (
            {**BASE, **DATES, "times": ["08:00"], "duration": "1h", "days": ["mon", "funday"]},
            "days[1]",
            "Input should be 'mon', 'tue', 'wed', 'thu', 'fri', 'sat' or 'sun'",
        ),
        (
            {**BASE, **DATES, "every": "1h", "duration": "90m"},
            "duration",
            "1h30m is longer than the 1h between the runs starting Sat 00:00 and Sat 01:00; "
            "a run must end before the next one starts",
        ),
        (
            {**BASE, **DATES, "times": ["08:00"], "duration": "1h", "colour": "blue"},
            "colour",
            "Extra inputs are not permitted",
        ),
    ],
    ids=[
        "no-mode",
        "two-modes",
        "bad-duration",
        "duration-too-short",
        "bad-time-of-day",
        "empty-window",
        "end-before-start",
        "unknown-day",
        "every-overlaps",
        "unknown-field",
    ],
)
def test_a_bad_document_is_refused_naming_the_field_and_reason(
    site: Site, document: dict[str, Any], field: str, reason: str
) -> None:
    error = refused(site, document, field=field, reason=reason)
    assert error["message"].startswith("invalid schedule: "), error["message"]


def test_an_unknown_app_is_not_found(site: Site) -> None:
    error = error_of(site.schedule(GOOD | {"app": "no-such-app"}), 404)
    assert error["type"] == "NotFound"
    assert error["message"] == "no app 'no-such-app'; see `aiot app list`"
    site.assert_nothing_stored()


def test_an_unknown_pinned_version_is_not_found_and_the_versions_are_listed(site: Site) -> None:
    error = error_of(site.schedule(GOOD | {"version": "2.0.0"}), 404)
    assert error["message"] == (
        "app 'smart-home' has no version '2.0.0' (it has: 1.0.0); see `aiot app show smart-home`"
    )
    site.assert_nothing_stored()


def test_an_unknown_location_is_not_found(site: Site) -> None:
    error = error_of(site.schedule(GOOD | {"location": "atlantis"}), 404)
    assert error["message"] == "no location 'atlantis'; see GET /api/devices/locations"
    site.assert_nothing_stored()


def test_a_location_without_the_devices_the_app_needs_is_refused(site: Site) -> None:
    # city-bank has a camera, a display and a fan; smart-home also needs a temperature sensor and an AC.
    error = error_of(site.schedule(GOOD | {"location": "city-bank"}), 422)
    assert error["message"].startswith("cannot schedule 'smart-home' at 'city-bank': ")
    assert error["details"] == [
        {
            "field": "location",
            "reason": "location 'city-bank' has 0 device(s) of type 'temperature'; 'temperature' needs 1",
        },
        {"field": "location", "reason": "location 'city-bank' has 0 device(s) of type 'ac'; 'ac' needs 1"},
    ]
    for detail in error["details"]:
        assert f"location: {detail['reason']}" in error["message"]
    site.assert_nothing_stored()


def test_a_schedule_whose_runs_are_all_past_is_refused(site: Site) -> None:
    past = GOOD | {"start_date": "2020-01-06", "end_date": "2020-01-07"}
    refused(
        site,
        past,
        field="end_date",
        reason="the last run ended 2020-01-07 21:00 (America/New_York): nothing is left to run",
    )


def test_scheduling_needs_a_token_and_a_role_that_schedules(site: Site) -> None:
    missing = error_of(site.schedule(GOOD, username=None), 401)
    assert missing["type"] == "Unauthorized"
    for method, path in (
        ("GET", "/api/schedules"),
        ("GET", "/api/schedules/s123"),
        ("POST", "/api/schedules/s123/pause"),
        ("POST", "/api/schedules/s123/resume"),
        ("DELETE", "/api/schedules/s123"),
        ("GET", "/api/instances"),
        ("GET", "/api/instances/i1"),
        ("POST", "/api/instances/i1/stop"),
        ("GET", "/api/mails"),
    ):
        error_of(site.call(method, path, username=None), 401)

    denied = error_of(site.schedule(GOOD, username="ada"), 403)
    assert denied["type"] == "Forbidden"
    assert denied["message"] == f"role ai_developer may not call POST /api/schedules (allowed: {ALLOWED})"
    for method, path in (
        ("GET", "/api/schedules"),
        ("GET", "/api/instances"),
        ("DELETE", "/api/schedules/s1"),
    ):
        assert (
            f"role ai_developer may not call {method} {path}"
            in error_of(site.call(method, path, "ada"), 403)["message"]
        )
    site.assert_nothing_stored()
    assert site.platform.deployer.queries == []  # nobody asked the deployer


def test_a_schedule_the_scheduler_cannot_be_told_about_is_not_kept(
    platform: Platform, template_db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    offline = open_site(platform, template_db, tmp_path, bus=False)
    try:
        error = error_of(offline.schedule(GOOD), 503)
        assert error["type"] == "Unavailable"  # a 5xx message is only logged
        assert "POST /api/schedules failed: this front door has no Kafka connection" in caplog.text
        offline.assert_nothing_stored()
    finally:
        offline.database.stop()


def test_a_schedule_whose_app_and_device_managers_do_not_answer_is_unavailable(
    platform: Platform,
    template_db: Path,
    tmp_path: Path,
    kafka_broker: KafkaBroker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(platform.settings.web, "ask_timeout_s", 1.0)
    overrides = {
        "kafka.topic_prefix": f"t{uuid.uuid4().hex[:10]}",  # where nobody answers
        **kafka_updates(kafka_broker),
    }
    site = open_site(platform, template_db, tmp_path)
    try:
        with temporary_settings(overrides) as current:
            bus = Bus(current, source="schedule-api-test")
            try:
                with Requester(bus) as requester:
                    app = build_front_door(platform.settings, site.database, requester)
                    headers = site.auth("enduser")
                    response = app.test_client().post("/api/schedules", json=GOOD, headers=headers)
                    assert error_of(response, 503)["type"] == "Unavailable"  # a 5xx message is only logged
                    assert "POST /api/schedules failed: the app manager does not answer" in caplog.text
            finally:
                bus.close()
        site.assert_nothing_stored()
    finally:
        site.database.stop()


# --- a good schedule ----------------------------------------------------------------------------


def utc(year: int, month: int, day: int, hour: int) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def runs_of(schedule: dict[str, Any]) -> list[tuple[datetime, datetime]]:
    runs = [
        (datetime.fromisoformat(run["start"]), datetime.fromisoformat(run["end"]))
        for run in schedule["next_runs"]
    ]
    for start, end in runs:
        assert start.utcoffset() == end.utcoffset() == timedelta(0)  # instants are given in UTC
    return runs


def test_a_good_schedule_is_stored_with_its_runs_in_utc_and_sent_to_the_scheduler(site: Site) -> None:
    created = json_of(site.schedule(GOOD), 201)
    schedule_id = created["schedule_id"]
    assert created["status"] == "active"
    assert (created["app"], created["app_id"], created["version"]) == ("smart-home", SMART_HOME_ID, None)
    assert (created["location"], created["timezone"], created["owner"]) == (
        "lake-home",
        "America/New_York",
        "enduser",
    )
    assert created["spec"] == GOOD | {"now": False}
    assert created["history"] == []
    # 08:00 and 20:00 New York time: EST (UTC-5) on Saturday, EDT (UTC-4) from Sunday 10 March 2030.
    assert runs_of(created) == [
        (utc(2030, 3, 9, 13), utc(2030, 3, 9, 14)),
        (utc(2030, 3, 10, 1), utc(2030, 3, 10, 2)),
        (utc(2030, 3, 10, 12), utc(2030, 3, 10, 13)),
    ]

    [row] = site.rows()
    assert (row.schedule_id, row.owner, row.email, row.timezone, row.status) == (
        schedule_id,
        "enduser",
        "enduser@example.com",
        "America/New_York",
        "active",
    )
    assert json.loads(row.spec) == GOOD | {"now": False}
    wait_for(lambda: site.platform.changes_of(schedule_id) == ["created"], "ScheduleChanged(created)")

    [listed] = json_of(site.call("GET", "/api/schedules"))["schedules"]
    assert listed == created  # the list shows what creating answered


def test_a_preview_answers_the_next_runs_in_local_time_and_refuses_as_saving_would(site: Site) -> None:
    preview = json_of(site.call("POST", "/api/schedules/preview?runs=4", json=GOOD))
    assert (preview["app"], preview["location"], preview["timezone"]) == (
        "smart-home",
        "lake-home",
        "America/New_York",
    )
    assert [
        (datetime.fromisoformat(run["start"]), datetime.fromisoformat(run["end"])) for run in preview["runs"]
    ] == [
        (utc(2030, 3, 9, 13), utc(2030, 3, 9, 14)),
        (utc(2030, 3, 10, 1), utc(2030, 3, 10, 2)),
        (utc(2030, 3, 10, 12), utc(2030, 3, 10, 13)),
        (utc(2030, 3, 11, 0), utc(2030, 3, 11, 1)),
    ]
    # The location's wall clock, with its offset (EST, UTC-5, until 10 March).
    assert [run["local_start"] for run in preview["runs"][:2]] == [
        "2030-03-09T08:00:00-05:00",
        "2030-03-09T20:00:00-05:00",
    ]
    site.assert_nothing_stored()

    past = GOOD | {"start_date": "2020-01-06", "end_date": "2020-01-07"}
    error = error_of(site.call("POST", "/api/schedules/preview", json=past), 422)
    assert {
        "field": "end_date",
        "reason": "the last run ended 2020-01-07 21:00 (America/New_York): nothing is left to run",
    } in error["details"]
    error = error_of(site.call("POST", "/api/schedules/preview", json=GOOD | {"location": "city-bank"}), 422)
    assert error["message"].startswith("cannot schedule 'smart-home' at 'city-bank': ")
    assert error_of(site.call("POST", "/api/schedules/preview?runs=0", json=GOOD), 400)["message"].startswith(
        "invalid query parameter runs"
    )
    assert site.call("POST", "/api/schedules/preview", username=None, json=GOOD).status_code == 401
    site.assert_nothing_stored()


def test_a_pinned_version_and_a_run_now_are_scheduled(site: Site) -> None:
    pinned = json_of(site.schedule(GOOD | {"version": "1.0.0"}), 201)
    assert pinned["version"] == "1.0.0"
    now = json_of(site.schedule({**BASE, "now": True, "duration": "10m"}), 201)
    [(start, end)] = runs_of(now)
    assert start == datetime.fromisoformat(now["created_at"])
    assert end - start == timedelta(minutes=10)
    assert sorted(site.listed("enduser")) == sorted([pinned["schedule_id"], now["schedule_id"]])


def test_a_schedule_is_seen_by_its_owner_and_configurers_only(site: Site) -> None:
    schedule_id = json_of(site.schedule(GOOD), 201)["schedule_id"]
    theirs = json_of(site.schedule(GOOD, username="eve"), 201)["schedule_id"]
    assert site.listed("enduser") == [schedule_id]
    assert site.listed("eve") == [theirs]
    assert site.listed("appdev") == []
    assert site.listed("admin") == [schedule_id, theirs]

    shown = json_of(site.call("GET", f"/api/schedules/{schedule_id}"))
    assert (shown["schedule_id"], shown["instances"]) == (schedule_id, [])
    assert json_of(site.call("GET", f"/api/schedules/{schedule_id}", "admin"))["owner"] == "enduser"
    hidden = error_of(site.call("GET", f"/api/schedules/{schedule_id}", "eve"), 403)
    assert hidden["message"].startswith(f"schedule {schedule_id!r} belongs to 'enduser': ")
    missing = error_of(site.call("GET", "/api/schedules/s000000000000"), 404)
    assert missing["message"] == "no schedule 's000000000000'; see `aiot schedule list`"


def test_another_end_user_cannot_pause_resume_or_cancel_a_schedule(site: Site) -> None:
    schedule_id = json_of(site.schedule(GOOD), 201)["schedule_id"]
    for method, action in (("POST", "pause"), ("POST", "resume"), ("DELETE", "")):
        path = f"/api/schedules/{schedule_id}/{action}".rstrip("/")
        error = error_of(site.call(method, path, "eve"), 403)
        assert error["message"].startswith(f"schedule {schedule_id!r} belongs to 'enduser': ")
    [row] = site.rows()
    assert row.status == "active"
    assert site.platform.deployer.queries == []
    wait_for(lambda: site.platform.changes_of(schedule_id) == ["created"], "ScheduleChanged(created)")
    time.sleep(0.3)  # nothing more follows
    assert site.platform.changes_of(schedule_id) == ["created"]


def test_pause_resume_and_cancel(site: Site) -> None:
    deployer = site.platform.deployer
    schedule_id = json_of(site.schedule(GOOD), 201)["schedule_id"]

    paused = json_of(site.call("POST", f"/api/schedules/{schedule_id}/pause"))
    assert (paused["status"], paused["next_runs"]) == ("paused", [])
    again = error_of(site.call("POST", f"/api/schedules/{schedule_id}/pause"), 422)
    assert again["message"] == f"schedule {schedule_id!r} is paused; it cannot be made paused"
    resumed = json_of(site.call("POST", f"/api/schedules/{schedule_id}/resume"))
    assert resumed["status"] == "active"
    assert len(resumed["next_runs"]) == 3

    running = instance(schedule_id, "enduser", "running")
    done = instance(schedule_id, "enduser", "stopped", suffix="-old")
    deployer.instances = [running, done, instance("s-other", "enduser", "running")]
    cancelled = json_of(site.call("DELETE", f"/api/schedules/{schedule_id}"))
    assert (cancelled["status"], cancelled["next_runs"]) == ("cancelled", [])
    assert cancelled["stopped"] == [running.instance_id]
    assert [(stop.instance_id, stop.reason) for stop in deployer.stops] == [
        (running.instance_id, "its schedule was cancelled")
    ]
    assert [query.schedule_id for query in deployer.queries] == [schedule_id]
    [row] = site.rows()
    assert row.status == "cancelled"
    assert site.listed("enduser") == [schedule_id]  # still listed, as cancelled

    for action in ("resume", "pause"):
        path = f"/api/schedules/{schedule_id}/{action}"
        assert "is cancelled; it cannot be made" in error_of(site.call("POST", path), 422)["message"]
    again = json_of(site.call("DELETE", f"/api/schedules/{schedule_id}"))  # cancelling again retries stops
    assert again["status"] == "cancelled"
    wait_for(
        lambda: (
            site.platform.changes_of(schedule_id)
            == ["created", "paused", "resumed", "cancelled", "cancelled"]
        ),
        "ScheduleChanged of every change, in order",
    )


def test_a_configurer_may_pause_and_cancel_anyones_schedule(site: Site) -> None:
    schedule_id = json_of(site.schedule(GOOD), 201)["schedule_id"]
    assert json_of(site.call("POST", f"/api/schedules/{schedule_id}/pause", "admin"))["status"] == "paused"
    cancelled = json_of(site.call("DELETE", f"/api/schedules/{schedule_id}", "admin"))
    assert (cancelled["status"], cancelled["stopped"]) == ("cancelled", [])


def test_cancelling_when_the_deployer_does_not_answer(
    site: Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The route waits web.deployer_timeout_s (30 s) for the deployer; shortened here."""
    monkeypatch.setattr(site.platform.settings.web, "deployer_timeout_s", 1.0)
    schedule_id = json_of(site.schedule(GOOD), 201)["schedule_id"]
    site.platform.deployer.answering = False
    error = error_of(site.call("DELETE", f"/api/schedules/{schedule_id}"), 504)
    assert error["type"] == "Timeout"
    assert "no reply to 'deployer.list-instances'" in caplog.text
    assert [query.schedule_id for query in site.platform.deployer.queries] == [schedule_id]
    # What the route has done by then stays done: the schedule is cancelled and the scheduler told.
    [row] = site.rows()
    assert row.status == "cancelled"
    wait_for(
        lambda: site.platform.changes_of(schedule_id) == ["created", "cancelled"],
        "ScheduleChanged(cancelled)",
    )


@pytest.mark.parametrize(
    ("action", "method", "before", "after"),
    [
        ("pause", "POST", "active", "paused"),
        ("resume", "POST", "paused", "active"),
        ("cancel", "DELETE", "active", "cancelled"),
    ],
)
def test_a_status_change_the_scheduler_cannot_be_told_about_is_not_kept(
    site: Site, action: str, method: str, before: str, after: str
) -> None:
    """As with creating: a 503 leaves the schedule as it was, so the change can be asked again."""
    schedule_id = json_of(site.schedule(GOOD), 201)["schedule_id"]
    if before == "paused":
        json_of(site.call("POST", f"/api/schedules/{schedule_id}/pause"))
    path = f"/api/schedules/{schedule_id}" + ("" if action == "cancel" else f"/{action}")
    offline = build_front_door(site.platform.settings, site.database).test_client()
    error = error_of(offline.open(path, method=method, headers=site.auth("enduser")), 503)
    assert error["type"] == "Unavailable"
    [row] = site.rows()
    assert row.status == before, f"the failed {action} left the schedule {row.status}"
    # Once the bus is back the same request goes through.
    assert json_of(site.call(method, path))["status"] == after


# --- instances ----------------------------------------------------------------------------------


def test_instances_are_listed_for_their_owner_and_all_for_a_configurer(site: Site) -> None:
    deployer = site.platform.deployer
    mine = instance("s1", "enduser", "running")
    eves = instance("s2", "eve", "running")
    deployer.instances = [mine, eves]

    listed = json_of(site.call("GET", "/api/instances"))["instances"]
    assert [info["instance_id"] for info in listed] == [mine.instance_id]
    everyone = json_of(site.call("GET", "/api/instances", "admin"))["instances"]
    assert [info["instance_id"] for info in everyone] == [mine.instance_id, eves.instance_id]
    assert [query.owner for query in deployer.queries] == ["enduser", None]

    assert json_of(site.call("GET", f"/api/instances/{mine.instance_id}"))["owner"] == "enduser"
    for method, path in (
        ("GET", f"/api/instances/{eves.instance_id}"),
        ("POST", f"/api/instances/{eves.instance_id}/stop"),
    ):
        error = error_of(site.call(method, path), 403)
        assert error["message"] == f"app instance {eves.instance_id!r} belongs to 'eve'"
    assert deployer.stops == []
    missing = error_of(site.call("GET", "/api/instances/nothing-here"), 404)
    assert missing["message"] == "no app instance 'nothing-here'; see `aiot instance list`"

    stopped = json_of(site.call("POST", f"/api/instances/{eves.instance_id}/stop", "admin"))
    assert (stopped["instance_id"], stopped["status"]) == (eves.instance_id, "stopped")
    assert [(stop.instance_id, stop.reason) for stop in deployer.stops] == [
        (eves.instance_id, "stopped on request")
    ]


@pytest.fixture
def postgres_site(platform: Platform, postgres_server: str) -> Iterator[Site]:
    """A front door on a fresh PostgreSQL database made by ``seed``."""
    platform.deployer.reset()
    name = f"aiot_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    database = Database(sa.make_url(postgres_server).set(database=name).render_as_string(hide_password=False))
    try:
        seed(database, platform.settings)
        app = build_front_door(platform.settings, database, platform.requester)
        platform.registries.serve(database)
        yield Site(app, app.test_client(), database, platform)
    finally:
        database.stop()
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.service("postgres")
def test_a_schedule_on_postgresql(postgres_site: Site) -> None:
    site = postgres_site
    refused(site, GOOD | {"duration": "5s"}, field="duration", reason="at least 10s")
    created = json_of(site.schedule(GOOD), 201)
    schedule_id = created["schedule_id"]
    assert runs_of(created)[0] == (utc(2030, 3, 9, 13), utc(2030, 3, 9, 14))
    [listed] = json_of(site.call("GET", "/api/schedules"))["schedules"]
    assert listed == created
    assert (site.listed("eve"), site.listed("admin")) == ([], [schedule_id])
    error_of(site.call("POST", f"/api/schedules/{schedule_id}/pause", "eve"), 403)
    assert json_of(site.call("POST", f"/api/schedules/{schedule_id}/pause"))["status"] == "paused"
    assert json_of(site.call("POST", f"/api/schedules/{schedule_id}/resume"))["status"] == "active"
    assert json_of(site.call("DELETE", f"/api/schedules/{schedule_id}"))["status"] == "cancelled"
    wait_for(
        lambda: site.platform.changes_of(schedule_id) == ["created", "paused", "resumed", "cancelled"],
        "ScheduleChanged of every change, in order",
    )


# --- mails --------------------------------------------------------------------------------------


def test_an_end_user_sees_only_mails_to_their_address_or_local_mailbox(site: Site) -> None:
    mailer = Mailer(MailSettings())  # no SMTP host: mails stay in the outbox
    recipients = [
        "enduser@example.com",  # enduser's address
        "enduser@localhost",  # enduser's local mailbox
        "eve@localhost",
        "admin@example.com",
        "enduser@example.org",
        "enduser.other@localhost",
    ]
    for recipient in recipients:
        mailer.send(site.database, recipient, f"for {recipient}", "body\n")

    def seen(username: str) -> list[str]:
        return sorted(
            mail["recipient"] for mail in json_of(site.call("GET", "/api/mails", username))["mails"]
        )

    assert seen("enduser") == ["enduser@example.com", "enduser@localhost"]
    assert seen("eve") == ["eve@localhost"]  # eve has no address of her own
    assert seen("ada") == []  # an AI developer may look: at their own mails
    assert seen("admin") == sorted(recipients)
    [mail] = json_of(site.call("GET", "/api/mails", "eve"))["mails"]
    assert (mail["subject"], mail["body"], mail["status"]) == ("for eve@localhost", "body\n", "outbox")
