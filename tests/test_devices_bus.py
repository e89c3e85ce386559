"""The device protocol on the real broker: the SDK's device side and app side talking to each other.

A device here is the SDK's ``SensorPublisher`` / ``ControllerEndpoint`` in the test's
process (what a simulator or a real device using the SDK runs); the app is a
``DeviceClient`` knowing the devices by alias only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from platform_sdk.bus import Bus
from platform_sdk.codec import decode_image, encode_image
from platform_sdk.device_documents import Binding, DeviceType
from platform_sdk.devices import ControllerEndpoint, DeviceClient, SensorData, SensorPublisher
from platform_sdk.errors import NotFound, ValidationFailed
from platform_sdk.settings import Settings
from tests.platform_driver import wait_until
from tests.sample_images import sample_image

pytestmark = pytest.mark.service("kafka")

CAMERA = DeviceType.model_validate(
    {"name": "camera", "kind": "sensor", "simulator": "camera", "outputs": {"image": {"type": "image"}}}
)
THERMOMETER = DeviceType.model_validate(
    {"name": "temperature", "kind": "sensor", "outputs": {"temperature": {"type": "float", "unit": "°C"}}}
)
FAN = DeviceType.model_validate(
    {
        "name": "fan",
        "kind": "controller",
        "commands": {
            "on": {},
            "off": {},
            "set_speed": {"params": {"speed": {"type": "int", "min": 0, "max": 5}}},
        },
        "state": {"on": {"type": "bool"}, "speed": {"type": "int"}},
    }
)


@pytest.fixture
def bus(kafka_settings: Settings) -> Bus:
    return Bus(kafka_settings, source="test-devices")


@pytest.fixture
def publisher(bus: Bus) -> Iterator[SensorPublisher]:
    device = SensorPublisher(bus, "lab-temp")
    device.start()
    yield device
    device.stop()


def client(bus: Bus, group: str, **bindings: Binding) -> DeviceClient:
    return DeviceClient(bus, bindings, group=group)


def test_an_app_reads_the_latest_reading_and_streams_new_ones(bus: Bus, publisher: SensorPublisher) -> None:
    with client(bus, "app-1", temp=Binding(device_id="lab-temp", type=THERMOMETER)) as app:
        publisher.publish({"temperature": 21.5})
        assert app.get_sensor_data("temp").values == {"temperature": 21.5}
        stream = app.sensor_stream("temp")
        publisher.publish({"temperature": 22.0})
        publisher.publish({"temperature": 22.5})
        assert [stream.next(10).values["temperature"] for _ in range(2)] == [22.0, 22.5]


def test_two_apps_bound_to_one_sensor_both_get_every_reading(bus: Bus, publisher: SensorPublisher) -> None:
    received: dict[str, list[float]] = {"a": [], "b": []}
    lock = threading.Lock()

    def collect(name: str) -> Any:
        def on_data(data: SensorData) -> None:
            with lock:
                received[name].append(float(data.values["temperature"]))

        return on_data

    binding = Binding(device_id="lab-temp", type=THERMOMETER)
    with client(bus, "app-a", temp=binding) as app_a, client(bus, "app-b", temp=binding) as app_b:
        app_a.sensor_stream("temp", callback=collect("a"))
        app_b.sensor_stream("temp", callback=collect("b"))
        sent = [20.0 + index / 10 for index in range(50)]
        for value in sent:
            publisher.publish({"temperature": value})
        wait_until(lambda: len(received["a"]) == len(received["b"]) == 50, 20, "both apps got all 50")
    assert received["a"] == received["b"] == sent


def test_a_camera_frame_arrives_as_the_same_pixels_within_jpeg_tolerance(bus: Bus) -> None:
    image = np.ascontiguousarray(sample_image("astronaut")[:, :, ::-1])  # RGB → OpenCV's BGR
    camera = SensorPublisher(bus, "lab-cam")
    camera.start()
    try:
        with client(bus, "app-cam", cam=Binding(device_id="lab-cam", type=CAMERA)) as app:
            stream = app.sensor_stream("cam")
            camera.publish_frame(encode_image(image), width=image.shape[1], height=image.shape[0])
            data = stream.next(10)
    finally:
        camera.stop()
    assert data.content_type == "image/jpeg"
    decoded = data.array()
    assert decoded.shape == image.shape
    assert float(np.mean(np.abs(decoded.astype(np.int16) - image.astype(np.int16)))) < 3.0
    assert decode_image(data.image or b"").shape == image.shape


@pytest.fixture
def fan(bus: Bus) -> Iterator[ControllerEndpoint]:
    def handle(command: str, params: dict[str, Any]) -> dict[str, Any]:
        if command == "set_speed" and params["speed"] == 4:
            raise ValidationFailed("speed 4 rattles", details=[{"field": "speed", "reason": "rattles"}])
        speed = {"on": 1, "off": 0}.get(command, params.get("speed", 0))
        return {"on": speed > 0, "speed": speed}

    endpoint = ControllerEndpoint(bus, "lab-fan", handle, {"on": False, "speed": 0})
    endpoint.start()
    yield endpoint
    endpoint.stop()


def test_a_controller_command_returns_the_new_state_and_the_state_is_published(
    bus: Bus, fan: ControllerEndpoint
) -> None:
    with client(bus, "app-fan", fan=Binding(device_id="lab-fan", type=FAN)) as app:
        assert app.send_controller("fan", "set_speed", speed=3) == {"on": True, "speed": 3}
        assert app.controller_state("fan") == {"on": True, "speed": 3}
        assert app.send_controller("fan", "off") == {"on": False, "speed": 0}


def test_invalid_commands_are_rejected_with_the_reason(bus: Bus, fan: ControllerEndpoint) -> None:
    with client(bus, "app-fan", fan=Binding(device_id="lab-fan", type=FAN)) as app:
        with pytest.raises(ValidationFailed, match="speed: 9 is above the maximum 5") as out_of_range:
            app.send_controller("fan", "set_speed", speed=9)
        assert out_of_range.value.details == [{"field": "speed", "reason": "9 is above the maximum 5"}]
        with pytest.raises(ValidationFailed, match="fan has no command 'spin'"):
            app.send_controller("fan", "spin")
        with pytest.raises(
            ValidationFailed, match="lab-fan rejected set_speed: speed 4 rattles: speed: rattles"
        ):
            app.send_controller("fan", "set_speed", speed=4)
        assert app.controller_state("fan") == {"on": False, "speed": 0}
        with pytest.raises(NotFound, match="no device bound to alias 'heater'"):
            app.send_controller("heater", "on")


def test_one_client_reads_all_its_streams_with_one_consumer_and_each_gets_every_reading(bus: Bus) -> None:
    """Streams added together and one added after the others ran: each gets every reading, in order.

    A client's streams share one consumer (so one consumer thread), and a second client in
    its own group still gets every reading.
    """
    names = ["lab-a", "lab-b", "lab-c"]
    devices = {name: SensorPublisher(bus, name) for name in names}
    for device in devices.values():
        device.start()
    binding = {name.replace("-", "_"): Binding(device_id=name, type=THERMOMETER) for name in names}
    received: dict[str, list[int]] = {}
    lock = threading.Lock()

    def collect(key: str) -> Any:
        def on_data(data: SensorData) -> None:
            with lock:
                received.setdefault(key, []).append(data.seq)

        return on_data

    def publish(name: str, count: int) -> list[int]:
        return [devices[name].publish({"temperature": 20.0}).seq for _ in range(count)]

    def consumer_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("aiot-consumer-devices-")]

    try:
        with client(bus, "app-one", **binding) as app, client(bus, "app-two", **binding) as other:
            threads = [
                threading.Thread(target=app.sensor_stream, args=(alias, collect(f"one.{alias}")))
                for alias in ("lab_a", "lab_b")
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            iterated = app.sensor_stream("lab_a")  # a second stream on a topic already read
            other.sensor_stream("lab_a", collect("two.lab_a"))
            early = {"lab-a": publish("lab-a", 20)}
            # lab_c added while the consumer runs: a rebalance, in which the other topics lose
            # nothing. lab-b has sent nothing yet (no committed offset) and sends during it.
            adding = threading.Thread(target=app.sensor_stream, args=("lab_c", collect("one.lab_c")))
            adding.start()
            time.sleep(0.3)
            early["lab-b"] = []
            while adding.is_alive():
                early["lab-b"] += publish("lab-b", 1)
                time.sleep(0.01)
            adding.join()
            late = {name: publish(name, 20) for name in names}
            sent_a = early["lab-a"] + late["lab-a"]
            expected = {
                "one.lab_a": sent_a,
                "one.lab_b": early["lab-b"] + late["lab-b"],
                "one.lab_c": late["lab-c"],
                "two.lab_a": sent_a,
            }
            wait_until(
                lambda: all(len(received.get(k, [])) >= len(v) for k, v in expected.items()), 30, "all"
            )
            assert [iterated.next(10).seq for _ in sent_a] == sent_a
            assert len(consumer_threads()) == 2  # one per client, however many streams
            iterated.stop()  # the other streams go on
            more = publish("lab-b", 5)
            expected["one.lab_b"] += more
            wait_until(lambda: len(received["one.lab_b"]) >= len(expected["one.lab_b"]), 20, "lab-b after")
            assert received == expected  # every reading once, in order, nothing from before
    finally:
        for device in devices.values():
            device.stop()
    assert consumer_threads() == []
