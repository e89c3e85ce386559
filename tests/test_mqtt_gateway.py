"""The MQTT gateway against the real Mosquitto and the real Kafka-protocol broker.

A paho client plays the real devices (a temperature sensor, a fan, a camera); the app
side is the SDK's ``DeviceClient``, which cannot tell them from simulated ones.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device_manager import registry
from device_manager.gateway import MqttGateway, _Refused, frame_size, image_size, reading_values
from platform_core.db import Database
from platform_sdk.bus import Bus, ConsumerLoop
from platform_sdk.device_documents import Binding, DeviceInstance, DeviceType, Location, ParamSpec
from platform_sdk.devices import DeviceClient
from platform_sdk.envelope import Envelope
from platform_sdk.errors import Timeout, ValidationFailed
from platform_sdk.net import free_port
from platform_sdk.settings import Settings, temporary_settings

pytestmark = [pytest.mark.service("mqtt"), pytest.mark.service("kafka")]

# The shapes of configs/devices/sample.json.
TEMPERATURE = DeviceType.model_validate(
    {
        "name": "temperature",
        "kind": "sensor",
        "simulator": "temperature",
        "outputs": {
            "temperature": {"type": "float", "unit": "°C"},
            "humidity": {"type": "float", "unit": "%", "min": 0, "max": 100},
        },
    }
)
FAN = DeviceType.model_validate(
    {
        "name": "fan",
        "kind": "controller",
        "simulator": "fan",
        "commands": {
            "on": {},
            "off": {},
            "set_speed": {"params": {"speed": {"type": "int", "min": 0, "max": 5}}},
        },
        "state": {"on": {"type": "bool"}, "speed": {"type": "int", "min": 0, "max": 5}},
    }
)
CAMERA = DeviceType.model_validate(
    {"name": "camera", "kind": "sensor", "simulator": "camera", "outputs": {"image": {"type": "image"}}}
)
JAMMED = "the motor is jammed"


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.02)


class FakeDevices:
    """A paho client that publishes as any device and plays fans: it answers their commands."""

    def __init__(self, url: str, prefix: str) -> None:
        self.prefix = prefix
        self.answer = True
        self.commands: list[dict[str, Any]] = []
        self.fans: dict[str, dict[str, Any]] = {}
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"fake-devices-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_connect = lambda client, *_: client.subscribe(f"{prefix}/+/commands", qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_command
        host, port = url.removeprefix("mqtt://").split(":")
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert self._subscribed.wait(10), "the fake devices did not get their subscription"

    def publish(self, device: str, channel: str, payload: bytes | str | dict[str, Any], **flags: Any) -> None:
        body = json.dumps(payload) if isinstance(payload, dict) else payload
        self.client.publish(f"{self.prefix}/{device}/{channel}", body, qos=1, **flags).wait_for_publish(5)

    def _on_command(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        device = message.topic.split("/")[-2]
        command = json.loads(message.payload)
        self.commands.append({"device": device, **command})
        if not self.answer:
            return
        state = self.fans.setdefault(device, {"on": False, "speed": 0})
        answer: dict[str, Any] = {"command_id": command["command_id"], "accepted": True, "error": None}
        if command["command"] == "set_speed" and command["params"]["speed"] == 4:
            answer |= {"accepted": False, "error": JAMMED}
        elif command["command"] == "set_speed":
            state |= {"on": command["params"]["speed"] > 0, "speed": command["params"]["speed"]}
        else:
            state["on"] = command["command"] == "on"
        reply = json.dumps({**answer, "state": dict(state)})
        self.client.publish(f"{self.prefix}/{device}/state", reply, qos=1)  # no waiting on paho's own thread

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# fixtures --------------------------------------------------------------------------------------
@pytest.fixture
def gateway_settings(kafka_settings: Settings, mqtt_broker: str) -> Iterator[Settings]:
    """The test's Kafka prefix, and its own MQTT topic prefix."""
    updates = {"device.mqtt_url": mqtt_broker, "device.mqtt_topic_prefix": f"test-{uuid.uuid4().hex[:10]}"}
    with temporary_settings(updates) as current:
        yield current


