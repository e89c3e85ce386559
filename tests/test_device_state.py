"""A device's latest reading, frame or state, as a platform configurer asks for it: ``GET
/api/devices/<name>``, ``GET /api/devices``, ``aiot device show`` and ``aiot device list``; the
device-manager's one row per device that outlives the topic; and the CLI's words for a device it
does not know.

Real parts: the front door (``build_front_door`` with its bus, served by waitress) on a
migrated registry, the session's Kafka broker, ``aiot`` run in its own process. The devices
are the SDK's device side in the test's process, as a simulator or a real device with the SDK
runs it: a ``SensorPublisher`` for the thermometer and the camera, a ``ControllerEndpoint``
playing the fan simulator's model. The sample bundle is registered through the API; its
devices' topics are created as the device-manager service creates them after a registration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import confluent_kafka
import numpy as np
import pytest
import requests
import sqlalchemy as sa
from confluent_kafka import OFFSET_END

from device_manager import registry
from device_manager.models import DeviceStateRow
from platform_core.auth import Role
from platform_core.db import Database
from platform_core.http import HttpServer
from platform_sdk.bus import Bus, Requester
from platform_sdk.codec import encode_image
from platform_sdk.device_documents import Binding, DeviceBundle, DeviceType
from platform_sdk.device_messages import DeviceState
from platform_sdk.devices import ControllerEndpoint, DeviceClient, SensorPublisher
from platform_sdk.settings import Settings, temporary_settings
from simulators.models import CONTROLLER_MODELS, FanSim
from tests.platform_driver import wait_until
from tests.sample_images import sample_image
from web import identity
from web.app import build_front_door

pytestmark = pytest.mark.service("kafka")

SAMPLE = Path(__file__).resolve().parents[1] / "configs" / "devices" / "sample.json"
CLI_TIMEOUT_S = 60
SEEN_TIMEOUT_S = 20  # a record sent reaches its topic (and a read of it) within this


def sample_types() -> dict[str, DeviceType]:
    bundle = DeviceBundle.model_validate(json.loads(SAMPLE.read_text()))
    return {device_type.name: device_type for device_type in bundle.device_types}


@dataclass
class Door:
    """The front door with its bus, the registry it uses, and an AIOT_HOME logged in as a configurer."""

    url: str
    token: str
    bus: Bus
    database: Database
    home: Path

    def get(self, path: str, status: int = 200) -> Any:
        response = requests.get(
            f"{self.url}{path}", headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )
        assert response.status_code == status, response.text
        return response.json()

    def state(self, device: str) -> Any:
        return self.get(f"/api/devices/{device}")["state"]

    def aiot(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("AIOT_")}
        env.update({"AIOT_HOME": str(self.home), "AIOT_WEB__URL": self.url, "COLUMNS": "250"})
        return subprocess.run(
            [sys.executable, "-m", "aiot", *args],
            env=env,
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )

    def ok(self, *args: str) -> str:
        done = self.aiot(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout


def serve(settings: Settings, url: str, tmp_path: Path) -> Iterator[Door]:
    database = Database(url)
    database.migrate()
    with database.session() as session:
        identity.create_user(session, "admin", "a long test password", Role.PLATFORM_CONFIGURER)
    with database.session() as session:
        token = identity.issue_token(session, identity.read_user(session, "admin"), "test").secret
    bus = Bus(settings, source="test-front-door")
    requester = Requester(bus)
    requester.start()
    with temporary_settings({"database.url": url}) as current:
        server = HttpServer(build_front_door(current, database, requester), "127.0.0.1", 0)
        server.start()
    home = tmp_path / "cli-home"
    home.mkdir()
    (home / "credentials.json").write_text(
        json.dumps({"url": server.url, "username": "admin", "token": token})
    )
    door = Door(server.url, token, bus, database, home)
    try:
        response = requests.post(
            f"{server.url}/api/devices/bulk",
            json=json.loads(SAMPLE.read_text()),
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        # What the device manager does when it is told of the devices: create their topics.
        bus.ensure_topics(
            bus.topics.device_state(device["name"])
            if device["type"] in ("fan", "display", "ac")
            else bus.topics.device_data(device["name"])
            for device in json.loads(SAMPLE.read_text())["devices"]
        )
        yield door
    finally:
        server.stop()
        requester.stop()
        bus.close()
        database.stop()


@pytest.fixture
def door(kafka_settings: Settings, tmp_path: Path) -> Iterator[Door]:
    """The front door on a SQLite registry holding the sample bundle."""
    yield from serve(kafka_settings, f"sqlite:///{tmp_path / 'registry.db'}", tmp_path)


@pytest.fixture
def any_door(kafka_settings: Settings, database_url: str, tmp_path: Path) -> Iterator[Door]:
    """The same on each backend (SQLite, PostgreSQL)."""
    yield from serve(kafka_settings, database_url, tmp_path)


@pytest.fixture
def thermometer(door: Door) -> Iterator[SensorPublisher]:
    device = SensorPublisher(door.bus, "school-temp")
    device.start()
    yield device
    device.stop()


@pytest.fixture
def fan(door: Door) -> Iterator[ControllerEndpoint]:
    model = FanSim(sample_types()["fan"])
    endpoint = ControllerEndpoint(door.bus, "home-fan", model.apply, model.state)
    endpoint.start()  # publishes its state at once, as a simulator's fan does
    yield endpoint
    endpoint.stop()


def table_rows(text: str) -> list[list[str]]:
    """The body rows of a table ``aiot`` printed, as their cells' text (one line per row)."""
    lines = [line for line in text.splitlines() if line.startswith("│")]
    return [[cell.strip() for cell in line.strip("│").split("│")] for line in lines]


