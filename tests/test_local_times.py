"""Times are shown in the location's time zone: ``aiot schedule``, ``aiot instance list``, the mail.

People read "2026-12-06 12:30 EST (UTC-05:00)"; ``--json`` keeps ISO 8601 instants with their
offset and names the zone beside them. The zone travels with the data, so no part reads another
service's tables for it: a schedule has its location's zone; the scheduler puts it in the
``DeployApp`` of each run; the deployer keeps it with the instance (``InstanceInfo.timezone``) and
puts it in its ``InstanceEvent``s; the scheduler's mail tells the stop time in it.

Each test runs the parts it needs for real, in this process, on the session's Kafka broker and a
SQLite registry copied from one seeded per module (users, the sample locations with their zones,
the comfort model, the smart-home app): the front door (``FrontDoorService``, served over HTTP),
the device manager's answers (``tests.fixtures.registries``) and the scheduler or the deployer
service; the ``aiot`` command runs in-process (typer's runner).
"""

from __future__ import annotations

import gc
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from typer.testing import CliRunner, Result

from aiot.cli import app as aiot_app
from aiot.client import Credentials, save_credentials
from bootstrapper.kafka import KafkaBroker
from deployer.messages import DeployApp, InstanceEvent
from deployer.service import DeployerService
from platform_core.db import Database
from platform_core.service import Service
from platform_sdk.artifacts import AppManifest, app_id_for
from platform_sdk.bus import Bus, ConsumerLoop, Producer
from platform_sdk.envelope import Envelope, Message
from platform_sdk.settings import Settings, temporary_settings
from scheduler.local_time import local_time
from scheduler.service import SchedulerService
from tests.fixtures.registries import answering
from tests.test_schedule_api import seed
from web import identity
from web.service import FrontDoorService

pytestmark = pytest.mark.service("kafka")

ROOT = Path(__file__).resolve().parents[1]
SMART_HOME = ROOT / "examples" / "apps" / "smart-home" / "app.json"
M = TypeVar("M", bound=Message)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout:g}s")
        time.sleep(0.05)


# --- a small platform: the registry, the front door, the CLI ----------------------------------