def gateway_registry(path: Path, real: dict[str, str]) -> Database:
    """A migrated SQLite registry at ``path``: the three types, a location "hall", the ``real``
    devices (name → type) and a simulated lobby-temp."""
    database = Database(f"sqlite:///{path}")
    database.migrate()
    with database.session() as session:
        for device_type in (TEMPERATURE, FAN, CAMERA):
            registry.create_type(session, device_type)
        registry.create_location(session, Location(name="hall", kind="school"))
    with database.session() as session:
        for name, type_name in real.items():
            registry.create_device(
                session, DeviceInstance(name=name, type=type_name, location="hall", simulated=False)
            )
        registry.create_device(
            session, DeviceInstance(name="lobby-temp", type="temperature", location="hall")
        )
    return database


@pytest.fixture
def registry_db(tmp_path: Path) -> Iterator[Database]:
    """Real hall-temp, hall-fan and hall-cam, and a simulated lobby-temp (``gateway_registry``)."""
    real = {"hall-temp": "temperature", "hall-fan": "fan", "hall-cam": "camera"}
    database = gateway_registry(tmp_path / "registry.db", real)
    yield database
    database.stop()


@pytest.fixture
def bus(gateway_settings: Settings) -> Bus:
    return Bus(gateway_settings, source="gateway-test")


@contextlib.contextmanager
def running_gateway(settings: Settings, bus: Bus, database: Database) -> Iterator[MqttGateway]:
    """A gateway that follows the registry every 0.5 s, once it is subscribed and serves commands."""
    refreshing = settings.model_copy(
        update={"device": settings.device.model_copy(update={"gateway_refresh_s": 0.5})}
    )
    gateway = MqttGateway(refreshing, bus, database)
    gateway.start()
    try:
        assert gateway.wait_ready(30), "the gateway did not subscribe and take its command partitions"
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def gateway(gateway_settings: Settings, bus: Bus, registry_db: Database) -> Iterator[MqttGateway]:
    with running_gateway(gateway_settings, bus, registry_db) as running:
        yield running


@pytest.fixture
def devices(gateway_settings: Settings, mqtt_broker: str) -> Iterator[FakeDevices]:
    fake = FakeDevices(mqtt_broker, gateway_settings.device.mqtt_topic_prefix)
    yield fake
    fake.stop()


@pytest.fixture
def app(bus: Bus) -> Iterator[DeviceClient]:
    bindings = {
        "temp": Binding(device_id="hall-temp", type=TEMPERATURE),
        "fan": Binding(device_id="hall-fan", type=FAN),
        "cam": Binding(device_id="hall-cam", type=CAMERA),
        "ghost": Binding(device_id="ghost-temp", type=TEMPERATURE),  # never registered
        "lobby": Binding(device_id="lobby-temp", type=TEMPERATURE),  # simulated
    }
    with DeviceClient(bus, bindings, group=f"{bus.topics.prefix}.app") as client:
        yield client


# device → platform -----------------------------------------------------------------------------
def test_a_reading_over_mqtt_reaches_the_sdk(
    gateway: MqttGateway, devices: FakeDevices, app: DeviceClient
) -> None:
    stream = app.sensor_stream("temp")
    values = {"temperature": 21.5, "humidity": 40.0}
    devices.publish("hall-temp", "data", {"values": values})

    received = stream.next(timeout=15)
    assert (received.device_id, received.values, received.image) == ("hall-temp", values, None)
    assert app.get_sensor_data("temp").values == values
    assert gateway.stats()["gateway.forwarded"] == 1
    assert gateway.bridged() == {"hall-cam": "sensor", "hall-fan": "controller", "hall-temp": "sensor"}


@pytest.mark.parametrize(("extension", "content_type"), [(".jpg", "image/jpeg"), (".png", "image/png")])
def test_a_camera_frame_over_mqtt_is_a_frame(
    gateway: MqttGateway, devices: FakeDevices, app: DeviceClient, extension: str, content_type: str
) -> None:
    ok, encoded = cv2.imencode(extension, np.full((48, 64, 3), 200, dtype=np.uint8))
    assert ok
    image = encoded.tobytes()
    stream = app.sensor_stream("cam")
    devices.publish("hall-cam", "frame", image)

    frame = stream.next(timeout=15)
    assert (frame.image, frame.content_type) == (image, content_type)
    assert frame.values == {"width": 64, "height": 48}


