"""The built-in simulators as pure models (no bus): day curves, camera scenes, controller rules, the clock."""

from __future__ import annotations

import functools
import itertools
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from platform_sdk.codec import decode_image, encode_image
from platform_sdk.device_documents import DeviceBundle, DeviceType, SimulatedDevice
from platform_sdk.errors import BadRequest, ValidationFailed
from platform_sdk.settings import Settings, temporary_settings
from simulators.models import (
    EMPTY_PHOTOS,
    AcSim,
    CameraSim,
    DisplaySim,
    FanSim,
    LightSim,
    TemperatureSim,
    daily_shape,
    simulated_clock,
)
from simulators.service import SimulatorService, Ticker, build_model, device_config

SAMPLE = Path(__file__).resolve().parents[1] / "configs" / "devices" / "sample.json"
DAY = datetime(2024, 6, 21, tzinfo=UTC)


def at(hour: float) -> datetime:
    return DAY + timedelta(hours=hour)


def sample_types() -> dict[str, DeviceType]:
    bundle = DeviceBundle.model_validate(json.loads(SAMPLE.read_text()))
    return {device_type.name: device_type for device_type in bundle.device_types}


@functools.cache
def face_cascade() -> Any:
    return cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")  # type: ignore[attr-defined]


def faces(image: np.ndarray[Any, Any]) -> int:
    cascade = face_cascade()
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    found = cascade.detectMultiScale(gray, scaleFactor=1.2, minNeighbors=5, minSize=(30, 30))
    return len(found)


# light and temperature -----------------------------------------------------------------------
def test_light_follows_the_day() -> None:
    light = LightSim({"noise": 0.05}, seed=1)
    assert light.read(at(2))["lux"] == pytest.approx(0, abs=1)
    assert light.read(at(22))["lux"] == pytest.approx(0, abs=1)
    noon = light.read(at(12))["lux"]
    assert isinstance(noon, float)
    assert 8_000 < noon < 12_000
    morning = light.read(at(8))["lux"]
    assert isinstance(morning, float)
    assert 0 < morning < noon


def test_light_without_noise_is_the_clear_sky_curve() -> None:
    light = LightSim({"noise": 0.0})
    assert light.read(at(12)) == {"lux": 10_000.0}
    assert light.read(at(6)) == {"lux": 0.0}
    assert light.read(at(9))["lux"] == pytest.approx(10_000 * np.sin(np.pi / 4), abs=0.1)
    assert light.read(at(15)) == light.read(at(9))


def test_light_is_deterministic_for_a_seed() -> None:
    times = [at(h / 2) for h in range(48)]
    first, second = LightSim(seed=7), LightSim(seed=7)
    assert [first.read(t) for t in times] == [second.read(t) for t in times]
    assert [LightSim(seed=8).read(t) for t in times] != [first.read(t) for t in times]


def test_temperature_is_warmest_mid_afternoon_and_coolest_before_dawn() -> None:
    sensor = TemperatureSim({"base_c": 22.0, "amplitude_c": 4.0}, seed=3)
    afternoon, dawn = sensor.read(at(15)), sensor.read(at(5))
    assert isinstance(afternoon["temperature"], float)
    assert isinstance(dawn["temperature"], float)
    assert afternoon["temperature"] > dawn["temperature"] + 6
    assert sensor.expected(at(15)) == pytest.approx(26.0)
    assert sensor.expected(at(5)) == pytest.approx(18.0)
    hourly = [sensor.expected(at(h)) for h in range(24)]
    assert max(hourly) == hourly[15]
    assert min(hourly) == hourly[5]


def test_daily_shape_is_continuous_between_its_extremes() -> None:
    assert daily_shape(5) == pytest.approx(-1)
    assert daily_shape(15) == pytest.approx(1)
    steps = [daily_shape(minute / 60) for minute in range(24 * 60 + 1)]
    assert max(abs(b - a) for a, b in itertools.pairwise(steps)) < 0.01
    assert all(-1 <= value <= 1 for value in steps)


def test_humidity_moves_against_temperature_within_30_to_90() -> None:
    sensor = TemperatureSim({"base_c": 25.0, "amplitude_c": 5.0, "humidity": True}, seed=4)
    readings = [sensor.read(at(h / 4)) for h in range(96)]
    temperature = np.array([r["temperature"] for r in readings], dtype=float)
    humidity = np.array([r["humidity"] for r in readings], dtype=float)
    assert humidity.min() >= 30
    assert humidity.max() <= 90
    assert np.corrcoef(temperature, humidity)[0, 1] < -0.9


def test_humidity_can_be_turned_off() -> None:
    assert set(TemperatureSim({"humidity": False}).read(at(12))) == {"temperature"}


