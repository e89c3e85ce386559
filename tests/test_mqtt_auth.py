"""MQTT devices authenticate: each real device's credentials, and Mosquitto's password and ACL files.

The front door issues the credentials (its device routes, on a copy of a seeded registry, as in
``test_device_registry``). The rest runs against a Mosquitto of this session's own
(``private_mosquitto``: no anonymous clients, the password and ACL files that
``MqttAuthFiles`` writes, SIGHUP through its pid file), the real Kafka-protocol broker and the
gateway logged in as its own user. paho clients play the devices with MQTT 5, so a publish the
ACL refuses comes back as a "Not authorized" PUBACK; that a forged message never reached Kafka
is shown by the device's next genuine message being the first record on its topic.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device_manager import mqtt_auth, registry
from device_manager.gateway import MqttGateway
from device_manager.messages import DeviceChanged
from device_manager.mqtt_auth import MqttAuthFiles, hash_password, password_matches
from device_manager.service import DeviceManagerService
from platform_core.auth import Role
from platform_core.db import Database
from platform_sdk.bus import Bus, ConsumerLoop
from platform_sdk.device_documents import Binding, DeviceInstance, Location
from platform_sdk.devices import DeviceClient
from platform_sdk.envelope import Envelope
from platform_sdk.errors import BadRequest, Conflict
from platform_sdk.settings import Settings, temporary_settings
from tests.conftest import missing_component
from tests.fixtures import sites
from tests.fixtures.mqtt import PrivateMosquitto
from tests.test_device_registry import Site, open_site, sample_location, sample_type
from tests.test_front_door import error_of, json_of, seed_registry
from tests.test_mqtt_gateway import CAMERA, FAN, TEMPERATURE, gateway_registry, running_gateway, wait_for

GATEWAY_USER = "aiot.gateway"
USERS = {"admin": Role.PLATFORM_CONFIGURER, "enduser": Role.END_USER}
REAL = {"hall-temp": "temperature", "yard-temp": "temperature", "hall-fan": "fan", "porch-fan": "fan"}
REAL |= {"hall-cam": "camera"}
REFUSED = "Not authorized"


# --- the front door issues credentials ----------------------------------------------------------


@pytest.fixture(scope="module")
def users_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mqtt-auth-registry") / "registry.db"
    seed_registry(f"sqlite:///{path}", USERS)
    return path


@pytest.fixture
def door(
    settings: Settings, users_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Site]:
    """The front door's device routes on a copy of ``users_db``, the notices to the service recorded."""
    with open_site(users_db, tmp_path, monkeypatch, bus=True) as opened:
        json_of(opened.post("/api/devices/types", sample_type("temperature")), 201)
        json_of(opened.post("/api/devices/locations", sample_location("city-bank")), 201)
        yield opened


def real(name: str, type_name: str = "temperature", **changed: Any) -> dict[str, Any]:
    return {"name": name, "type": type_name, "location": "city-bank", "simulated": False} | changed


def stored_hash(door: Site, device: str) -> str | None:
    with door.door.database.session() as session:
        return mqtt_auth.stored_hash(session, device)


def test_a_real_device_gets_credentials_once_and_only_their_hash_is_kept(door: Site) -> None:
    body = json_of(door.post("/api/devices", real("vault-temp")), 201)
    credentials = body["mqtt_credentials"]
    assert credentials["username"] == "vault-temp"
    assert len(credentials["password"]) >= 32
    hashed = stored_hash(door, "vault-temp")
    assert hashed is not None
    assert hashed.startswith("$7$101$")
    assert credentials["password"] not in hashed
    assert password_matches(credentials["password"], hashed)
    assert not password_matches(credentials["password"] + "x", hashed)

    shown = door.get("/api/devices/vault-temp").get_data(as_text=True)
    listed = door.get("/api/devices").get_data(as_text=True)
    assert credentials["password"] not in shown + listed
    assert "mqtt_credentials" not in shown

    simulated = json_of(door.post("/api/devices", real("lobby-temp", simulated=True)), 201)
    assert "mqtt_credentials" not in simulated
    assert stored_hash(door, "lobby-temp") is None

    bundle = {
        "device_types": [sample_type("fan")],
        "devices": [real("vault-fan", "fan"), real("lobby-fan", "fan", simulated=True)],
    }
    answer = json_of(door.post("/api/devices/bulk", bundle), 201)
    assert set(answer["mqtt_credentials"]) == {"vault-fan"}
    issued = answer["mqtt_credentials"]["vault-fan"]
    assert issued["username"] == "vault-fan"
    assert password_matches(issued["password"], stored_hash(door, "vault-fan") or "")