def test_image_size_reads_the_header_only() -> None:
    ok, jpeg = cv2.imencode(".jpg", np.zeros((7, 13), dtype=np.uint8))
    assert ok
    assert image_size(jpeg.tobytes()[:400]) == ("image/jpeg", 13, 7)
    for garbage in (b"", b"GIF89a....", b"\xff\xd8\xff\xe0\x00\x10JFIF", b"\x89PNG\r\n\x1a\n\x00"):
        with pytest.raises(ValueError, match=r"JPEG|PNG"):
            image_size(garbage)


def test_what_does_not_fit_is_dropped_and_counted(
    gateway: MqttGateway, devices: FakeDevices, app: DeviceClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="device_manager.gateway")
    streams = {alias: app.sensor_stream(alias) for alias in ("temp", "ghost", "lobby")}
    good = {"values": {"temperature": 20.0}}
    refused: list[tuple[str, str, Any]] = [
        ("ghost-temp", "data", good),  # not registered
        ("lobby-temp", "data", good),  # simulated: its simulator speaks for it
        ("hall-fan", "data", good),  # a controller sends state, not data
        ("hall-temp", "state", {"state": {"on": True}}),  # a sensor sends no state
        ("hall-temp", "data", b"{not json"),
        ("hall-temp", "data", {"values": {"humidity": 150.0}}),  # above the maximum 100
        ("hall-temp", "data", {"values": {"pressure": 1013}}),  # not an output of the type
        ("hall-temp", "data", {"values": {"temperature": "warm"}}),
        ("hall-temp", "data", b'{"values": {"temperature": NaN}}'),
        ("hall-temp", "data", {"temperature": 20.0}),  # not {"values": ...}
        ("hall-temp", "frame", b"\xff\xd8 not an image"),  # and a thermometer has no image output
        ("hall-cam", "frame", b"GIF89a"),
        ("hall-fan", "state", {"state": {"speed": 9}}),  # above the maximum 5
    ]
    for device, channel, payload in refused:
        devices.publish(device, channel, payload)

    wait_for(lambda: gateway.rejected == len(refused), 10, f"{len(refused)} rejections")
    for stream in streams.values():
        with pytest.raises(Timeout):
            stream.next(timeout=1)  # a refused message reached the alias
    assert "gateway.forwarded" not in gateway.stats()

    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    ghost = f"{devices.prefix}/ghost-temp/data"
    assert any(
        "ghost-temp" in text and ghost in text and "not a registered device" in text for text in warnings
    )
    assert any("humidity: 150.0 is above the maximum 100" in text for text in warnings), warnings
    assert any("not UTF-8 JSON" in text for text in warnings), warnings

    devices.publish("hall-temp", "data", good)  # still bridged, in order after the refused ones
    assert streams["temp"].next(timeout=15).values == good["values"]


def test_a_retained_message_is_an_old_one(
    gateway_settings: Settings, bus: Bus, registry_db: Database, devices: FakeDevices, app: DeviceClient
) -> None:
    stream = app.sensor_stream("temp")
    devices.publish("hall-temp", "data", {"values": {"temperature": 19.0}}, retain=True)
    gateway = MqttGateway(gateway_settings, bus, registry_db)
    gateway.start()
    try:
        assert gateway.wait_ready(30)
        wait_for(lambda: gateway.rejected == 1, 10, "the retained reading refused")
        with pytest.raises(Timeout):
            stream.next(timeout=1)
    finally:
        devices.publish("hall-temp", "data", b"", retain=True)  # clears the broker's copy
        gateway.stop()


# platform → device -----------------------------------------------------------------------------
def test_commands_reach_the_device_and_its_answer_comes_back(
    gateway: MqttGateway, devices: FakeDevices, app: DeviceClient
) -> None:
    assert app.send_controller("fan", "set_speed", speed=3) == {"on": True, "speed": 3}
    assert devices.commands[-1]["params"] == {"speed": 3}
    assert set(devices.commands[-1]) == {"device", "command_id", "command", "params"}

    with pytest.raises(ValidationFailed, match="speed: 9 is above the maximum 5"):
        app.send_controller("fan", "set_speed", speed=9)  # refused by the SDK: never sent
    with pytest.raises(ValidationFailed, match=JAMMED):
        app.send_controller("fan", "set_speed", speed=4)  # refused by the device
    assert [command["params"] for command in devices.commands] == [{"speed": 3}, {"speed": 4}]

    assert app.send_controller("fan", "off") == {"on": False, "speed": 3}
    assert app.controller_state("fan") == {"on": False, "speed": 3}  # every answer is published as state
    assert gateway.stats()["gateway.commands"] == 3