def test_sensor_parameters_are_checked() -> None:
    with pytest.raises(ValidationFailed) as caught:
        TemperatureSim({"amplitude_c": -1.0})
    assert caught.value.details == [{"field": "amplitude_c", "reason": "-1.0 is below the minimum 0"}]


# camera --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("width", "height"), [(640, 480), (320, 240), (1280, 720), (64, 200)])
def test_camera_frames_have_the_requested_size(width: int, height: int) -> None:
    camera = CameraSim({"width": width, "height": height, "scene": "cycle"})
    for second in (0.0, 6.0):
        frame, _ = camera.next_frame(second)
        assert frame.shape == (height, width, 3)
        assert frame.dtype == np.uint8


def test_person_frames_show_a_face_and_empty_ones_do_not() -> None:
    person = CameraSim({"width": 640, "height": 480, "scene": "person"}, seed=1)
    empty = CameraSim({"width": 640, "height": 480, "scene": "empty", "period_s": 5.0}, seed=1)
    for second in range(0, 30, 5):  # the empty scene shows each of its photos in turn
        frame, has_person = person.next_frame(float(second))
        assert has_person
        assert faces(frame) == 1
        assert faces(decode_image(encode_image(frame))) == 1  # still after JPEG, as apps see it
        frame, has_person = empty.next_frame(float(second))
        assert not has_person
        assert faces(frame) == 0
        assert faces(decode_image(encode_image(frame))) == 0
    assert {empty.shot(float(second))[0] for second in range(0, 5 * len(EMPTY_PHOTOS), 5)} == set(
        EMPTY_PHOTOS
    )


def test_cycle_alternates_person_and_empty_in_simulated_time() -> None:
    camera = CameraSim({"scene": "cycle", "period_s": 5.0})
    assert [camera.shot(float(second))[1] for second in range(0, 20)] == (
        [True] * 5 + [False] * 5 + [True] * 5 + [False] * 5
    )
    start = datetime(2024, 1, 1, tzinfo=UTC)  # datetimes work too: their timestamp counts
    assert camera.shot(start)[1] != camera.shot(start + timedelta(seconds=5))[1]


def test_camera_noise_is_light_varies_per_frame_and_repeats_for_a_seed() -> None:
    camera = CameraSim({"scene": "person", "noise": 2.0}, seed=5)
    clean = camera.photo("astronaut").astype(np.int16)
    first, _ = camera.next_frame(0.0)
    second, _ = camera.next_frame(0.5)
    assert not np.array_equal(first, second)
    assert 0 < np.abs(first.astype(np.int16) - clean).mean() < 3
    again, _ = CameraSim({"scene": "person", "noise": 2.0}, seed=5).next_frame(0.0)
    assert np.array_equal(first, again)
    still, _ = CameraSim({"scene": "person", "noise": 0.0}).next_frame(0.0)
    assert np.array_equal(still, camera.photo("astronaut"))


def test_camera_refuses_an_unknown_scene() -> None:
    with pytest.raises(ValidationFailed, match="scene"):
        CameraSim({"scene": "crowd"})


# controllers ---------------------------------------------------------------------------------
@pytest.fixture(params=["bare", "typed"])
def typed(request: pytest.FixtureRequest) -> bool:
    """Each controller test runs without a device type (the simulator's rules only) and with sample.json's."""
    return bool(request.param == "typed")


def type_of(name: str, typed: bool) -> DeviceType | None:
    return sample_types()[name] if typed else None


def refusal(model: Any, command: str, params: dict[str, Any]) -> list[dict[str, str]]:
    before = model.state
    with pytest.raises(ValidationFailed) as caught:
        model.apply(command, params)
    assert model.state == before, "a refused command must not change the state"
    details: list[dict[str, str]] = caught.value.details
    return details


def test_fan_obeys_valid_commands(typed: bool) -> None:
    fan = FanSim(type_of("fan", typed))
    assert fan.state == {"on": False, "speed": 0}
    assert fan.apply("on", {}) == {"on": True, "speed": 1}
    assert fan.apply("set_speed", {"speed": 4}) == {"on": True, "speed": 4}
    assert fan.apply("off") == {"on": False, "speed": 0}
    assert fan.apply("on") == {"on": True, "speed": 4}  # back at the last speed
    assert fan.apply("set_speed", {"speed": 0}) == {"on": False, "speed": 0}
    assert fan.apply("set_speed", {"speed": 2}) == {"on": True, "speed": 2}