def test_new_credentials_replace_the_old_ones_and_the_service_is_told(door: Site) -> None:
    first = json_of(door.post("/api/devices", real("vault-temp")), 201)["mqtt_credentials"]
    door.notices.clear()
    second = json_of(door.post("/api/devices/vault-temp/mqtt-credentials", None), 201)
    assert second["device"] == "vault-temp"
    assert second["mqtt_credentials"]["username"] == "vault-temp"
    hashed = stored_hash(door, "vault-temp") or ""
    assert password_matches(second["mqtt_credentials"]["password"], hashed)
    assert not password_matches(first["password"], hashed)
    assert door.notices == [("credentials", "vault-temp")]

    json_of(door.post("/api/devices", real("lobby-temp", simulated=True)), 201)
    door.notices.clear()
    error = error_of(door.post("/api/devices/lobby-temp/mqtt-credentials", None), 409)
    assert "simulated" in error["message"]
    assert error["details"][0]["field"] == "simulated"
    assert (
        "no device 'ghost'"
        in error_of(door.post("/api/devices/ghost/mqtt-credentials", None), 404)["message"]
    )
    error_of(door.post("/api/devices/vault-temp/mqtt-credentials", None, username="enduser"), 403)
    assert stored_hash(door, "vault-temp") == hashed
    assert door.notices == []


def test_a_deleted_device_loses_its_credentials(door: Site) -> None:
    json_of(door.post("/api/devices", real("vault-temp")), 201)
    json_of(door.delete("/api/devices/vault-temp"), 200)
    assert stored_hash(door, "vault-temp") is None