def shows(door: Door, device: str, values: dict[str, Any]) -> bool:
    state = door.state(device)
    return state is not None and state["values"] == values


# --- GET /api/devices/<name> -------------------------------------------------------------------


def test_a_sensor_shows_its_latest_reading_with_units_and_time(
    door: Door, thermometer: SensorPublisher
) -> None:
    assert door.state("school-temp") is None  # nothing said yet, nothing recorded
    thermometer.publish({"temperature": 27.5, "humidity": 40.0})
    last = thermometer.publish({"temperature": 27.75, "humidity": 41.5})
    wait_until(lambda: shows(door, "school-temp", last.values), SEEN_TIMEOUT_S, "the newest reading")

    state = door.state("school-temp")
    assert state == {
        "kind": "reading",
        "values": {"temperature": 27.75, "humidity": 41.5},
        "units": {"temperature": "°C", "humidity": "%"},
        "time": state["time"],
        "source": "bus",
    }
    assert datetime.fromisoformat(state["time"]) == last.time


def test_a_controller_shows_its_state_from_its_start_and_right_after_a_command(
    door: Door, fan: ControllerEndpoint
) -> None:
    wait_until(lambda: shows(door, "home-fan", {"on": False, "speed": 0}), SEEN_TIMEOUT_S, "the start state")
    binding = Binding(device_id="home-fan", type=sample_types()["fan"])
    with DeviceClient(door.bus, {"fan": binding}, group="app-test-fan") as app:
        assert app.send_controller("fan", "set_speed", speed=3) == {"on": True, "speed": 3}
    # The controller's answer came after its new state was on the topic: shown at once.
    state = door.state("home-fan")
    assert (state["kind"], state["values"], state["units"], state["source"]) == (
        "state",
        {"on": True, "speed": 3},
        {},
        "bus",
    )