def test_fan_refuses_invalid_commands(typed: bool) -> None:
    fan = FanSim(type_of("fan", typed))
    fan.apply("set_speed", {"speed": 3})
    assert refusal(fan, "set_speed", {"speed": 9}) == [
        {"field": "speed", "reason": "9 is above the maximum 5"}
    ]
    assert refusal(fan, "set_speed", {"speed": -1})[0]["field"] == "speed"
    assert refusal(fan, "set_speed", {"speed": 2.5})[0] == {
        "field": "speed",
        "reason": "must be an integer, not 2.5",
    }
    assert refusal(fan, "set_speed", {}) == [{"field": "speed", "reason": "missing"}]
    assert refusal(fan, "set_speed", {"speed": 2, "ramp": 1}) == [
        {"field": "ramp", "reason": "unknown parameter of set_speed"}
    ]
    (problem,) = refusal(fan, "spin", {})
    assert problem["field"] == "command"
    assert "'spin'" in problem["reason"]
    assert "set_speed" in problem["reason"]


def test_the_simulator_keeps_its_own_rules_under_a_looser_type() -> None:
    loose = DeviceType.model_validate(
        {
            "name": "big-fan",
            "kind": "controller",
            "simulator": "fan",
            "commands": {
                "set_speed": {
                    "params": {"speed": {"type": "int", "min": 0, "max": 10}, "ramp_s": {"type": "float"}}
                },
                "turbo": {},
            },
        }
    )
    fan = FanSim(loose)
    assert refusal(fan, "set_speed", {"speed": 9, "ramp_s": 1.0}) == [
        {"field": "speed", "reason": "9 is above the maximum 5"}
    ]
    assert fan.apply("set_speed", {"speed": 5, "ramp_s": 1.0}) == {"on": True, "speed": 5}
    assert "fan simulator has no command 'turbo'" in refusal(fan, "turbo", {})[0]["reason"]
    # the type's own verdict comes first: it names the type and what it has
    assert "big-fan has no command 'on'" in refusal(fan, "on", {})[0]["reason"]


def test_display_shows_and_clears(typed: bool) -> None:
    display = DisplaySim(type_of("display", typed))
    assert display.state == {"text": "", "colour": "white"}
    assert display.apply("show", {"text": "Welcome"}) == {"text": "Welcome", "colour": "white"}
    assert display.apply("show", {"text": "Stop", "colour": "red"}) == {"text": "Stop", "colour": "red"}
    assert display.apply("clear") == {"text": "", "colour": "white"}
    (problem,) = refusal(display, "show", {"text": "hi", "colour": "purple"})
    assert problem["field"] == "colour"
    assert "'purple' is not one of" in problem["reason"]
    assert refusal(display, "show", {"colour": "red"}) == [{"field": "text", "reason": "missing"}]
    assert refusal(display, "show", {"text": "x" * 201})[0]["field"] == "text"
    assert refusal(display, "show", {"text": 42})[0] == {
        "field": "text",
        "reason": "must be a string, not 42",
    }


def test_ac_obeys_valid_commands(typed: bool) -> None:
    ac = AcSim(type_of("ac", typed))
    assert ac.state == {"on": False, "setpoint": 24.0, "mode": "auto"}
    assert ac.apply("on") == {"on": True, "setpoint": 24.0, "mode": "auto"}
    assert ac.apply("set", {"setpoint": 21.5, "mode": "cool"}) == {
        "on": True,
        "setpoint": 21.5,
        "mode": "cool",
    }
    assert ac.apply("set", {"setpoint": 23}) == {"on": True, "setpoint": 23.0, "mode": "cool"}
    assert ac.apply("set", {"mode": "heat"}) == {"on": True, "setpoint": 23.0, "mode": "heat"}
    assert ac.apply("off") == {"on": False, "setpoint": 23.0, "mode": "heat"}


def test_ac_refuses_invalid_commands(typed: bool) -> None:
    ac = AcSim(type_of("ac", typed))
    (problem,) = refusal(ac, "set", {"mode": "turbo"})
    assert problem["field"] == "mode"
    assert "'turbo' is not one of cool, heat, fan, auto" in problem["reason"]
    assert refusal(ac, "set", {"setpoint": 35.0}) == [
        {"field": "setpoint", "reason": "35.0 is above the maximum 30"}
    ]
    assert refusal(ac, "set", {"setpoint": "warm"})[0]["field"] == "setpoint"
    assert refusal(ac, "set", {}) == [{"field": "setpoint", "reason": "set needs a setpoint, a mode or both"}]
    problems = refusal(ac, "set", {"setpoint": 99, "mode": "turbo"})
    assert {problem["field"] for problem in problems} == {"setpoint", "mode"}


def test_refusal_message_names_the_device_and_command() -> None:
    with pytest.raises(ValidationFailed, match=r"^ac cannot set$") as caught:
        AcSim().apply("set", {"mode": "turbo"})
    assert caught.value.status == 422