def test_a_change_the_service_is_not_told_of_keeps_the_old_credentials(
    settings: Settings, users_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_site(users_db, tmp_path, monkeypatch, bus=False) as busless:
        with busless.door.database.session() as session:
            registry.create_type(session, TEMPERATURE)
            registry.create_location(session, Location(name="hall", kind="school"))
            registry.create_device(
                session,
                DeviceInstance(name="hall-temp", type="temperature", location="hall", simulated=False),
            )
            password = mqtt_auth.issue(session, "hall-temp").password
        before = stored_hash(busless, "hall-temp")

        error_of(busless.post("/api/devices/hall-temp/mqtt-credentials", None), 503)
        assert stored_hash(busless, "hall-temp") == before
        error_of(busless.delete("/api/devices/hall-temp"), 503)
        assert stored_hash(busless, "hall-temp") == before
        assert password_matches(password, before or "")


def test_hashes_are_the_ones_mosquitto_passwd_writes(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd") or shutil.which("mosquitto_passwd", path="/usr/bin:/usr/sbin")
    if tool is None:
        missing_component("mosquitto", "no mosquitto_passwd on PATH (apt-get install -y mosquitto)")
    assert tool is not None
    passwords = tmp_path / "passwords"
    passwords.write_text("")
    subprocess.run([tool, "-b", str(passwords), "hall-temp", "s3cret:pass"], check=True)
    username, hashed = passwords.read_text().strip().split(":", 1)
    assert username == "hall-temp"
    assert password_matches("s3cret:pass", hashed)
    assert not password_matches("s3cret:pasS", hashed)
    _empty, _seven, iterations, salt, _digest = hashed.split("$")
    assert hash_password("s3cret:pass", salt=base64.b64decode(salt), iterations=int(iterations)) == hashed


def test_misconfigured_files_are_refused_naming_the_setting(tmp_path: Path, settings: Settings) -> None:
    files: dict[str, object] = {
        "device.mqtt_password_file": tmp_path / "p",
        "device.mqtt_acl_file": tmp_path / "a",
    }
    database = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        cases: list[tuple[dict[str, object], str]] = [
            ({"device.mqtt_url": "mqtt://127.0.0.1:1883"}, "needs the gateway's user:password"),
            ({"device.mqtt_url": "mqtt://gateway:pw@127.0.0.1:1883"}, "no possible device name"),
            ({"device.mqtt_url": "mqtt://a.b:pw@h:1", "device.mqtt_acl_file": None}, "set together"),
            ({"device.mqtt_url": "mqtt://a.b:pw@h:1", "device.mqtt_topic_prefix": "a/+"}, "wildcards"),
        ]
        for updates, reason in cases:
            with temporary_settings(files | updates) as current, pytest.raises(BadRequest, match=reason):
                MqttAuthFiles(current, database)
    finally:
        database.stop()


# --- a Mosquitto that lets nobody in anonymously ------------------------------------------------


@dataclass
class Secured:
    """The test's settings, registry, the files the device manager writes, and each device's password."""

    settings: Settings
    broker: PrivateMosquitto
    database: Database
    files: MqttAuthFiles
    passwords: dict[str, str]
    gateway_password: str

    @property
    def prefix(self) -> str:
        return self.settings.device.mqtt_topic_prefix


def login(broker: PrivateMosquitto, username: str | None, password: str | None) -> str:
    """The CONNACK's reason for a client with these credentials (``Success`` or why not)."""
    reasons: list[str] = []
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
    )
    if username is not None:
        client.username_pw_set(username, password)
    client.on_connect = lambda _client, _userdata, _flags, reason, _properties: reasons.append(str(reason))
    client.connect("127.0.0.1", broker.port)
    try:
        deadline = time.monotonic() + 10
        while not reasons and time.monotonic() < deadline:
            if client.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:  # refused: the broker closed the connection
                break
    finally:
        client.disconnect()
    return reasons[0] if reasons else "no CONNACK"


class DeviceLink:
    """One device's own MQTT 5 connection: publishes (answering with the PUBACK's reason), receives,
    and answers commands like a fan when ``plays_fan``."""

    def __init__(
        self, secured: Secured, username: str, password: str | None = None, *, subscribe: tuple[str, ...] = ()
    ) -> None:
        self.prefix = secured.prefix
        self.received: list[str] = []
        self.plays_fan = False
        self.disconnected = threading.Event()
        self._acks: dict[int, str] = {}
        self._connected: list[str] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{username}-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(username, secured.passwords[username] if password is None else password)
        self.client.on_connect = lambda _c, _u, _f, reason, _p: self._connected.append(str(reason))
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *_: self.disconnected.set()
        self.client.connect("127.0.0.1", secured.broker.port)
        self.client.loop_start()
        wait_for(lambda: bool(self._connected), 10, f"{username} connected")
        assert self._connected[0] == "Success", self._connected
        if subscribe:
            self.client.subscribe([(f"{self.prefix}/{topic}", 1) for topic in subscribe])
            assert self._subscribed.wait(10), "no SUBACK"

    def _on_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int, reason: ReasonCode, _properties: Properties
    ) -> None:
        self._acks[mid] = str(reason)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.received.append(message.topic)
        if self.plays_fan and message.topic.endswith("/commands"):
            command = json.loads(message.payload)
            state = {"on": command["command"] == "on", "speed": 0}
            reply = {"command_id": command["command_id"], "state": state}
            self.client.publish(message.topic.replace("/commands", "/state"), json.dumps(reply), qos=1)

    def publish(self, device: str, channel: str, payload: bytes | dict[str, Any]) -> str:
        """Publish as ``device`` (QoS 1); the broker's PUBACK reason."""
        body = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        info = self.client.publish(f"{self.prefix}/{device}/{channel}", body, qos=1)
        wait_for(lambda: info.mid in self._acks, 10, "the PUBACK")
        return self._acks[info.mid]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def links(secured: Secured, *specs: tuple[str, tuple[str, ...]]) -> Iterator[list[DeviceLink]]:
    opened: list[DeviceLink] = []
    try:
        for username, subscribe in specs:
            opened.append(DeviceLink(secured, username, subscribe=subscribe))
        yield opened
    finally:
        for link in opened:
            link.stop()