def test_a_camera_shows_a_summary_of_its_latest_frame_not_the_image(door: Door) -> None:
    image = np.ascontiguousarray(sample_image("astronaut")[:, :, ::-1])
    jpeg = encode_image(image)
    camera = SensorPublisher(door.bus, "school-cam")
    camera.start()
    try:
        camera.publish_frame(jpeg, width=image.shape[1], height=image.shape[0])
        wait_until(lambda: door.state("school-cam") is not None, SEEN_TIMEOUT_S, "the frame")
    finally:
        camera.stop()
    response = requests.get(
        f"{door.url}/api/devices/school-cam", headers={"Authorization": f"Bearer {door.token}"}, timeout=30
    )
    state = response.json()["state"]
    assert state["kind"] == "frame"
    assert state["values"] == {
        "content_type": "image/jpeg",
        "width": image.shape[1],
        "height": image.shape[0],
        "bytes": len(jpeg),
    }
    assert len(jpeg) > 20_000
    assert len(response.content) < 5_000  # the image stays on the bus


# --- GET /api/devices and the CLI --------------------------------------------------------------


def play_the_sample(door: Door, silent: str) -> dict[str, dict[str, Any]]:
    """Every sample device but ``silent`` says one thing, as in a running demo; what each said.

    Sensors through a ``SensorPublisher`` (a camera sends a JPEG frame), controllers their state
    as a ``ControllerEndpoint`` publishes it; each is on its topic when this returns.
    """
    small = np.ascontiguousarray(sample_image("astronaut")[::8, ::8, ::-1])
    jpeg = encode_image(small)
    said: dict[str, dict[str, Any]] = {}
    producer = door.bus.producer()
    for device in json.loads(SAMPLE.read_text())["devices"]:
        name, kind = device["name"], device["type"]
        if name == silent:
            continue
        if kind in ("fan", "display", "ac"):
            model = CONTROLLER_MODELS[kind](sample_types()[kind])
            said[name] = model.state
            producer.send(
                door.bus.topics.device_state(name), DeviceState(device_id=name, state=model.state), key=name
            )
            continue
        publisher = SensorPublisher(door.bus, name)
        publisher.start()
        if kind == "camera":
            publisher.publish_frame(jpeg, width=small.shape[1], height=small.shape[0])
            said[name] = {"content_type": "image/jpeg", "width": 64, "height": 64, "bytes": len(jpeg)}
        else:
            values: dict[str, Any] = (
                {"lux": 320.0} if kind == "light" else {"temperature": 26.5, "humidity": 55.0}
            )
            said[name] = publisher.publish(values).values
        publisher.stop()  # flushed: on the topic
    assert producer.flush(10) == 0
    return said


def test_every_listed_device_has_its_latest_and_the_cli_shows_them(door: Door) -> None:
    said = play_the_sample(door, silent="bank-display")

    began = time.monotonic()
    listed = {device["name"]: device["state"] for device in door.get("/api/devices")["devices"]}
    took = time.monotonic() - began
    # Eleven topics read one after the other, each at once (a read does not wait for the fetch
    # the one before it left in the broker), well inside the list's budget.
    assert took < 5.0, f"listing 12 devices took {took:.1f}s"
    assert listed.pop("bank-display") is None
    assert {name: (state["values"], state["source"]) for name, state in listed.items()} == {
        name: (values, "bus") for name, values in said.items()
    }
    assert listed["school-cam"]["kind"] == "frame"
    assert listed["school-temp"]["units"] == {"temperature": "°C", "humidity": "%"}

    as_json = json.loads(door.ok("device", "list", "--json"))
    assert {item["name"]: item["state"]["values"] for item in as_json if item["state"]} == said
    table = door.ok("device", "list")
    assert "latest reading or state" in table
    latest = {cells[0]: cells[-1] for cells in table_rows(table)}
    assert len(latest) == 12
    assert latest["school-temp"].startswith("temperature 26.5 °C, humidity 55.0 % (")
    assert latest["school-temp"].endswith(" ago)") or latest["school-temp"].endswith("(just now)")
    assert latest["home-light"].startswith("lux 320.0 lux (")
    assert latest["home-fan"].startswith("on false, speed 0 (")
    assert latest["bank-cam"].startswith("frame 64x64 image/jpeg, ")
    assert latest["bank-display"] == "-"

    shown = json.loads(door.ok("device", "show", "school-temp", "--json"))
    assert shown["state"]["values"] == {"temperature": 26.5, "humidity": 55.0}
    assert shown["state"]["units"] == {"temperature": "°C", "humidity": "%"}
    text = door.ok("device", "show", "school-temp")
    assert "latest reading at" in text
    assert "temperature 26.5 °C, humidity 55.0 %" in text
    assert "no reading or state yet" in door.ok("device", "show", "bank-display")