def test_a_device_that_does_not_answer_is_a_rejection(
    gateway: MqttGateway, devices: FakeDevices, app: DeviceClient
) -> None:
    devices.answer = False
    started = time.monotonic()
    with pytest.raises(ValidationFailed, match="the device did not answer within 5 s"):
        app.send_controller("fan", "on")
    assert 4.5 < time.monotonic() - started < 9
    assert devices.commands[-1]["command"] == "on"
    assert gateway.stats()["gateway.command_timeouts"] == 1


def test_a_device_state_of_its_own_is_published(gateway: MqttGateway, devices: FakeDevices, bus: Bus) -> None:
    seen: list[Envelope] = []
    loop = ConsumerLoop(bus, [bus.topics.device_state("hall-fan")], group=None, offset_reset="latest")
    loop.on_any(seen.append)
    loop.start()
    try:
        devices.publish("hall-fan", "state", {"state": {"on": True, "speed": 2}})
        wait_for(lambda: bool(seen), 15, "the state on Kafka")
    finally:
        loop.stop()
    assert seen[0].type == "device.state"
    assert seen[0].payload["state"] == {"on": True, "speed": 2}
    assert seen[0].payload["accepted"] is True


# the registry ----------------------------------------------------------------------------------
def test_devices_registered_and_removed_later_are_followed(
    gateway: MqttGateway, devices: FakeDevices, registry_db: Database, bus: Bus
) -> None:
    with registry_db.session() as session:
        registry.create_device(
            session, DeviceInstance(name="porch-fan", type="fan", location="hall", simulated=False)
        )
    wait_for(lambda: "porch-fan" in gateway.bridged(), 15, "porch-fan bridged")
    assert gateway.wait_ready(30)
    with DeviceClient(bus, {"fan": Binding(device_id="porch-fan", type=FAN)}, group="late") as client:
        assert client.send_controller("fan", "set_speed", speed=1) == {"on": True, "speed": 1}

    with registry_db.session() as session:
        registry.delete_device(session, "porch-fan")
    wait_for(lambda: "porch-fan" not in gateway.bridged(), 15, "porch-fan no longer bridged")
    before = gateway.rejected
    devices.publish("porch-fan", "state", {"state": {"on": False, "speed": 0}})
    wait_for(lambda: gateway.rejected == before + 1, 10, "the state of a removed device refused")