@pytest.fixture
def secured(
    kafka_settings: Settings, private_mosquitto: PrivateMosquitto, tmp_path: Path
) -> Iterator[Secured]:
    """The five real devices of ``REAL`` (and a simulated lobby-temp) with credentials, the files
    written from them, and Mosquitto reloaded: the gateway's user can log in."""
    gateway_password = secrets.token_urlsafe(16)
    updates = {
        "device.mqtt_url": private_mosquitto.url(GATEWAY_USER, gateway_password),
        "device.mqtt_topic_prefix": f"test-{uuid.uuid4().hex[:10]}",
        "device.mqtt_password_file": private_mosquitto.password_file,
        "device.mqtt_acl_file": private_mosquitto.acl_file,
        "device.mqtt_pid_file": private_mosquitto.pid_file,
    }
    database = gateway_registry(tmp_path / "registry.db", REAL)
    with database.session() as session:
        passwords = {name: mqtt_auth.issue(session, name).password for name in REAL}
    try:
        with temporary_settings(updates) as current:
            files = MqttAuthFiles(current, database)
            files.write()
            wait_for(
                lambda: login(private_mosquitto, GATEWAY_USER, gateway_password) == "Success",
                15,
                "Mosquitto reloaded with the gateway's user",
            )
            yield Secured(current, private_mosquitto, database, files, passwords, gateway_password)
    finally:
        database.stop()


@pytest.fixture
def gateway(secured: Secured) -> Iterator[MqttGateway]:
    """The gateway, logged in as its own user."""
    bus = Bus(secured.settings, source="gateway-test")
    with running_gateway(secured.settings, bus, secured.database) as running:
        yield running


@pytest.fixture
def app(secured: Secured) -> Iterator[DeviceClient]:
    bus = Bus(secured.settings, source="app-test")
    bindings = {
        "temp": Binding(device_id="hall-temp", type=TEMPERATURE),
        "yard": Binding(device_id="yard-temp", type=TEMPERATURE),
        "fan": Binding(device_id="hall-fan", type=FAN),
        "porch": Binding(device_id="porch-fan", type=FAN),
        "cam": Binding(device_id="hall-cam", type=CAMERA),
    }
    with DeviceClient(bus, bindings, group=f"{bus.topics.prefix}.app") as client:
        yield client


def test_only_registered_credentials_get_in(secured: Secured) -> None:
    broker = secured.broker
    assert login(broker, None, None) == REFUSED  # anonymous
    assert login(broker, "hall-temp", "wrong-password") == REFUSED
    assert login(broker, "hall-temp", secured.passwords["yard-temp"]) == REFUSED  # another device's
    assert login(broker, "lobby-temp", "anything") == REFUSED  # simulated: no MQTT user
    assert login(broker, "hall-temp", secured.passwords["hall-temp"]) == "Success"
    assert login(broker, GATEWAY_USER, secured.gateway_password) == "Success"


def test_a_device_with_its_credentials_reaches_kafka(
    secured: Secured, gateway: MqttGateway, app: DeviceClient
) -> None:
    stream = app.sensor_stream("temp")
    with links(secured, ("hall-temp", ())) as (device,):
        assert device.publish("hall-temp", "data", {"values": {"temperature": 21.5}}) == "Success"
    received = stream.next(timeout=15)
    assert (received.device_id, received.values) == ("hall-temp", {"temperature": 21.5})