# clock and ticker ----------------------------------------------------------------------------
def test_simulated_clock_scales_elapsed_time() -> None:
    now = [100.0]
    start = datetime(2024, 3, 1, 6, 0, tzinfo=UTC)
    clock = simulated_clock(60.0, start, monotonic=lambda: now[0])
    assert clock() == start
    now[0] += 1.5
    assert clock() == start + timedelta(seconds=90)
    now[0] += 60 * 24 - 1.5  # a real day's 24 minutes: a simulated day
    assert clock() == start + timedelta(days=1)


def test_simulated_clock_runs_in_real_time_by_default() -> None:
    before = datetime.now().astimezone()
    clock = simulated_clock()
    assert abs((clock() - before).total_seconds()) < 1
    assert clock().tzinfo is not None
    with pytest.raises(ValueError, match="time_scale"):
        simulated_clock(0)


def test_ticker_calls_at_its_rate_and_survives_failures() -> None:
    calls: list[float] = []
    enough = threading.Event()

    def work() -> None:
        calls.append(time.monotonic())
        if len(calls) >= 6:
            enough.set()
        if len(calls) % 2:
            raise RuntimeError("flaky")

    ticker = Ticker("test-ticker", 50.0, work)
    ticker.start()
    try:
        assert enough.wait(5)
    finally:
        ticker.stop()
    gaps = np.diff(calls[:6])
    assert gaps.mean() == pytest.approx(0.02, abs=0.015)


# the service's configuration -----------------------------------------------------------------
def played(device_id: str, device_type: DeviceType, **parameters: Any) -> SimulatedDevice:
    return SimulatedDevice(id=device_id, type=device_type, parameters=parameters)


def test_device_config_refuses_a_type_without_simulator_or_of_the_wrong_kind() -> None:
    real = DeviceType.model_validate(
        {"name": "door", "kind": "sensor", "outputs": {"open": {"type": "bool"}}, "simulator": None}
    )
    with pytest.raises(BadRequest, match="has no simulator"):
        device_config(played("front-door", real))
    odd = DeviceType.model_validate(
        {"name": "odd", "kind": "sensor", "outputs": {"speed": {"type": "int"}}, "simulator": "fan"}
    )
    with pytest.raises(BadRequest, match="plays a controller"):
        device_config(played("odd-one", odd))


def test_device_config_fills_defaults_and_checks_parameters() -> None:
    camera = sample_types()["camera"]
    config = device_config(played("bank-cam", camera, scene="person"), time_scale=60.0)
    assert config.simulator == "camera"
    assert config.parameters == {"fps": 2, "width": 640, "height": 480, "scene": "person"}
    assert config.time_scale == 60.0
    with pytest.raises(BadRequest) as caught:
        device_config(played("bank-cam", camera, fps=90))
    assert caught.value.details == [{"field": "parameters.fps", "reason": "90 is above the maximum 30"}]


def test_every_sample_type_builds_its_model() -> None:
    expected = {
        "camera": CameraSim,
        "light": LightSim,
        "temperature": TemperatureSim,
        "fan": FanSim,
        "display": DisplaySim,
        "ac": AcSim,
    }
    for name, device_type in sample_types().items():
        config = device_config(played(f"sample-{name}", device_type))
        assert config.simulator == name
        assert isinstance(build_model(config), expected[name])


def host_settings(location: str, *devices: SimulatedDevice) -> dict[str, Any]:
    return {"device.location": location, "device.simulated": [device.model_dump() for device in devices]}


def test_a_host_plays_its_locations_devices_and_leaves_out_one_that_does_not_fit(settings: Settings) -> None:
    types = sample_types()
    good = (played("home-fan", types["fan"]), played("home-temp", types["temperature"]))
    odd = played("odd-cam", types["camera"], noise=99.0)
    with temporary_settings(host_settings("lake-home", good[0], odd, good[1])) as current:
        host = SimulatorService(current)
        assert host.service_id == "sim-lake-home"
        playable = host.devices()  # before any bus: the host starts what fits, logs the rest
    assert [config.device_id for config, _model in playable] == ["home-fan", "home-temp"]
    assert isinstance(playable[0][1], FanSim)
    assert isinstance(playable[1][1], TemperatureSim)


def test_a_host_with_nothing_it_can_play_fails_to_start_saying_why(settings: Settings) -> None:
    service = SimulatorService(settings)
    assert service.service_id == "simulator"
    with pytest.raises(BadRequest, match="AIOT_DEVICE__SIMULATED"):
        service.on_start()  # fails before it touches the bus
    odd = played("odd-cam", sample_types()["camera"], noise=99.0)
    with (
        temporary_settings(host_settings("city-bank", odd)) as current,
        pytest.raises(ValidationFailed, match="noise"),
    ):
        SimulatorService(current).on_start()