def test_an_unknown_device_is_named_with_the_cli_command_that_lists_devices(door: Door) -> None:
    done = door.aiot("device", "show", "lake-home-temp")
    assert done.returncode == 1
    assert "no device 'lake-home-temp': `aiot device list` shows the registered devices" in done.stderr
    assert "GET /api" not in done.stderr
    for args in (
        ("device", "watch", "lake-home-temp", "--count", "1"),
        ("device", "delete", "lake-home-temp"),
    ):
        refused = door.aiot(*args)
        assert refused.returncode == 1
        assert "`aiot device list`" in refused.stderr, refused.stderr
    located = door.aiot("device", "list", "--location", "moon")
    assert "no location 'moon': `aiot location list` shows the registered locations" in located.stderr
    typed = door.aiot("device", "list", "--type", "robot")
    assert "no device type 'robot': `aiot device type list` shows the registered device types" in typed.stderr
    # The API keeps naming its own route.
    error = door.get("/api/devices/lake-home-temp", 404)["error"]
    assert error["message"] == "no device 'lake-home-temp'; see GET /api/devices"


# --- the device manager's row per device -------------------------------------------------------


def test_the_device_manager_keeps_one_row_per_device_that_outlives_the_topic(any_door: Door) -> None:
    door = any_door
    thermometer = SensorPublisher(door.bus, "home-temp")
    thermometer.start()
    from device_manager.states import StateRecorder

    recorder = StateRecorder(door.bus, door.database, interval=3600)
    try:
        first = thermometer.publish({"temperature": 20.5})
        wait_until(lambda: shows(door, "home-temp", first.values), SEEN_TIMEOUT_S, "the first reading")
        recorder.start()  # a round at once, then none within the test (interval 1 h)
        wait_until(lambda: recorder.rounds >= 1, SEEN_TIMEOUT_S, "the recorder's first round")
        recorder.stop()
        with door.database.session() as session:
            stored = registry.read_state(session, "home-temp")
        assert stored is not None
        assert (stored.kind, stored.values, stored.time) == ("reading", {"temperature": 20.5}, first.time)

        second = thermometer.publish({"temperature": 21.0})
        wait_until(lambda: shows(door, "home-temp", second.values), SEEN_TIMEOUT_S, "the second reading")
        assert recorder.record() == 1  # upserted
        assert recorder.record() == 0  # nothing newer: nothing written
        with door.database.session() as session:
            rows = list(session.scalars(sa.select(DeviceStateRow)))
            assert [(row.device, json.loads(row.values)) for row in rows] == [
                ("home-temp", {"temperature": 21.0})
            ]
    finally:
        recorder.stop()
        thermometer.stop()

    # Once the topic holds nothing any more (its retention deleted every record of a sensor that
    # stopped; here the records are deleted at once), the recorded reading is what is shown.
    expired = confluent_kafka.TopicPartition(door.bus.topics.device_data("home-temp"), 0, OFFSET_END)
    admin = door.bus.admin()
    for done in admin.delete_records([expired], operation_timeout=10).values():
        done.result(timeout=20)
    state = door.state("home-temp")
    assert state["source"] == "registry"
    assert state["values"] == {"temperature": 21.0}
    assert state["units"] == {"temperature": "°C"}
    assert datetime.fromisoformat(state["time"]) == second.time