def test_a_device_cannot_publish_as_another(
    secured: Secured, gateway: MqttGateway, app: DeviceClient
) -> None:
    yard = app.sensor_stream("yard")
    bus = Bus(secured.settings, source="state-test")
    states: list[Envelope] = []
    loop = ConsumerLoop(bus, [bus.topics.device_state("hall-fan")], group=None, offset_reset="latest")
    loop.on_any(states.append)
    loop.start()
    try:
        with links(secured, ("hall-temp", ()), ("yard-temp", ()), ("hall-fan", ())) as (
            forger,
            yard_temp,
            fan,
        ):
            forged = {"values": {"temperature": -40.0}}
            assert forger.publish("yard-temp", "data", forged) == REFUSED
            assert forger.publish("hall-fan", "state", {"state": {"on": True, "speed": 5}}) == REFUSED
            assert forger.publish("hall-temp", "state", {"state": {"on": True}}) == REFUSED  # a sensor's
            assert fan.publish("hall-fan", "data", {"values": {"temperature": 1.0}}) == REFUSED  # a fan's

            assert yard_temp.publish("yard-temp", "data", {"values": {"temperature": 12.0}}) == "Success"
            assert fan.publish("hall-fan", "state", {"state": {"on": False, "speed": 0}}) == "Success"
            assert yard.next(timeout=15).values == {
                "temperature": 12.0
            }  # the first: the forged one never came
            wait_for(lambda: bool(states), 15, "the fan's own state on Kafka")
    finally:
        loop.stop()
    assert states[0].payload["state"] == {"on": False, "speed": 0}
    assert "gateway.rejected" not in gateway.stats()  # Mosquitto refused them; the gateway never saw one


def test_a_device_cannot_read_another_devices_commands(
    secured: Secured, gateway: MqttGateway, app: DeviceClient
) -> None:
    own, other = "hall-fan/commands", "porch-fan/commands"
    with links(secured, ("hall-fan", (other, "#")), ("porch-fan", (other,))) as (snoop, porch):
        snoop.plays_fan = porch.plays_fan = True
        assert app.send_controller("porch", "on") == {"on": True, "speed": 0}  # porch-fan got it
        assert app.send_controller("fan", "on") == {"on": True, "speed": 0}  # then hall-fan got its own
        assert snoop.received == [f"{secured.prefix}/{own}"]  # and never porch-fan's, which came first
        assert porch.received == [f"{secured.prefix}/{other}"]


def test_new_credentials_replace_the_old_ones(secured: Secured) -> None:
    old = secured.passwords["hall-temp"]
    with links(secured, ("hall-temp", ())) as (connected,):
        with secured.database.session() as session:
            new = mqtt_auth.issue(session, "hall-temp").password
        assert secured.files.write()
        wait_for(lambda: login(secured.broker, "hall-temp", old) == REFUSED, 15, "the old password refused")
        assert connected.disconnected.wait(10), "Mosquitto kept the client with the old password"
    assert login(secured.broker, "hall-temp", new) == "Success"
    assert login(secured.broker, "yard-temp", secured.passwords["yard-temp"]) == "Success"


def test_a_deleted_devices_credentials_stop_working(secured: Secured) -> None:
    with secured.database.session() as session:
        registry.delete_device(session, "porch-fan")
    assert secured.files.write()
    wait_for(
        lambda: login(secured.broker, "porch-fan", secured.passwords["porch-fan"]) == REFUSED,
        15,
        "the deleted device refused",
    )
    assert "porch-fan" not in secured.broker.password_file.read_text()
    assert "porch-fan" not in secured.broker.acl_file.read_text()


def test_the_files_hold_the_registered_devices_and_nothing_else(secured: Secured) -> None:
    broker, prefix = secured.broker, secured.prefix
    lines = broker.password_file.read_text().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == [GATEWAY_USER, *sorted(REAL)]
    assert all(line.split(":", 1)[1].startswith("$7$101$") for line in lines)
    acl = broker.acl_file.read_text()
    assert f"user {GATEWAY_USER}\ntopic readwrite {prefix}/#\n" in acl
    assert (
        f"user hall-temp\ntopic write {prefix}/hall-temp/data\ntopic write {prefix}/hall-temp/frame\n" in acl
    )
    assert (
        f"user hall-fan\ntopic write {prefix}/hall-fan/state\ntopic read {prefix}/hall-fan/commands\n" in acl
    )
    assert acl.count("\nuser ") + acl.startswith("user ") == 1 + len(REAL)
    assert "lobby-temp" not in acl
    for path in (broker.password_file, broker.acl_file):
        assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(os.listdir(broker.password_file.parent)) == sorted(
        ["passwords", "acl", "mosquitto.pid", "mosquitto.log", "mosquitto.conf"]
    )  # no temporary file left behind

    assert not secured.files.write()  # unchanged: not rewritten, Mosquitto not reloaded
    assert not MqttAuthFiles(secured.settings, secured.database).write()  # after a restart too


