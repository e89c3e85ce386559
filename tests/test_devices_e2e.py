"""Devices end to end on a running platform: register from a JSON file → each location's simulated
devices run in one managed service (``sim-<location>``) → an app's SDK client reads temperatures and
camera frames and drives a fan; `aiot device` watch and command; a killed simulator host comes back;
a device added to a location joins its host while the others play on; a location's last
deregistered device stops its host.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import psutil
import pytest

from platform_sdk.bus import Bus
from platform_sdk.device_documents import Binding
from platform_sdk.devices import DeviceClient
from platform_sdk.errors import ValidationFailed
from platform_sdk.settings import temporary_settings
from tests.platform_driver import Platform, running_platform, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.service("kafka"), pytest.mark.timeout(600)]
SAMPLE = Path(__file__).resolve().parents[1] / "configs" / "devices" / "sample.json"
DEVICES = ("bank-cam", "home-temp", "home-fan")
HOSTS = ("sim-city-bank", "sim-lake-home")  # bank-cam at city-bank; home-temp and home-fan at lake-home


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(tmp_path_factory.mktemp("devices") / "home", "--nodes", "2") as running:
        yield running


@pytest.fixture(scope="module")
def registered(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The sample's types and locations, and three of its devices, registered from one file."""
    sample = json.loads(SAMPLE.read_text())
    sample["devices"] = [device for device in sample["devices"] if device["name"] in DEVICES]
    bundle = tmp_path_factory.mktemp("bundle") / "devices.json"
    bundle.write_text(json.dumps(sample))
    result = platform.run("device", "add", str(bundle))
    assert "3 devices" in result.stdout
    for service_id in HOSTS:
        wait_until(partial(_running, platform, service_id), 60, f"the simulator host {service_id}")
    registered: dict[str, Any] = sample
    return registered


def _running(platform: Platform, service_id: str) -> bool:
    service = platform.service(service_id)
    return service is not None and service["state"] == "running"


@pytest.fixture
def app(platform: Platform, registered: dict[str, Any]) -> Iterator[DeviceClient]:
    """An app's view: the three devices under aliases, with the types the API reports."""
    aliases = {"camera": "bank-cam", "room": "home-temp", "fan": "home-fan"}
    bindings = {}
    for alias, device in aliases.items():
        shown = platform.json("device", "show", device)
        assert isinstance(shown, dict)
        bindings[alias] = Binding(device_id=device, type=shown["device_type"])
    with (
        temporary_settings(platform.bus_settings()) as settings,
        DeviceClient(Bus(settings, source="test-app"), bindings, group="test-app") as client,
    ):
        yield client


def test_registered_devices_are_listed_with_their_locations(
    platform: Platform, registered: dict[str, Any]
) -> None:
    listed = platform.json("device", "list")
    assert isinstance(listed, list)
    assert {(device["name"], device["location"]) for device in listed} == {
        ("bank-cam", "city-bank"),
        ("home-temp", "lake-home"),
        ("home-fan", "lake-home"),
    }
    at_home = platform.json("device", "list", "--location", "lake-home")
    assert isinstance(at_home, list)
    assert {device["name"] for device in at_home} == {"home-temp", "home-fan"}


def test_an_app_reads_temperatures_and_camera_frames(app: DeviceClient) -> None:
    reading = app.get_sensor_data("room", timeout=20)
    assert isinstance(reading.values["temperature"], float)
    assert 0 < reading.values["temperature"] < 50

    stream = app.sensor_stream("camera")
    frame = stream.next(timeout=30)
    image = frame.array()
    assert frame.content_type == "image/jpeg"
    assert image.shape == (480, 640, 3)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")  # type: ignore[attr-defined]
    faces = cascade.detectMultiScale(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), 1.2, 5, minSize=(30, 30))
    assert len(faces) == 1, "the bank camera's scene is a person: the decoded frame shows one face"


def test_an_app_drives_the_fan_and_invalid_commands_are_rejected(app: DeviceClient) -> None:
    assert app.send_controller("fan", "set_speed", speed=3) == {"on": True, "speed": 3}
    assert app.controller_state("fan") == {"on": True, "speed": 3}
    with pytest.raises(ValidationFailed, match="9 is above the maximum 5"):
        app.send_controller("fan", "set_speed", speed=9)
    assert app.send_controller("fan", "off")["on"] is False


def test_the_cli_watches_readings_and_commands_a_controller(
    platform: Platform, registered: dict[str, Any]
) -> None:
    watched = platform.run("device", "watch", "home-temp", "--count", "2", timeout=60)
    lines = watched.stdout.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith("home-temp #") and '"temperature"' in line for line in lines)
    commanded = platform.run("device", "command", "home-fan", "set_speed", "speed=2")
    assert json.loads(commanded.stdout) == {"on": True, "speed": 2}
    refused = platform.run("device", "command", "home-fan", "set_speed", "speed=7", check=False)
    assert refused.returncode == 1
    assert "7 is above the maximum 5" in refused.stderr


def test_a_killed_simulator_host_is_restarted(platform: Platform, app: DeviceClient) -> None:
    service = platform.service("sim-lake-home")
    assert service is not None
    old_pid = service["pid"]
    with contextlib.suppress(ProcessLookupError):
        os.kill(old_pid, signal.SIGKILL)
    wait_until(
        lambda: _running(platform, "sim-lake-home") and platform.service("sim-lake-home")["pid"] != old_pid,  # type: ignore[index]
        60,
        "sim-lake-home running again with a new pid",
    )
    stream = app.sensor_stream("room")
    assert "temperature" in stream.next(timeout=20).values


def test_a_device_added_to_a_location_joins_its_host_and_the_others_play_on(
    platform: Platform, registered: dict[str, Any], app: DeviceClient, tmp_path: Path
) -> None:
    old_pid = platform.service("sim-lake-home")["pid"]  # type: ignore[index]
    sample = json.loads(SAMPLE.read_text())
    bundle = tmp_path / "light.json"
    bundle.write_text(json.dumps({"devices": [d for d in sample["devices"] if d["name"] == "home-light"]}))
    platform.run("device", "add", str(bundle))
    wait_until(
        lambda: _running(platform, "sim-lake-home") and platform.service("sim-lake-home")["pid"] != old_pid,  # type: ignore[index]
        60,
        "sim-lake-home playing again, with home-light",
    )
    overrides = platform.bus_settings()
    with temporary_settings(overrides) as settings:
        bus = Bus(settings, source="test-app")
        light = bus.topics.device_data("home-light")
        wait_until(lambda: bus.latest(light, timeout=1) is not None, 30, "a reading of home-light")
    stream = app.sensor_stream("room")
    assert "temperature" in stream.next(timeout=20).values  # home-temp, in the same host, plays on
    shown = platform.json("device", "show", "home-light")
    assert isinstance(shown, dict)
    assert shown["location"] == "lake-home"


def test_a_locations_last_deregistered_device_stops_its_host(
    platform: Platform, registered: dict[str, Any]
) -> None:
    pid = platform.service("sim-city-bank")["pid"]  # type: ignore[index]
    platform.run("device", "delete", "bank-cam")
    wait_until(lambda: platform.service("sim-city-bank") is None, 30, "sim-city-bank gone")
    wait_until(lambda: not psutil.pid_exists(pid), 10, "its process gone")
    assert _running(platform, "sim-lake-home")
