"""The owner rules of schedules and locations (docs/api.md), over real HTTP and real Kafka.

A user sees, pauses, resumes and cancels only their own schedules (a configurer everyone's);
a user schedules an app only at a location open to them: a platform configurer may restrict a
location to some users (``PUT /api/devices/locations/<name>/users``, ``aiot location users``),
and the device manager, asked over the bus (``CheckLocation``, ``FindLocations``), says who may
use it. A refusal is a 403 naming the schedule or the location and the reason.

Real parts: the front door served by waitress on a registry seeded as ``tests/test_schedule_api``
seeds it (users, the sample devices, the smart-home app), the session's Kafka broker, the app
and device managers' answers on their topics (``tests.fixtures.registries``), and a stand-in
deployer that answers ``ListInstances`` with no instances (nothing runs in these tests).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from deployer.messages import Instances, ListInstances
from platform_core.db import Database
from platform_core.http import HttpServer
from platform_sdk.bus import Bus, ConsumerLoop, Requester
from platform_sdk.envelope import Envelope
from platform_sdk.settings import Settings
from tests.fixtures.registries import answering
from tests.test_device_state import Door as CliDoor
from tests.test_schedule_api import GOOD, seed
from web import identity
from web.app import build_front_door

pytestmark = pytest.mark.service("kafka")


def no_instances(_query: ListInstances, _envelope: Envelope) -> Instances:
    return Instances(instances=[])


@dataclass
class Door:
    """The front door at ``url`` on ``database``, with a token per seeded user."""

    url: str
    bus: Bus
    database: Database
    home: Path
    tokens: dict[str, str]

    def call(self, method: str, path: str, username: str, body: Any = None) -> requests.Response:
        return requests.request(
            method,
            f"{self.url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.tokens[username]}"},
            timeout=30,
        )

    def ok(self, method: str, path: str, username: str, body: Any = None, status: int = 200) -> Any:
        response = self.call(method, path, username, body)
        assert response.status_code == status, response.text
        return response.json()

    def refused(self, method: str, path: str, username: str, body: Any = None, status: int = 403) -> str:
        response = self.call(method, path, username, body)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["status"] == status
        message: str = error["message"]
        return message

    def schedule(self, username: str, document: dict[str, Any] = GOOD) -> str:
        schedule_id: str = self.ok("POST", "/api/schedules", username, document, 201)["schedule_id"]
        return schedule_id

    def listed(self, username: str) -> list[str]:
        return [item["schedule_id"] for item in self.ok("GET", "/api/schedules", username)["schedules"]]

    def app_locations(self, username: str) -> list[str]:
        [app] = self.ok("GET", "/api/apps", username)["apps"]
        locations: list[str] = app["locations"]
        return locations

    def aiot(self, *args: str) -> str:
        """What ``aiot *args`` printed, run as ``admin`` (the CLI runner of the device state tests)."""
        return CliDoor(self.url, self.tokens["admin"], self.bus, self.database, self.home).ok(*args)


@pytest.fixture
def door(kafka_settings: Settings, tmp_path: Path) -> Iterator[Door]:
    database = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    seed(database, kafka_settings)
    tokens = {}
    with database.session() as session:
        for username in ("admin", "appdev", "enduser", "eve"):
            tokens[username] = identity.issue_token(
                session, identity.read_user(session, username), "t"
            ).secret
    bus = Bus(kafka_settings, source="test-front-door")
    deployer = ConsumerLoop(bus, [bus.topics.deployer], group=None, name="deployer-topic")
    deployer.add_handler(ListInstances, no_instances)
    requester = Requester(bus)
    server = HttpServer(build_front_door(kafka_settings, database, requester), "127.0.0.1", 0)
    started: list[ConsumerLoop | Requester | HttpServer] = []
    try:
        for part in (deployer, requester, server):
            part.start()
            started.append(part)
        with answering(bus, database, ("app-manager", "device-manager")):
            home = tmp_path / "cli-home"
            home.mkdir()
            (home / "credentials.json").write_text(
                json.dumps({"url": server.url, "username": "admin", "token": tokens["admin"]})
            )
            yield Door(server.url, bus, database, home, tokens)
    finally:
        for part in reversed(started):
            part.stop()
        bus.close()
        database.stop()


def test_an_end_user_cannot_see_change_or_cancel_another_users_schedule(door: Door) -> None:
    schedule_id = door.schedule("enduser")
    assert door.listed("eve") == []
    reason = (
        f"schedule {schedule_id!r} belongs to 'enduser': only its owner and platform configurers "
        "may see or change it (`aiot schedule list` shows yours)"
    )
    path = f"/api/schedules/{schedule_id}"
    for method, action in (("GET", ""), ("POST", "/pause"), ("POST", "/resume"), ("DELETE", "")):
        assert door.refused(method, path + action, "eve") == reason
    assert door.ok("GET", path, "enduser")["status"] == "active"
    # A configurer sees and manages it.
    assert door.listed("admin") == [schedule_id]
    assert door.ok("POST", f"{path}/pause", "admin")["status"] == "paused"
    assert door.ok("POST", f"{path}/resume", "admin")["status"] == "active"
    assert door.ok("DELETE", path, "admin")["status"] == "cancelled"
    assert door.ok("GET", path, "enduser")["status"] == "cancelled"


def test_a_user_schedules_only_at_a_location_open_to_them(door: Door) -> None:
    assert "lake-home" in door.app_locations("enduser")
    restricted = door.ok("PUT", "/api/devices/locations/lake-home/users", "admin", {"users": ["eve"]})
    assert (restricted["name"], restricted["users"]) == ("lake-home", ["eve"])

    message = door.refused("POST", "/api/schedules", "enduser", GOOD)
    assert message.startswith(
        "location 'lake-home' is open only to the users a platform configurer chose, "
        "and 'enduser' is not one of them: ask a configurer to add you"
    )
    assert door.refused("POST", "/api/schedules", "appdev", GOOD).startswith("location 'lake-home'")
    assert door.listed("admin") == []  # nothing stored
    assert "lake-home" not in door.app_locations("enduser")
    # Eve may, and a configurer may schedule anywhere.
    assert "lake-home" in door.app_locations("eve")
    eves = door.schedule("eve")
    admins = door.schedule("admin")
    assert door.listed("admin") == [eves, admins]

    # Opened to everyone again, the end user may schedule there.
    door.ok("PUT", "/api/devices/locations/lake-home/users", "admin", {"users": None})
    mine = door.schedule("enduser")
    assert door.listed("enduser") == [mine]


def test_only_configurers_choose_who_may_use_a_location(door: Door) -> None:
    body = {"users": ["enduser"]}
    path = "/api/devices/locations/lake-home/users"
    assert "platform_configurer" in door.refused("PUT", path, "enduser", body)
    response = door.call("PUT", path, "admin", {"users": ["Not A Name"]})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["loc"] == ["users", 0]
    assert door.refused("PUT", "/api/devices/locations/no-such-place/users", "admin", body, 404) == (
        "no location 'no-such-place'; see GET /api/devices/locations"
    )
    [lake] = [
        item
        for item in door.ok("GET", "/api/devices/locations", "enduser")["locations"]
        if item["name"] == "lake-home"
    ]
    assert "users" not in lake  # still open to every user


def lake_home_row(door: Door) -> str:
    """The row of ``aiot location list`` that shows lake-home."""
    [row] = [line for line in door.aiot("location", "list").splitlines() if "lake-home" in line]
    return row


def test_the_cli_chooses_who_may_use_a_location(door: Door) -> None:
    assert door.aiot("location", "users", "lake-home", "eve", "enduser").strip() == (
        "lake-home: open to eve, enduser"
    )
    assert "eve, enduser" in lake_home_row(door)
    door.schedule("enduser")
    door.aiot("location", "users", "lake-home", "--everyone")
    assert "every user" in lake_home_row(door)
