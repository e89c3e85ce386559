"""The sample apps of ``examples/apps``: their manifests, their pure decisions, and each app running.

A running app here is the app's own ``run(app)`` in a thread with a real ``platform_sdk.App``:
its devices are the SDK's ``SensorPublisher`` / ``ControllerEndpoint`` in the test's process on
the real broker (the controllers obey the simulators' own rules), its models the sample models
served in process by the REST wrapper behind a ``StaticResolver``, its status page on a port of
its own.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ai_manager.serving import LoadedModel, PredictionApp, UvicornServer
from platform_sdk.app import App
from platform_sdk.artifacts import APP_MANIFEST, AppInstanceConfig, AppManifest, ModelBinding, ModelManifest
from platform_sdk.bus import Bus
from platform_sdk.codec import encode_image
from platform_sdk.device_documents import Binding, DeviceBundle, DeviceType
from platform_sdk.devices import ControllerEndpoint, SensorPublisher
from platform_sdk.model_client import ModelClient, StaticResolver
from platform_sdk.runtime import PlatformRuntime
from platform_sdk.settings import Settings, temporary_settings
from simulators.models import CONTROLLER_MODELS, CameraSim
from tests.platform_driver import wait_until

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "examples" / "apps"
MODELS = ROOT / "examples" / "models"
SAMPLE = DeviceBundle.model_validate_json((ROOT / "configs" / "devices" / "sample.json").read_text())
TYPES = {device_type.name: device_type for device_type in SAMPLE.device_types}
# Each sample app and the sample location it is made for.
LOCATIONS = {"intruder-prevention": "city-bank", "smart-classroom": "green-school", "smart-home": "lake-home"}


def manifest(name: str) -> AppManifest:
    return AppManifest.model_validate_json((APPS / name / APP_MANIFEST).read_bytes())


def app_module(name: str) -> ModuleType:
    """The app's entrypoint module, imported from its folder once per session."""
    entry = manifest(name).entry_module
    module = sys.modules.get(entry)
    if module is None:
        spec = importlib.util.spec_from_file_location(entry, APPS / name / f"{entry}.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[entry] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def intruder() -> ModuleType:
    return app_module("intruder-prevention")


@pytest.fixture(scope="module")
def classroom() -> ModuleType:
    return app_module("smart-classroom")


@pytest.fixture(scope="module")
def home() -> ModuleType:
    return app_module("smart-home")


# the folders and their manifests --------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LOCATIONS))
def test_each_app_folder_is_a_valid_web_app_whose_entrypoint_imports(name: str) -> None:
    app = manifest(name)
    assert app.name == name
    assert app.kind == "web"
    assert app.web is not None
    assert app.web.title
    assert app.requirements == []
    files = {path.name for path in (APPS / name).iterdir() if path.name != "__pycache__"}
    assert files == {APP_MANIFEST, f"{app.entry_module}.py"}
    assert callable(getattr(app_module(name), app.entry_attribute))


@pytest.mark.parametrize("name", sorted(LOCATIONS))
def test_each_app_folder_packs_as_aiot_app_pack_does(name: str) -> None:
    from app_manager.artifact import pack_app

    packed = pack_app(APPS / name)
    assert packed.manifest == manifest(name)
    assert sorted(packed.files) == sorted([APP_MANIFEST, f"{packed.manifest.entry_module}.py"])


@pytest.mark.parametrize("name", sorted(LOCATIONS))
def test_each_app_uses_sample_models_and_endpoints_that_exist(name: str) -> None:
    models = {
        model.name: model
        for model in (
            ModelManifest.model_validate_json(path.read_bytes()) for path in MODELS.glob("*/model.json")
        )
    }
    for use in manifest(name).models.values():
        assert use.model in models
        assert use.endpoints
        assert all(models[use.model].endpoint(endpoint) for endpoint in use.endpoints)


@pytest.mark.parametrize("name", sorted(LOCATIONS))
def test_each_app_finds_exactly_one_device_per_alias_at_its_sample_location(name: str) -> None:
    at_location = [device for device in SAMPLE.devices if device.location == LOCATIONS[name]]
    for alias, need in manifest(name).devices.items():
        assert need.type in TYPES, alias
        assert need.count == 1
        assert len([device for device in at_location if device.type == need.type]) == 1, alias


# intruder prevention: decisions ---------------------------------------------------------------
def test_no_allowed_hours_by_default_so_every_face_is_an_intruder(intruder: ModuleType) -> None:
    assert intruder.ALLOWED_HOURS == ()
    watch = intruder.IntruderWatch()
    assert all(watch.is_intruder(1, hour) for hour in (0.0, 9.5, 12.0, 23.99))
    assert not watch.is_intruder(0, 12.0)


def test_allowed_hours_are_half_open_windows_that_may_wrap_midnight(intruder: ModuleType) -> None:
    allowed = intruder.in_allowed_hours
    assert allowed(8.0, [(8, 18)])
    assert allowed(17.99, [(8, 18)])
    assert not allowed(18.0, [(8, 18)])
    assert not allowed(7.99, [(8, 18)])
    assert allowed(23.0, [(22, 6)])
    assert allowed(5.5, [(22, 6)])
    assert not allowed(12.0, [(22, 6)])
    assert allowed(12.0, [(0, 24)])
    assert not allowed(12.0, [(12, 12)])
    assert allowed(13.0, [(1, 2), (12, 14)])
    assert not allowed(12.0, [])


def test_the_watch_alerts_once_and_clears_after_the_quiet_period(intruder: ModuleType) -> None:
    watch = intruder.IntruderWatch(allowed_hours=[(8, 18)], clear_after_s=10.0)
    assert watch.observe(1, 0.0, 12.0) is None  # a face in allowed hours: staff
    assert watch.observe(2, 1.0, 19.0) == "alert"
    assert watch.alerting
    assert watch.observe(1, 5.0, 19.0) is None  # still the same alert
    assert watch.observe(0, 14.9, 19.0) is None  # 9.9 s since the last intruder
    assert watch.tick(14.99) is None
    assert watch.tick(15.0) == "clear"
    assert not watch.alerting
    assert watch.tick(100.0) is None
    assert watch.observe(1, 101.0, 7.0) == "alert"


def test_face_checks_are_rate_limited_to_two_a_second(intruder: ModuleType) -> None:
    assert intruder.MAX_DETECTIONS_PER_S == 2.0
    limiter = intruder.RateLimiter(intruder.MAX_DETECTIONS_PER_S)
    allowed = [t / 10 for t in range(31) if limiter.allow(t / 10)]  # asked every 0.1 s for 3 s
    assert allowed == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    with pytest.raises(ValueError, match="above 0"):
        intruder.RateLimiter(0)


def test_the_alert_text_fits_the_display(intruder: ModuleType) -> None:
    moment = datetime(2024, 5, 1, 23, 15)
    assert intruder.alert_text(1, moment) == "INTRUDER ALERT: 1 face at 23:15"
    assert intruder.alert_text(3, moment) == "INTRUDER ALERT: 3 faces at 23:15"


# smart classroom: decisions -------------------------------------------------------------------
def test_the_classroom_fan_steps_up_at_once_and_down_with_hysteresis(classroom: ModuleType) -> None:
    speed = classroom.fan_speed_for
    assert classroom.FAN_STEPS_C == (25.0, 27.0, 29.0, 31.0, 33.0)
    assert [speed(t) for t in (20.0, 24.9, 25.0, 26.9, 27.0, 29.0, 31.0, 33.0, 40.0)] == [
        0,
        0,
        1,
        1,
        2,
        3,
        4,
        5,
        5,
    ]
    assert speed(24.6, current=1) == 1  # within 0.5 °C of its step: stays
    assert speed(24.4, current=1) == 0
    assert speed(26.6, current=2) == 2
    assert speed(26.4, current=2) == 1
    assert speed(22.0, current=4) == 0
    assert speed(28.0, current=0) == 2


def test_people_are_the_most_faces_in_one_frame_over_the_window(classroom: ModuleType) -> None:
    people = classroom.PeopleCounter(window_s=30.0)
    assert people.count(0.0) == 0
    people.add(0.0, 2)
    people.add(5.0, 0)  # a frame in which nobody faces the camera
    people.add(10.0, 1)
    assert people.count(10.0) == 2
    assert people.count(30.0) == 2
    assert people.count(30.1) == 1
    assert people.count(40.1) == 0


def test_the_classroom_display_says_what_was_decided(classroom: ModuleType) -> None:
    assert classroom.display_text(True, 1) == ("Lights on - 1 person in", "yellow")
    assert classroom.display_text(True, 12) == ("Lights on - 12 people in", "yellow")
    assert classroom.display_text(False, 0) == ("Lights off - nobody in", "white")
    assert classroom.FACE_CHECKS_PER_S == 1.0


# smart home: decisions ------------------------------------------------------------------------
def test_the_ac_runs_above_22_and_stops_below_21_5(home: ModuleType) -> None:
    run = home.ac_should_run
    assert (home.AC_ON_ABOVE_C, home.AC_OFF_BELOW_C) == (22.0, 21.5)
    assert run(22.01, False)
    assert not run(22.0, False)  # not above the threshold yet
    assert run(21.8, True)  # in the band: as it is
    assert not run(21.8, False)
    assert run(21.5, True)
    assert not run(21.49, True)


def test_the_setpoint_is_the_models_rounded_to_half_a_degree(home: ModuleType) -> None:
    assert home.ac_setpoint(23.3) == 23.5
    assert home.ac_setpoint(22.9) == 23.0
    assert home.ac_setpoint(24.9) == 25.0
    assert home.ac_setpoint(10.0) == 16.0  # within what the AC takes
    assert home.ac_setpoint(35.0) == 30.0


def test_the_plan_combines_the_rule_and_the_comfort_model(home: ModuleType) -> None:
    comfort = {"fan_speed": 1, "ac_on": False, "ac_setpoint": 23.3}
    assert home.plan(23.0, comfort, False) == home.Plan(ac_on=True, setpoint=23.5, fan_speed=1)
    assert home.plan(21.0, comfort | {"fan_speed": 0}, True) == home.Plan(
        ac_on=False, setpoint=23.5, fan_speed=0
    )
    assert home.humidity_of({"temperature": 23.0}) == home.DEFAULT_HUMIDITY == 50.0
    assert home.humidity_of({"temperature": 23.0, "humidity": 71.5}) == 71.5


def test_the_home_fan_changes_at_most_every_ten_seconds(home: ModuleType) -> None:
    hold = home.FanHold(10.0)
    assert hold.may_change(0.0)
    hold.changed(0.0)
    assert not hold.may_change(9.9)
    assert hold.may_change(10.0)


# the apps running -----------------------------------------------------------------------------
@contextmanager
def served_model(name: str) -> Iterator[str]:
    """The sample model ``name`` behind the REST wrapper on a loopback port; its modules forgotten after."""
    folder = (MODELS / name).resolve()
    path_before, modules_before = list(sys.path), set(sys.modules)
    server = UvicornServer(PredictionApp(LoadedModel(folder), f"test-{name}"), "127.0.0.1", 0)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
        sys.path[:] = path_before
        for module in set(sys.modules) - modules_before:
            file = getattr(sys.modules.get(module), "__file__", None)
            if file is not None and Path(file).resolve().is_relative_to(folder):
                del sys.modules[module]


@pytest.fixture(scope="module")
def model_urls() -> Iterator[dict[str, str]]:
    with (
        served_model("face-detector") as faces,
        served_model("occupancy") as occupancy,
        served_model("comfort") as comfort,
    ):
        yield {"face-detector": faces, "occupancy": occupancy, "comfort": comfort}


@pytest.fixture
def bus(kafka_settings: Settings) -> Bus:
    return Bus(kafka_settings, source="test-sample-apps")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http_get(port: int, path: str) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        connection.close()


def status_of(port: int) -> dict[str, Any]:
    status, kind, body = http_get(port, "/status.json")
    assert (status, kind) == (200, "application/json")
    result: dict[str, Any] = json.loads(body)
    return result


def answers(port: int) -> bool:
    try:
        return http_get(port, "/health")[0] == 200
    except OSError:
        return False


@contextmanager
def running(name: str, devices: dict[str, str], model_urls: dict[str, str]) -> Iterator[tuple[App, int]]:
    """The app ``name``'s ``run(app)`` in a thread, its aliases bound to ``devices``; its port."""
    app_manifest = manifest(name)
    location = next(location for location in SAMPLE.locations if location.name == LOCATIONS[name])
    config = AppInstanceConfig(
        instance_id=f"i{uuid.uuid4().hex[:8]}",
        app=name,
        version=app_manifest.version,
        location=location.name,
        timezone=location.timezone,
        devices={
            alias: Binding(device_id=devices[alias], type=TYPES[need.type])
            for alias, need in app_manifest.devices.items()
        },
        models={alias: ModelBinding(model=use.model) for alias, use in app_manifest.models.items()},
    )
    resolver = StaticResolver({use.model: [model_urls[use.model]] for use in app_manifest.models.values()})
    port = free_port()
    with temporary_settings({"port_http": port}) as settings:
        app = App(
            app_manifest, config, PlatformRuntime(settings, service_id=f"app-{name}"), ModelClient(resolver)
        )
        failures: list[BaseException] = []

        def run() -> None:
            try:
                getattr(app_module(name), app_manifest.entry_attribute)(app)
            except BaseException as exc:
                failures.append(exc)
                raise

        thread = threading.Thread(target=run, name=f"test-app-{name}")
        thread.start()
        try:
            wait_until(lambda: answers(port) or bool(failures), 20, f"{name} serving")
            assert not failures, failures
            yield app, port
        finally:
            app.stopping.set()
            thread.join(20)
            app.close()
    assert not thread.is_alive(), f"{name} did not return when told to stop"
    assert not failures, failures


@contextmanager
def controllers(bus: Bus, **devices: str) -> Iterator[dict[str, ControllerEndpoint]]:
    """Controllers by device id (``id=type``) obeying their simulator's rules and sample type."""
    endpoints: dict[str, ControllerEndpoint] = {}
    for device_id, type_name in devices.items():
        device_type: DeviceType = TYPES[type_name]
        assert device_type.simulator is not None
        simulator = CONTROLLER_MODELS[device_type.simulator](device_type)
        endpoints[device_id] = ControllerEndpoint(bus, device_id, simulator.apply, simulator.state)
    # Side by side: each waits for its consumer group's assignment.
    starting = [threading.Thread(target=endpoint.start) for endpoint in endpoints.values()]
    try:
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join(30)
        yield endpoints
    finally:
        for endpoint in endpoints.values():
            endpoint.stop()


@contextmanager
def sensors(bus: Bus, *device_ids: str) -> Iterator[dict[str, SensorPublisher]]:
    started: dict[str, SensorPublisher] = {}
    try:
        for device_id in device_ids:
            publisher = SensorPublisher(bus, device_id)
            publisher.start()
            started[device_id] = publisher
        yield started
    finally:
        for publisher in started.values():
            publisher.stop()


def camera_frames(scene: str) -> Callable[[SensorPublisher], None]:
    """Publishes one frame of the camera simulator's ``scene`` (person: the astronaut) per call."""
    camera = CameraSim({"scene": scene, "width": 640, "height": 480})
    jpeg = encode_image(camera.next_frame(0.0)[0])

    def publish(publisher: SensorPublisher) -> None:
        publisher.publish_frame(jpeg, 640, 480)

    return publish


def until(
    condition: Callable[[], bool], timeout: float, what: str, *, meanwhile: Callable[[], object]
) -> None:
    """``wait_until`` that calls ``meanwhile`` (publishing a reading) about ten times a second."""

    def check() -> bool:
        meanwhile()
        return condition()

    wait_until(check, timeout, what)


@pytest.mark.service("kafka")
def test_intruder_prevention_alerts_on_a_face_and_clears_when_it_is_gone(
    bus: Bus, model_urls: dict[str, str], intruder: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intruder, "CLEAR_AFTER_S", 1.5)
    devices = {"camera": "bank-cam", "display": "bank-display", "alarm": "bank-siren"}
    with (
        controllers(bus, **{"bank-display": "display", "bank-siren": "fan"}) as controls,
        sensors(bus, "bank-cam") as cams,
        running("intruder-prevention", devices, model_urls) as (_, port),
    ):
        display, alarm = controls["bank-display"], controls["bank-siren"]
        person, empty = camera_frames("person"), camera_frames("empty")
        until(
            lambda: display.state["colour"] == "red" and alarm.state == {"on": True, "speed": 5},
            15,
            "the alert on the display and the alarm sounding",
            meanwhile=lambda: person(cams["bank-cam"]),
        )
        assert display.state["text"].startswith("INTRUDER ALERT: 1 face at ")
        status = status_of(port)
        assert status["alert"] is True
        assert status["faces"] == 1
        assert status["headline"]["colour"] == "red"
        assert len(status["frame"]["boxes"]) == 1
        page = http_get(port, "/")
        assert page[:2] == (200, "text/html; charset=utf-8")
        assert b"fetch('status.json'" in page[2]
        frame = http_get(port, "/frame.jpg")
        assert frame[:2] == (200, "image/jpeg")
        assert frame[2][:2] == b"\xff\xd8"
        assert http_get(port, "/nothing-here")[0] == 404

        until(
            lambda: display.state == {"text": "", "colour": "white"} and alarm.state["on"] is False,
            15,
            "the display cleared and the alarm silent",
            meanwhile=lambda: empty(cams["bank-cam"]),
        )
        assert status_of(port)["alert"] is False


@pytest.mark.service("kafka")
def test_smart_classroom_shows_the_lighting_decision_and_runs_the_fan_by_temperature(
    bus: Bus, model_urls: dict[str, str]
) -> None:
    devices = {
        "camera": "school-cam",
        "light": "school-light",
        "temperature": "school-temp",
        "display": "school-display",
        "fan": "school-fan",
    }
    with (
        controllers(bus, **{"school-display": "display", "school-fan": "fan"}) as controls,
        sensors(bus, "school-cam", "school-light", "school-temp") as published,
        running("smart-classroom", devices, model_urls) as (_, port),
    ):
        display, fan = controls["school-display"], controls["school-fan"]
        person = camera_frames("person")

        def readings(lux: float) -> Callable[[], None]:
            def publish() -> None:
                person(published["school-cam"])
                published["school-light"].publish({"lux": lux})
                published["school-temp"].publish({"temperature": 28.0, "humidity": 60.0})

            return publish

        until(
            lambda: display.state == {"text": "Lights on - 1 person in", "colour": "yellow"},
            15,
            "lights on for one person in a dim room",
            meanwhile=readings(100.0),
        )
        wait_until(lambda: fan.state == {"on": True, "speed": 2}, 10, "the fan at speed 2 at 28 °C")
        status = status_of(port)
        assert status["people"] == 1
        assert status["lights_on"] is True
        assert status["fan_speed"] == 2
        until(
            lambda: display.state == {"text": "Lights off - 1 person in", "colour": "white"},
            15,
            "lights off in bright daylight",
            meanwhile=readings(900.0),
        )


@pytest.mark.service("kafka")
def test_smart_home_turns_the_ac_on_above_the_threshold_and_off_below(
    bus: Bus, model_urls: dict[str, str]
) -> None:
    devices = {"temperature": "home-temp", "ac": "home-ac", "fan": "home-fan"}
    with (
        controllers(bus, **{"home-ac": "ac", "home-fan": "fan"}) as controls,
        sensors(bus, "home-temp") as published,
        running("smart-home", devices, model_urls) as (_, port),
    ):
        ac, fan = controls["home-ac"], controls["home-fan"]
        thermometer = published["home-temp"]
        assert ac.state == {"on": False, "setpoint": 24.0, "mode": "auto"}
        until(
            lambda: ac.state == {"on": True, "setpoint": 23.5, "mode": "cool"},
            15,
            "the AC cooling to the model's set-point at 23 °C",
            meanwhile=lambda: thermometer.publish({"temperature": 23.0}),
        )
        wait_until(lambda: fan.state == {"on": True, "speed": 1}, 10, "the fan at the model's speed 1")
        status = status_of(port)
        assert status["ac_on"] is True
        assert status["ac_setpoint"] == 23.5
        assert status["humidity"] == 50.0
        until(
            lambda: ac.state["on"] is False,
            15,
            "the AC off at 20 °C",
            meanwhile=lambda: thermometer.publish({"temperature": 20.0}),
        )
        assert ac.state["setpoint"] == 23.5