def test_non_finite_values_and_oversized_frames_are_not_forwarded(
    secured: Secured, gateway: MqttGateway, app: DeviceClient
) -> None:
    temp, cam = app.sensor_stream("temp"), app.sensor_stream("cam")
    huge_png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\xff\xff\xff\xff" * 2 + b"\x08\x02\x00\x00\x00"
    with links(secured, ("hall-temp", ()), ("hall-cam", ())) as (thermometer, camera):
        for number in (b"NaN", b"1e999", b"-Infinity"):
            payload = b'{"values": {"temperature": ' + number + b"}}"
            assert thermometer.publish("hall-temp", "data", payload) == "Success"
        assert camera.publish("hall-cam", "frame", huge_png) == "Success"
        wait_for(lambda: gateway.rejected == 4, 15, "four rejections")
        assert thermometer.publish("hall-temp", "data", {"values": {"temperature": 20.0}}) == "Success"
        ok, small = cv2.imencode(".png", np.zeros((6, 8), dtype=np.uint8))
        assert ok
        assert camera.publish("hall-cam", "frame", small.tobytes()) == "Success"
        assert temp.next(timeout=15).values == {"temperature": 20.0}  # the first to arrive
        assert cam.next(timeout=15).values == {"width": 8, "height": 6}
    assert gateway.stats().get("gateway.forwarded") == 2


def test_the_device_manager_rewrites_the_files_when_told_of_new_credentials(secured: Secured) -> None:
    service = DeviceManagerService(secured.settings)
    service.database = secured.database
    service.mqtt_files = MqttAuthFiles.from_settings(secured.settings, secured.database)
    with secured.database.session() as session:
        new = mqtt_auth.issue(session, "yard-temp").password
    service.on_change(DeviceChanged(action="credentials", device="yard-temp"))  # as its worker would
    wait_for(lambda: login(secured.broker, "yard-temp", new) == "Success", 15, "the new password accepted")
    assert login(secured.broker, "yard-temp", secured.passwords["yard-temp"]) == REFUSED


# --- the aiot command ---------------------------------------------------------------------------
# A front door served over HTTP on Kafka, and the CLI against it: the site of tests.fixtures.sites.


def test_the_cli_prints_the_credentials_once_and_issues_new_ones(site: sites.Site, tmp_path: Path) -> None:
    document = tmp_path / "vault-cam.json"
    document.write_text(json.dumps(real("vault-cam", "camera")))
    added = site.aiot("admin", "device", "add", str(document)).output
    found = re.search(r"MQTT credentials of vault-cam: username vault-cam password (\S+)", added)
    assert found, added
    assert "shown once" in added
    with site.database.session() as session:
        assert password_matches(found.group(1), mqtt_auth.stored_hash(session, "vault-cam") or "")

    issued = json.loads(site.aiot("admin", "device", "credentials", "vault-cam", "--json").output)
    assert issued["username"] == "vault-cam"
    with site.database.session() as session:
        hashed = mqtt_auth.stored_hash(session, "vault-cam") or ""
    assert password_matches(issued["password"], hashed)
    assert not password_matches(found.group(1), hashed)

    refused = site.aiot_unchecked("admin", "device", "credentials", "bank-cam")  # a simulated one
    assert isinstance(refused.exception, Conflict)
    assert "device 'bank-cam' is simulated" in refused.exception.message
    del refused  # its traceback holds the command's HTTP connection