@pytest.fixture(scope="module")
def template_db(kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry seeded as ``tests/test_schedule_api.py`` seeds one; each test gets a copy."""
    home = tmp_path_factory.mktemp("local-times-home")
    path = home / "registry.db"
    with temporary_settings({"home": str(home), "blob.backend": "local"}) as settings:
        database = Database(f"sqlite:///{path}")
        try:
            seed(database, settings)
        finally:
            database.stop()
    return path


@dataclass
class Site:
    """A front door on its own registry copy, topic prefix and home; the ``aiot`` command against it."""

    settings: Settings
    database: Database
    url: str
    bus: Bus
    tokens: dict[str, str] = field(default_factory=dict)

    def aiot(self, username: str, *args: str) -> Result:
        """``aiot ARGS`` as ``username``; fails the test when the command fails."""
        result = self.aiot_unchecked(username, *args)
        if result.exit_code != 0:
            problem = f"aiot {' '.join(args)} exited {result.exit_code}: {result.output}{result.exception!r}"
            # The exception's frames hold the command's HTTP connection, which would keep the front
            # door's server thread alive after the test.
            del result
            raise AssertionError(problem)
        return result

    def aiot_unchecked(self, username: str, *args: str) -> Result:
        save_credentials(
            self.settings, Credentials(url=self.url, username=username, token=self.token(username))
        )
        return CliRunner().invoke(aiot_app, list(args), env={"COLUMNS": "250", "NO_COLOR": "1"})

    def token(self, username: str) -> str:
        """An API token of ``username``, minted on first use."""
        if username not in self.tokens:
            with self.database.session() as session:
                user = identity.read_user(session, username)
                self.tokens[username] = identity.issue_token(session, user, "cli").secret
        return self.tokens[username]

    def send(self, topic: str, message: Message, key: str) -> None:
        producer = Producer(self.bus)
        producer.send(topic, message, key=key)
        assert producer.flush(10) == 0, f"{message.message_type} not delivered"


@pytest.fixture
def site(kafka_settings: Settings, template_db: Path) -> Iterator[Site]:
    home = kafka_settings.home_dir
    shutil.copyfile(template_db, home / "registry.db")
    with temporary_settings({"blob.backend": "local", "blob.local_path": str(home / "bucket")}) as settings:
        front_door = FrontDoorService(settings)
        front_door.start()
        try:
            with temporary_settings({"web.url": front_door.server.url}) as with_url:
                database = Database.from_settings(with_url)
                bus = Bus(with_url, source="local-times-test")
                try:
                    with answering(bus, database, ("device-manager",)):
                        yield Site(with_url, database, front_door.server.url, bus)
                finally:
                    bus.close()
                    database.stop()
        finally:
            # A command that failed left its error's traceback in a reference cycle with its HTTP
            # client; the client's open connection would keep the front door's server thread.
            gc.collect()
            front_door.stop()


@contextmanager
def running(service: Service) -> Iterator[None]:
    service.start()
    try:
        yield
    finally:
        service.stop()


@contextmanager
def captured(bus: Bus, topic: str, kind: type[M]) -> Iterator[list[M]]:
    """Every ``kind`` message on ``topic`` from its beginning, while the block runs."""
    seen: list[M] = []
    lock = threading.Lock()

    def keep(message: M, _envelope: Envelope) -> None:
        with lock:
            seen.append(message)

    bus.ensure_topics([topic])
    loop = ConsumerLoop(bus, [topic], group=None, name=f"capture-{kind.message_type}")
    loop.add_handler(kind, keep)
    loop.start()
    try:
        yield seen
    finally:
        loop.stop()


def table_rows(output: str, first_cell: str) -> list[str]:
    """The lines of a printed table that hold ``first_cell``."""
    return [line for line in output.splitlines() if first_cell in line]


# --- the format -----------------------------------------------------------------------------


def test_local_time_names_the_zone_and_its_offset() -> None:
    moment = datetime(2026, 12, 6, 17, 30, tzinfo=UTC)

    assert local_time(moment, "Europe/Berlin") == "2026-12-06 18:30 CET (UTC+01:00)"
    assert local_time(moment, "America/New_York") == "2026-12-06 12:30 EST (UTC-05:00)"
    assert local_time(moment, "Asia/Kolkata") == "2026-12-06 23:00 IST (UTC+05:30)"
    assert local_time(datetime(2026, 7, 6, 17, 30, tzinfo=UTC), "Europe/Berlin") == (
        "2026-07-06 19:30 CEST (UTC+02:00)"
    )
    assert local_time(moment, "Asia/Istanbul") == "2026-12-06 20:30 UTC+03:00"  # no abbreviation
    assert local_time(moment, "UTC") == "2026-12-06 17:30 UTC"
    # A zone not named (an instance of an older scheduler), or not known here: UTC, said so.
    assert local_time(moment, None) == local_time(moment, "Nowhere/Atlantis") == "2026-12-06 17:30 UTC"
    assert local_time(moment.replace(tzinfo=None), "Europe/Berlin") == "2026-12-06 18:30 CET (UTC+01:00)"


# --- schedules --------------------------------------------------------------------------------


def test_schedule_create_and_list_show_the_runs_in_local_time_and_json_keeps_iso_instants(
    site: Site,
) -> None:
    # 08:00 at lake-home (New York) over the 2030 spring-forward day (Sunday 10 March).
    created = site.aiot(
        "enduser",
        "schedule",
        "create",
        "smart-home",
        "-l",
        "lake-home",
        "--times",
        "08:00",
        "--duration",
        "1h",
        "--start",
        "2030-03-09",
        "--end",
        "2030-03-11",
    ).output

    assert "next run 2030-03-09 08:00 EST (UTC-05:00) → 2030-03-09 09:00 EST (UTC-05:00)" in created
    assert "next run 2030-03-10 08:00 EDT (UTC-04:00) → 2030-03-10 09:00 EDT (UTC-04:00)" in created
    assert "next run 2030-03-11 08:00 EDT (UTC-04:00) → 2030-03-11 09:00 EDT (UTC-04:00)" in created
    assert "+00:00" not in created

    listed = site.aiot("enduser", "schedule", "list").output
    [row] = table_rows(listed, "smart-home")
    assert "2030-03-09 08:00 EST (UTC-05:00)" in row

    [document] = _json(site.aiot("enduser", "schedule", "list", "--json"))
    assert document["timezone"] == "America/New_York"
    starts = [datetime.fromisoformat(run["start"]) for run in document["next_runs"]]
    assert all(start.utcoffset() is not None for start in starts)  # ISO 8601 with an offset
    assert starts == [
        datetime(2030, 3, 9, 13, tzinfo=UTC),
        datetime(2030, 3, 10, 12, tzinfo=UTC),
        datetime(2030, 3, 11, 12, tzinfo=UTC),
    ]


# --- instances ----------------------------------------------------------------------------------


def test_the_scheduler_tells_the_deployer_the_zone_of_the_location(site: Site) -> None:
    topics = site.bus.topics
    with captured(site.bus, topics.deployer, DeployApp) as deploys, running(SchedulerService(site.settings)):
        before = datetime.now(UTC)
        schedule = _json(
            site.aiot(
                "enduser",
                "schedule",
                "create",
                "smart-home",
                "-l",
                "lake-home",
                "--now",
                "--duration",
                "10m",
                "--json",
            )
        )
        wait_for(lambda: bool(deploys), "the DeployApp of the run started now")

    [request] = deploys
    assert request.schedule_id == schedule["schedule_id"]
    assert (request.location, request.timezone) == ("lake-home", "America/New_York")
    assert request.stop_at is not None
    assert before + timedelta(minutes=10) - timedelta(seconds=5) <= request.stop_at


def deploy_request(instance_id: str, owner: str, timezone: str | None, stop_at: datetime) -> DeployApp:
    """A ``DeployApp`` as the scheduler sends it, for a run that ended already (so nothing is placed)."""
    return DeployApp(
        instance_id=instance_id,
        app_id=app_id_for("smart-home"),
        version="1.0.0",
        artifact_key="apps/smart-home/1.0.0.zip",
        artifact_sha256="0" * 64,
        manifest=AppManifest.model_validate_json(SMART_HOME.read_text()),
        location="lake-home",
        owner=owner,
        schedule_id="s0123456789a",
        stop_at=stop_at,
        timezone=timezone,
    )


def stopped_instance(
    site: Site, instance_id: str, owner: str, timezone: str | None, stop_at: datetime
) -> None:
    """Hand the running deployer a run whose end is past; return once it is recorded as stopped."""
    site.send(
        site.bus.topics.deployer, deploy_request(instance_id, owner, timezone, stop_at), key=instance_id
    )

    def stopped() -> bool:
        listed = _json(site.aiot("admin", "instance", "list", "--json"))
        return any(item["instance_id"] == instance_id and item["status"] == "stopped" for item in listed)

    wait_for(stopped, f"{instance_id} stopped by the deployer")


def test_the_deployer_keeps_the_zone_and_instance_list_shows_the_end_in_local_time(site: Site) -> None:
    stop_at = datetime(2026, 12, 6, 17, 30, tzinfo=UTC)
    with captured(site.bus, site.bus.topics.app_instances, InstanceEvent) as events:
        with running(DeployerService(site.settings)):
            stopped_instance(site, "s0123456789a-20261206163000", "enduser", "America/New_York", stop_at)
            stopped_instance(site, "s0123456789a-20261206163500", "enduser", None, stop_at)  # older scheduler
            listed = site.aiot("enduser", "instance", "list").output
            documents = {
                item["instance_id"]: item
                for item in _json(site.aiot("enduser", "instance", "list", "--json"))
            }
        wait_for(lambda: len(events) == 2, "the instances' events")

    [row] = table_rows(listed, "s0123456789a-20261206163000")
    assert "2026-12-06 12:30 EST (UTC-05:00)" in row
    [row] = table_rows(listed, "s0123456789a-20261206163500")
    assert "2026-12-06 17:30 UTC" in row
    header = next(line for line in listed.splitlines() if "until" in line)
    assert "address" in header

    document = documents["s0123456789a-20261206163000"]
    assert document["timezone"] == "America/New_York"
    assert datetime.fromisoformat(document["stop_at"]) == stop_at  # ISO 8601, with its offset
    assert datetime.fromisoformat(document["stop_at"]).utcoffset() is not None
    assert {event.instance_id: event.timezone for event in events} == {
        "s0123456789a-20261206163000": "America/New_York",
        "s0123456789a-20261206163500": None,
    }


# --- mail -------------------------------------------------------------------------------------


def test_the_running_mail_tells_the_stop_in_local_time_and_mail_list_shows_the_address(site: Site) -> None:
    url = "http://127.0.0.1:41234"
    event = InstanceEvent(
        instance_id="s0123456789a-20261206163000",
        app="smart-home",
        version="1.0.0",
        location="lake-home",
        owner="enduser",
        email="enduser@example.com",
        status="running",
        url=url,
        node_id="node-1",
        stop_at=datetime(2026, 12, 6, 17, 30, tzinfo=UTC),
        timezone="America/New_York",
        detail=f"on node-1 at {url}",
    )
    with running(SchedulerService(site.settings)):
        site.send(site.bus.topics.app_instances, event, key=event.instance_id)
        wait_for(lambda: bool(_json(site.aiot("enduser", "mail", "list", "--json"))), "the running mail")

    [mail] = _json(site.aiot("enduser", "mail", "list", "--json"))
    assert "It will stop at 2026-12-06 12:30 EST (UTC-05:00)." in mail["body"]
    assert mail["url"] == url
    table = site.aiot("enduser", "mail", "list").output
    assert "address" in table
    [row] = table_rows(table, "smart-home 1.0.0 is running at lake-home")
    assert url in row


def _json(result: Result) -> Any:
    return json.loads(result.stdout)