def test_without_a_broker_the_gateway_keeps_trying_and_stops_cleanly(
    kafka_settings: Settings, registry_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    updates = {"device.mqtt_url": f"mqtt://127.0.0.1:{free_port()}", "device.mqtt_topic_prefix": "nowhere"}
    with temporary_settings(updates) as current:
        gateway = MqttGateway(current, Bus(current, source="gateway-test"), registry_db)
        gateway.start()
        try:
            assert not gateway.wait_ready(1.5)
            assert gateway.bridged() == {
                "hall-cam": "sensor",
                "hall-fan": "controller",
                "hall-temp": "sensor",
            }
        finally:
            gateway.stop()
    assert any("cannot reach" in record.getMessage() for record in caplog.records)


# bounded values and frames ---------------------------------------------------------------------
def png_header(width: int, height: int) -> bytes:
    """The first 29 bytes of a PNG whose IHDR claims ``width`` x ``height`` (no pixel data follows)."""
    size = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + size + b"\x08\x02\x00\x00\x00"


def jpeg_header(width: int, height: int) -> bytes:
    """A JPEG start and a baseline frame header (SOF0) claiming ``width`` x ``height``."""
    sof = b"\x08" + height.to_bytes(2, "big") + width.to_bytes(2, "big") + b"\x01\x01\x11\x00"
    return b"\xff\xd8\xff\xc0" + (len(sof) + 2).to_bytes(2, "big") + sof


def test_non_finite_numbers_are_dropped(
    gateway: MqttGateway, devices: FakeDevices, app: DeviceClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="device_manager.gateway")
    temp = app.sensor_stream("temp")
    refused: list[tuple[str, str, bytes]] = [
        ("hall-temp", "data", b'{"values": {"temperature": 1e999}}'),  # overflows a float
        ("hall-temp", "data", b'{"values": {"temperature": -1e400}}'),
        ("hall-temp", "data", b'{"values": {"temperature": Infinity}}'),
        ("hall-temp", "data", b'{"values": {"temperature": -Infinity}}'),
        ("hall-fan", "state", b'{"state": {"on": true, "speed": 1e999}}'),
        ("hall-fan", "state", b'{"state": {"on": true}, "error": NaN}'),
        ("hall-fan", "state", b'{"state": {"on": true, "speed": 99999999999999999999}}'),  # > 64 bits
    ]
    for device, channel, payload in refused:
        devices.publish(device, channel, payload)
    wait_for(lambda: gateway.rejected == len(refused), 10, f"{len(refused)} rejections")
    assert "gateway.forwarded" not in gateway.stats()
    devices.publish("hall-temp", "data", {"values": {"temperature": 20.0}})
    assert temp.next(timeout=15).values == {"temperature": 20.0}  # the first on Kafka

    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    too_large = "values.temperature: 1e999 is a number too large for a 64-bit float"
    assert any("hall-temp" in text and too_large in text for text in warnings), warnings
    assert any("hall-fan" in text and "state.speed: 1e999 is a number" in text for text in warnings), warnings
    # One warning per topic and reason every 10 s: the others of a topic are counted, not shown.
    with pytest.raises(_Refused, match="error: NaN is not a number: JSON has no NaN or Infinity"):
        reading_values(TEMPERATURE, b'{"values": {"temperature": 1.0}, "error": NaN}')
    with pytest.raises(_Refused, match=r"99999999999999999999 is an integer beyond the 64-bit range"):
        reading_values(TEMPERATURE, b'{"values": {"temperature": 99999999999999999999}}')


def test_a_flood_of_refused_messages_is_logged_once_per_reason(
    gateway: MqttGateway, devices: FakeDevices, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="device_manager.gateway")
    for _ in range(50):
        devices.publish("hall-temp", "data", b'{"values": {"temperature": 1e999}}')
    wait_for(lambda: gateway.rejected == 50, 15, "50 rejections")
    warned = [record for record in caplog.records if "too large for a 64-bit float" in record.getMessage()]
    assert len(warned) == 1


def test_frames_beyond_the_types_limits_are_dropped(
    gateway: MqttGateway, devices: FakeDevices, app: DeviceClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="device_manager.gateway")
    cam = app.sensor_stream("cam")
    claims = [
        png_header(4294967295, 4294967295),
        png_header(4097, 10),
        jpeg_header(65535, 65535),
        jpeg_header(10, 4097),
    ]
    for frame in claims:
        devices.publish("hall-cam", "frame", frame)
    wait_for(lambda: gateway.rejected == len(claims), 10, f"{len(claims)} rejections")
    ok, encoded = cv2.imencode(".png", np.zeros((6, 8), dtype=np.uint8))
    assert ok
    devices.publish("hall-cam", "frame", encoded.tobytes())
    assert cam.next(timeout=15).values == {"width": 8, "height": 6}  # the first on Kafka
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any(
        "hall-cam" in text and "4294967295x4294967295; the type accepts at most 4096x4096" in text
        for text in warnings
    ), warnings


def test_a_frame_is_checked_against_its_image_outputs_limits() -> None:
    spec = ParamSpec.model_validate({"type": "image", "max_width": 640, "max_height": 480, "max_bytes": 2000})
    assert frame_size(spec, png_header(640, 480)) == ("image/png", 640, 480)
    assert frame_size(spec, jpeg_header(1, 1)) == ("image/jpeg", 1, 1)
    for image, reason in [
        (png_header(641, 480), "641x480; the type accepts at most 640x480"),
        (jpeg_header(640, 481), "640x481; the type accepts at most 640x480"),
        (png_header(10, 10) + bytes(2000), "2029 bytes; the type accepts at most 2000"),
        (png_header(0, 10), "says 0x10"),
    ]:
        with pytest.raises(_Refused, match=reason):
            frame_size(spec, image)
    assert ParamSpec(type="image").image_limits() == (4096, 4096, 4 * 1024 * 1024)
    with pytest.raises(ValueError, match="apply to images"):
        ParamSpec.model_validate({"type": "float", "max_width": 10})
